//! Hinted handoff delivery: writes held for an unreachable owner (sloppy quorum) go back
//! to it once it answers again; or, when a membership change took the partition from it
//! (it left, was replaced, or a newcomer took the partition), to the partition's holders
//! under the node's current ring.
//!
//! One worker (`hint-delivery`) wakes every interval, and for each owner with hints
//! pending sends them in batches bounded in count ([`HINT_BATCH`]) and bytes
//! (`MAX_BATCH_BYTES`, so large values never fail a batch against the owner's body limit
//! and stall delivery for good) as `replicate` operations. A hint is deleted
//! only after the owner confirmed that operation, and only if it is unchanged since it was
//! read. Between batches the worker sleeps in proportion to the time the batch took
//! (Garage's tranquilizer), so delivery yields to foreground traffic; an owner that does
//! not answer is left alone until the next round.

use dynamo_server::internal::{InternalClient, SendError};
use std::sync::Arc;
use std::time::Duration;

use std::collections::BTreeMap;

use dynamo_core::version::ConflictRule;
use dynamo_core::wire::cluster::ClusterState;
use dynamo_core::wire::internal::{MAX_BATCH_BYTES, ReplicaOp, ReplicaResult};
use dynamo_core::{BucketName, NodeId, RingEpoch};
use dynamo_server::worker::{Next, Tranquilizer, Worker};
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterCache;
use crate::engine::{Engine, PendingHint};
use crate::error::StorageError;
use crate::peer::BatchError;

/// Hints per delivery request.
pub const HINT_BATCH: usize = 64;
/// Most batches sent to one owner per round, so one owner with a large backlog does not
/// starve the others.
pub const MAX_BATCHES_PER_ROUND: usize = 16;
/// Sleep after a batch, as a multiple of the time it took.
pub const TRANQUILITY: u32 = 2;

/// Why a delivery round to one owner stopped.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// The owner did not answer or refused the request.
    #[error("owner unreachable")]
    Unreachable(#[from] SendError),
    /// The owner answered something that is not a batch result.
    #[error("owner answered {0} results for {1} operations")]
    Mismatch(usize, usize),
    /// The local engine failed.
    #[error("local storage failed")]
    Storage(#[from] StorageError),
}

impl From<BatchError> for DeliveryError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Send(e) => DeliveryError::Unreachable(e),
            BatchError::Mismatch { answered, asked } => DeliveryError::Mismatch(answered, asked),
        }
    }
}

/// The `hint-delivery` worker: each round offers every owner with pending hints up to
/// [`MAX_BATCHES_PER_ROUND`] batches, then idles for the interval.
pub struct HintDelivery {
    /// The node's engine (where the hints are).
    pub engine: Arc<Engine>,
    /// The node's view of the cluster: where each hint goes now.
    pub cluster: Arc<ClusterCache>,
    /// The client for the owners.
    pub client: InternalClient,
    /// Pause between rounds.
    pub interval: Duration,
}

impl Worker for HintDelivery {
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "hint-delivery"
    }

    async fn work(&mut self, stop: &CancellationToken) -> Result<Next, Self::Error> {
        let state = self.cluster.current();
        // One owner's failure is its own: it waits for the next round, the rest go on.
        for (target, address) in self.engine.hint_targets() {
            if stop.is_cancelled() {
                break;
            }
            match deliver_to(
                &self.engine,
                &self.client,
                &target,
                &address,
                state.as_deref(),
                stop,
            )
            .await
            {
                Ok(0) => {}
                Ok(n) => tracing::info!(target_node = %target, delivered = n, "hints delivered"),
                Err(e) => {
                    self.engine.metrics().hint_delivery_failures.inc();
                    tracing::debug!(target_node = %target, error = %e, "hint delivery deferred");
                }
            }
        }
        Ok(Next::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.interval).await;
    }
}

/// Where the hints of one batch go: each destination with the indexes of the hints it
/// gets, and per hint how many destinations must confirm it.
struct Routes {
    sends: BTreeMap<(NodeId, String), Vec<usize>>,
    needed: Vec<usize>,
}

/// Routes hints held for `target` (at `address`): to the target while it still holds
/// the hint's partition (or nothing says otherwise), else to every node that holds the
/// partition now, so hints for a node that left, was replaced or gave the partition
/// away reach its new owners.
fn route(
    hints: &[PendingHint],
    target: &NodeId,
    address: &str,
    state: Option<&ClusterState>,
    addresses: &BTreeMap<NodeId, String>,
) -> Routes {
    let mut sends: BTreeMap<(NodeId, String), Vec<usize>> = BTreeMap::new();
    let mut needed = vec![0; hints.len()];
    for (i, h) in hints.iter().enumerate() {
        let p = h.key.partition;
        let holders: Vec<NodeId> = match state.and_then(|s| s.ring.as_ref().map(|r| (s, r))) {
            Some((s, ring)) if !s.holds(target, p) => ring.preference_list(p, s.max_n()).preference_list,
            _ => vec![target.clone()],
        };
        for holder in holders {
            let at = if holder == *target {
                address.to_owned()
            } else if let Some(a) = addresses.get(&holder) {
                a.clone()
            } else {
                // An owner without an address cannot confirm: the hint waits.
                needed[i] = usize::MAX;
                continue;
            };
            sends.entry((holder, at)).or_default().push(i);
            needed[i] = needed[i].saturating_add(1);
        }
    }
    Routes { sends, needed }
}

/// Delivers up to [`MAX_BATCHES_PER_ROUND`] batches of hints held for `target`; returns
/// how many were delivered and deleted. A hint goes to `target` while `state` (the
/// node's view of the cluster, if any) says it holds the hint's partition, else to the
/// partition's holders; it is deleted once every destination confirmed it.
///
/// # Errors
/// [`DeliveryError`] when no hint of a batch could be confirmed (the last destination
/// error) or the local engine fails; hints not confirmed stay.
pub async fn deliver_to(
    engine: &Arc<Engine>,
    client: &InternalClient,
    target: &NodeId,
    address: &str,
    state: Option<&ClusterState>,
    shutdown: &CancellationToken,
) -> Result<usize, DeliveryError> {
    let epoch = state.map_or(RingEpoch(0), ClusterState::ring_epoch);
    let addresses = state.map(crate::peer::addresses).unwrap_or_default();
    let mut delivered = 0;
    for _ in 0..MAX_BATCHES_PER_ROUND {
        let pace = Tranquilizer::start(TRANQUILITY);
        let e = engine.clone();
        let t = target.clone();
        let hints: Vec<PendingHint> =
            tokio::task::spawn_blocking(move || e.pending_hints(&t, HINT_BATCH, MAX_BATCH_BYTES))
                .await
                .map_err(StorageError::from)??;
        if hints.is_empty() {
            let e = engine.clone();
            let t = target.clone();
            tokio::task::spawn_blocking(move || e.forget_target_if_done(&t))
                .await
                .map_err(StorageError::from)??;
            break;
        }
        // Keys were validated when stored; a bucket that no longer parses is corrupt and
        // stays for an operator to look at.
        let (hints, buckets): (Vec<PendingHint>, Vec<BucketName>) = hints
            .into_iter()
            .filter_map(|h| {
                let b = BucketName::new(h.key.bucket.clone()).ok()?;
                Some((h, b))
            })
            .unzip();
        if hints.is_empty() {
            // Only corrupt hints are left at the head of this owner's range.
            break;
        }
        let routes = route(&hints, target, address, state, &addresses);
        let mut confirmed = vec![0usize; hints.len()];
        let mut last_error: Option<DeliveryError> = None;
        for ((node, at), idxs) in &routes.sends {
            let ops = idxs
                .iter()
                .map(|&i| ReplicaOp::Replicate {
                    bucket: buckets[i].clone(),
                    key: hints[i].key.key.clone(),
                    object: hints[i].object.clone(),
                    // A pure merge: never drops a version the owner lacks. LWW buckets are
                    // narrowed again by the owner's next write or a read.
                    conflict: ConflictRule::Siblings {
                        max_siblings: u32::MAX,
                    },
                    hint: None,
                    // Idempotency records stay with the fallback that coordinated (its
                    // own repeats are answered from them); the owner gets none
                    // (docs/api.md says what that leaves).
                    idempotency: None,
                })
                .collect();
            match crate::peer::replica_batch(client, at, epoch, ops).await {
                Ok(results) => {
                    for (&i, r) in idxs.iter().zip(results) {
                        if matches!(r, ReplicaResult::Replicated) {
                            confirmed[i] += 1;
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(node = %node, error = %e, "hint destination unreachable");
                    last_error = Some(e.into());
                }
            }
        }
        let done: Vec<PendingHint> = hints
            .into_iter()
            .enumerate()
            .filter(|(i, _)| confirmed[*i] == routes.needed[*i])
            .map(|(_, h)| h)
            .collect();
        if done.is_empty() {
            return match last_error {
                Some(e) if delivered == 0 => Err(e),
                _ => Ok(delivered),
            };
        }
        let e = engine.clone();
        let t = target.clone();
        delivered += tokio::task::spawn_blocking(move || -> Result<usize, StorageError> {
            let mut n = 0;
            for h in &done {
                n += usize::from(e.remove_delivered_hint(&t, h)?);
            }
            Ok(n)
        })
        .await
        .map_err(StorageError::from)??;
        if !pace.rest(shutdown).await {
            break;
        }
    }
    Ok(delivered)
}
