//! The cluster: its view, the ring, a key's placement, joins and decommissions.

use std::collections::BTreeMap;

use dynamo_core::ids::{BucketName, NodeId, PartitionId, RingEpoch, validate_key};
use dynamo_core::wire::cluster::{ClusterView, KeyPlacement, NodeRegistration};
use reqwest::Method;
use serde::{Deserialize, Serialize};

use crate::client::{Call, Client, segment};
use crate::error::ClientError;

/// `GET /v1/ring`: the ring's epoch, its partition count Q, and the owner of each
/// partition.
///
/// Unknown fields are ignored, so a server that adds some stays readable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingView {
    /// The ring's version; it never goes backwards.
    pub epoch: RingEpoch,
    /// Q, the number of partitions (a power of two).
    pub partitions: u32,
    /// The owner of each partition, indexed by partition id.
    pub owners: Vec<NodeId>,
}

impl RingView {
    /// Returns the owner of `partition`, if the ring has it.
    pub fn owner(&self, partition: PartitionId) -> Option<&NodeId> {
        self.owners.get(usize::try_from(partition.0).ok()?)
    }

    /// Returns how many partitions each node owns, by node id.
    pub fn partitions_per_owner(&self) -> BTreeMap<&NodeId, u32> {
        let mut counts = BTreeMap::new();
        for owner in &self.owners {
            *counts.entry(owner).or_insert(0) += 1;
        }
        counts
    }
}

impl Client {
    /// Returns the cluster view (`GET /v1/cluster`): nodes and their states, the ring
    /// epoch, handoffs in progress.
    ///
    /// # Errors
    /// [`ClientError::Api`] for an error answer, transport and decoding errors.
    pub async fn cluster(&self) -> Result<ClusterView, ClientError> {
        let reply = self
            .send(Call::new(Method::GET, "/v1/cluster".into()).accept_json())
            .await?;
        reply.json()
    }

    /// Returns the ring (`GET /v1/ring`).
    ///
    /// # Errors
    /// As [`Client::cluster`]; `ring_unavailable` before the first node joined.
    pub async fn ring(&self) -> Result<RingView, ClientError> {
        let reply = self
            .send(Call::new(Method::GET, "/v1/ring".into()).accept_json())
            .await?;
        reply.json()
    }

    /// Returns where a key lives (`GET /v1/ring?bucket=&key=`): its partition, its
    /// preference list (the N nodes, in order) and the sloppy-quorum fallbacks.
    ///
    /// # Errors
    /// As [`Client::ring`]; [`ClientError::InvalidInput`] for an invalid bucket or key.
    pub async fn placement(&self, bucket: &str, key: &str) -> Result<KeyPlacement, ClientError> {
        let invalid = |code, message| ClientError::InvalidInput { code, message };
        BucketName::new(bucket).map_err(|e| invalid(e.code(), e.to_string()))?;
        validate_key(key).map_err(|e| invalid(e.code(), e.to_string()))?;
        let call = Call::new(Method::GET, "/v1/ring".into())
            .accept_json()
            .query("bucket", bucket)
            .query("key", key);
        self.send(call).await?.json()
    }

    /// Joins a node to the cluster (`POST /v1/cluster/nodes`, needs `admin`). The node
    /// takes its partitions through handoffs; [`Client::cluster`] shows their progress.
    ///
    /// # Errors
    /// As [`Client::cluster`]; `membership_conflict` when the node is already a member.
    pub async fn join_node(&self, node: &NodeRegistration) -> Result<(), ClientError> {
        let call = Call::new(Method::POST, "/v1/cluster/nodes".into())
            .accept_json()
            .json(node)?;
        self.send(call).await?;
        Ok(())
    }

    /// Decommissions a node (`DELETE /v1/cluster/nodes/{node}`, needs `admin`): its data
    /// is handed off before it leaves the ring.
    ///
    /// # Errors
    /// As [`Client::cluster`]; `node_not_found`, or `membership_conflict` when it is
    /// already leaving.
    pub async fn decommission(&self, node: &NodeId) -> Result<(), ClientError> {
        let path = format!("/v1/cluster/nodes/{}", segment(node.as_str()));
        self.send(Call::new(Method::DELETE, path).accept_json()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_view_reads_the_documented_json_and_ignores_additions() {
        let json = r#"{"epoch":3,"partitions":4,"owners":["a","b","a","b"],"members":[]}"#;
        let ring: RingView = serde_json::from_str(json).expect("decodes");
        assert_eq!(ring.epoch, RingEpoch(3));
        assert_eq!(ring.owner(PartitionId(1)).map(NodeId::as_str), Some("b"));
        assert_eq!(ring.owner(PartitionId(4)), None);
        let counts: Vec<(String, u32)> = ring
            .partitions_per_owner()
            .into_iter()
            .map(|(n, c)| (n.to_string(), c))
            .collect();
        assert_eq!(counts, vec![("a".into(), 2), ("b".into(), 2)]);
    }
}
