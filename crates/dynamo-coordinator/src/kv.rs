//! The data path's driver: carries the actions of the core's quorum rounds
//! ([`dynamo_core::round`]) to storage nodes and their replies back.
//!
//! The rules (who coordinates, when a coordinate may be retried, when a fallback serves
//! a slot, when the client is answered, what is repaired) are the rounds'; this module
//! owns what they leave out: building the replica operations, the calls, the clock, the
//! metrics, and the answer channel.
//!
//! Each request runs in a tracked task of its own: once a dot is minted, replication
//! continues even if the client hangs up (STYLE §6), and the client is answered as soon
//! as the round answers (quorum reached, impossible, or its deadline passed).

use std::sync::Arc;
use std::time::Duration;

use dynamo_core::crdt::{CrdtOp, CrdtType};
use dynamo_core::quorum::Slot;
use dynamo_core::ring::Ring;
use dynamo_core::round::{
    CoordinateReply, ReadAction, ReadAnswer, ReadFanout, ReadReply, ReadRound, ReplicateReply, Shortfall,
    WriteAction, WriteAnswer, WriteRound,
};
use dynamo_core::version::{ConflictRule, VersionedObject};
use dynamo_core::wire::BucketProps;
use dynamo_core::wire::internal::{HintFor, IdempotencyClaim, IdempotencyRecord, ReplicaOp, ReplicaResult};
use dynamo_core::{BucketName, DotSet, ErrorCode, NodeId, RingEpoch, key_hash};
use dynamo_server::ApiError;
use dynamo_server::worker::{Next, Worker};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
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
    /// Only answer a repeat of the write recorded under `idempotency` (a
    /// [`ReplicaOp::Replay`]), applying nothing: a conditional write whose precondition
    /// failed may repeat one that succeeded. Without a claim this is never set.
    pub replay_only: bool,
    /// A CRDT operation instead of a value (`value`, `content_type`, `tombstone` and
    /// `context` are then unused): coordinated as a [`ReplicaOp::CoordinateCrdt`].
    pub crdt: Option<CrdtWrite>,
}

/// A CRDT operation as a write carries it.
#[derive(Debug, Clone)]
pub struct CrdtWrite {
    /// The bucket's type.
    pub crdt_type: CrdtType,
    /// The operation.
    pub op: CrdtOp,
    /// The CRDT context the client observed.
    pub observed: Option<DotSet>,
    /// A copy for the coordinating replica to merge first (read from the replicas after
    /// it answered `context_not_seen`).
    pub merge: Option<VersionedObject>,
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
    /// The ring epoch the read was planned with.
    epoch: RingEpoch,
}

/// The request coordinator.
pub struct Coordinator {
    pub(crate) cache: ClusterCache,
    pub(crate) peers: Peers,
    pub(crate) metrics: CoordinatorMetrics,
    pub(crate) repairs: mpsc::Sender<Repair>,
    pub(crate) tracker: TaskTracker,
    /// How many replicas a read asks at first (`--read-fanout`).
    pub(crate) read_fanout: ReadFanout,
}

/// What a write round's call was.
enum HopKind {
    Coordinate,
    Replicate,
}

/// A write round's call, tagged (one future type for both kinds).
async fn hop(
    kind: HopKind,
    slot: Slot,
    call: impl Future<Output = Result<ReplicaResult, PeerError>>,
) -> (HopKind, Slot, Result<ReplicaResult, PeerError>) {
    (kind, slot, call.await)
}

/// What a coordinate call tells the write round.
fn coordinate_reply(result: &Result<ReplicaResult, PeerError>) -> CoordinateReply {
    match result {
        Ok(ReplicaResult::Put { .. }) => CoordinateReply::Stored,
        Ok(ReplicaResult::Error { code, message }) if code.http_status() < 500 => CoordinateReply::Refused {
            code: *code,
            message: message.clone(),
        },
        Err(e) if e.may_have_applied() => CoordinateReply::Unknown,
        // Skipped, never sent, refused whole, or an error answer (a deadline passed,
        // storage failed before the commit): not applied.
        _ => CoordinateReply::NotApplied,
    }
}

impl Coordinator {
    fn address(ring: &Ring, id: &NodeId) -> Option<String> {
        ring.members().get(id).and_then(|m| m.address.clone())
    }

    /// True while the failure detector thinks `id` answers.
    pub(crate) fn is_up(&self, ring: &Ring, id: &NodeId) -> bool {
        Self::address(ring, id).is_some_and(|a| self.peers.handle(id, &a).is_up())
    }

    fn call(
        &self,
        ring: &Ring,
        id: &NodeId,
        op: ReplicaOp,
    ) -> impl Future<Output = Result<ReplicaResult, PeerError>> + use<> {
        let handle = Self::address(ring, id).map(|address| self.peers.handle(id, &address));
        let epoch = ring.epoch();
        async move {
            match handle {
                Some(h) => h.call(op, epoch).await,
                None => Err(PeerError::NotSent("no address".into())),
            }
        }
    }

    fn hint(ring: &Ring, slot: &Slot) -> Option<HintFor> {
        if !slot.is_hinted() {
            return None;
        }
        Self::address(ring, &slot.owner).map(|address| HintFor {
            node: slot.owner.clone(),
            address,
        })
    }

    /// Counts a `stale_ring` answer: the round moves on to the next replica (a fallback
    /// with a hint for a write) as for any node that did not take the operation, and the
    /// ring service's long-poll brings this coordinator the new ring.
    fn note_stale(&self, result: &Result<ReplicaResult, PeerError>) {
        if let Ok(ReplicaResult::Error {
            code: ErrorCode::StaleRing,
            ..
        }) = result
        {
            self.metrics.stale_ring_answers.inc();
        }
    }

    fn count_fallback(&self, slot: &Slot, op: &str) {
        if slot.is_hinted() {
            self.metrics.fallbacks.with_label_values(&[op]).inc();
        }
    }

    /// Writes through a quorum of `w`; answers when `w` replicas stored it, within
    /// `timeout`.
    ///
    /// # Errors
    /// `503 quorum_unavailable` when fewer than `w` replicas could store it in time, or
    /// when the outcome is unknown; `409 too_many_siblings` (or another 4xx a node
    /// answered) for a refused write; `503 ring_unavailable` before any ring is known.
    pub async fn write(
        self: &Arc<Self>,
        req: WriteRequest,
        props: &BucketProps,
        w: usize,
        timeout: Duration,
    ) -> Result<WriteOutcome, ApiError> {
        let ring = self.cache.ring()?;
        let deadline_ms = wall_clock_ms() + timeout.as_millis() as u64;
        let (rule, n) = (props.conflict_rule(), usize::from(props.n));
        self.answered("write", |tx| {
            self.clone().write_task(ring, req, rule, n, w, deadline_ms, tx)
        })
        .await
    }

    /// Runs a round's task in the request tracker, so that it finishes (its minted dots
    /// stored, its replicas sent) when the client hangs up, and waits for its answer.
    async fn answered<T, F>(
        &self,
        what: &str,
        task: impl FnOnce(oneshot::Sender<Result<T, ApiError>>) -> F,
    ) -> Result<T, ApiError>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        self.tracker.spawn(in_request_scope(task(tx)));
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::Internal,
                format!("{what} task ended without an answer"),
            ))
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn write_task(
        self: Arc<Self>,
        ring: Arc<Ring>,
        req: WriteRequest,
        conflict: ConflictRule,
        n: usize,
        w: usize,
        deadline_ms: u64,
        answer: oneshot::Sender<Result<WriteOutcome, ApiError>>,
    ) {
        let pl = ring.preference_list_for(key_hash(req.bucket.as_str(), &req.key), n);
        let hop_ms = self.peers.timeout().as_millis() as u64;
        let is_up = |id: &NodeId| self.is_up(&ring, id);
        let mut round = WriteRound::new(&pl, w, wall_clock_ms(), deadline_ms, hop_ms, is_up);
        let mut answer = Some(answer);
        // What the coordinating replica stored: what the replicates carry and the client
        // is answered.
        let mut coordinated: Option<(WriteOutcome, Option<IdempotencyRecord>)> = None;
        let mut last_error: Option<PeerError> = None;
        let mut inflight = FuturesUnordered::new();
        loop {
            while let Some(action) = round.poll_action() {
                match action {
                    WriteAction::Coordinate { slot, deadline_ms } => {
                        self.count_fallback(&slot, "put");
                        let op = match (req.idempotency, &req.crdt) {
                            (Some(claim), _) if req.replay_only => ReplicaOp::Replay {
                                bucket: req.bucket.clone(),
                                key: req.key.clone(),
                                hint: Self::hint(&ring, &slot),
                                idempotency: claim,
                            },
                            (_, Some(c)) => ReplicaOp::CoordinateCrdt {
                                bucket: req.bucket.clone(),
                                key: req.key.clone(),
                                crdt_type: c.crdt_type,
                                operation: c.op.clone(),
                                observed: c.observed.clone(),
                                merge: c.merge.clone(),
                                hint: Self::hint(&ring, &slot),
                                deadline_ms: Some(deadline_ms),
                                idempotency: req.idempotency,
                            },
                            _ => ReplicaOp::CoordinatePut {
                                bucket: req.bucket.clone(),
                                key: req.key.clone(),
                                context: req.context.clone(),
                                value: req.value.clone(),
                                content_type: req.content_type.clone(),
                                tombstone: req.tombstone,
                                conflict,
                                hint: Self::hint(&ring, &slot),
                                deadline_ms: Some(deadline_ms),
                                idempotency: req.idempotency,
                            },
                        };
                        let call = self.call(&ring, &slot.target, op);
                        inflight.push(hop(HopKind::Coordinate, slot, call));
                    }
                    WriteAction::Replicate(slot) => {
                        self.count_fallback(&slot, "put");
                        let Some((outcome, record)) = &coordinated else {
                            debug_assert!(false, "a replicate before the coordinate stored");
                            continue;
                        };
                        let op = ReplicaOp::Replicate {
                            bucket: req.bucket.clone(),
                            key: req.key.clone(),
                            object: outcome.object.clone(),
                            conflict,
                            hint: Self::hint(&ring, &slot),
                            idempotency: record.clone(),
                        };
                        let call = self.call(&ring, &slot.target, op);
                        inflight.push(hop(HopKind::Replicate, slot, call));
                    }
                    WriteAction::Answer(a) => {
                        let reply =
                            self.write_answer(a, coordinated.as_ref().map(|c| &c.0), last_error.as_ref());
                        if let Some(tx) = answer.take() {
                            let _ = tx.send(reply);
                        }
                    }
                }
            }
            if round.is_finished() {
                break;
            }
            let deadline = round.next_timeout_ms();
            tokio::select! {
                Some((kind, slot, result)) = inflight.next() => {
                self.note_stale(&result);
                match kind {
                    HopKind::Coordinate => {
                        let reply = coordinate_reply(&result);
                        tracing::debug!(peer = %slot.target, ?reply, "coordinate answered");
                        match result {
                            Ok(ReplicaResult::Put { object, context, idempotency, replayed, .. }) => {
                                if replayed {
                                    self.metrics.idempotent_replays.inc();
                                }
                                // A replay replicates too: the first attempt may have reached
                                // only its coordinating node (an indeterminate 503), and the
                                // repeat is what makes it durable.
                                coordinated = Some((WriteOutcome { object, context, replayed }, idempotency));
                            }
                            Err(e) => last_error = Some(e),
                            Ok(_) => {}
                        }
                        round.on_coordinate(reply, wall_clock_ms(), is_up);
                    }
                    HopKind::Replicate => {
                        let reply = if matches!(result, Ok(ReplicaResult::Replicated)) {
                            ReplicateReply::Stored
                        } else {
                            tracing::debug!(peer = %slot.target, result = ?result.err(), "replica failed");
                            ReplicateReply::Failed
                        };
                        round.on_replicate(slot, reply, is_up);
                    }
                }},
                now = wall_deadline(deadline), if deadline.is_some() => round.on_tick(now),
                else => break stalled(&round),
            }
        }
    }

    fn write_answer(
        &self,
        answer: WriteAnswer,
        coordinated: Option<&WriteOutcome>,
        last_error: Option<&PeerError>,
    ) -> Result<WriteOutcome, ApiError> {
        let failed = || self.metrics.quorum_failures.with_label_values(&["put"]).inc();
        match answer {
            WriteAnswer::Stored { .. } => coordinated.cloned().ok_or_else(|| {
                ApiError::new(ErrorCode::Internal, "write stored without a coordinated object")
            }),
            WriteAnswer::Refused { code, message } => Err(ApiError::new(code, message)),
            WriteAnswer::Indeterminate => {
                failed();
                self.metrics.indeterminate_writes.inc();
                let why = last_error.map_or_else(|| "no answer".to_owned(), ToString::to_string);
                Err(ApiError::new(
                    ErrorCode::QuorumUnavailable,
                    format!(
                        "the coordinating replica did not answer ({why}); the write may or may not have been applied: read the key to find out"
                    ),
                ))
            }
            WriteAnswer::Unavailable { needed, acks, why } => {
                failed();
                Err(unavailable("write", needed, acks, why))
            }
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
        let deadline_ms = wall_clock_ms() + timeout.as_millis() as u64;
        let (rule, n) = (props.conflict_rule(), usize::from(props.n));
        self.answered("read", |tx| {
            self.clone()
                .read_task(ring, bucket, key, rule, n, r, deadline_ms, tx)
        })
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_task(
        self: Arc<Self>,
        ring: Arc<Ring>,
        bucket: BucketName,
        key: String,
        conflict: ConflictRule,
        n: usize,
        r: usize,
        deadline_ms: u64,
        answer: oneshot::Sender<Result<Option<VersionedObject>, ApiError>>,
    ) {
        let pl = ring.preference_list_for(key_hash(bucket.as_str(), &key), n);
        let is_up = |id: &NodeId| self.is_up(&ring, id);
        let mut round = ReadRound::with_fanout(
            &pl,
            r,
            conflict,
            wall_clock_ms(),
            deadline_ms,
            self.read_fanout,
            is_up,
        );
        let mut answer = Some(answer);
        let mut inflight = FuturesUnordered::new();
        loop {
            while let Some(action) = round.poll_action() {
                match action {
                    ReadAction::Get(slot) => {
                        self.count_fallback(&slot, "get");
                        let op = ReplicaOp::Get {
                            bucket: bucket.clone(),
                            key: key.clone(),
                        };
                        let call = self.call(&ring, &slot.target, op);
                        inflight.push(async move { (slot, call.await) });
                    }
                    ReadAction::Answer(a) => {
                        let reply = match a {
                            ReadAnswer::Found(object) => Ok(object),
                            ReadAnswer::Unavailable { needed, got, why } => {
                                tracing::debug!(?round, "read failed its quorum");
                                self.metrics.quorum_failures.with_label_values(&["get"]).inc();
                                Err(unavailable("read", needed, got, why))
                            }
                        };
                        if let Some(tx) = answer.take() {
                            let _ = tx.send(reply);
                        }
                    }
                    ReadAction::Repair { target, object } => {
                        self.queue_repair(&ring, &bucket, &key, conflict, target, object);
                    }
                }
            }
            if round.is_finished() {
                break;
            }
            let deadline = round.next_timeout_ms();
            tokio::select! {
                Some((slot, result)) = inflight.next() => {
                    self.note_stale(&result);
                    let reply = match result {
                        Ok(ReplicaResult::Got { object }) => ReadReply::Found(object),
                        other => {
                            tracing::debug!(peer = %slot.target, result = ?other.err(), "replica read failed");
                            ReadReply::Failed
                        }
                    };
                    round.on_reply(slot, reply, is_up);
                }
                now = wall_deadline(deadline), if deadline.is_some() => round.on_tick(now),
                else => break stalled(&round),
            }
        }
    }

    /// Queues a read repair (the merge of every reply) for `target`; dropped, and
    /// counted, when the queue is full: anti-entropy and the next read repair it later.
    fn queue_repair(
        &self,
        ring: &Ring,
        bucket: &BucketName,
        key: &str,
        conflict: ConflictRule,
        target: NodeId,
        object: VersionedObject,
    ) {
        let Some(address) = Self::address(ring, &target) else {
            return;
        };
        let repair = Repair {
            target,
            address,
            epoch: ring.epoch(),
            op: ReplicaOp::Replicate {
                bucket: bucket.clone(),
                key: key.to_owned(),
                object,
                conflict,
                hint: None,
                idempotency: None,
            },
        };
        if self.repairs.try_send(repair).is_err() {
            self.metrics.read_repairs_dropped.inc();
        }
    }
}

fn unavailable(op: &str, needed: usize, got: usize, why: Shortfall) -> ApiError {
    let message = match why {
        Shortfall::DeadlinePassed => {
            format!("{op} did not reach {needed} replicas within the timeout ({got} answered)")
        }
        Shortfall::NotEnoughReplicas => format!("{op} needed {needed} replicas and {got} answered in time"),
    };
    ApiError::new(ErrorCode::QuorumUnavailable, message)
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

/// Returns the wall clock in ms since the Unix epoch (rounds and coordinate deadlines
/// are in it: the storage node compares a coordinate's deadline with its own clock).
fn wall_clock_ms() -> u64 {
    dynamo_server::clock::now_ms()
}

/// Sleeps until the wall clock reads `at_ms` (a round's deadline) and returns the time
/// to tick the round with: at least `at_ms`, as tokio's timer may fire a hair before the
/// wall clock gets there.
async fn wall_deadline(at_ms: Option<u64>) -> u64 {
    let at = at_ms.unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(at.saturating_sub(wall_clock_ms()))).await;
    at.max(wall_clock_ms())
}

/// A round that is unfinished with nothing out and nothing to wait for is a bug: the
/// driver stops rather than spin (the dropped answer channel tells the client).
fn stalled(round: &impl std::fmt::Debug) {
    tracing::error!(?round, "a round waits with nothing outstanding");
    debug_assert!(false, "a round waits with nothing outstanding");
}

/// The `read-repair` worker: sends queued repairs, one per unit of work, until the queue
/// closes.
pub struct RepairSender {
    rx: mpsc::Receiver<Repair>,
    next: Option<Repair>,
    peers: Peers,
    metrics: CoordinatorMetrics,
}

impl RepairSender {
    /// The worker draining `rx` through `peers`.
    pub fn new(rx: mpsc::Receiver<Repair>, peers: Peers, metrics: CoordinatorMetrics) -> RepairSender {
        RepairSender {
            rx,
            next: None,
            peers,
            metrics,
        }
    }
}

impl Worker for RepairSender {
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "read-repair"
    }

    async fn work(&mut self, _stop: &CancellationToken) -> Result<Next, Self::Error> {
        let r = match self.next.take().map_or_else(|| self.rx.try_recv(), Ok) {
            Ok(r) => r,
            Err(mpsc::error::TryRecvError::Empty) => return Ok(Next::Idle),
            Err(mpsc::error::TryRecvError::Disconnected) => return Ok(Next::Done),
        };
        match self.peers.handle(&r.target, &r.address).call(r.op, r.epoch).await {
            Ok(ReplicaResult::Replicated) => self.metrics.read_repairs.inc(),
            other => tracing::debug!(peer = %r.target, result = ?other.err(), "read repair failed"),
        }
        Ok(Next::Busy)
    }

    async fn wait_for_work(&mut self) {
        // A closed queue leaves `next` empty; the next unit of work then sees it closed.
        self.next = self.rx.recv().await;
    }
}
