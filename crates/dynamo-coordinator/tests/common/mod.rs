//! The scaffolding of the coordinator's tests, written once: a real coordinator
//! in-process, a fake ring service answering one state, and fake storage nodes that
//! store like a real node (core merge rules), or misbehave as a test scripts, and record
//! what they were sent.

#![allow(dead_code)] // Each test binary uses its own part.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse as _;
use axum::routing::{get, post};
use dynamo_core::ring::{Member, Ring};
use dynamo_core::version::{NewWrite, VersionedObject};
use dynamo_core::wire::cluster::ClusterState;
use dynamo_core::wire::internal::{ReplicaBatch, ReplicaBatchResult, ReplicaOp, ReplicaResult};
use dynamo_core::wire::routes;
use dynamo_core::{ActorId, ErrorCode};
use dynamo_testkit::eventually;
use tokio_util::sync::CancellationToken;

pub const TOKEN: &str = "root-token-for-tests-0123";

/// How a fake storage node answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Stores and answers like a real node.
    Normal,
    /// Never answers a batch holding a coordinate (a node that hung mid-write).
    HangCoordinate,
    /// Refuses coordinates as arriving past their deadline.
    RefuseCoordinate,
    /// Answers reads only after a delay.
    SlowRead,
}

/// A batch's `x-request-id` and `traceparent`, as received.
pub type TraceHeaders = (Option<String>, Option<String>);

/// A fake storage node holding one object (the tests use one key).
#[derive(Clone)]
pub struct FakeNode {
    pub actor: u64,
    pub behaviour: Behaviour,
    pub object: Arc<Mutex<Option<VersionedObject>>>,
    pub coordinates: Arc<AtomicUsize>,
    pub deadlines: Arc<Mutex<Vec<Option<u64>>>>,
    /// The `x-request-id` and `traceparent` of every batch received.
    pub headers: Arc<Mutex<Vec<TraceHeaders>>>,
}

impl FakeNode {
    /// A node minting dots as `actor`.
    pub fn new(actor: u64, behaviour: Behaviour) -> FakeNode {
        FakeNode {
            actor,
            behaviour,
            object: Arc::default(),
            coordinates: Arc::default(),
            deadlines: Arc::default(),
            headers: Arc::default(),
        }
    }

    /// Serves the node's replica route; returns its address.
    pub async fn serve(&self) -> String {
        dynamo_testkit::serve(
            Router::new()
                .route(routes::storage::REPLICAS, post(replicas))
                .with_state(self.clone()),
        )
        .await
    }

    /// Returns how many batches with a coordinate reached the node.
    pub fn coordinates(&self) -> usize {
        self.coordinates.load(Ordering::SeqCst)
    }
}

async fn replicas(
    State(n): State<FakeNode>,
    headers: HeaderMap,
    body: axum::Json<ReplicaBatch>,
) -> axum::Json<ReplicaBatchResult> {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    n.headers
        .lock()
        .expect("lock")
        .push((h("x-request-id"), h("traceparent")));
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
                conflict,
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
                            conflict,
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
            ReplicaOp::Replicate { object, conflict, .. } => {
                stored
                    .get_or_insert_with(VersionedObject::new)
                    .sync(&object, conflict);
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

/// A ring over `members` (id → address) with `q` partitions and N = 3.
pub fn ring(q: u64, members: BTreeMap<dynamo_core::NodeId, Option<String>>) -> Ring {
    let members = members
        .into_iter()
        .map(|(id, address)| (id, Member { zone: None, address }))
        .collect();
    Ring::new(dynamo_core::Partitioning::with_count(q).expect("q"), 3, members).expect("ring")
}

/// Serves a ring service that answers `ring` (state version 1) to every state poll.
pub async fn fake_ring_service(ring: Ring) -> String {
    fake_ring_service_with(ClusterState {
        version: 1,
        ring: Some(ring),
        ..ClusterState::default()
    })
    .await
}

/// Serves a ring service that answers `state` to every state poll.
pub async fn fake_ring_service_with(state: ClusterState) -> String {
    fake_ring_service_switch(state).await.0
}

/// Serves a ring service that answers `state` to every state poll while the returned
/// switch is on, and `503` while it is off (a ring service that cannot answer).
pub async fn fake_ring_service_switch(state: ClusterState) -> (String, Arc<std::sync::atomic::AtomicBool>) {
    let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let on = up.clone();
    let url = dynamo_testkit::serve(Router::new().route(
        routes::ring::STATE,
        get(move || {
            let s = state.clone();
            let up = on.load(Ordering::SeqCst);
            async move {
                if up {
                    (StatusCode::OK, axum::Json(s)).into_response()
                } else {
                    StatusCode::SERVICE_UNAVAILABLE.into_response()
                }
            }
        }),
    ))
    .await;
    (url, up)
}

/// A coordinator running in-process.
pub struct Coordinator {
    pub url: String,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), dynamo_coordinator::RunError>>,
}

impl Coordinator {
    /// Starts a coordinator following `ring_url` (root token [`TOKEN`]), with `tweak`
    /// applied to its configuration, and waits until it serves the ring.
    pub async fn start(ring_url: String, tweak: impl FnOnce(&mut dynamo_coordinator::Config)) -> Coordinator {
        let mut config = dynamo_coordinator::Config::for_ring(ring_url, TOKEN);
        tweak(&mut config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let task = tokio::spawn(dynamo_coordinator::run(config, listener, stop.clone()));
        let http = dynamo_testkit::unsigned_http();
        eventually("the coordinator serves the ring", || async {
            http.get(format!("{url}/v1/ring"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        Coordinator { url, stop, task }
    }

    /// Stops the coordinator and checks it returned cleanly.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("stops")
            .expect("join")
            .expect("clean");
    }
}
