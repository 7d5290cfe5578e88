//! The cluster: its view, the ring, a key's placement, joins and decommissions.

use dynamo_core::ids::{BucketName, NodeId, validate_key};
use dynamo_core::wire::cluster::{ClusterView, KeyPlacement, NodeRegistration};
pub use dynamo_core::wire::public::RingView;
use reqwest::Method;

use crate::client::{Call, Client, segment};
use crate::error::ClientError;

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
