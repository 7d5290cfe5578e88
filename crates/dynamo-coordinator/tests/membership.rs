//! Membership changes through the coordinator: `POST /v1/cluster/nodes/{node}/replace`
//! is checked at the door (admin, node ids, the body's shape), relayed control-signed to
//! the ring service's replace route, and answered as the ring service answered; so are
//! `POST /v1/cluster/change/retry` and `/abort`, the controls of a failed change; and
//! `GET /v1/cluster` says the largest `n` a shrink must respect (`max_n`). Drives
//! a real coordinator in-process against a fake ring service that records what reached
//! it.

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse as _, Response};
use axum::routing::{get, post};
use common::*;
use dynamo_core::signature::{Role, SIGNATURE_HEADER, Signature};
use dynamo_core::wire::BucketProps;
use dynamo_core::wire::cluster::{
    AllBuckets, BucketRecord, BucketScope, ChangeKindName, ChangeProgress, ChangeSummary, ClusterState,
    ClusterView, Handoff, NodeRegistration, NodeState, NodeStatus, Permission, ReplaceRequest, TokenRecord,
};
use dynamo_core::wire::routes;
use dynamo_core::{ErrorCode, NodeId, PartitionId, RingEpoch};
use dynamo_server::ApiError;
use serde_json::{Value, json};

/// A scoped token that may read every bucket but not administer the cluster.
const READER: &str = "dk_rd000001_a-reader-token-long-enough-for-tests";

/// One replace request as the fake ring service received it.
#[derive(Debug, Clone)]
struct Received {
    /// The `{node}` of the path.
    old: String,
    body: ReplaceRequest,
    /// The role the request was signed with.
    role: Option<Role>,
}

/// A retry or an abort as the fake ring service received it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Control {
    /// The ring service's route it reached.
    route: &'static str,
    /// The role the request was signed with.
    role: Option<Role>,
}

/// A fake ring service: three members, a reader token; it accepts a replace of a member
/// by a newcomer (and from then on serves a state with the change in progress), retries
/// a failed change and aborts one before its ring is published, and refuses the others
/// as the real one does.
#[derive(Clone)]
struct FakeRing {
    state: Arc<Mutex<ClusterState>>,
    received: Arc<Mutex<Vec<Received>>>,
    controls: Arc<Mutex<Vec<Control>>>,
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("node id")
}

fn members() -> [NodeId; 3] {
    [id("node-0"), id("node-1"), id("node-2")]
}

impl FakeRing {
    fn new() -> FakeRing {
        // Addresses nobody listens on: the cluster view's progress questions fail fast.
        let ring = ring(
            8,
            members()
                .into_iter()
                .map(|n| (n, None))
                .collect::<BTreeMap<_, _>>(),
        );
        let nodes = members()
            .into_iter()
            .map(|n| NodeStatus {
                node_id: n,
                address: "http://127.0.0.1:1".into(),
                zone: None,
                state: NodeState::Up,
                last_heartbeat_ms_ago: None,
                anti_entropy: None,
                volume: None,
                volume_refused: None,
            })
            .collect();
        let reader = TokenRecord {
            id: "rd000001".into(),
            sha256: dynamo_coordinator::auth::token_sha256(READER),
            buckets: BucketScope::All(AllBuckets::Star),
            permissions: vec![Permission::Read],
            created_ms: 1,
            expires_ms: None,
            rate_limit_rps: None,
        };
        FakeRing {
            state: Arc::new(Mutex::new(ClusterState {
                version: 1,
                ring: Some(ring),
                nodes,
                tokens: vec![reader],
                ..ClusterState::default()
            })),
            received: Arc::default(),
            controls: Arc::default(),
        }
    }

    /// Puts a replace of node-2 by node-3 in progress, in `phase`, failed: what the ring
    /// service holds once a copy exhausted its attempts.
    fn with_failed_replace(self, phase: &str) -> FakeRing {
        {
            let mut s = self.state.lock().expect("lock");
            let new = NodeRegistration {
                node_id: id("node-3"),
                address: "http://10.0.0.3:7100".into(),
                zone: None,
            };
            begin_replace(&mut s, "node-2", &new);
            if let Some(c) = s.change.as_mut() {
                c.phase = phase.into();
                c.failed = Some("partition 1 from node-2 into node-3: 5 attempts failed".into());
            }
        }
        self
    }

    async fn serve(&self) -> String {
        dynamo_testkit::serve(
            Router::new()
                .route(routes::ring::STATE, get(fake_state))
                .route(routes::ring::NODE_REPLACE, post(fake_replace))
                .route(routes::ring::CHANGE_RETRY, post(fake_retry))
                .route(routes::ring::CHANGE_ABORT, post(fake_abort))
                .with_state(self.clone()),
        )
        .await
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().expect("lock").clone()
    }

    fn controls(&self) -> Vec<Control> {
        self.controls.lock().expect("lock").clone()
    }
}

/// The role a request was signed with, if its signature parses.
fn signed_role(headers: &HeaderMap) -> Option<Role> {
    headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| Signature::parse(h).ok())
        .map(|s| s.role)
}

/// The ring service's view of `s`: its answer to every change.
fn view_of(s: &ClusterState) -> ClusterView {
    ClusterView {
        epoch: s.ring_epoch(),
        nodes: s.nodes.clone(),
        handoffs: s.handoffs.clone(),
        change: s.change.as_ref().map(|c| ChangeProgress::of(c, &s.handoffs)),
        max_n: None,
        ring_group: None,
    }
}

async fn fake_state(State(f): State<FakeRing>) -> axum::Json<ClusterState> {
    axum::Json(f.state.lock().expect("lock").clone())
}

async fn fake_replace(
    State(f): State<FakeRing>,
    Path(old): Path<String>,
    headers: HeaderMap,
    axum::Json(body): axum::Json<ReplaceRequest>,
) -> Response {
    let role = signed_role(&headers);
    f.received.lock().expect("lock").push(Received {
        old: old.clone(),
        body: body.clone(),
        role,
    });
    let mut s = f.state.lock().expect("lock");
    if !s.nodes.iter().any(|n| n.node_id.as_str() == old) {
        return ApiError::new(ErrorCode::NodeNotFound, format!("node {old} is not a member")).into_response();
    }
    if s.nodes.iter().any(|n| n.node_id == body.new_node.node_id) {
        return ApiError::new(
            ErrorCode::MembershipConflict,
            format!("node {} is already a member", body.new_node.node_id),
        )
        .into_response();
    }
    if !body.new_node.address.starts_with("http") {
        return ApiError::new(ErrorCode::InvalidRequest, "address must be an http(s) URL").into_response();
    }
    begin_replace(&mut s, &old, &body.new_node);
    (StatusCode::ACCEPTED, axum::Json(view_of(&s))).into_response()
}

/// What the real ring service records when it begins a replace: the newcomer joining,
/// the old node leaving, one copy per partition and source, the change's summary.
fn begin_replace(s: &mut ClusterState, old: &str, new_node: &NodeRegistration) {
    let change = ChangeSummary {
        kind: ChangeKindName::Replace,
        node: id(old),
        replacement: Some(new_node.node_id.clone()),
        phase: "copy".into(),
        epoch: RingEpoch(2),
        failed: None,
    };
    for n in &mut s.nodes {
        if n.node_id.as_str() == old {
            n.state = NodeState::Leaving;
        }
    }
    s.nodes.push(NodeStatus {
        node_id: new_node.node_id.clone(),
        address: new_node.address.clone(),
        zone: new_node.zone.clone(),
        state: NodeState::Joining,
        last_heartbeat_ms_ago: None,
        anti_entropy: None,
        volume: None,
        volume_refused: None,
    });
    let new = new_node.node_id.clone();
    s.handoffs = vec![
        Handoff {
            objects: 3,
            bytes: 300,
            done: true,
            ..Handoff::new(PartitionId(1), id("node-1"), new.clone())
        },
        Handoff {
            objects: 1,
            bytes: 100,
            error: Some("source_unavailable: connection refused".into()),
            ..Handoff::new(PartitionId(1), id("node-2"), new.clone())
        },
        Handoff::new(PartitionId(4), id("node-1"), new),
    ];
    s.change = Some(change);
    s.version += 1;
}

/// `POST /internal/v1/change/retry` as the ring service answers it: `202` with the view
/// once a failed change runs again; `409 membership_conflict` when none is in progress
/// or it has not failed.
async fn fake_retry(State(f): State<FakeRing>, headers: HeaderMap) -> Response {
    f.controls.lock().expect("lock").push(Control {
        route: routes::ring::CHANGE_RETRY,
        role: signed_role(&headers),
    });
    let mut s = f.state.lock().expect("lock");
    let Some(change) = s.change.as_mut() else {
        return ApiError::new(
            ErrorCode::MembershipConflict,
            "no membership change is in progress",
        )
        .into_response();
    };
    if change.failed.take().is_none() {
        return ApiError::new(
            ErrorCode::MembershipConflict,
            "the membership change is running; nothing to retry",
        )
        .into_response();
    }
    s.version += 1;
    (StatusCode::ACCEPTED, axum::Json(view_of(&s))).into_response()
}

/// `POST /internal/v1/change/abort` as the ring service answers it: `200` with the view
/// once the change is undone (newcomer forgotten, leaver up again, ring untouched);
/// `409 membership_conflict` when none is in progress or its ring is already published.
async fn fake_abort(State(f): State<FakeRing>, headers: HeaderMap) -> Response {
    f.controls.lock().expect("lock").push(Control {
        route: routes::ring::CHANGE_ABORT,
        role: signed_role(&headers),
    });
    let mut s = f.state.lock().expect("lock");
    let Some(change) = s.change.clone() else {
        return ApiError::new(
            ErrorCode::MembershipConflict,
            "no membership change is in progress",
        )
        .into_response();
    };
    if change.phase != "copy" {
        return ApiError::new(
            ErrorCode::MembershipConflict,
            "the new ring is already published; the change can only be retried",
        )
        .into_response();
    }
    s.nodes
        .retain(|n| Some(&n.node_id) != change.replacement.as_ref());
    for n in &mut s.nodes {
        if n.node_id == change.node {
            n.state = NodeState::Up;
        }
    }
    s.handoffs.clear();
    s.change = None;
    s.version += 1;
    (StatusCode::OK, axum::Json(view_of(&s))).into_response()
}

async fn post_replace(url: &str, bearer: &str, old: &str, body: Value) -> (u16, Value) {
    let r = dynamo_testkit::unsigned_http()
        .post(format!("{url}/v1/cluster/nodes/{old}/replace"))
        .bearer_auth(bearer)
        .json(&body)
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

// Goal: an admin's replace reaches the ring service's replace route for the old node,
// signed as control, with the new node's registration unchanged; the answer is the ring
// service's 202 with its view of the change; and the coordinator's own cluster view
// shows the change at once (it refreshed its state before answering), with the progress
// summed over each copy's sources.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replace_is_relayed_to_the_ring_service_and_answered_202_with_the_view() {
    let fake = FakeRing::new();
    let coordinator = Coordinator::start(fake.serve().await, |_| {}).await;
    let url = coordinator.url.clone();

    let (status, body) = post_replace(
        &url,
        TOKEN,
        "node-2",
        json!({"node_id": "node-3", "address": "http://10.0.0.3:7100", "zone": "z3"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["change"]["change"]["kind"], "replace");
    assert_eq!(body["change"]["change"]["node"], "node-2");
    assert_eq!(body["change"]["change"]["replacement"], "node-3");

    let received = fake.received();
    assert_eq!(received.len(), 1);
    assert_eq!(received[0].old, "node-2");
    assert_eq!(received[0].body.new_node.node_id, id("node-3"));
    assert_eq!(received[0].body.new_node.address, "http://10.0.0.3:7100");
    assert_eq!(received[0].body.new_node.zone.as_deref(), Some("z3"));
    assert_eq!(received[0].role, Some(Role::Control));

    let view: ClusterView = dynamo_testkit::unsigned_http()
        .get(format!("{url}/v1/cluster"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("a cluster view");
    let change = view.change.expect("the change in progress is shown at once");
    assert_eq!(change.change.kind, ChangeKindName::Replace);
    assert_eq!(change.change.replacement, Some(id("node-3")));
    assert_eq!(change.change.phase, "copy");
    // Partition 1 has two sources (one done, one retrying), partition 4 one: two copies,
    // none complete, 400 bytes, stuck on the retrying source.
    assert_eq!((change.partitions_done, change.partitions_total), (0, 2));
    assert_eq!((change.objects, change.bytes), (4, 400));
    let stuck = change.stuck.expect("the retrying copy says why");
    assert!(stuck.contains("partition 1 from node-2 into node-3"), "{stuck}");
    assert!(
        view.nodes
            .iter()
            .any(|n| n.node_id == id("node-3") && n.state == NodeState::Joining)
    );
    coordinator.stop().await;
}

// Goal: a replace the coordinator can judge by itself never reaches the ring service:
// a token without cluster-wide admin (403), an invalid old node id in the path
// (`invalid_node_id`), an invalid new node id, an unknown field or a missing address in
// the body (`invalid_json`, naming what is wrong).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_replaces_are_refused_at_the_coordinator() {
    let fake = FakeRing::new();
    let coordinator = Coordinator::start(fake.serve().await, |_| {}).await;
    let url = coordinator.url.clone();
    let good = json!({"node_id": "node-3", "address": "http://10.0.0.3:7100"});

    let (status, body) = post_replace(&url, READER, "node-2", good.clone()).await;
    assert_eq!((status, code(&body)), (403, "forbidden"), "{body}");

    let (status, body) = post_replace(&url, TOKEN, "Node_2", good).await;
    assert_eq!((status, code(&body)), (400, "invalid_node_id"), "{body}");

    let bad_new_id = json!({"node_id": "Node 3", "address": "http://10.0.0.3:7100"});
    let (status, body) = post_replace(&url, TOKEN, "node-2", bad_new_id).await;
    assert_eq!((status, code(&body)), (400, "invalid_json"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("node id must be"), "{message}");

    let unknown = json!({"node_id": "node-3", "address": "http://10.0.0.3:7100", "weight": 2});
    let (status, body) = post_replace(&url, TOKEN, "node-2", unknown).await;
    assert_eq!((status, code(&body)), (400, "invalid_json"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("weight"), "{message}");

    let (status, body) = post_replace(&url, TOKEN, "node-2", json!({"node_id": "node-3"})).await;
    assert_eq!((status, code(&body)), (400, "invalid_json"), "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("address"), "{message}");

    assert!(fake.received().is_empty(), "nothing reached the ring service");
    coordinator.stop().await;
}

// Goal: the ring service's refusals reach the caller with their status, code and
// message: an old node that is not a member (404 node_not_found), a new node that already
// is (409 membership_conflict), an address the ring service refuses (400
// invalid_request).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_service_refusals_of_a_replace_are_relayed() {
    let fake = FakeRing::new();
    let coordinator = Coordinator::start(fake.serve().await, |_| {}).await;
    let url = coordinator.url.clone();

    let new = json!({"node_id": "node-3", "address": "http://10.0.0.3:7100"});
    let (status, body) = post_replace(&url, TOKEN, "node-9", new).await;
    assert_eq!((status, code(&body)), (404, "node_not_found"), "{body}");
    assert_eq!(body["error"]["message"], "node node-9 is not a member");

    let member = json!({"node_id": "node-1", "address": "http://10.0.0.3:7100"});
    let (status, body) = post_replace(&url, TOKEN, "node-2", member).await;
    assert_eq!((status, code(&body)), (409, "membership_conflict"), "{body}");

    let bad_address = json!({"node_id": "node-3", "address": "10.0.0.3:7100"});
    let (status, body) = post_replace(&url, TOKEN, "node-2", bad_address).await;
    assert_eq!((status, code(&body)), (400, "invalid_request"), "{body}");
    assert_eq!(body["error"]["message"], "address must be an http(s) URL");

    assert_eq!(fake.received().len(), 3);
    coordinator.stop().await;
}

/// `POST /v1/cluster/change/{what}` (`retry` or `abort`) with `bearer`.
async fn post_control(url: &str, bearer: &str, what: &str) -> (u16, Value) {
    let r = dynamo_testkit::unsigned_http()
        .post(format!("{url}/v1/cluster/change/{what}"))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("send");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or_default())
}

async fn cluster_view(url: &str) -> ClusterView {
    dynamo_testkit::unsigned_http()
        .get(format!("{url}/v1/cluster"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("a cluster view")
}

// Goal: the cluster view says how many replicas the largest `n` asks for (`max_n`), so
// an operator can refuse to shrink the cluster below it: the ring's N (3) without
// buckets of their own, a bucket's larger `n` once one has it. Method: two coordinators
// on two fake ring states, one view each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_shows_the_largest_n() {
    let fake = FakeRing::new();
    let coordinator = Coordinator::start(fake.serve().await, |_| {}).await;
    assert_eq!(cluster_view(&coordinator.url).await.max_n, Some(3));
    coordinator.stop().await;

    let fake = FakeRing::new();
    fake.state.lock().expect("lock").buckets.insert(
        dynamo_core::BucketName::new("wide").expect("bucket"),
        BucketRecord {
            props: BucketProps {
                n: 5,
                ..BucketProps::default()
            },
            has_data: true,
        },
    );
    let coordinator = Coordinator::start(fake.serve().await, |_| {}).await;
    let view = cluster_view(&coordinator.url).await;
    assert_eq!(view.max_n, Some(5), "the bucket with n = 5 counts");
    assert_eq!(view.nodes.len(), 3);
    coordinator.stop().await;
}

// Goal: an admin's retry of a failed change reaches the ring service's retry route,
// signed as control, and is answered with its 202 and the view of the change running
// again (no longer failed); the coordinator's own cluster view shows it running at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_is_relayed_to_the_ring_service_and_answered_202_with_the_view() {
    let fake = FakeRing::new().with_failed_replace("copy");
    let coordinator = Coordinator::start(fake.serve().await, |_| {}).await;
    let url = coordinator.url.clone();
    let before = cluster_view(&url).await.change.expect("the failed change shows");
    assert!(before.change.failed.is_some(), "the change starts failed");

    let (status, body) = post_control(&url, TOKEN, "retry").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["change"]["change"]["kind"], "replace");
    assert_eq!(body["change"]["change"]["node"], "node-2");
    assert!(body["change"]["change"]["failed"].is_null(), "{body}");
    assert_eq!(
        fake.controls(),
        vec![Control {
            route: routes::ring::CHANGE_RETRY,
            role: Some(Role::Control),
        }]
    );

    let change = cluster_view(&url).await.change.expect("the change still runs");
    assert_eq!(change.change.replacement, Some(id("node-3")));
    assert_eq!(
        change.change.failed, None,
        "the coordinator refreshed before answering"
    );
    coordinator.stop().await;
}

// Goal: an admin's abort of a change before its ring is published reaches the ring
// service's abort route, signed as control, and is answered with its 200 and the view
// without the change: the newcomer gone, the old node up; the coordinator's own cluster
// view shows the same at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_is_relayed_to_the_ring_service_and_answered_200_with_the_view() {
    let fake = FakeRing::new().with_failed_replace("copy");
    let coordinator = Coordinator::start(fake.serve().await, |_| {}).await;
    let url = coordinator.url.clone();
    assert!(
        cluster_view(&url).await.change.is_some(),
        "the change shows first"
    );

    let (status, body) = post_control(&url, TOKEN, "abort").await;
    assert_eq!(status, 200, "{body}");
    let answered: ClusterView = serde_json::from_value(body).expect("a cluster view");
    assert_eq!(answered.change, None);
    assert!(answered.handoffs.is_empty());
    assert_eq!(
        fake.controls(),
        vec![Control {
            route: routes::ring::CHANGE_ABORT,
            role: Some(Role::Control),
        }]
    );

    let view = cluster_view(&url).await;
    assert_eq!(view.change, None, "the coordinator refreshed before answering");
    assert!(
        !view.nodes.iter().any(|n| n.node_id == id("node-3")),
        "the newcomer is gone"
    );
    assert!(
        view.nodes
            .iter()
            .any(|n| n.node_id == id("node-2") && n.state == NodeState::Up),
        "the old node is a member again"
    );
    coordinator.stop().await;
}

// Goal: the ring service's refusals of the controls reach the caller as its 409
// membership_conflict with its message: a retry or an abort with no change in progress,
// a retry of a change that has not failed, an abort once the new ring is published.
// Each reached the ring service (the coordinator does not judge them itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_service_refusals_of_retry_and_abort_are_relayed_as_409() {
    let fake = FakeRing::new();
    let coordinator = Coordinator::start(fake.serve().await, |_| {}).await;
    let url = coordinator.url.clone();
    for what in ["retry", "abort"] {
        let (status, body) = post_control(&url, TOKEN, what).await;
        assert_eq!(
            (status, code(&body)),
            (409, "membership_conflict"),
            "{what}: {body}"
        );
        assert_eq!(body["error"]["message"], "no membership change is in progress");
    }
    coordinator.stop().await;

    // A change in its catch-up phase (its ring published), failed.
    let fake = FakeRing::new().with_failed_replace("catch_up");
    let coordinator = Coordinator::start(fake.serve().await, |_| {}).await;
    let url = coordinator.url.clone();
    let (status, body) = post_control(&url, TOKEN, "abort").await;
    assert_eq!((status, code(&body)), (409, "membership_conflict"), "{body}");
    assert_eq!(
        body["error"]["message"],
        "the new ring is already published; the change can only be retried"
    );
    let (status, body) = post_control(&url, TOKEN, "retry").await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = post_control(&url, TOKEN, "retry").await;
    assert_eq!((status, code(&body)), (409, "membership_conflict"), "{body}");
    assert_eq!(
        body["error"]["message"],
        "the membership change is running; nothing to retry"
    );
    assert_eq!(fake.controls().len(), 3, "every control reached the ring service");
    coordinator.stop().await;
}

// Goal: a token without cluster-wide admin is refused both controls (403 forbidden) at
// the coordinator, and neither reaches the ring service: the failed change stays failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_and_abort_are_refused_without_cluster_wide_admin() {
    let fake = FakeRing::new().with_failed_replace("copy");
    let coordinator = Coordinator::start(fake.serve().await, |_| {}).await;
    let url = coordinator.url.clone();
    for what in ["retry", "abort"] {
        let (status, body) = post_control(&url, READER, what).await;
        assert_eq!((status, code(&body)), (403, "forbidden"), "{what}: {body}");
    }
    assert!(fake.controls().is_empty(), "nothing reached the ring service");
    let change = cluster_view(&url)
        .await
        .change
        .expect("the change is still there");
    assert!(change.change.failed.is_some(), "and still failed");
    coordinator.stop().await;
}

// Goal: `--ring-url` takes several replicas and the coordinator passes one it cannot
// connect to: with a closed address first and a working ring service second, it follows
// the state (it serves the ring and the failed change) and relays an admin call, which
// reaches the working replica exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_first_replica_is_passed_for_the_next() {
    let fake = FakeRing::new().with_failed_replace("copy");
    let ring_urls = format!("{},{}", dynamo_testkit::closed_address(), fake.serve().await);
    let coordinator = Coordinator::start(ring_urls, |_| {}).await;
    let url = coordinator.url.clone();
    let change = cluster_view(&url).await.change.expect("the state was followed");
    assert!(change.change.failed.is_some());

    let (status, body) = post_control(&url, TOKEN, "retry").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        fake.controls(),
        vec![Control {
            route: routes::ring::CHANGE_RETRY,
            role: Some(Role::Control),
        }]
    );
    coordinator.stop().await;
}

/// A retry that reached a replica which died before answering: the handler panics, so
/// the replica closes the connection with the request taken and no answer.
async fn take_and_die(State(f): State<FakeRing>, headers: HeaderMap) -> Response {
    f.controls.lock().expect("lock").push(Control {
        route: routes::ring::CHANGE_RETRY,
        role: signed_role(&headers),
    });
    panic!("the replica dies after taking the retry (expected by the test)");
}

// Goal: a relayed write that a replica may have applied is not sent to another one: the
// first replica takes a retry and closes the connection without answering, so the
// caller gets `503 ring_unavailable` and the second replica never sees the retry (it
// would run the change a second time). Method: two fake replicas sharing nothing; the
// first serves the state (so it stays current) and dies on the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_a_replica_may_have_applied_is_not_sent_to_another() {
    let dying = FakeRing::new().with_failed_replace("copy");
    let dying_url = dynamo_testkit::serve(
        Router::new()
            .route(routes::ring::STATE, get(fake_state))
            .route(routes::ring::CHANGE_RETRY, post(take_and_die))
            .with_state(dying.clone()),
    )
    .await;
    let other = FakeRing::new().with_failed_replace("copy");
    let coordinator = Coordinator::start(format!("{dying_url},{}", other.serve().await), |_| {}).await;

    let (status, body) = post_control(&coordinator.url, TOKEN, "retry").await;
    assert_eq!((status, code(&body)), (503, "ring_unavailable"), "{body}");
    assert_eq!(dying.controls().len(), 1, "the first replica took the retry");
    assert!(other.controls().is_empty(), "and no other replica saw it");
    coordinator.stop().await;
}
