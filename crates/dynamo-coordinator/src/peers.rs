//! Calls to storage nodes: one handle per node, which coalesces the replica operations
//! queued for that node into one batched request, and a local failure detector.
//!
//! Hops are the cost on a small machine (ARCHITECTURE.md §3): every operation bound for a
//! node goes through that node's handle. A `peer-batcher` task takes what is queued (up
//! to [`MAX_BATCH`] operations), sends it as one `POST /internal/v1/replicas`, and hands
//! each caller its own result; at most `max_inflight` batches per node and lane are in
//! flight, so under load operations wait in the queue and batches grow instead of
//! connections. The profile in docs/benchmarks.md is why the default is one: a request
//! costs the same few syscalls and wake-ups whether it carries one operation or twenty.
//!
//! Each node has two lanes, each with its own queue and batcher: reads (get,
//! tombstone-status) and writes (coordinate-put, replicate). A node answers a batch only
//! after its writes are fsynced (group commit), so a read batched with writes would wait
//! for an fsync it does not need.
//!
//! Failure detection (the rules are [`dynamo_core::liveness`]'s): a batch that times out
//! or cannot connect marks the node down; while down, callers skip it (sloppy quorum)
//! without waiting, and what is already queued for it fails at once (`Down`) rather than
//! going out to wait out a second timeout. A `peer-probe` task then asks the node for its
//! identity (`GET /internal/v1/node`) once per backoff window, and clears the mark when it
//! answers. Client operations are never the probe: with at-most-once writes a
//! coordinate sent to a hung node is an indeterminate failure for its client (it cannot
//! be retried elsewhere), so a hung node costs the requests in flight when it hung, not
//! one more request per probe; and no probe can be claimed and then never sent.
//!
//! Batches are bounded in operations ([`MAX_BATCH`]) and in bytes
//! ([`MAX_BATCH_BYTES`]): a batch of large values never fails whole against the node's
//! body limit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynamo_core::liveness::{PeerHealth, Transition};
use dynamo_core::wire::cluster::{ClusterState, NodeState};
use dynamo_core::wire::internal::{
    MAX_BATCH_BYTES, ReplicaBatch, ReplicaBatchResult, ReplicaOp, ReplicaResult,
};
use dynamo_core::wire::routes;
use dynamo_core::{NodeId, RingEpoch};
use dynamo_server::internal::InternalClient;
use dynamo_server::worker::{Next, Worker, Workers};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::CoordinatorMetrics;

/// Most operations in one batch to a node.
pub const MAX_BATCH: usize = 64;
/// Operations queued per node at most; beyond it callers wait (back-pressure).
pub const QUEUE_DEPTH: usize = 4096;

/// Why a replica call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The node is marked down and was skipped without a call.
    #[error("node is down")]
    Down,
    /// The call did not complete in time.
    #[error("node timed out")]
    Timeout,
    /// No connection could be made, so the batch was never sent.
    #[error("node not reachable: {0}")]
    NotSent(String),
    /// The call failed after the batch may have reached the node (a reset connection, a
    /// garbled or 5xx answer).
    #[error("node unreachable: {0}")]
    Unreachable(String),
    /// The node refused the whole batch (a bug: the coordinator validates first).
    #[error("node refused the batch: {0}")]
    Refused(String),
    /// The coordinator is shutting down.
    #[error("coordinator shutting down")]
    Stopped,
}

impl PeerError {
    /// Returns true when the operation may have been applied by the node although the
    /// call failed: the outcome is unknown, so a coordinate must not be retried on
    /// another node (it would mint a second version of the same write).
    pub fn may_have_applied(&self) -> bool {
        match self {
            PeerError::Timeout | PeerError::Unreachable(_) | PeerError::Stopped => true,
            // Skipped, never connected, or refused whole before anything ran.
            PeerError::Down | PeerError::NotSent(_) | PeerError::Refused(_) => false,
        }
    }
}

#[derive(Debug)]
struct Health {
    /// The core's detector: marked down, and when the next probe is due.
    detector: PeerHealth,
    /// A `peer-probe` task is running for the node.
    probing: bool,
}

/// Which queue of a node an operation goes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    Read = 0,
    Write = 1,
}

impl Lane {
    fn of(op: &ReplicaOp) -> Lane {
        match op {
            ReplicaOp::Get { .. } | ReplicaOp::TombstoneStatus { .. } => Lane::Read,
            ReplicaOp::CoordinatePut { .. }
            | ReplicaOp::CoordinateCrdt { .. }
            | ReplicaOp::Replay { .. }
            | ReplicaOp::Replicate { .. } => Lane::Write,
        }
    }
}

struct Pending {
    op: ReplicaOp,
    /// The ring epoch the operation was planned with.
    epoch: RingEpoch,
    reply: oneshot::Sender<Result<ReplicaResult, PeerError>>,
    trace: Option<dynamo_server::trace::TraceContext>,
}

/// Settings of the peer layer.
#[derive(Debug, Clone, Copy)]
pub struct PeerSettings {
    /// Timeout of one batch.
    pub timeout: Duration,
    /// First backoff after a failure.
    pub backoff: Duration,
    /// Batches in flight per node and lane.
    pub max_inflight: usize,
}

/// The handle of one storage node.
pub struct NodeHandle {
    id: NodeId,
    address: Mutex<String>,
    /// One queue per [`Lane`].
    lanes: [mpsc::Sender<Pending>; 2],
    health: Mutex<Health>,
    settings: PeerSettings,
    /// The detector's time base: tokio's clock (so tests with paused time drive it),
    /// in ms since the peer layer was built.
    origin: tokio::time::Instant,
}

impl NodeHandle {
    /// Returns the node's id.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// Returns the node's current address.
    pub fn address(&self) -> String {
        self.address
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn clock_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Returns true when calls should go to the node: it is not marked down. A pure
    /// predicate: the probe that brings a node back is the `peer-probe` task's.
    pub fn is_up(&self) -> bool {
        self.health().detector.is_up()
    }

    /// Returns true when the node is marked down.
    pub fn is_marked_down(&self) -> bool {
        !self.is_up()
    }

    /// Records a hop's outcome. Returns true when the caller must start a `peer-probe`
    /// (a failure, and none runs yet).
    fn record(&self, ok: bool, metrics: &CoordinatorMetrics) -> bool {
        let mut h = self.health();
        if ok {
            if h.detector.on_success() == Some(Transition::CameBack) {
                metrics.nodes_down.dec();
                tracing::info!(peer = %self.id, "storage node answers again");
            }
            false
        } else {
            if h.detector.on_failure(self.clock_ms()) == Some(Transition::WentDown) {
                metrics.nodes_down.inc();
                tracing::warn!(peer = %self.id, "storage node marked down");
            }
            !std::mem::replace(&mut h.probing, true)
        }
    }

    /// Sends one operation to the node (coalesced with others queued for it) and waits for
    /// its result.
    ///
    /// Cancel-safe in the sense that matters: once queued, the operation is sent and
    /// applied even if the caller stops waiting.
    ///
    /// `epoch` is the ring epoch the operation was planned with: a node with a newer
    /// ring answers `stale_ring` where it no longer holds the key's partition.
    ///
    /// # Errors
    /// A [`PeerError`] when the node is unreachable, times out, or the coordinator stops.
    pub async fn call(&self, op: ReplicaOp, epoch: RingEpoch) -> Result<ReplicaResult, PeerError> {
        let (reply, rx) = oneshot::channel();
        let trace = dynamo_server::trace::current();
        self.lanes[Lane::of(&op) as usize]
            .send(Pending {
                op,
                epoch,
                reply,
                trace,
            })
            .await
            .map_err(|_| PeerError::Stopped)?;
        rx.await.unwrap_or(Err(PeerError::Stopped))
    }
}

/// All node handles of this coordinator.
#[derive(Clone)]
pub struct Peers {
    nodes: Arc<Mutex<HashMap<NodeId, Arc<NodeHandle>>>>,
    client: InternalClient,
    settings: PeerSettings,
    metrics: CoordinatorMetrics,
    tracker: TaskTracker,
    stop: CancellationToken,
    workers: Workers,
    origin: tokio::time::Instant,
}

impl Peers {
    /// Builds the peer layer; batcher tasks are spawned on `tracker`, probes on
    /// `workers`, and both stop with the workers.
    pub fn new(
        client: InternalClient,
        settings: PeerSettings,
        metrics: CoordinatorMetrics,
        tracker: TaskTracker,
        workers: Workers,
    ) -> Self {
        Peers {
            nodes: Arc::new(Mutex::new(HashMap::new())),
            client,
            settings,
            metrics,
            tracker,
            stop: workers.child_stop(),
            workers,
            origin: tokio::time::Instant::now(),
        }
    }

    /// Marks `id` down on the ring service's word (its heartbeats stopped), as a failed
    /// hop would: callers skip it at once instead of paying a timeout to find out, and
    /// the `peer-probe` clears the mark as soon as the node answers, so a node the ring
    /// wrongly thinks down (its heartbeats cut off, its port reachable) costs one probe
    /// window.
    pub fn mark_down(&self, id: &NodeId, address: &str) {
        let node = self.handle(id, address);
        if node.record(false, &self.metrics) {
            start_probe(&node, self);
        }
    }

    /// Returns the handle of `id` at `address`, creating it (and its batcher) on first use.
    pub fn handle(&self, id: &NodeId, address: &str) -> Arc<NodeHandle> {
        let mut nodes = self
            .nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(h) = nodes.get(id) {
            let mut a = h
                .address
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *a != address {
                address.clone_into(&mut a);
            }
            return h.clone();
        }
        let (read_tx, read_rx) = mpsc::channel(QUEUE_DEPTH);
        let (write_tx, write_rx) = mpsc::channel(QUEUE_DEPTH);
        let handle = Arc::new(NodeHandle {
            id: id.clone(),
            address: Mutex::new(address.to_owned()),
            lanes: [read_tx, write_tx],
            health: Mutex::new(Health {
                detector: PeerHealth::new(self.settings.backoff.as_millis() as u64),
                probing: false,
            }),
            settings: self.settings,
            origin: self.origin,
        });
        nodes.insert(id.clone(), handle.clone());
        self.tracker.spawn(batcher(handle.clone(), read_rx, self.clone()));
        self.tracker
            .spawn(batcher(handle.clone(), write_rx, self.clone()));
        handle
    }

    /// Returns the timeout of one batch.
    pub fn timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// Returns the existing handle of `id`, if any.
    pub fn get(&self, id: &NodeId) -> Option<Arc<NodeHandle>> {
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned()
    }
}

/// The `peer-batcher` task of one lane of one node.
async fn batcher(node: Arc<NodeHandle>, mut rx: mpsc::Receiver<Pending>, peers: Peers) {
    let inflight = Arc::new(Semaphore::new(peers.settings.max_inflight));
    // An operation that did not fit the previous batch's byte bound: it leads the next.
    let mut carry: Option<Pending> = None;
    loop {
        // Wait for a free in-flight slot first, so operations accumulate in the queue
        // while the node is busy and the next batch carries them all.
        let permit = tokio::select! {
            () = peers.stop.cancelled() => break,
            p = inflight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let first = match carry.take() {
            Some(p) => p,
            None => tokio::select! {
                () = peers.stop.cancelled() => break,
                p = rx.recv() => match p { Some(p) => p, None => break },
            },
        };
        let mut bytes = first.op.estimated_len();
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => {
                    let len = p.op.estimated_len();
                    if bytes + len > MAX_BATCH_BYTES {
                        carry = Some(p);
                        break;
                    }
                    bytes += len;
                    batch.push(p);
                }
                Err(_) => break,
            }
        }
        if node.is_marked_down() {
            // Queued while a batch was timing out, or since: sending it would cost each of
            // these callers a timeout (and a client its request deadline), so they move on
            // to the next replica or a fallback now.
            fail_fast(&node, batch, &peers);
            continue;
        }
        let node = node.clone();
        let peers2 = peers.clone();
        peers.tracker.spawn(async move {
            send_batch(&node, batch, &peers2).await;
            drop(permit);
        });
    }
    // Answer whatever is still queued so no caller waits forever.
    if let Some(p) = carry {
        let _ = p.reply.send(Err(PeerError::Stopped));
    }
    rx.close();
    while let Some(p) = rx.recv().await {
        let _ = p.reply.send(Err(PeerError::Stopped));
    }
}

fn fail_fast(node: &NodeHandle, batch: Vec<Pending>, peers: &Peers) {
    peers
        .metrics
        .replica_batches
        .with_label_values(&[node.id.as_str(), "skipped_down"])
        .inc();
    for p in batch {
        let _ = p.reply.send(Err(PeerError::Down));
    }
}

/// Starts the `peer-probe` worker of a node just marked down.
fn start_probe(node: &Arc<NodeHandle>, peers: &Peers) {
    peers.workers.spawn(Probe {
        node: node.clone(),
        client: peers.client.clone(),
        metrics: peers.metrics.clone(),
    });
}

/// The `peer-probe` worker of one node marked down: it probes when the detector says one
/// is due (once per window), until the node answers a probe or a hop.
struct Probe {
    node: Arc<NodeHandle>,
    client: InternalClient,
    metrics: CoordinatorMetrics,
}

impl Worker for Probe {
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "peer-probe"
    }

    async fn work(&mut self, _stop: &CancellationToken) -> Result<Next, Self::Error> {
        let node = &self.node;
        // Read and, when the node is back, leave under one lock: a failure recorded
        // after this must find no probe running and start one.
        let due = {
            let mut h = node.health();
            match h.detector.next_probe_ms() {
                Some(due) => due,
                None => {
                    h.probing = false;
                    return Ok(Next::Done);
                }
            }
        };
        let now = node.clock_ms();
        if due > now {
            return Ok(Next::Throttled(Duration::from_millis(due - now)));
        }
        if !node.health().detector.take_probe(now) {
            return Ok(Next::Busy);
        }
        let url = routes::url(&node.address(), PROBE_PATH);
        let ok = matches!(
            self.client.get(url).timeout(node.settings.timeout).send().await,
            Ok(r) if r.status().is_success()
        );
        let label = if ok { "probe_ok" } else { "probe_failed" };
        self.metrics
            .replica_batches
            .with_label_values(&[node.id.as_str(), label])
            .inc();
        if !ok {
            return Ok(Next::Busy);
        }
        // Not probing first, then up: a failure recorded in between starts a new probe
        // instead of leaving the node down with none running.
        node.health().probing = false;
        let _ = node.record(true, &self.metrics);
        Ok(Next::Done)
    }

    async fn wait_for_work(&mut self) {}
}

/// Returns the nodes `state` lists as down that were not down in `before` (the ids the
/// previous state listed as down), with their addresses, and the ids down now: the
/// transitions the coordinator acts on, so a node stays marked once per outage.
pub fn newly_down(
    before: &std::collections::BTreeSet<NodeId>,
    state: &ClusterState,
) -> (Vec<(NodeId, String)>, std::collections::BTreeSet<NodeId>) {
    let down: std::collections::BTreeSet<NodeId> = state
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Down)
        .map(|n| n.node_id.clone())
        .collect();
    let fresh = state
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Down && !before.contains(&n.node_id))
        .map(|n| (n.node_id.clone(), n.address.clone()))
        .collect();
    (fresh, down)
}

/// The `ring-liveness` worker: follows the cached cluster state and marks down every
/// node the ring service newly reports down (see [`Peers::mark_down`]). The hops stay the
/// detector's first source (a hop notices a hung node in one timeout, the ring only after
/// its heartbeat timeout); this one covers nodes this coordinator has not called since
/// they died, which would otherwise cost the first request to each of them a timeout.
pub struct RingLiveness {
    cache: crate::state::ClusterCache,
    peers: Peers,
    changes: tokio::sync::watch::Receiver<u64>,
    down: std::collections::BTreeSet<NodeId>,
    closed: bool,
}

impl RingLiveness {
    /// The worker marking down in `peers` what `cache` reports down.
    pub fn new(cache: crate::state::ClusterCache, peers: Peers) -> RingLiveness {
        RingLiveness {
            changes: cache.subscribe(),
            cache,
            peers,
            down: std::collections::BTreeSet::new(),
            closed: false,
        }
    }
}

impl Worker for RingLiveness {
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "ring-liveness"
    }

    async fn work(&mut self, _stop: &CancellationToken) -> Result<Next, Self::Error> {
        if self.closed {
            return Ok(Next::Done);
        }
        if let Ok(state) = self.cache.current() {
            let (fresh, now_down) = newly_down(&self.down, &state);
            for (id, address) in fresh {
                tracing::info!(peer = %id, "the ring service reports the node down");
                self.peers.mark_down(&id, &address);
            }
            self.down = now_down;
        }
        Ok(Next::Idle)
    }

    async fn wait_for_work(&mut self) {
        self.closed = self.changes.changed().await.is_err();
    }
}

/// What a probe asks a storage node for: cheap, read-only, answered by any live node.
const PROBE_PATH: &str = routes::storage::NODE;

async fn send_batch(node: &Arc<NodeHandle>, batch: Vec<Pending>, peers: &Peers) {
    // A batch may carry operations of several client requests; it names the first one's
    // request id and trace, which is what a trace viewer follows.
    let trace = batch.first().and_then(|p| p.trace.clone());
    // The oldest plan in the batch: a node fences by it, and an operation of a newer plan
    // is never refused for it (the node holds its partition, or it carries a hint).
    let ring_epoch = batch.iter().map(|p| p.epoch).min();
    let (ops, replies): (Vec<ReplicaOp>, Vec<_>) = batch.into_iter().map(|p| (p.op, p.reply)).unzip();
    let n = ops.len();
    peers.metrics.batch_ops.observe(n as f64);
    let peer = node.id.as_str();
    let start = Instant::now();
    let url = routes::url(&node.address(), routes::storage::REPLICAS);
    let mut req = peers
        .client
        .post(url)
        .timeout(node.settings.timeout)
        .json(&ReplicaBatch { ops, ring_epoch });
    if let Some(t) = &trace {
        req = req
            .header(dynamo_server::serve::TRACEPARENT_HEADER, t.child_traceparent())
            .header(dynamo_server::serve::REQUEST_ID_HEADER, t.request_id.as_str());
    }
    let result = req.send().await;
    let outcome: Result<Vec<ReplicaResult>, PeerError> = match result {
        // A connect failure first: a connect that timed out never sent the batch.
        Err(e) if e.is_connect() => Err(PeerError::NotSent(e.without_url().to_string())),
        Err(e) if e.is_timeout() => Err(PeerError::Timeout),
        Err(e) => Err(PeerError::Unreachable(e.without_url().to_string())),
        Ok(resp) if resp.status().is_success() => match resp.json::<ReplicaBatchResult>().await {
            Ok(r) if r.results.len() == n => Ok(r.results),
            Ok(r) => Err(PeerError::Unreachable(format!(
                "{} results for {n} operations",
                r.results.len()
            ))),
            Err(e) if e.is_timeout() => Err(PeerError::Timeout),
            Err(e) => Err(PeerError::Unreachable(e.without_url().to_string())),
        },
        Ok(resp) if resp.status().is_server_error() => {
            Err(PeerError::Unreachable(format!("answered {}", resp.status())))
        }
        Ok(resp) => {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            Err(PeerError::Refused(format!("{status}: {body}")))
        }
    };
    peers
        .metrics
        .hop_duration
        .with_label_values(&[peer])
        .observe(start.elapsed().as_secs_f64());
    match outcome {
        Ok(results) => {
            let _ = node.record(true, &peers.metrics);
            peers
                .metrics
                .replica_batches
                .with_label_values(&[peer, "ok"])
                .inc();
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(r));
            }
        }
        Err(e) => {
            // A refused batch is our bug, not the node's health.
            if !matches!(e, PeerError::Refused(_)) {
                if node.record(false, &peers.metrics) {
                    start_probe(node, peers);
                }
            } else {
                tracing::error!(peer, error = %e, "storage node refused a replica batch");
            }
            let label = match e {
                PeerError::Timeout => "timeout",
                PeerError::Refused(_) => "refused",
                _ => "unreachable",
            };
            peers
                .metrics
                .replica_batches
                .with_label_values(&[peer, label])
                .inc();
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use axum::Router;
    use axum::extract::State;
    use axum::routing::post;
    use dynamo_core::wire::internal::{ReplicaBatch, ReplicaBatchResult, ReplicaOp, ReplicaResult};
    use dynamo_core::{BucketName, NodeId, RingEpoch};

    /// The ring epoch the tests' operations are planned with.
    const EPOCH: RingEpoch = RingEpoch(1);
    use dynamo_server::worker::Workers;
    use tokio::sync::Semaphore;
    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::{Lane, PeerSettings, Peers, QUEUE_DEPTH};
    use crate::metrics::CoordinatorMetrics;

    /// A storage node that records each batch's lanes and holds write batches until the
    /// test hands out a permit.
    #[derive(Clone)]
    struct Fake {
        batches: Arc<std::sync::Mutex<Vec<Vec<Lane>>>>,
        writes_gate: Arc<Semaphore>,
    }

    async fn fake(State(f): State<Fake>, body: axum::Json<ReplicaBatch>) -> axum::Json<ReplicaBatchResult> {
        let lanes: Vec<Lane> = body.0.ops.iter().map(Lane::of).collect();
        f.batches.lock().expect("lock").push(lanes.clone());
        if lanes.contains(&Lane::Write) {
            f.writes_gate.acquire().await.expect("gate").forget();
        }
        let results = lanes
            .iter()
            .map(|l| match l {
                Lane::Read => ReplicaResult::Got { object: None },
                Lane::Write => ReplicaResult::Replicated,
            })
            .collect();
        axum::Json(ReplicaBatchResult { results })
    }

    fn get(key: &str) -> ReplicaOp {
        ReplicaOp::Get {
            bucket: BucketName::new("b").expect("bucket"),
            key: key.to_owned(),
        }
    }

    fn replicate(key: &str) -> ReplicaOp {
        ReplicaOp::Replicate {
            bucket: BucketName::new("b").expect("bucket"),
            key: key.to_owned(),
            object: dynamo_core::version::VersionedObject::new(),
            conflict: dynamo_core::version::ConflictRule::Siblings { max_siblings: 8 },
            hint: None,
            idempotency: None,
        }
    }

    async fn until(what: &str, mut cond: impl FnMut() -> bool) {
        dynamo_testkit::eventually(what, || std::future::ready(cond())).await;
    }

    /// A peer layer with one batch in flight per lane, and what stops it.
    fn peer_layer(timeout: Duration, backoff: Duration) -> (Peers, CancellationToken, TaskTracker) {
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        let settings = PeerSettings {
            timeout,
            backoff,
            max_inflight: 1,
        };
        let registry = prometheus::Registry::new();
        let metrics = CoordinatorMetrics::new(&registry).expect("metrics");
        let workers = Workers::new(&registry, "coordinator", stop.clone()).expect("worker metrics");
        let peers = Peers::new(
            dynamo_testkit::http(),
            settings,
            metrics,
            tracker.clone(),
            workers,
        );
        (peers, stop, tracker)
    }

    async fn stop_peers(stop: CancellationToken, tracker: TaskTracker) {
        stop.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .expect("batchers stop");
    }

    /// A storage node that hangs on the first batch (past the caller's timeout) and
    /// answers every later one at once; counts the batches that reach it.
    async fn hangs_once(
        State(seen): State<Arc<std::sync::atomic::AtomicUsize>>,
        body: axum::Json<ReplicaBatch>,
    ) -> axum::Json<ReplicaBatchResult> {
        if seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
        let results = body
            .0
            .ops
            .iter()
            .map(|_| ReplicaResult::Got { object: None })
            .collect();
        axum::Json(ReplicaBatchResult { results })
    }

    // Goal: operations queued for a node while its batch times out fail at once as `Down`
    // instead of going out as a second batch (a second timeout for each caller); no client
    // operation is ever the probe; the background probe alone clears the mark, with no
    // client traffic at all (before, a probe claimed by a request that never sent it left
    // a healthy node down for good).
    #[tokio::test]
    async fn what_queued_behind_a_timed_out_batch_fails_fast_and_a_background_probe_clears_the_mark() {
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let probes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let p = probes.clone();
        let addr = dynamo_testkit::serve(
            Router::new()
                .route("/internal/v1/replicas", post(hangs_once))
                .with_state(seen.clone())
                .route(
                    super::PROBE_PATH,
                    axum::routing::get(move || {
                        p.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        async { "{}" }
                    }),
                ),
        )
        .await;
        let (peers, stop, tracker) = peer_layer(Duration::from_millis(300), Duration::from_secs(1));
        let node = peers.handle(&NodeId::new("node-0").expect("id"), &addr);

        let first = tokio::spawn({
            let node = node.clone();
            async move { node.call(get("k0"), EPOCH).await }
        });
        until("the first batch reached the node", || {
            seen.load(std::sync::atomic::Ordering::SeqCst) == 1
        })
        .await;
        let queued: Vec<_> = (1..=3)
            .map(|i| {
                let node = node.clone();
                tokio::spawn(async move { node.call(get(&format!("k{i}")), EPOCH).await })
            })
            .collect();
        until("three reads queued", || {
            QUEUE_DEPTH - node.lanes[Lane::Read as usize].capacity() == 3
        })
        .await;

        assert!(matches!(
            first.await.expect("join"),
            Err(super::PeerError::Timeout)
        ));
        for q in queued {
            assert!(matches!(q.await.expect("join"), Err(super::PeerError::Down)));
        }
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "nothing more was sent"
        );
        assert!(node.is_marked_down());
        assert!(
            !node.is_up(),
            "a down node is skipped, and asking does not claim a probe"
        );

        until("the node is up again", || node.is_up()).await;
        assert_eq!(
            probes.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "one probe brought it back"
        );
        assert_eq!(
            seen.load(std::sync::atomic::Ordering::SeqCst),
            1,
            "no client operation was used as the probe"
        );
        let r = node.call(get("k4"), EPOCH).await.expect("answered once up");
        assert!(matches!(r, ReplicaResult::Got { object: None }));
        stop_peers(stop, tracker).await;
    }

    fn large_replicate(key: &str, bytes: usize) -> ReplicaOp {
        let mut object = dynamo_core::version::VersionedObject::new();
        object
            .put(
                &dynamo_core::DotSet::new(),
                dynamo_core::ActorId(1),
                dynamo_core::version::NewWrite::value(vec![7; bytes], "application/octet-stream", 1),
                dynamo_core::version::ConflictRule::Siblings { max_siblings: 8 },
            )
            .expect("put");
        ReplicaOp::Replicate {
            bucket: BucketName::new("b").expect("bucket"),
            key: key.to_owned(),
            object,
            conflict: dynamo_core::version::ConflictRule::Siblings { max_siblings: 8 },
            hint: None,
            idempotency: None,
        }
    }

    // Goal (regression, issue 10): operations queued together are split into batches
    // bounded by bytes, so large values never make one request the node must refuse whole
    // against its body limit; small ones still share a batch.
    #[tokio::test]
    async fn queued_large_values_travel_in_byte_bounded_batches() {
        let f = Fake {
            batches: Arc::default(),
            writes_gate: Arc::new(Semaphore::new(0)),
        };
        // The node accepts what a storage node must at least: one full batch.
        let addr = dynamo_testkit::serve(
            Router::new()
                .route("/internal/v1/replicas", post(fake))
                .layer(axum::extract::DefaultBodyLimit::max(super::MAX_BATCH_BYTES))
                .with_state(f.clone()),
        )
        .await;
        let (peers, stop, tracker) = peer_layer(Duration::from_secs(10), Duration::from_millis(100));
        let node = peers.handle(&NodeId::new("node-0").expect("id"), &addr);
        let first = tokio::spawn({
            let node = node.clone();
            async move { node.call(replicate("w0"), EPOCH).await }
        });
        until("the first batch reached the node", || {
            f.batches.lock().expect("lock").len() == 1
        })
        .await;
        // Three values of 1.5 MiB (2 MiB as JSON each) and two small ones queue behind it.
        let mut queued: Vec<_> = (1..=3)
            .map(|i| {
                let node = node.clone();
                tokio::spawn(async move {
                    node.call(large_replicate(&format!("big{i}"), 3 << 19), EPOCH)
                        .await
                })
            })
            .collect();
        until("three writes queued", || {
            QUEUE_DEPTH - node.lanes[Lane::Write as usize].capacity() == 3
        })
        .await;
        for i in 0..2 {
            let node = node.clone();
            queued.push(tokio::spawn(async move {
                node.call(replicate(&format!("s{i}")), EPOCH).await
            }));
        }
        until("five writes queued", || {
            QUEUE_DEPTH - node.lanes[Lane::Write as usize].capacity() == 5
        })
        .await;
        f.writes_gate.add_permits(100);
        assert!(matches!(
            first.await.expect("join"),
            Ok(ReplicaResult::Replicated)
        ));
        for q in queued {
            assert!(matches!(q.await.expect("join"), Ok(ReplicaResult::Replicated)));
        }
        let sizes: Vec<usize> = f.batches.lock().expect("lock").iter().map(Vec::len).collect();
        assert_eq!(sizes[0], 1);
        assert_eq!(sizes.iter().sum::<usize>(), 6);
        assert!(
            sizes.len() >= 3 && sizes.iter().skip(1).all(|&n| n <= 3),
            "at most one 2 MiB value plus small ones share a 4 MiB batch: {sizes:?}"
        );
        stop_peers(stop, tracker).await;
    }

    // Goal: a read never waits behind a write batch (lanes), and writes queued while a
    // write batch is out travel together in the next one (batching with one in flight).
    #[tokio::test]
    async fn reads_pass_a_held_write_batch_and_queued_writes_share_one_batch() {
        let f = Fake {
            batches: Arc::default(),
            writes_gate: Arc::new(Semaphore::new(0)),
        };
        let addr = dynamo_testkit::serve(
            Router::new()
                .route("/internal/v1/replicas", post(fake))
                .with_state(f.clone()),
        )
        .await;
        let (peers, stop, tracker) = peer_layer(Duration::from_secs(10), Duration::from_millis(100));
        let node = peers.handle(&NodeId::new("node-0").expect("id"), &addr);

        // One write goes out and is held by the node.
        let first = tokio::spawn({
            let node = node.clone();
            async move { node.call(replicate("w0"), EPOCH).await }
        });
        until("the first batch reached the node", || {
            f.batches.lock().expect("lock").len() == 1
        })
        .await;
        // Three more writes queue behind it (one batch in flight per lane).
        let queued: Vec<_> = (1..=3)
            .map(|i| {
                let node = node.clone();
                tokio::spawn(async move { node.call(replicate(&format!("w{i}")), EPOCH).await })
            })
            .collect();
        until("three writes queued", || {
            QUEUE_DEPTH - node.lanes[Lane::Write as usize].capacity() == 3
        })
        .await;

        // Reads are answered while the write batch is still held.
        for k in ["r1", "r2", "r3"] {
            let r = node.call(get(k), EPOCH).await.expect("read answered");
            assert!(matches!(r, ReplicaResult::Got { object: None }));
        }
        assert!(!first.is_finished(), "the write batch is still held by the node");

        f.writes_gate.add_permits(2);
        assert!(matches!(
            first.await.expect("join"),
            Ok(ReplicaResult::Replicated)
        ));
        for q in queued {
            assert!(matches!(q.await.expect("join"), Ok(ReplicaResult::Replicated)));
        }

        let batches = f.batches.lock().expect("lock").clone();
        for b in &batches {
            assert!(
                b.iter().all(|l| *l == b[0]),
                "a batch mixed reads and writes: {batches:?}"
            );
        }
        let writes: Vec<usize> = batches
            .iter()
            .filter(|b| b[0] == Lane::Write)
            .map(Vec::len)
            .collect();
        assert_eq!(writes, vec![1, 3], "the three queued writes travel in one batch");
        stop_peers(stop, tracker).await;
    }

    fn state_with(nodes: &[(&str, dynamo_core::wire::cluster::NodeState)]) -> super::ClusterState {
        super::ClusterState {
            version: 1,
            ring: None,
            nodes: nodes
                .iter()
                .map(|(id, st)| dynamo_core::wire::cluster::NodeStatus {
                    node_id: NodeId::new(*id).expect("id"),
                    address: format!("http://{id}"),
                    zone: None,
                    state: *st,
                    last_heartbeat_ms_ago: None,
                    anti_entropy: None,
                    volume: None,
                    volume_refused: None,
                })
                .collect(),
            ..super::ClusterState::default()
        }
    }

    // Goal: the ring's word is acted on once per outage: a node is reported when it turns
    // down (also when the first state seen already lists it down), not again while it
    // stays down, and again after it was up in between.
    #[test]
    fn only_transitions_to_down_are_reported() {
        use dynamo_core::wire::cluster::NodeState::{Down, Up};
        let ids = |v: &[(NodeId, String)]| v.iter().map(|(i, _)| i.as_str().to_owned()).collect::<Vec<_>>();
        let (fresh, down) = super::newly_down(&Default::default(), &state_with(&[("a", Up), ("b", Down)]));
        assert_eq!(ids(&fresh), ["b"]);
        assert_eq!(fresh[0].1, "http://b");
        let (fresh, down) = super::newly_down(&down, &state_with(&[("a", Down), ("b", Down)]));
        assert_eq!(ids(&fresh), ["a"], "b is still down: not reported twice");
        let (fresh, down) = super::newly_down(&down, &state_with(&[("a", Down), ("b", Up)]));
        assert!(fresh.is_empty());
        let (fresh, _) = super::newly_down(&down, &state_with(&[("a", Down), ("b", Down)]));
        assert_eq!(ids(&fresh), ["b"], "down again after being up");
    }

    // Goal: a node the ring service reports down is skipped at once, with no call ever
    // sent to it, and the background probe brings it back as soon as it answers (the
    // ring can be wrong: a node whose heartbeats are cut off may serve).
    #[tokio::test]
    async fn a_node_the_ring_reports_down_is_skipped_until_a_probe_answers() {
        let batches = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let b = batches.clone();
        let addr = dynamo_testkit::serve(
            Router::new()
                .route(
                    "/internal/v1/replicas",
                    post(move |body: axum::Json<ReplicaBatch>| {
                        b.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let results = body
                            .0
                            .ops
                            .iter()
                            .map(|_| ReplicaResult::Got { object: None })
                            .collect();
                        async move { axum::Json(ReplicaBatchResult { results }) }
                    }),
                )
                .route(super::PROBE_PATH, axum::routing::get(|| async { "{}" })),
        )
        .await;
        let (peers, stop, tracker) = peer_layer(Duration::from_secs(5), Duration::from_millis(200));
        let id = NodeId::new("node-0").expect("id");
        peers.mark_down(&id, &addr);
        let node = peers.handle(&id, &addr);
        assert!(!node.is_up(), "skipped on the ring's word");
        assert!(matches!(
            node.call(get("k"), EPOCH).await,
            Err(super::PeerError::Down)
        ));
        assert_eq!(
            batches.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "nothing sent"
        );
        until("the node is up again", || node.is_up()).await;
        assert!(matches!(
            node.call(get("k"), EPOCH).await,
            Ok(ReplicaResult::Got { object: None })
        ));
        assert_eq!(batches.load(std::sync::atomic::Ordering::SeqCst), 1);
        stop_peers(stop, tracker).await;
    }
}
