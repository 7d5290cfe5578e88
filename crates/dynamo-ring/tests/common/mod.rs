//! Test harness: the ring service in-process on a loopback port, and fake storage nodes
//! that record the pull requests the handoff sends them.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path as AxPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use dynamo_core::ring::Ring;
use dynamo_core::wire::cluster::{ClusterState, ClusterView, NodeState, ReleaseDone};
use dynamo_core::{ErrorBody, ErrorCode, NodeId, PartitionId};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub use dynamo_testkit::WAIT;

/// A client signing as control (the ring service admits it on every route); calls are
/// bounded by 40 s, longer than the longest long poll.
pub fn client() -> dynamo_testkit::Http {
    dynamo_testkit::client(dynamo_testkit::Role::Control, Duration::from_secs(40))
}

pub fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("node id")
}

/// A ring service running in this process.
pub struct RingService {
    pub url: String,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), dynamo_ring::RingServiceError>>,
}

impl RingService {
    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops in time")
            .expect("join")
            .expect("clean stop");
    }
}

/// A config for tests: Q = 32, short timeouts, and a heartbeat timeout long enough that
/// no node goes down unless a test shortens it.
pub fn config(dir: &Path) -> dynamo_ring::Config {
    let mut c = dynamo_ring::Config::for_dir(dir);
    c.partitions = 32;
    c.heartbeat_timeout_ms = 60_000;
    c.serve.drain_timeout_ms = 2_000;
    c.handoff_timeout_ms = 5_000;
    c
}

pub async fn start(config: dynamo_ring::Config) -> RingService {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(dynamo_ring::run(config, listener, stop.clone()));
    let c = client();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Ok(r) = c.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if task.is_finished() {
            let r = task.await.expect("join");
            panic!("the ring service stopped while starting: {r:?}");
        }
        assert!(tokio::time::Instant::now() < deadline, "{url} never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    RingService { url, stop, task }
}

/// Starts the service expecting it to refuse to start.
pub async fn start_err(config: dynamo_ring::Config) -> dynamo_ring::RingServiceError {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let stop = CancellationToken::new();
    let r = tokio::time::timeout(WAIT, dynamo_ring::run(config, listener, stop))
        .await
        .expect("returns in time");
    r.expect_err("the service must refuse to start")
}

/// Sends a request and returns the status and the JSON body (Null when empty).
pub async fn call(method: &str, url: &str, body: Option<Value>) -> (StatusCode, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut req = client().request(m, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.expect("send");
    let status = StatusCode::from_u16(resp.status().as_u16()).expect("status");
    let bytes = resp.bytes().await.expect("body");
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, v)
}

pub async fn state(ring: &str) -> ClusterState {
    let (s, v) = call("GET", &format!("{ring}/internal/v1/state"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    serde_json::from_value(v).expect("ClusterState")
}

pub async fn cluster_view(ring: &str) -> ClusterView {
    let (s, v) = call("GET", &format!("{ring}/internal/v1/cluster"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    serde_json::from_value(v).expect("ClusterView")
}

pub async fn ring_of(ring: &str) -> Ring {
    let (s, v) = call("GET", &format!("{ring}/internal/v1/ring"), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    serde_json::from_value(v).expect("Ring")
}

/// Long-polls the state until `pred` holds; returns that state.
pub async fn wait_state(ring: &str, what: &str, pred: impl Fn(&ClusterState) -> bool) -> ClusterState {
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut s = state(ring).await;
    loop {
        if pred(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}; last state: {}",
            serde_json::to_string(&s).unwrap_or_default()
        );
        let url = format!("{ring}/internal/v1/state?after={}&wait_ms=1000", s.version);
        let (status, v) = call("GET", &url, None).await;
        match status {
            StatusCode::OK => s = serde_json::from_value(v).expect("ClusterState"),
            StatusCode::NOT_MODIFIED => {}
            other => panic!("unexpected {other}: {v}"),
        }
    }
}

/// True when no membership change is in progress and every release was acknowledged
/// (a node that still has to let a partition go cannot receive it in the next change).
pub fn settled(s: &ClusterState) -> bool {
    s.handoffs.is_empty()
        && s.releases.is_empty()
        && s.nodes
            .iter()
            .all(|n| !matches!(n.state, NodeState::Joining | NodeState::Leaving))
}

/// Joins a node and waits until the change completed at `epoch`.
pub async fn join_and_wait(ring: &str, node: &FakeNode, epoch: u64) -> ClusterState {
    let (s, v) = call(
        "POST",
        &format!("{ring}/internal/v1/nodes"),
        Some(node.registration()),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    wait_state(ring, &format!("{} joined", node.id), |s| {
        settled(s) && s.ring.as_ref().is_some_and(|r| r.epoch().0 == epoch)
    })
    .await
}

/// One pull request a fake node received and answered `done`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pull {
    pub partition: u32,
    pub source: String,
    /// The ring epoch the ring service published when the pull arrived.
    pub epoch_seen: u64,
}

#[derive(Default)]
struct FakeInner {
    ring_url: String,
    pulls: Mutex<Vec<Pull>>,
    /// Partitions the ring service released from this node (acknowledged).
    released: Mutex<Vec<u32>>,
    /// Pull requests still to fail with a 500.
    fail_next: AtomicU32,
    /// A source this node "cannot reach" (answered 503 source_unavailable).
    unreachable_source: Mutex<Option<String>>,
    /// Requests received, failed or not.
    requests: AtomicU32,
}

/// A fake storage node: answers pull requests, recording each.
pub struct FakeNode {
    pub id: String,
    pub url: String,
    inner: Arc<FakeInner>,
    stop: CancellationToken,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FakeNode {
    pub async fn start(id: &str, ring_url: &str) -> FakeNode {
        let inner = Arc::new(FakeInner {
            ring_url: ring_url.to_owned(),
            ..FakeInner::default()
        });
        let app = Router::new()
            .route("/internal/v1/partitions/{p}/pull", post(fake_pull))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { s.cancelled().await })
                .await;
        });
        tokio::spawn(release_loop(id.to_owned(), inner.clone(), stop.clone()));
        FakeNode {
            id: id.to_owned(),
            url,
            inner,
            stop,
        }
    }

    pub fn registration(&self) -> Value {
        json!({"node_id": self.id, "address": self.url})
    }

    pub fn pulls(&self) -> Vec<Pull> {
        let mut v = self.inner.pulls.lock().expect("lock").clone();
        v.sort();
        v
    }

    /// Forgets the pulls and releases recorded so far (before the change a test looks at).
    pub fn clear(&self) {
        self.inner.pulls.lock().expect("lock").clear();
        self.inner.released.lock().expect("lock").clear();
    }

    /// The partitions released from this node so far, sorted.
    pub fn released(&self) -> Vec<u32> {
        let mut v = self.inner.released.lock().expect("lock").clone();
        v.sort_unstable();
        v
    }

    pub fn requests(&self) -> u32 {
        self.inner.requests.load(Ordering::SeqCst)
    }

    pub fn fail_next(&self, n: u32) {
        self.inner.fail_next.store(n, Ordering::SeqCst);
    }

    pub fn cannot_reach(&self, source: Option<&str>) {
        *self.inner.unreachable_source.lock().expect("lock") = source.map(str::to_owned);
    }
}

async fn fake_pull(
    State(inner): State<Arc<FakeInner>>,
    AxPath(p): AxPath<u32>,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    inner.requests.fetch_add(1, Ordering::SeqCst);
    let source = body["source"].as_str().unwrap_or_default().to_owned();
    let failing = inner
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        let body = ErrorBody::new(ErrorCode::StorageError, "injected failure");
        return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
    }
    if inner.unreachable_source.lock().expect("lock").as_deref() == Some(source.as_str()) {
        let body = ErrorBody::new(ErrorCode::SourceUnavailable, "source did not answer");
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let epoch_seen = match client()
        .get(format!("{}/internal/v1/ring", inner.ring_url))
        .send()
        .await
    {
        Ok(r) if r.status().is_success() => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["epoch"].as_u64())
            .unwrap_or(0),
        _ => 0,
    };
    inner.pulls.lock().expect("lock").push(Pull {
        partition: p,
        source,
        epoch_seen,
    });
    axum::Json(json!({"objects": 1, "pages": 1, "cursor": null, "done": true})).into_response()
}

/// As a storage node does: follows the state, and acknowledges the release the ring
/// service lists for this node (recording its partitions), until `stop`.
async fn release_loop(id: String, inner: Arc<FakeInner>, stop: CancellationToken) {
    let c = client();
    let me = NodeId::new(id).expect("node id");
    loop {
        if let Ok(r) = c
            .get(format!("{}/internal/v1/state", inner.ring_url))
            .send()
            .await
            && let Ok(s) = r.json::<ClusterState>().await
            && let Some(rel) = s.release_for(&me)
        {
            let done = ReleaseDone {
                node: me.clone(),
                epoch: rel.epoch,
            };
            let acked = c
                .post(format!("{}/internal/v1/releases", inner.ring_url))
                .json(&done)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if acked {
                inner
                    .released
                    .lock()
                    .expect("lock")
                    .extend(rel.partitions.iter().map(|p| p.0));
            }
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
}

/// The oracle for a change's handoffs, straight from core's preference lists: for each
/// partition, every node in the new list but not the old one receives it from every old
/// holder not in `skipped`. Returns (receiver, partition, source) triples.
pub fn expected_pulls(old: &Ring, new: &Ring, n: usize, skipped: &[NodeId]) -> Vec<(NodeId, u32, NodeId)> {
    let mut out = Vec::new();
    for p in 0..new.partitioning().count() {
        let before = old.preference_list(PartitionId(p), n).preference_list;
        let after = new.preference_list(PartitionId(p), n).preference_list;
        for to in after.iter().filter(|x| !before.contains(x)) {
            for from in before.iter().filter(|h| !skipped.contains(h)) {
                out.push((to.clone(), p, from.clone()));
            }
        }
    }
    out.sort();
    out
}

/// The oracle for a change's releases: per node, the partitions it holds under `old`
/// but not under `new`.
pub fn expected_releases(old: &Ring, new: &Ring, n: usize) -> BTreeMap<NodeId, Vec<u32>> {
    let mut out: BTreeMap<NodeId, Vec<u32>> = BTreeMap::new();
    for p in 0..new.partitioning().count() {
        let after = new.preference_list(PartitionId(p), n).preference_list;
        for h in old.preference_list(PartitionId(p), n).preference_list {
            if !after.contains(&h) {
                out.entry(h).or_default().push(p);
            }
        }
    }
    out
}

/// What the fakes recorded, as (receiver, partition, source) triples with the epoch seen.
pub fn recorded_pulls(nodes: &[&FakeNode]) -> Vec<(NodeId, u32, NodeId, u64)> {
    let by_url: BTreeMap<&str, &str> = nodes.iter().map(|n| (n.url.as_str(), n.id.as_str())).collect();
    let mut out = Vec::new();
    for n in nodes {
        for p in n.pulls() {
            let src = by_url.get(p.source.as_str()).expect("source is a known node");
            out.push((id(&n.id), p.partition, id(src), p.epoch_seen));
        }
    }
    out.sort();
    out
}

/// Reads one metric sample (`name` may include labels).
pub async fn metric(ring: &str, name: &str) -> f64 {
    dynamo_testkit::metric(ring, name)
        .await
        .unwrap_or_else(|| panic!("metric {name} not found at {ring}"))
}

/// Sends heartbeats for `nodes` every 50 ms until the token is cancelled.
pub fn heartbeat_loop(ring: &str, nodes: Vec<(String, String)>) -> CancellationToken {
    let stop = CancellationToken::new();
    let s = stop.clone();
    let ring = ring.to_owned();
    tokio::spawn(async move {
        let c = client();
        loop {
            for (node, address) in &nodes {
                let _ = c
                    .post(format!("{ring}/internal/v1/heartbeat"))
                    .json(&json!({"node_id": node, "address": address}))
                    .send()
                    .await;
            }
            tokio::select! {
                () = s.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    });
    stop
}
