//! The cluster: its view, the ring, a key's placement, and membership changes (joins,
//! decommissions, replacements, and the retry or abort of one that failed).

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
    /// Returns the cluster view as the change began: its [`ClusterView::change`] names
    /// the ring epoch the change will publish, which tells a waiter when it is done.
    ///
    /// # Errors
    /// As [`Client::cluster`]; `membership_conflict` when the node is already a member or
    /// another change is in progress.
    pub async fn join_node(&self, node: &NodeRegistration) -> Result<ClusterView, ClientError> {
        let call = Call::new(Method::POST, "/v1/cluster/nodes".into())
            .accept_json()
            .json(node)?;
        self.send(call).await?.json()
    }

    /// Decommissions a node (`DELETE /v1/cluster/nodes/{node}`, needs `admin`): its data
    /// is handed off before it leaves the ring. Returns the view as for
    /// [`Client::join_node`].
    ///
    /// # Errors
    /// As [`Client::cluster`]; `node_not_found`, or `membership_conflict` when it is
    /// already leaving or another change is in progress.
    pub async fn decommission(&self, node: &NodeId) -> Result<ClusterView, ClientError> {
        let path = format!("/v1/cluster/nodes/{}", segment(node.as_str()));
        self.send(Call::new(Method::DELETE, path).accept_json())
            .await?
            .json()
    }

    /// Replaces a member by a new node (`POST /v1/cluster/nodes/{old}/replace`, needs
    /// `admin`): the new node takes over exactly the partitions of `old`, filled from the
    /// surviving replicas, and `old` leaves the ring. Returns the view as for
    /// [`Client::join_node`].
    ///
    /// # Errors
    /// As [`Client::cluster`]; `node_not_found` when `old` is not a member,
    /// `membership_conflict` when the new node already is (or its address is taken, or
    /// another change is in progress), `invalid_request` for an address or zone the
    /// cluster refuses.
    pub async fn replace_node(
        &self,
        old: &NodeId,
        new: &NodeRegistration,
    ) -> Result<ClusterView, ClientError> {
        let path = format!("/v1/cluster/nodes/{}/replace", segment(old.as_str()));
        let call = Call::new(Method::POST, path).accept_json().json(new)?;
        self.send(call).await?.json()
    }

    /// Runs a failed membership change again (`POST /v1/cluster/change/retry`, needs
    /// `admin`): the copies already done are kept, the others start over with a fresh
    /// attempt budget. Returns the view as the change runs again, its
    /// [`ClusterView::change`] no longer failed.
    ///
    /// # Errors
    /// As [`Client::cluster`]; `membership_conflict` when no change is in progress or it
    /// has not failed.
    pub async fn retry_change(&self) -> Result<ClusterView, ClientError> {
        let call = Call::new(Method::POST, "/v1/cluster/change/retry".into()).accept_json();
        self.send(call).await?.json()
    }

    /// Aborts the membership change in progress (`POST /v1/cluster/change/abort`, needs
    /// `admin`): a joining or replacing node is forgotten, a leaving or replaced node is a
    /// member again, the ring is untouched. Returns the view without the change.
    ///
    /// # Errors
    /// As [`Client::cluster`]; `membership_conflict` when no change is in progress or its
    /// new ring is already published (it can then only be retried).
    pub async fn abort_change(&self) -> Result<ClusterView, ClientError> {
        let call = Call::new(Method::POST, "/v1/cluster/change/abort".into()).accept_json();
        self.send(call).await?.json()
    }
}
