//! Calls to storage nodes: one handle per node, which coalesces the replica operations
//! queued for that node into one batched request, and a local failure detector.
//!
//! Hops are the cost on a small machine (ARCHITECTURE.md §3): every operation bound for a
//! node goes through that node's handle. A `peer-batcher` task takes what is queued (up
//! to [`MAX_BATCH`] operations), sends it as one `POST /internal/v1/replicas`, and hands
//! each caller its own result; at most `max_inflight` batches per node are in flight, so
//! under load operations wait in the queue and batches grow instead of connections.
//!
//! Failure detection: a batch that times out or cannot connect marks the node down for a
//! backoff window; while down, callers skip it (sloppy quorum) without waiting. When the
//! window passes, one request is let through as a probe; success clears the mark, failure
//! doubles the window (up to 16×). So a hung node (SIGSTOP) costs one timeout, not one per
//! request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dynamo_core::NodeId;
use dynamo_core::wire::internal::{ReplicaBatch, ReplicaBatchResult, ReplicaOp, ReplicaResult};
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
    /// The node could not be reached or answered garbage.
    #[error("node unreachable: {0}")]
    Unreachable(String),
    /// The node refused the whole batch (a bug: the coordinator validates first).
    #[error("node refused the batch: {0}")]
    Refused(String),
    /// The coordinator is shutting down.
    #[error("coordinator shutting down")]
    Stopped,
}

#[derive(Debug)]
struct Health {
    down_until: Option<Instant>,
    backoff: Duration,
    probing: bool,
}

struct Pending {
    op: ReplicaOp,
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
    /// Batches in flight per node.
    pub max_inflight: usize,
}

/// The handle of one storage node.
pub struct NodeHandle {
    id: NodeId,
    address: Mutex<String>,
    tx: mpsc::Sender<Pending>,
    health: Mutex<Health>,
    settings: PeerSettings,
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

    /// Returns true when calls should go to the node now: not marked down, or its window
    /// passed and no probe is out (this call becomes the probe).
    pub fn is_up(&self) -> bool {
        let mut h = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match h.down_until {
            None => true,
            Some(until) if Instant::now() >= until && !h.probing => {
                h.probing = true;
                true
            }
            Some(_) => false,
        }
    }

    /// Returns true when the node is marked down (without claiming a probe).
    pub fn is_marked_down(&self) -> bool {
        self.health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .down_until
            .is_some()
    }

    fn record(&self, ok: bool, metrics: &CoordinatorMetrics) {
        let mut h = self
            .health
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        h.probing = false;
        if ok {
            if h.down_until.take().is_some() {
                metrics.nodes_down.dec();
                tracing::info!(peer = %self.id, "storage node answers again");
            }
            h.backoff = self.settings.backoff;
        } else {
            if h.down_until.is_none() {
                metrics.nodes_down.inc();
                tracing::warn!(peer = %self.id, backoff_ms = h.backoff.as_millis() as u64, "storage node marked down");
            } else {
                h.backoff = (h.backoff * 2).min(self.settings.backoff * 16);
            }
            h.down_until = Some(Instant::now() + h.backoff);
        }
    }

    /// Sends one operation to the node (coalesced with others queued for it) and waits for
    /// its result.
    ///
    /// Cancel-safe in the sense that matters: once queued, the operation is sent and
    /// applied even if the caller stops waiting.
    ///
    /// # Errors
    /// A [`PeerError`] when the node is unreachable, times out, or the coordinator stops.
    pub async fn call(&self, op: ReplicaOp) -> Result<ReplicaResult, PeerError> {
        let (reply, rx) = oneshot::channel();
        let trace = dynamo_server::trace::current();
        self.tx
            .send(Pending { op, reply, trace })
            .await
            .map_err(|_| PeerError::Stopped)?;
        rx.await.unwrap_or(Err(PeerError::Stopped))
    }
}

/// All node handles of this coordinator.
#[derive(Clone)]
pub struct Peers {
    nodes: Arc<Mutex<HashMap<NodeId, Arc<NodeHandle>>>>,
    client: reqwest::Client,
    settings: PeerSettings,
    metrics: CoordinatorMetrics,
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Peers {
    /// Builds the peer layer; batcher tasks are spawned on `tracker` and stop with `stop`.
    pub fn new(
        client: reqwest::Client,
        settings: PeerSettings,
        metrics: CoordinatorMetrics,
        tracker: TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        Peers {
            nodes: Arc::new(Mutex::new(HashMap::new())),
            client,
            settings,
            metrics,
            tracker,
            stop,
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
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let handle = Arc::new(NodeHandle {
            id: id.clone(),
            address: Mutex::new(address.to_owned()),
            tx,
            health: Mutex::new(Health {
                down_until: None,
                backoff: self.settings.backoff,
                probing: false,
            }),
            settings: self.settings,
        });
        nodes.insert(id.clone(), handle.clone());
        self.tracker.spawn(batcher(handle.clone(), rx, self.clone()));
        handle
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

/// The `peer-batcher` task of one node.
async fn batcher(node: Arc<NodeHandle>, mut rx: mpsc::Receiver<Pending>, peers: Peers) {
    let inflight = Arc::new(Semaphore::new(peers.settings.max_inflight));
    loop {
        // Wait for a free in-flight slot first, so operations accumulate in the queue
        // while the node is busy and the next batch carries them all.
        let permit = tokio::select! {
            () = peers.stop.cancelled() => break,
            p = inflight.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let first = tokio::select! {
            () = peers.stop.cancelled() => break,
            p = rx.recv() => match p { Some(p) => p, None => break },
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let node = node.clone();
        let peers2 = peers.clone();
        peers.tracker.spawn(async move {
            send_batch(&node, batch, &peers2).await;
            drop(permit);
        });
    }
    // Answer whatever is still queued so no caller waits forever.
    rx.close();
    while let Some(p) = rx.recv().await {
        let _ = p.reply.send(Err(PeerError::Stopped));
    }
}

async fn send_batch(node: &NodeHandle, batch: Vec<Pending>, peers: &Peers) {
    // A batch may carry operations of several client requests; it names the first one's
    // request id and trace, which is what a trace viewer follows.
    let trace = batch.first().and_then(|p| p.trace.clone());
    let (ops, replies): (Vec<ReplicaOp>, Vec<_>) = batch.into_iter().map(|p| (p.op, p.reply)).unzip();
    let n = ops.len();
    peers.metrics.batch_ops.observe(n as f64);
    let peer = node.id.as_str();
    let start = Instant::now();
    let url = format!("{}/internal/v1/replicas", node.address().trim_end_matches('/'));
    let mut req = peers
        .client
        .post(url)
        .timeout(node.settings.timeout)
        .json(&ReplicaBatch { ops });
    if let Some(t) = &trace {
        req = req
            .header(dynamo_server::serve::TRACEPARENT_HEADER, t.child_traceparent())
            .header(dynamo_server::serve::REQUEST_ID_HEADER, t.request_id.as_str());
    }
    let result = req.send().await;
    let outcome: Result<Vec<ReplicaResult>, PeerError> = match result {
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
            node.record(true, &peers.metrics);
            peers.metrics.hops.with_label_values(&[peer, "ok"]).inc();
            for (reply, r) in replies.into_iter().zip(results) {
                let _ = reply.send(Ok(r));
            }
        }
        Err(e) => {
            // A refused batch is our bug, not the node's health.
            if !matches!(e, PeerError::Refused(_)) {
                node.record(false, &peers.metrics);
            } else {
                tracing::error!(peer, error = %e, "storage node refused a replica batch");
            }
            let label = match e {
                PeerError::Timeout => "timeout",
                PeerError::Refused(_) => "refused",
                _ => "unreachable",
            };
            peers.metrics.hops.with_label_values(&[peer, label]).inc();
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
