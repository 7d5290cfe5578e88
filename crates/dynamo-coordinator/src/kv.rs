//! The data path: quorum writes and reads over the ring, sloppy quorum with hinted
//! fallbacks, and read repair.
//!
//! **Write** (Dynamo §4.5): the first reachable owner of the key's preference list (a
//! fallback only when no owner is up) coordinates the write (mints the dot, stores it) and
//! answers the resulting object, which is then sent to the other N − 1 slots in parallel;
//! the client is answered after W stores. A slot whose node is down, or fails during the
//! request, is served by the next unused fallback, which stores the write as a hint for
//! the owner (§4.6).
//!
//! **At most once** (invariant 6): a coordinate carries a deadline (when this coordinator
//! stops waiting for it) and the node does not apply it later. It is retried on the next
//! node only when it provably did not apply: skipped (node down), never connected,
//! refused, or answered with an error. A coordinate that timed out may have minted a dot,
//! so the client gets an indeterminate `503` instead of a second version of its write.
//! Replicates are merges of a minted object, so they are retried freely.
//!
//! **Read**: ask the N slots in parallel, answer on the first R replies merged (DVV sync);
//! a fallback's "not found" is no vote (it holds hints, not the key), so it never makes
//! an existing key read as missing. Then, once every slot answered or timed out, send the
//! merge of all replies to each replica that was stale or missing it (read repair,
//! through a bounded queue).
//!
//! Each request runs in a tracked task of its own: once a dot is minted, replication
//! continues even if the client hangs up (STYLE §6), and the client is answered as soon
//! as the quorum is reached.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use dynamo_core::quorum::{QuorumCount, QuorumState, Slot, SlotPlan};
use dynamo_core::ring::Ring;
use dynamo_core::version::{Resolution, VersionedObject};
use dynamo_core::wire::BucketProps;
use dynamo_core::wire::internal::{HintTarget, IdempotencyClaim, ReplicaOp, ReplicaResult};
use dynamo_core::{BucketName, DotSet, ErrorCode, NodeId, key_hash};
use dynamo_server::ApiError;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use crate::metrics::CoordinatorMetrics;
use crate::peers::{PeerError, Peers};
use crate::state::ClusterCache;

/// A client write, validated.
#[derive(Debug, Clone)]
pub struct WriteRequest {
    /// The bucket.
    pub bucket: BucketName,
    /// The key.
    pub key: String,
    /// The client's context (empty for a blind write).
    pub context: DotSet,
    /// The value (empty for a delete).
    pub value: Vec<u8>,
    /// Its media type.
    pub content_type: String,
    /// True for a delete.
    pub tombstone: bool,
    /// The client's `Idempotency-Key`, hashed (see `api::idempotency_claim`).
    pub idempotency: Option<IdempotencyClaim>,
}

/// An accepted write.
#[derive(Debug, Clone)]
pub struct WriteOutcome {
    /// The object as the coordinating node stored it.
    pub object: VersionedObject,
    /// The context for the writer: what it had seen plus its write.
    pub context: DotSet,
    /// True when the write repeated an `Idempotency-Key` the coordinating node
    /// remembered: nothing new was applied, and `context` is the first write's.
    pub replayed: bool,
}

/// A read repair to send.
#[derive(Debug)]
pub struct Repair {
    target: NodeId,
    address: String,
    op: ReplicaOp,
}

/// The request coordinator.
pub struct Coordinator {
    pub(crate) cache: ClusterCache,
    pub(crate) peers: Peers,
    pub(crate) metrics: CoordinatorMetrics,
    pub(crate) repairs: mpsc::Sender<Repair>,
    pub(crate) tracker: TaskTracker,
}

fn unavailable(op: &str, needed: usize, got: usize) -> ApiError {
    ApiError::new(
        ErrorCode::QuorumUnavailable,
        format!("{op} needed {needed} replicas and {got} answered in time"),
    )
}

impl Coordinator {
    fn address(ring: &Ring, id: &NodeId) -> Option<String> {
        ring.members().get(id).and_then(|m| m.address.clone())
    }

    fn is_up(&self, ring: &Ring, id: &NodeId) -> bool {
        Self::address(ring, id).is_some_and(|a| self.peers.handle(id, &a).is_up())
    }

    async fn call(&self, ring: &Ring, id: &NodeId, op: ReplicaOp) -> Result<ReplicaResult, PeerError> {
        let address = Self::address(ring, id).ok_or_else(|| PeerError::NotSent("no address".into()))?;
        self.peers.handle(id, &address).call(op).await
    }

    fn hint(ring: &Ring, slot: &Slot) -> Option<HintTarget> {
        if !slot.is_hinted() {
            return None;
        }
        Self::address(ring, &slot.owner).map(|address| HintTarget {
            node: slot.owner.clone(),
            address,
        })
    }

    /// Writes through a quorum of `w`; answers when `w` replicas stored it, within
    /// `timeout`.
    ///
    /// # Errors
    /// `503 quorum_unavailable` when fewer than `w` replicas could store it in time;
    /// `409 too_many_siblings` (or another 4xx a node answered) for a refused write;
    /// `503 ring_unavailable` before any ring is known.
    pub async fn write(
        self: &Arc<Self>,
        req: WriteRequest,
        props: &BucketProps,
        w: usize,
        timeout: Duration,
    ) -> Result<WriteOutcome, ApiError> {
        let ring = self.cache.ring()?;
        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        let resolution = props.resolution();
        let n = usize::from(props.n);
        let client_deadline_ms = wall_clock_ms() + timeout.as_millis() as u64;
        let task = this.write_task(ring, req, resolution, n, w, client_deadline_ms, tx);
        self.tracker.spawn(in_request_scope(task));
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ApiError::new(
                ErrorCode::Internal,
                "write task ended without an answer",
            )),
            Err(_) => {
                self.metrics.quorum_failures.with_label_values(&["put"]).inc();
                Err(ApiError::new(
                    ErrorCode::QuorumUnavailable,
                    format!("write did not reach W={w} within the timeout"),
                ))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_task(
        self: Arc<Self>,
        ring: Arc<Ring>,
        req: WriteRequest,
        resolution: Resolution,
        n: usize,
        w: usize,
        client_deadline_ms: u64,
        answer: oneshot::Sender<Result<WriteOutcome, ApiError>>,
    ) {
        let pl = ring.preference_list_for(key_hash(req.bucket.as_str(), &req.key), n);
        let mut plan = SlotPlan::new(&pl, |id| self.is_up(&ring, id));
        let fallbacks = plan.slots.iter().filter(|s| s.is_hinted()).count();
        self.metrics
            .fallbacks
            .with_label_values(&["put"])
            .inc_by(fallbacks as u64);
        let mut remaining: VecDeque<Slot> = plan.slots.clone().into();
        // An owner coordinates when one is up: a fallback would mint on a hint.
        if let Some(i) = remaining.iter().position(|s| !s.is_hinted())
            && let Some(owner) = remaining.remove(i)
        {
            remaining.push_front(owner);
        }

        // 1. The coordinating replica: the first slot that stores the write.
        let mut coordinated = None;
        let mut record = None;
        while let Some(slot) = remaining.pop_front() {
            // The node refuses the coordinate once this coordinator would have stopped
            // waiting for it: this attempt's batch timeout, or the client's deadline.
            let deadline_ms =
                client_deadline_ms.min(wall_clock_ms() + self.peers.timeout().as_millis() as u64);
            let op = ReplicaOp::CoordinatePut {
                bucket: req.bucket.clone(),
                key: req.key.clone(),
                context: req.context.clone(),
                value: req.value.clone(),
                content_type: req.content_type.clone(),
                tombstone: req.tombstone,
                resolution,
                hint: Self::hint(&ring, &slot),
                deadline_ms: Some(deadline_ms),
                idempotency: req.idempotency,
            };
            match self.call(&ring, &slot.target, op).await {
                Ok(ReplicaResult::Put {
                    object,
                    context,
                    idempotency,
                    replayed,
                    ..
                }) => {
                    if replayed {
                        self.metrics.idempotent_replays.inc();
                    }
                    // A replay replicates too: the first attempt may have reached only
                    // its coordinating node (an indeterminate 503), and the repeat is
                    // what makes it durable.
                    record = idempotency;
                    coordinated = Some(WriteOutcome {
                        object,
                        context,
                        replayed,
                    });
                    break;
                }
                Ok(ReplicaResult::Error { code, message }) if code.http_status() < 500 => {
                    let _ = answer.send(Err(ApiError::new(code, message)));
                    return;
                }
                Err(e) if e.may_have_applied() => {
                    // The node may have minted the write: retrying it elsewhere would make
                    // a second version of it (invariant 6). The client learns the outcome
                    // is unknown; a read tells it which.
                    tracing::debug!(peer = %slot.target, error = %e, "coordinating replica failed after the write may have applied");
                    self.metrics.quorum_failures.with_label_values(&["put"]).inc();
                    self.metrics.indeterminate_writes.inc();
                    let _ = answer.send(Err(ApiError::new(
                        ErrorCode::QuorumUnavailable,
                        format!(
                            "the coordinating replica did not answer ({e}); the write may or may not have been applied: read the key to find out"
                        ),
                    )));
                    return;
                }
                other => {
                    // Not applied: skipped, never sent, refused, or an error answer (a
                    // deadline passed, storage failed before the commit).
                    tracing::debug!(peer = %slot.target, result = ?other, "coordinating replica did not apply the write");
                    if let Some(f) = plan.take_fallback(|id| self.is_up(&ring, id)) {
                        self.metrics.fallbacks.with_label_values(&["put"]).inc();
                        remaining.push_front(Slot {
                            owner: slot.owner,
                            target: f,
                        });
                    }
                }
            }
        }
        let Some(outcome) = coordinated else {
            self.metrics.quorum_failures.with_label_values(&["put"]).inc();
            let _ = answer.send(Err(unavailable("write", w, 0)));
            return;
        };

        // 2. Replicate the stored object to the other slots.
        let mut quorum = QuorumCount::new(w, 1 + remaining.len());
        let mut answer = Some(answer);
        if quorum.success() == QuorumState::Reached
            && let Some(a) = answer.take()
        {
            let _ = a.send(Ok(outcome.clone()));
        }
        let replicate = |slot: Slot| {
            let op = ReplicaOp::Replicate {
                bucket: req.bucket.clone(),
                key: req.key.clone(),
                object: outcome.object.clone(),
                resolution,
                hint: Self::hint(&ring, &slot),
                idempotency: record.clone(),
            };
            let this = self.clone();
            let ring = ring.clone();
            async move {
                let r = this.call(&ring, &slot.target, op).await;
                (slot, r)
            }
        };
        let mut inflight: FuturesUnordered<_> = remaining.into_iter().map(replicate).collect();
        while let Some((slot, result)) = inflight.next().await {
            let state = if matches!(result, Ok(ReplicaResult::Replicated)) {
                quorum.success()
            } else {
                tracing::debug!(peer = %slot.target, "replica failed; trying a fallback");
                if let Some(f) = plan.take_fallback(|id| self.is_up(&ring, id)) {
                    self.metrics.fallbacks.with_label_values(&["put"]).inc();
                    quorum.expect_one_more();
                    inflight.push(replicate(Slot {
                        owner: slot.owner,
                        target: f,
                    }));
                }
                quorum.failure()
            };
            match state {
                QuorumState::Reached => {
                    if let Some(a) = answer.take() {
                        let _ = a.send(Ok(outcome.clone()));
                    }
                }
                QuorumState::Failed => {
                    if let Some(a) = answer.take() {
                        self.metrics.quorum_failures.with_label_values(&["put"]).inc();
                        let _ = a.send(Err(unavailable("write", w, quorum.successes())));
                    }
                }
                QuorumState::Pending => {}
            }
        }
        if let Some(a) = answer.take() {
            self.metrics.quorum_failures.with_label_values(&["put"]).inc();
            let _ = a.send(Err(unavailable("write", w, quorum.successes())));
        }
    }

    /// Reads through a quorum of `r`: the merge of the first `r` replies, `None` when no
    /// replica knows the key.
    ///
    /// # Errors
    /// `503 quorum_unavailable` when fewer than `r` replicas answered in time;
    /// `503 ring_unavailable` before any ring is known.
    pub async fn read(
        self: &Arc<Self>,
        bucket: BucketName,
        key: String,
        props: &BucketProps,
        r: usize,
        timeout: Duration,
    ) -> Result<Option<VersionedObject>, ApiError> {
        let ring = self.cache.ring()?;
        let (tx, rx) = oneshot::channel();
        let this = self.clone();
        let resolution = props.resolution();
        let n = usize::from(props.n);
        let task = this.read_task(ring, bucket, key, resolution, n, r, tx);
        self.tracker.spawn(in_request_scope(task));
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(ApiError::new(
                ErrorCode::Internal,
                "read task ended without an answer",
            )),
            Err(_) => {
                self.metrics.quorum_failures.with_label_values(&["get"]).inc();
                Err(ApiError::new(
                    ErrorCode::QuorumUnavailable,
                    format!("read did not reach R={r} within the timeout"),
                ))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_task(
        self: Arc<Self>,
        ring: Arc<Ring>,
        bucket: BucketName,
        key: String,
        resolution: Resolution,
        n: usize,
        r: usize,
        answer: oneshot::Sender<Result<Option<VersionedObject>, ApiError>>,
    ) {
        let pl = ring.preference_list_for(key_hash(bucket.as_str(), &key), n);
        let mut plan = SlotPlan::new(&pl, |id| self.is_up(&ring, id));
        let fallbacks = plan.slots.iter().filter(|s| s.is_hinted()).count();
        self.metrics
            .fallbacks
            .with_label_values(&["get"])
            .inc_by(fallbacks as u64);
        let get = |slot: Slot| {
            let this = self.clone();
            let ring = ring.clone();
            let op = ReplicaOp::Get {
                bucket: bucket.clone(),
                key: key.clone(),
            };
            async move {
                let r = this.call(&ring, &slot.target, op).await;
                (slot, r)
            }
        };
        let mut quorum = QuorumCount::new(r, plan.slots.len());
        let mut inflight: FuturesUnordered<_> = plan.slots.clone().into_iter().map(get).collect();
        let mut replies: Vec<(Slot, Option<VersionedObject>)> = Vec::new();
        let mut answer = Some(answer);
        if quorum.state() == QuorumState::Failed
            && let Some(a) = answer.take()
        {
            self.metrics.quorum_failures.with_label_values(&["get"]).inc();
            let _ = a.send(Err(unavailable("read", r, 0)));
        }
        while let Some((slot, result)) = inflight.next().await {
            let state = match result {
                // A fallback holds hints, not the key: its "not found" says nothing about
                // whether the key exists, so it is no vote (else an existing key could
                // read as missing). No other fallback is asked in its place.
                Ok(ReplicaResult::Got { object: None }) if slot.is_hinted() => quorum.failure(),
                Ok(ReplicaResult::Got { object }) => {
                    replies.push((slot, object));
                    quorum.success()
                }
                other => {
                    tracing::debug!(peer = %slot.target, result = ?other.err(), "replica read failed");
                    if let Some(f) = plan.take_fallback(|id| self.is_up(&ring, id)) {
                        self.metrics.fallbacks.with_label_values(&["get"]).inc();
                        quorum.expect_one_more();
                        inflight.push(get(Slot {
                            owner: slot.owner,
                            target: f,
                        }));
                    }
                    quorum.failure()
                }
            };
            match state {
                QuorumState::Reached => {
                    if let Some(a) = answer.take() {
                        let _ = a.send(Ok(merge(replies.iter().map(|(_, o)| o), resolution)));
                    }
                }
                QuorumState::Failed => {
                    if let Some(a) = answer.take() {
                        tracing::debug!(?quorum, ?plan, "read failed its quorum");
                        self.metrics.quorum_failures.with_label_values(&["get"]).inc();
                        let _ = a.send(Err(unavailable("read", r, quorum.successes())));
                    }
                }
                QuorumState::Pending => {}
            }
        }
        if let Some(a) = answer.take() {
            tracing::debug!(?quorum, ?plan, "read ended short of its quorum");
            self.metrics.quorum_failures.with_label_values(&["get"]).inc();
            let _ = a.send(Err(unavailable("read", r, quorum.successes())));
        }
        self.queue_repairs(&ring, &bucket, &key, resolution, replies);
    }

    /// Sends the merge of every reply to each owner replica whose copy differs from it.
    /// Fallbacks are left alone: their hints reach the owners on their own.
    fn queue_repairs(
        &self,
        ring: &Ring,
        bucket: &BucketName,
        key: &str,
        resolution: Resolution,
        replies: Vec<(Slot, Option<VersionedObject>)>,
    ) {
        let Some(merged) = merge(replies.iter().map(|(_, o)| o), resolution) else {
            return;
        };
        let digest = merged.digest();
        for (slot, obj) in &replies {
            if slot.is_hinted() || obj.as_ref().is_some_and(|o| o.digest() == digest) {
                continue;
            }
            let Some(address) = Self::address(ring, &slot.target) else {
                continue;
            };
            let repair = Repair {
                target: slot.target.clone(),
                address,
                op: ReplicaOp::Replicate {
                    bucket: bucket.clone(),
                    key: key.to_owned(),
                    object: merged.clone(),
                    resolution,
                    hint: None,
                    idempotency: None,
                },
            };
            if self.repairs.try_send(repair).is_err() {
                self.metrics.read_repairs_dropped.inc();
            }
        }
    }
}

/// Carries the request's id and trace context into a spawned task (task-locals do not
/// cross `tokio::spawn`), so its calls to storage nodes name the client's request.
/// The context is read here, in the caller's task, not when the returned future first runs.
fn in_request_scope<F: std::future::Future<Output = ()>>(task: F) -> impl std::future::Future<Output = ()> {
    let ctx = dynamo_server::trace::current();
    async move {
        match ctx {
            Some(ctx) => dynamo_server::trace::scope(ctx, task).await,
            None => task.await,
        }
    }
}

/// Returns the wall clock in ms since the Unix epoch (coordinate deadlines are compared
/// with the storage node's clock).
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Merges replica copies with the bucket's resolution; `None` when none knows the key.
pub fn merge<'a>(
    copies: impl Iterator<Item = &'a Option<VersionedObject>>,
    resolution: Resolution,
) -> Option<VersionedObject> {
    let mut out: Option<VersionedObject> = None;
    for c in copies.flatten() {
        match &mut out {
            Some(o) => o.sync(c, resolution),
            None => {
                let mut first = VersionedObject::new();
                first.sync(c, resolution);
                out = Some(first);
            }
        }
    }
    out
}

/// The `read-repair` worker: sends queued repairs until the queue closes.
pub async fn run_repairs(mut rx: mpsc::Receiver<Repair>, peers: Peers, metrics: CoordinatorMetrics) {
    while let Some(r) = rx.recv().await {
        match peers.handle(&r.target, &r.address).call(r.op).await {
            Ok(ReplicaResult::Replicated) => metrics.read_repairs.inc(),
            other => tracing::debug!(peer = %r.target, result = ?other.err(), "read repair failed"),
        }
    }
}
