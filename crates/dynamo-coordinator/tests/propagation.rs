//! The coordinator forwards the client's request id and W3C trace to storage nodes, so
//! one PUT is one trace across services. Drives a real coordinator in-process against a
//! fake ring service and a fake storage node that records what it receives.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use dynamo_core::ring::{Member, Ring};
use dynamo_core::version::{NewWrite, VersionedObject};
use dynamo_core::wire::cluster::ClusterState;
use dynamo_core::wire::internal::{ReplicaBatch, ReplicaBatchResult, ReplicaOp, ReplicaResult};
use dynamo_core::{ActorId, NodeId, Partitioning};
use tokio_util::sync::CancellationToken;

type Seen = Arc<Mutex<Vec<(Option<String>, Option<String>)>>>;

async fn fake_storage(
    State(seen): State<Seen>,
    headers: HeaderMap,
    body: axum::Json<ReplicaBatch>,
) -> axum::Json<ReplicaBatchResult> {
    let h = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).map(str::to_owned);
    seen.lock()
        .expect("lock")
        .push((h("x-request-id"), h("traceparent")));
    let results = body
        .0
        .ops
        .into_iter()
        .map(|op| match op {
            ReplicaOp::CoordinatePut {
                context,
                value,
                content_type,
                resolution,
                ..
            } => {
                let mut o = VersionedObject::new();
                let out = o
                    .put(
                        &context,
                        ActorId(1),
                        NewWrite::value(value, content_type, 1),
                        resolution,
                    )
                    .expect("put");
                ReplicaResult::Put {
                    object: o,
                    dot: out.dot,
                    context: out.context,
                    idempotency: None,
                    replayed: false,
                }
            }
            ReplicaOp::Replicate { .. } => ReplicaResult::Replicated,
            ReplicaOp::Get { .. } => ReplicaResult::Got { object: None },
            other => panic!("unexpected operation {other:?}"),
        })
        .collect();
    axum::Json(ReplicaBatchResult { results })
}

async fn serve(app: Router) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(l, app).await.expect("serve") });
    format!("http://{addr}")
}

// Goal: a client's x-request-id and traceparent reach the storage node with the same
// request id and trace id (and a new span id).
#[tokio::test]
async fn request_id_and_trace_reach_the_storage_nodes() {
    let seen: Seen = Arc::default();
    let storage = serve(
        Router::new()
            .route("/internal/v1/replicas", post(fake_storage))
            .with_state(seen.clone()),
    )
    .await;
    let node = NodeId::new("node-0").expect("id");
    let members = BTreeMap::from([(
        node,
        Member {
            zone: None,
            address: Some(storage),
        },
    )]);
    let ring = Ring::new(Partitioning::with_count(8).expect("q"), 3, members).expect("ring");
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

    let config = dynamo_coordinator::Config::for_ring(ring_url, "root-token-for-tests-0123");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let task = tokio::spawn(dynamo_coordinator::run(config, listener, stop.clone()));

    let http = reqwest::Client::new();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = http
        .put(format!("{url}/v1/kv/b/k?w=1"))
        .bearer_auth("root-token-for-tests-0123")
        .header("x-request-id", "req-42")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(resp.headers()["x-request-id"], "req-42");

    let seen = seen.lock().expect("lock").clone();
    assert!(!seen.is_empty());
    for (rid, tp) in seen {
        assert_eq!(rid.as_deref(), Some("req-42"));
        let tp = tp.expect("traceparent sent");
        assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
        assert!(!tp.contains("00f067aa0ba902b7"), "a new span id per hop");
    }
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("stops")
        .expect("join")
        .expect("clean");
}
