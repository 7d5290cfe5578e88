//! Hinted handoff delivery: writes held for an unreachable owner (sloppy quorum) go back
//! to it once it answers again.
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

use dynamo_core::BucketName;
use dynamo_core::NodeId;
use dynamo_core::version::ConflictRule;
use dynamo_core::wire::internal::{MAX_BATCH_BYTES, ReplicaOp, ReplicaResult};
use dynamo_server::worker::{Next, Tranquilizer, Worker};
use tokio_util::sync::CancellationToken;

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
        // One owner's failure is its own: it waits for the next round, the rest go on.
        for (target, address) in self.engine.hint_targets() {
            if stop.is_cancelled() {
                break;
            }
            match deliver_to(&self.engine, &self.client, &target, &address, stop).await {
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

/// Delivers up to [`MAX_BATCHES_PER_ROUND`] batches of hints to `target`; returns how
/// many were delivered and deleted.
///
/// # Errors
/// [`DeliveryError`] when the owner is unreachable or the local engine fails; hints not
/// confirmed stay.
pub async fn deliver_to(
    engine: &Arc<Engine>,
    client: &InternalClient,
    target: &NodeId,
    address: &str,
    shutdown: &CancellationToken,
) -> Result<usize, DeliveryError> {
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
        // Each op is paired with its hint before anything is filtered, so a result is
        // always matched with the hint it answers.
        let (hints, ops): (Vec<PendingHint>, Vec<ReplicaOp>) = hints
            .into_iter()
            .filter_map(|h| {
                // Keys were validated when stored; a bucket that no longer parses is corrupt
                // and stays for an operator to look at.
                let bucket = BucketName::new(h.key.bucket.clone()).ok()?;
                let op = ReplicaOp::Replicate {
                    bucket,
                    key: h.key.key.clone(),
                    object: h.object.clone(),
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
                };
                Some((h, op))
            })
            .unzip();
        if ops.is_empty() {
            // Only corrupt hints are left at the head of this owner's range.
            break;
        }
        let results = crate::peer::replica_batch(client, address, ops).await?;
        let confirmed: Vec<PendingHint> = hints
            .into_iter()
            .zip(results)
            .filter(|(_, r)| matches!(r, ReplicaResult::Replicated))
            .map(|(h, _)| h)
            .collect();
        let e = engine.clone();
        let t = target.clone();
        delivered += tokio::task::spawn_blocking(move || -> Result<usize, StorageError> {
            let mut n = 0;
            for h in &confirmed {
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
