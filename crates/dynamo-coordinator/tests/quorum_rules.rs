//! The coordinator's write and read rules under failures (issue 10), against a real
//! coordinator in-process, a fake ring service, and fake storage nodes whose behaviour
//! each test scripts: at most once (a coordinate that may have applied is never retried
//! elsewhere; one refused past its deadline is), and a fallback's "not found" is no vote.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use dynamo_core::ring::{Member, Ring};
use dynamo_core::version::{NewWrite, Resolution, VersionedObject};
use dynamo_core::wire::cluster::ClusterState;
use dynamo_core::wire::internal::{ReplicaBatch, ReplicaBatchResult, ReplicaOp, ReplicaResult};
use dynamo_core::{ActorId, DotSet, ErrorCode, NodeId, Partitioning, key_hash};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "root-token-for-tests-0123";

/// How a fake storage node answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behaviour {
    /// Stores and answers like a real node.
    Normal,
    /// Never answers a batch holding a coordinate (a node that hung mid-write).
    HangCoordinate,
    /// Refuses coordinates as arriving past their deadline.
    RefuseCoordinate,
    /// Answers reads only after a delay.
    SlowRead,
}

#[derive(Clone)]
struct FakeNode {
    actor: u64,
    behaviour: Behaviour,
    object: Arc<Mutex<Option<VersionedObject>>>,
    coordinates: Arc<AtomicUsize>,
    deadlines: Arc<Mutex<Vec<Option<u64>>>>,
}

async fn replicas(
    State(n): State<FakeNode>,
    body: axum::Json<ReplicaBatch>,
) -> axum::Json<ReplicaBatchResult> {
    let has_coordinate = body
        .0
        .ops
        .iter()
        .any(|op| matches!(op, ReplicaOp::CoordinatePut { .. }));
    if has_coordinate {
        n.coordinates.fetch_add(1, Ordering::SeqCst);
        if n.behaviour == Behaviour::HangCoordinate {
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }
    if n.behaviour == Behaviour::SlowRead && body.0.ops.iter().any(|op| matches!(op, ReplicaOp::Get { .. })) {
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let mut results = Vec::new();
    for op in body.0.ops {
        let mut stored = n.object.lock().expect("lock");
        results.push(match op {
            ReplicaOp::CoordinatePut {
                context,
                value,
                content_type,
                resolution,
                deadline_ms,
                ..
            } => {
                n.deadlines.lock().expect("lock").push(deadline_ms);
                if n.behaviour == Behaviour::RefuseCoordinate {
                    ReplicaResult::Error {
                        code: ErrorCode::DeadlineExceeded,
                        message: "late".into(),
                    }
                } else {
                    let o = stored.get_or_insert_with(VersionedObject::new);
                    let out = o
                        .put(
                            &context,
                            ActorId(n.actor),
                            NewWrite::value(value, content_type, 1),
                            resolution,
                        )
                        .expect("put");
                    ReplicaResult::Put {
                        object: o.clone(),
                        dot: out.dot,
                        context: out.context,
                        idempotency: None,
                        replayed: false,
                    }
                }
            }
            ReplicaOp::Replicate {
                object, resolution, ..
            } => {
                stored
                    .get_or_insert_with(VersionedObject::new)
                    .sync(&object, resolution);
                ReplicaResult::Replicated
            }
            ReplicaOp::Get { .. } => ReplicaResult::Got {
                object: stored.clone(),
            },
            other => panic!("unexpected operation {other:?}"),
        });
    }
    axum::Json(ReplicaBatchResult { results })
}

async fn serve(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await.expect("serve") });
    format!("http://{addr}")
}

/// An address where nothing listens (a killed node: connection refused).
fn closed_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    format!("http://{}", l.local_addr().expect("addr"))
}

struct Setup {
    url: String,
    nodes: BTreeMap<NodeId, FakeNode>,
    /// The key's preference list (3 owners) then its fallback.
    order: Vec<NodeId>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), dynamo_coordinator::RunError>>,
}

impl Setup {
    fn node(&self, i: usize) -> &FakeNode {
        &self.nodes[&self.order[i]]
    }

    fn coordinates(&self) -> usize {
        self.nodes
            .values()
            .map(|n| n.coordinates.load(Ordering::SeqCst))
            .sum()
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("stops")
            .expect("join")
            .expect("clean");
    }
}

/// Four fake nodes (N = 3 plus one fallback for key `b/k`); `behaviour(i)` scripts the
/// i-th node of the key's order (0..3 owners, 3 the fallback); `None` is a dead node.
async fn start(behaviour: impl Fn(usize) -> Option<Behaviour>) -> Setup {
    let ids: Vec<NodeId> = (0..4)
        .map(|i| NodeId::new(format!("node-{i}")).expect("id"))
        .collect();
    let placeholder: BTreeMap<NodeId, Member> = ids
        .iter()
        .map(|id| {
            (
                id.clone(),
                Member {
                    zone: None,
                    address: None,
                },
            )
        })
        .collect();
    let parts = Partitioning::with_count(8).expect("q");
    let shape = Ring::new(parts, 3, placeholder).expect("ring");
    let pl = shape.preference_list_for(key_hash("b", "k"), 3);
    let mut order = pl.preference_list.clone();
    order.extend(pl.fallbacks.iter().cloned());
    assert_eq!(order.len(), 4);

    let mut nodes = BTreeMap::new();
    let mut members = BTreeMap::new();
    for (i, id) in order.iter().enumerate() {
        let fake = FakeNode {
            actor: i as u64 + 1,
            behaviour: behaviour(i).unwrap_or(Behaviour::Normal),
            object: Arc::default(),
            coordinates: Arc::default(),
            deadlines: Arc::default(),
        };
        let address = match behaviour(i) {
            Some(_) => {
                serve(
                    Router::new()
                        .route("/internal/v1/replicas", post(replicas))
                        .with_state(fake.clone()),
                )
                .await
            }
            None => closed_address(),
        };
        nodes.insert(id.clone(), fake);
        members.insert(
            id.clone(),
            Member {
                zone: None,
                address: Some(address),
            },
        );
    }
    let ring = Ring::new(parts, 3, members).expect("ring");
    assert_eq!(
        ring.preference_list_for(key_hash("b", "k"), 3).preference_list,
        pl.preference_list,
        "addresses do not move partitions"
    );
    let state = ClusterState {
        version: 1,
        ring: Some(ring),
        nodes: Vec::new(),
        buckets: BTreeMap::new(),
        tokens: Vec::new(),
        handoffs: Vec::new(),
    };
    let ring_url = serve(Router::new().route(
        "/internal/v1/state",
        get(move || {
            let s = state.clone();
            async move { (StatusCode::OK, axum::Json(s)) }
        }),
    ))
    .await;
    let mut config = dynamo_coordinator::Config::for_ring(ring_url, TOKEN);
    config.replica_timeout_ms = 300;
    config.request_timeout_ms = 2_000;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(dynamo_coordinator::run(config, listener, stop.clone()));
    dynamo_server_ready(&url).await;
    Setup {
        url,
        nodes,
        order,
        stop,
        task,
    }
}

async fn dynamo_server_ready(url: &str) {
    let http = reqwest::Client::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let Ok(r) = http.get(format!("{url}/v1/ring")).bearer_auth(TOKEN).send().await
                && r.status().is_success()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("coordinator routes within 20 s");
}

async fn put(url: &str) -> reqwest::Response {
    reqwest::Client::new()
        .put(format!("{url}/v1/kv/b/k"))
        .bearer_auth(TOKEN)
        .body("v")
        .send()
        .await
        .expect("put")
}

// Goal (regression, issue 10): a coordinate that timed out may have minted the write, so
// it is not retried on another node: the client gets an indeterminate 503 and exactly one
// node ever saw a coordinate. Before, the write was coordinated again on a fallback and
// could take effect twice under two dots.
#[tokio::test]
async fn a_coordinate_that_timed_out_is_not_retried_elsewhere() {
    let s = start(|i| {
        Some(if i == 0 {
            Behaviour::HangCoordinate
        } else {
            Behaviour::Normal
        })
    })
    .await;
    let r = put(&s.url).await;
    assert_eq!(r.status().as_u16(), 503);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "quorum_unavailable");
    assert_eq!(s.coordinates(), 1, "the write was coordinated once");
    assert!(
        s.nodes.values().all(|n| n.object.lock().expect("lock").is_none()),
        "nothing was stored elsewhere"
    );
    s.stop().await;
}

// Goal: a coordinate the node refused (here: past its deadline) did not apply, so it is
// retried on the next node and the write succeeds; coordinates carry a deadline.
#[tokio::test]
async fn a_coordinate_refused_past_its_deadline_is_retried_on_the_next_node() {
    let s = start(|i| {
        Some(if i == 0 {
            Behaviour::RefuseCoordinate
        } else {
            Behaviour::Normal
        })
    })
    .await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let r = put(&s.url).await;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        s.coordinates(),
        2,
        "refused once, then coordinated by the next node"
    );
    let deadline = s.node(0).deadlines.lock().expect("lock")[0].expect("a deadline is sent");
    assert!(
        deadline > before && deadline <= before + 2_000 + 1_000,
        "deadline {deadline} vs now {before}"
    );
    s.stop().await;
}

// Goal (regression, issue 10): with one owner dead, a fallback asked in its place answers
// "not found" at once; that is no vote, so a stale fast owner and the fallback cannot make
// an existing key read 404 while the owner that holds it is slower.
#[tokio::test]
async fn a_fallbacks_not_found_does_not_count_toward_r() {
    let s = start(|i| match i {
        0 => None,
        1 => Some(Behaviour::SlowRead),
        _ => Some(Behaviour::Normal),
    })
    .await;
    let mut o = VersionedObject::new();
    o.put(
        &DotSet::new(),
        ActorId(9),
        NewWrite::value(b"kept".to_vec(), "text/plain", 1),
        Resolution::Siblings { max_siblings: 8 },
    )
    .expect("put");
    *s.node(1).object.lock().expect("lock") = Some(o);
    let r = reqwest::Client::new()
        .get(format!("{}/v1/kv/b/k", s.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200, "the slower owner's copy is awaited");
    assert_eq!(r.text().await.expect("body"), "kept");
    s.stop().await;
}
