//! Reaching other storage nodes: where each one answers, and one replica batch sent to
//! one of them with its answer checked. Hint delivery, tombstone GC and anti-entropy all
//! talk to peers through this.

use std::collections::BTreeMap;

use dynamo_core::wire::cluster::ClusterState;
use dynamo_core::wire::internal::{ReplicaBatch, ReplicaBatchResult, ReplicaOp, ReplicaResult};
use dynamo_core::wire::routes;
use dynamo_core::{NodeId, RingEpoch};
use dynamo_server::internal::{InternalClient, SendError};

/// Why a replica batch to a peer got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The peer did not answer, or refused the batch.
    #[error("peer unreachable or refused")]
    Send(#[from] SendError),
    /// The peer answered, but not one result per operation.
    #[error("the peer answered {answered} results for {asked} operations")]
    Mismatch {
        /// Results in the answer.
        answered: usize,
        /// Operations sent.
        asked: usize,
    },
}

impl From<reqwest::Error> for BatchError {
    fn from(e: reqwest::Error) -> Self {
        BatchError::Send(e.into())
    }
}

/// Sends `ops`, planned with ring `epoch`, as one replica batch to the node at
/// `address`; returns its results, one per operation in the same order.
///
/// # Errors
/// [`BatchError`].
pub async fn replica_batch(
    client: &InternalClient,
    address: &str,
    epoch: RingEpoch,
    ops: Vec<ReplicaOp>,
) -> Result<Vec<ReplicaResult>, BatchError> {
    let asked = ops.len();
    let answer: ReplicaBatchResult = client
        .post(routes::url(address, routes::storage::REPLICAS))
        .json(&ReplicaBatch {
            ops,
            ring_epoch: Some(epoch),
        })
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    if answer.results.len() != asked {
        return Err(BatchError::Mismatch {
            answered: answer.results.len(),
            asked,
        });
    }
    Ok(answer.results)
}

/// Every node's internal address: the live view first (heartbeats keep it current),
/// then the address the ring registered.
pub fn addresses(state: &ClusterState) -> BTreeMap<NodeId, String> {
    let mut out: BTreeMap<NodeId, String> = BTreeMap::new();
    if let Some(ring) = &state.ring {
        for (id, m) in ring.members() {
            if let Some(a) = &m.address {
                out.insert(id.clone(), a.clone());
            }
        }
    }
    for n in &state.nodes {
        out.insert(n.node_id.clone(), n.address.clone());
    }
    out
}
