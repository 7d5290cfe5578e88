//! The reconcile against a scripted Kubernetes API server (`tower_test::mock::pair`
//! behind a real `kube::Client`) and a fake Dynamo public API (an axum server on
//! loopback): each test plays one scenario and asserts the exchange, request by request
//! (method, path, body), and what was never sent. Every test is bounded by a timeout.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use dynamo_client::{
    AntiEntropyStatus, ChangeKindName, ChangeProgress, ChangeSummary, ClusterView, NodeId, NodeRegistration,
    NodeState, NodeStatus, RingEpoch,
};
use dynamo_operator::crd::DynamoCluster;
use dynamo_operator::lease::{self, Leadership, LeaseConfig};
use dynamo_operator::metrics::Metrics;
use dynamo_operator::reconcile::{self, Context, Settings};
use http::{Request, Response};
use k8s_openapi::jiff::Timestamp;
use kube::client::Body;
use kube::runtime::events::{Recorder, Reporter};
use serde_json::{Value, json};

const TEST_TIMEOUT: Duration = Duration::from_secs(20);
const NS: &str = "ns";
const SUFFIX: &str = "dc-storage.ns.svc.cluster.local:7100";

// ---------------------------------------------------------------------------------------
// The fake Kubernetes API server.

/// One request the operator sent.
#[derive(Clone, Debug)]
struct Call {
    method: String,
    /// The path and query.
    uri: String,
    body: Value,
}

impl Call {
    fn path(&self) -> &str {
        self.uri.split('?').next().unwrap_or_default()
    }

    fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path() == path
    }
}

/// What the fake API server holds and answers from.
#[derive(Default)]
struct World {
    /// The DynamoCluster as stored.
    dc: Value,
    /// `spec.replicas` of each live StatefulSet.
    statefulsets: BTreeMap<String, i64>,
    /// `spec.updateStrategy.rollingUpdate.partition` of each, as last applied.
    partitions: BTreeMap<String, i64>,
    /// `spec.podManagementPolicy` of each: immutable, so an apply that changes it is
    /// refused (422), as the real API server does.
    policies: BTreeMap<String, String>,
    /// `status.currentRevision` and `status.updateRevision` of each, as the test plays
    /// the StatefulSet controller.
    revisions: BTreeMap<String, (String, String)>,
    /// Ready storage pods.
    ready_pods: Vec<String>,
    /// The revision (`controller-revision-hash`) each storage pod runs; a pod listed
    /// here and not in `ready_pods` exists but is not ready.
    pod_revisions: BTreeMap<String, String>,
    /// Status codes to answer for (method, path) instead of the normal reply, once each.
    fail_once: Vec<(String, String, u16)>,
    /// Every request, in order.
    log: Vec<Call>,
}

type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

/// Plays the Kubernetes API server until the test ends: answers each request from
/// `world` and records it.
fn spawn_api_server(mut handle: Handle, world: Arc<Mutex<World>>) {
    tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.expect("request body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let call = Call {
                method: parts.method.to_string(),
                uri: parts.uri.to_string(),
                body,
            };
            let (status, reply) = answer(&mut world.lock().expect("world"), &call);
            let response = Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                .expect("response");
            send.send_response(response);
        }
    });
}

fn status(code: u16, reason: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": reason, "reason": reason, "code": code})
}

fn answer(world: &mut World, call: &Call) -> (u16, Value) {
    world.log.push(call.clone());
    let path = call.path().to_owned();
    if let Some(i) = world
        .fail_once
        .iter()
        .position(|(m, p, _)| *m == call.method && *p == path)
    {
        let (_, _, code) = world.fail_once.remove(i);
        return (
            code,
            status(code, if code == 409 { "Conflict" } else { "InternalError" }),
        );
    }
    let base = format!("/apis/dynamo.io/v1alpha1/namespaces/{NS}/dynamoclusters/dc");
    let sts_base = format!("/apis/apps/v1/namespaces/{NS}/statefulsets/");
    match (call.method.as_str(), path.as_str()) {
        // The finalizer helper's JSON patch, and the status merge patch.
        ("PATCH", p) if p == base => {
            if let Some(ops) = call.body.as_array() {
                for op in ops {
                    if op["op"] == "add" && op["path"] == "/metadata/finalizers" {
                        world.dc["metadata"]["finalizers"] = op["value"].clone();
                    }
                    if op["op"] == "remove" {
                        world.dc["metadata"]["finalizers"] = json!([]);
                    }
                }
            }
            (200, world.dc.clone())
        }
        ("PATCH", p) if p == format!("{base}/status") => {
            world.dc["status"] = call.body["status"].clone();
            (200, world.dc.clone())
        }
        ("GET", p) if p.starts_with(&sts_base) => {
            let name = &p[sts_base.len()..];
            match world.statefulsets.get(name) {
                Some(r) => {
                    let mut sts = json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": NS}, "spec": {"replicas": r, "selector": {}, "serviceName": "x", "template": {}}});
                    if let Some(p) = world.partitions.get(name) {
                        sts["spec"]["updateStrategy"] =
                            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": p}});
                    }
                    if let Some(p) = world.policies.get(name) {
                        sts["spec"]["podManagementPolicy"] = json!(p);
                    }
                    if let Some((current, update)) = world.revisions.get(name) {
                        sts["status"] =
                            json!({"replicas": r, "currentRevision": current, "updateRevision": update});
                    }
                    (200, sts)
                }
                None => (404, status(404, "NotFound")),
            }
        }
        ("PATCH", p) if p.starts_with(&sts_base) => {
            let name = p[sts_base.len()..].to_owned();
            let replicas = call.body["spec"]["replicas"]
                .as_i64()
                .expect("replicas in the apply body");
            let policy = call.body["spec"]["podManagementPolicy"]
                .as_str()
                .expect("a podManagementPolicy in the apply body")
                .to_owned();
            if world.policies.get(&name).is_some_and(|p| *p != policy) {
                return (422, status(422, "Invalid"));
            }
            world.policies.insert(name.clone(), policy);
            if let Some(p) = call.body["spec"]["updateStrategy"]["rollingUpdate"]["partition"].as_i64() {
                world.partitions.insert(name.clone(), p);
            }
            world.statefulsets.insert(name, replicas);
            (200, call.body.clone())
        }
        // Every other server-side apply: echo the object.
        ("PATCH", _) if call.uri.contains("fieldManager=dynamo-operator") => (200, call.body.clone()),
        ("GET", p) if p == format!("/api/v1/namespaces/{NS}/pods") => {
            let mut names: Vec<&String> = world.ready_pods.iter().collect();
            names.extend(
                world
                    .pod_revisions
                    .keys()
                    .filter(|p| !world.ready_pods.contains(*p)),
            );
            let items: Vec<Value> = names
                .into_iter()
                .map(|name| {
                    let ready = if world.ready_pods.contains(name) { "True" } else { "False" };
                    let mut pod = json!({"metadata": {"name": name, "namespace": NS}, "status": {"conditions": [{"type": "Ready", "status": ready}]}});
                    if let Some(r) = world.pod_revisions.get(name) {
                        pod["metadata"]["labels"] = json!({"controller-revision-hash": r});
                    }
                    pod
                })
                .collect();
            (
                200,
                json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items}),
            )
        }
        ("GET", p) if p == format!("/api/v1/namespaces/{NS}/secrets/dc-root-token") => (
            200,
            json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "dc-root-token"}, "data": {"root-token": "cm9vdC10b2tlbi1mb3ItdGhlLXRlc3RzCg=="}}),
        ),
        ("POST", p) if p == format!("/apis/events.k8s.io/v1/namespaces/{NS}/events") => {
            (201, call.body.clone())
        }
        ("PATCH", p) if p.starts_with(&format!("/apis/events.k8s.io/v1/namespaces/{NS}/events/")) => {
            (200, call.body.clone())
        }
        _ => (404, status(404, "NotFound")),
    }
}

// ---------------------------------------------------------------------------------------
// The fake Dynamo public API (the coordinators).

#[derive(Default)]
struct Dynamo {
    view: Option<ClusterView>,
    /// Answer `503 ring_unavailable` to everything.
    ring_down: bool,
    joins: Vec<NodeRegistration>,
    decommissions: Vec<String>,
    /// `(old, new)` of each replace.
    replaces: Vec<(String, NodeRegistration)>,
    /// The bearer tokens seen.
    tokens: Vec<String>,
}

type Shared = Arc<Mutex<Dynamo>>;

fn unavailable() -> (StatusCode, Json<Value>) {
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": {"code": "ring_unavailable", "message": "the ring service does not answer"}})),
    )
}

async fn fake_dynamo(state: Shared) -> String {
    async fn cluster(
        State(s): State<Shared>,
        headers: axum::http::HeaderMap,
    ) -> Result<Json<ClusterView>, (StatusCode, Json<Value>)> {
        let mut d = s.lock().expect("dynamo");
        if let Some(t) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
            d.tokens.push(t.to_owned());
        }
        if d.ring_down {
            return Err(unavailable());
        }
        Ok(Json(d.view.clone().expect("a view")))
    }
    async fn join(
        State(s): State<Shared>,
        Json(reg): Json<NodeRegistration>,
    ) -> Result<Json<ClusterView>, (StatusCode, Json<Value>)> {
        let mut d = s.lock().expect("dynamo");
        if d.ring_down {
            return Err(unavailable());
        }
        d.joins.push(reg.clone());
        let view = d.view.as_mut().expect("a view");
        view.nodes.push(node(reg.node_id.as_str(), NodeState::Joining));
        view.change = Some(progress(ChangeKindName::Join, reg.node_id.as_str(), 0));
        Ok(Json(view.clone()))
    }
    async fn decommission(
        State(s): State<Shared>,
        Path(id): Path<String>,
    ) -> Result<Json<ClusterView>, (StatusCode, Json<Value>)> {
        let mut d = s.lock().expect("dynamo");
        if d.ring_down {
            return Err(unavailable());
        }
        d.decommissions.push(id.clone());
        let view = d.view.as_mut().expect("a view");
        for n in &mut view.nodes {
            if n.node_id.as_str() == id {
                n.state = NodeState::Leaving;
            }
        }
        view.change = Some(progress(ChangeKindName::Decommission, &id, 0));
        Ok(Json(view.clone()))
    }
    async fn replace(
        State(s): State<Shared>,
        Path(id): Path<String>,
        Json(reg): Json<NodeRegistration>,
    ) -> Result<Json<ClusterView>, (StatusCode, Json<Value>)> {
        let mut d = s.lock().expect("dynamo");
        if d.ring_down {
            return Err(unavailable());
        }
        d.replaces.push((id.clone(), reg.clone()));
        let view = d.view.as_mut().expect("a view");
        for n in &mut view.nodes {
            if n.node_id.as_str() == id && reg.node_id.as_str() == id {
                n.volume = n.volume_refused.take();
                n.state = NodeState::Joining;
            }
        }
        let mut p = progress(ChangeKindName::Replace, &id, 0);
        p.change.replacement = Some(reg.node_id.clone());
        view.change = Some(p);
        Ok(Json(view.clone()))
    }
    let app = Router::new()
        .route("/v1/cluster", get(cluster))
        .route("/v1/cluster/nodes", post(join))
        .route("/v1/cluster/nodes/{id}", delete(decommission))
        .route("/v1/cluster/nodes/{id}/replace", post(replace))
        .with_state(state);
    dynamo_testkit::serve(app).await
}

fn node(id: &str, state: NodeState) -> NodeStatus {
    NodeStatus {
        node_id: NodeId::new(id).expect("id"),
        address: format!("http://{id}.{SUFFIX}"),
        zone: None,
        state,
        last_heartbeat_ms_ago: None,
        anti_entropy: None,
        volume: None,
        volume_refused: None,
    }
}

fn progress(kind: ChangeKindName, id: &str, done: u64) -> ChangeProgress {
    ChangeProgress {
        change: ChangeSummary {
            kind,
            node: NodeId::new(id).expect("id"),
            replacement: None,
            phase: "copy".into(),
            epoch: RingEpoch(9),
            failed: None,
        },
        partitions_total: 64,
        partitions_done: done,
        objects: 0,
        bytes: 0,
        stuck: None,
    }
}

fn view(members: &[&str]) -> ClusterView {
    ClusterView {
        epoch: RingEpoch(8),
        nodes: members.iter().map(|m| node(m, NodeState::Up)).collect(),
        handoffs: Vec::new(),
        change: None,
        max_n: None,
        ring_group: None,
    }
}

// ---------------------------------------------------------------------------------------
// The harness.

struct Harness {
    world: Arc<Mutex<World>>,
    dynamo: Shared,
    ctx: Arc<Context>,
}

fn dc_json(storage: i64, finalizer: bool) -> Value {
    json!({
        "apiVersion": "dynamo.io/v1alpha1",
        "kind": "DynamoCluster",
        "metadata": {
            "name": "dc", "namespace": NS, "uid": "dc-uid", "generation": 2, "resourceVersion": "1",
            "finalizers": if finalizer { json!(["dynamo.io/finalizer"]) } else { json!([]) },
        },
        "spec": {"storage": {"replicas": storage}},
    })
}

async fn harness(dc: Value, leader: bool) -> Harness {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let world = Arc::new(Mutex::new(World {
        dc,
        ..World::default()
    }));
    spawn_api_server(handle, world.clone());
    let dynamo: Shared = Arc::default();
    let url = fake_dynamo(dynamo.clone()).await;
    let leadership = Leadership::default();
    leadership.set(leader);
    let registry = prometheus::Registry::new();
    let ctx = Context::new(
        client.clone(),
        Recorder::new(
            client,
            Reporter {
                controller: "dynamo-operator".into(),
                instance: Some("test".into()),
            },
        ),
        Metrics::new(&registry).expect("metrics"),
        leadership,
        Settings {
            coordinator_url: Some(url),
            ca_file: None,
            api_timeout: Duration::from_secs(5),
        },
    );
    Harness {
        world,
        dynamo,
        ctx: Arc::new(ctx),
    }
}

impl Harness {
    /// Runs one reconcile of the stored DynamoCluster, bounded by [`TEST_TIMEOUT`].
    async fn reconcile(&self) -> Result<kube::runtime::controller::Action, dynamo_operator::error::Error> {
        let dc: DynamoCluster =
            serde_json::from_value(self.world.lock().expect("world").dc.clone()).expect("a DynamoCluster");
        tokio::time::timeout(TEST_TIMEOUT, reconcile::reconcile(Arc::new(dc), self.ctx.clone()))
            .await
            .expect("the reconcile finished in time")
    }

    fn take_log(&self) -> Vec<Call> {
        std::mem::take(&mut self.world.lock().expect("world").log)
    }

    fn storage_replicas(&self) -> Option<i64> {
        self.world
            .lock()
            .expect("world")
            .statefulsets
            .get("dc-storage")
            .copied()
    }

    fn set_view(&self, v: ClusterView) {
        self.dynamo.lock().expect("dynamo").view = Some(v);
    }

    fn stored_status(&self) -> Value {
        self.world.lock().expect("world").dc["status"].clone()
    }
}

fn sts_patches(log: &[Call]) -> Vec<i64> {
    log.iter()
        .filter(|c| {
            c.is(
                "PATCH",
                &format!("/apis/apps/v1/namespaces/{NS}/statefulsets/dc-storage"),
            )
        })
        .map(|c| c.body["spec"]["replicas"].as_i64().expect("replicas"))
        .collect()
}

fn sts_partitions(log: &[Call]) -> Vec<i64> {
    log.iter()
        .filter(|c| {
            c.is(
                "PATCH",
                &format!("/apis/apps/v1/namespaces/{NS}/statefulsets/dc-storage"),
            )
        })
        .map(|c| {
            c.body["spec"]["updateStrategy"]["rollingUpdate"]["partition"]
                .as_i64()
                .expect("a partition")
        })
        .collect()
}

fn condition(status: &Value, type_: &str) -> Value {
    status["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == type_)
        .unwrap_or_else(|| panic!("no {type_} condition"))
        .clone()
}

fn reasons(log: &[Call]) -> Vec<String> {
    log.iter()
        .filter(|c| c.method == "POST" && c.path().ends_with("/events"))
        .map(|c| c.body["reason"].as_str().unwrap_or_default().to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------
// The scenarios.

#[tokio::test]
async fn create_adds_the_finalizer_then_applies_every_object_and_joins_ready_pods() {
    // Goal: a new DynamoCluster first gets the finalizer (and nothing else), then the
    // owned objects by server-side apply with owner references, then joins of its pods
    // once ready, one at a time. A second reconcile with nothing new changes nothing.
    let h = harness(dc_json(3, false), true).await;
    h.set_view(view(&[]));
    h.reconcile().await.expect("reconcile");
    let log = h.take_log();
    assert_eq!(log.len(), 1, "only the finalizer is added first: {log:#?}");
    assert!(log[0].is(
        "PATCH",
        &format!("/apis/dynamo.io/v1alpha1/namespaces/{NS}/dynamoclusters/dc")
    ));
    assert!(log[0].body.to_string().contains("dynamo.io/finalizer"));

    h.reconcile().await.expect("reconcile");
    let log = h.take_log();
    let applies: Vec<String> = log
        .iter()
        .filter(|c| c.method == "PATCH" && c.uri.contains("fieldManager=dynamo-operator"))
        .map(|c| {
            assert!(c.uri.contains("force=true"), "{}", c.uri);
            assert_eq!(
                c.body["metadata"]["ownerReferences"][0]["uid"], "dc-uid",
                "{} has no owner reference",
                c.uri
            );
            c.path().rsplit('/').take(2).collect::<Vec<_>>().join("<")
        })
        .collect();
    assert_eq!(
        applies.len(),
        9,
        "ring, storage, coordinator objects and 3 PDBs: {applies:?}"
    );
    assert_eq!(sts_patches(&log), vec![3]);
    // No pod is ready yet: nobody joins; the status says what it waits for.
    assert!(h.dynamo.lock().expect("dynamo").joins.is_empty());
    let st = h.stored_status();
    assert_eq!(st["waitingFor"], "pod dc-storage-0 to be ready");
    assert_eq!(st["phase"], "Creating");
    assert!(
        h.dynamo
            .lock()
            .expect("dynamo")
            .tokens
            .iter()
            .all(|t| t == "Bearer root-token-for-the-tests")
    );

    // Pods ready: dc-storage-0 joins (an Event says so), the others wait for its handoff.
    h.world.lock().expect("world").ready_pods = vec![
        "dc-storage-0".into(),
        "dc-storage-1".into(),
        "dc-storage-2".into(),
    ];
    h.reconcile().await.expect("reconcile");
    let log = h.take_log();
    let joins = h.dynamo.lock().expect("dynamo").joins.clone();
    assert_eq!(joins.len(), 1);
    assert_eq!(joins[0].node_id.as_str(), "dc-storage-0");
    assert_eq!(joins[0].address, format!("http://dc-storage-0.{SUFFIX}"));
    assert_eq!(reasons(&log), vec!["Joining"]);
    h.reconcile().await.expect("reconcile");
    assert_eq!(
        h.dynamo.lock().expect("dynamo").joins.len(),
        1,
        "no second change while one runs"
    );
    assert_eq!(
        h.stored_status()["waitingFor"],
        "joining dc-storage-0: 0/64 partitions handed off"
    );

    // Idempotent: a settled cluster reconciled twice sends the same applies and no
    // change, no event, no status write the second time.
    h.set_view(view(&["dc-storage-0", "dc-storage-1", "dc-storage-2"]));
    h.reconcile().await.expect("reconcile");
    assert_eq!(h.stored_status()["phase"], "Running");
    h.take_log();
    h.reconcile().await.expect("reconcile");
    let log = h.take_log();
    assert!(reasons(&log).is_empty());
    assert!(
        !log.iter().any(|c| c.path().ends_with("/status")),
        "status rewritten unchanged"
    );
    assert_eq!(sts_patches(&log), vec![3]);
}

#[tokio::test]
async fn scale_up_grows_the_statefulset_then_joins_each_new_pod_after_the_last_handoff() {
    let h = harness(dc_json(5, true), true).await;
    h.world
        .lock()
        .expect("world")
        .statefulsets
        .insert("dc-storage".into(), 3);
    h.world.lock().expect("world").ready_pods = vec![
        "dc-storage-0".into(),
        "dc-storage-1".into(),
        "dc-storage-2".into(),
    ];
    h.set_view(view(&["dc-storage-0", "dc-storage-1", "dc-storage-2"]));
    h.reconcile().await.expect("reconcile");
    assert_eq!(h.storage_replicas(), Some(5));
    assert!(
        h.dynamo.lock().expect("dynamo").joins.is_empty(),
        "no join before the pod is ready"
    );
    assert_eq!(h.stored_status()["waitingFor"], "pod dc-storage-3 to be ready");
    assert_eq!(h.stored_status()["phase"], "Scaling");

    h.world
        .lock()
        .expect("world")
        .ready_pods
        .extend(["dc-storage-3".into(), "dc-storage-4".into()]);
    h.reconcile().await.expect("reconcile");
    let joined: Vec<String> = h
        .dynamo
        .lock()
        .expect("dynamo")
        .joins
        .iter()
        .map(|j| j.node_id.to_string())
        .collect();
    assert_eq!(joined, ["dc-storage-3"]);
    // dc-storage-3's handoff is confirmed (the change is gone, it is up): dc-storage-4.
    h.set_view(view(&[
        "dc-storage-0",
        "dc-storage-1",
        "dc-storage-2",
        "dc-storage-3",
    ]));
    h.reconcile().await.expect("reconcile");
    let joined: Vec<String> = h
        .dynamo
        .lock()
        .expect("dynamo")
        .joins
        .iter()
        .map(|j| j.node_id.to_string())
        .collect();
    assert_eq!(joined, ["dc-storage-3", "dc-storage-4"]);
}

#[tokio::test]
async fn a_pod_back_with_a_lost_volume_is_replaced_in_place_once_and_followed_to_its_end() {
    // Goal: a member whose pod came back with a new, empty volume (the ring refuses its
    // heartbeats: `volume_refused`) is replaced in place through the ring service (never
    // rejoined), with an Event; while the refill runs nothing else begins and the status
    // says what it waits for; once it finished the cluster settles.
    let h = harness(dc_json(3, true), true).await;
    let all = ["dc-storage-0", "dc-storage-1", "dc-storage-2"];
    h.world
        .lock()
        .expect("world")
        .statefulsets
        .insert("dc-storage".into(), 3);
    h.world.lock().expect("world").ready_pods = all.iter().map(|s| (*s).to_owned()).collect();
    let mut lost = view(&all);
    lost.nodes[1].state = NodeState::Down;
    lost.nodes[1].volume_refused = Some(dynamo_client::VolumeId(0xfeed));
    h.set_view(lost);

    h.reconcile().await.expect("reconcile");
    let log = h.take_log();
    assert_eq!(reasons(&log), vec!["ReplacingInPlace"]);
    let replaces = h.dynamo.lock().expect("dynamo").replaces.clone();
    assert_eq!(replaces.len(), 1);
    assert_eq!(replaces[0].0, "dc-storage-1");
    assert_eq!(
        replaces[0].1.node_id.as_str(),
        "dc-storage-1",
        "in place: the same id"
    );
    assert_eq!(replaces[0].1.address, format!("http://dc-storage-1.{SUFFIX}"));
    assert!(
        h.dynamo.lock().expect("dynamo").joins.is_empty(),
        "never a rejoin"
    );
    assert_eq!(sts_patches(&log), vec![3], "no pod is touched");

    {
        let mut d = h.dynamo.lock().expect("dynamo");
        if let Some(c) = d.view.as_mut().and_then(|v| v.change.as_mut()) {
            c.partitions_done = 12;
        }
    }
    h.reconcile().await.expect("reconcile");
    assert_eq!(
        h.dynamo.lock().expect("dynamo").replaces.len(),
        1,
        "followed, not begun again"
    );
    assert_eq!(
        h.stored_status()["waitingFor"],
        "refilling (in place) dc-storage-1: 12/64 partitions handed off"
    );
    assert_eq!(h.stored_status()["phase"], "Scaling");

    h.set_view(view(&all));
    h.reconcile().await.expect("reconcile");
    assert_eq!(h.stored_status()["phase"], "Running");
    assert_eq!(h.dynamo.lock().expect("dynamo").replaces.len(), 1);
}

#[tokio::test]
async fn scale_down_decommissions_first_and_shrinks_only_after_the_handoff_is_confirmed() {
    // Goal: the StatefulSet keeps every pod the cluster view still lists; the pod goes
    // only after its decommission finished (the node gone from the view).
    let h = harness(dc_json(3, true), true).await;
    let all = [
        "dc-storage-0",
        "dc-storage-1",
        "dc-storage-2",
        "dc-storage-3",
        "dc-storage-4",
    ];
    h.world
        .lock()
        .expect("world")
        .statefulsets
        .insert("dc-storage".into(), 5);
    h.world.lock().expect("world").ready_pods = all.iter().map(|s| (*s).to_owned()).collect();
    h.set_view(view(&all));

    h.reconcile().await.expect("reconcile");
    let log = h.take_log();
    assert_eq!(
        sts_patches(&log),
        vec![5],
        "nothing shrinks before the decommission"
    );
    assert_eq!(h.dynamo.lock().expect("dynamo").decommissions, ["dc-storage-4"]);
    assert_eq!(reasons(&log), vec!["Decommissioning"]);

    // The handoff runs: still 5, no second change.
    {
        let mut d = h.dynamo.lock().expect("dynamo");
        if let Some(c) = d.view.as_mut().and_then(|v| v.change.as_mut()) {
            c.partitions_done = 37;
        }
    }
    for _ in 0..2 {
        h.reconcile().await.expect("reconcile");
        assert_eq!(sts_patches(&h.take_log()), vec![5]);
    }
    assert_eq!(h.dynamo.lock().expect("dynamo").decommissions.len(), 1);
    assert_eq!(
        h.stored_status()["waitingFor"],
        "decommissioning dc-storage-4: 37/64 partitions handed off"
    );
    assert_eq!(h.stored_status()["handoff"]["partitionsDone"], 37);

    // Confirmed: dc-storage-4 has left the view. Shrink past it, decommission -3.
    h.set_view(view(&all[..4]));
    h.reconcile().await.expect("reconcile");
    assert_eq!(sts_patches(&h.take_log()), vec![4]);
    assert_eq!(
        h.dynamo.lock().expect("dynamo").decommissions,
        ["dc-storage-4", "dc-storage-3"]
    );
    h.set_view(view(&all[..3]));
    h.reconcile().await.expect("reconcile");
    assert_eq!(sts_patches(&h.take_log()), vec![3]);
    h.reconcile().await.expect("reconcile");
    assert_eq!(sts_patches(&h.take_log()), vec![3]);
    assert_eq!(h.stored_status()["phase"], "Running");
    assert_eq!(h.stored_status()["storage"], "3/3");
}

/// The ring StatefulSet's apply bodies, in order.
fn ring_patches(log: &[Call]) -> Vec<Value> {
    log.iter()
        .filter(|c| {
            c.is(
                "PATCH",
                &format!("/apis/apps/v1/namespaces/{NS}/statefulsets/dc-ring"),
            )
        })
        .map(|c| c.body.clone())
        .collect()
}

#[tokio::test]
async fn an_older_ring_statefulset_keeps_its_policy_grows_and_never_shrinks() {
    // Goal: a ring StatefulSet an older operator made (one replica, OrderedReady, a field
    // the API server refuses to change) is applied with its own policy rather than failing
    // every reconcile, and grows to the spec's three replicas; a spec below the live group
    // (possible only under a CRD without the `oldSelf` rule) never shrinks it, and the
    // status says why. Method: the fake API server holds that StatefulSet and refuses a
    // policy change with 422.
    let h = harness(dc_json(3, true), true).await;
    {
        let mut w = h.world.lock().expect("world");
        w.statefulsets.insert("dc-ring".into(), 1);
        w.policies.insert("dc-ring".into(), "OrderedReady".into());
    }
    h.set_view(view(&[]));
    h.reconcile().await.expect("reconcile");
    let ring = ring_patches(&h.take_log());
    assert_eq!(ring.len(), 1);
    assert_eq!(ring[0]["spec"]["podManagementPolicy"], "OrderedReady");
    assert_eq!(ring[0]["spec"]["replicas"], 3);
    assert_eq!(condition(&h.stored_status(), "Degraded")["status"], "False");

    h.world.lock().expect("world").dc["spec"]["ring"] = json!({"replicas": 1});
    h.reconcile().await.expect("reconcile");
    let ring = ring_patches(&h.take_log());
    assert_eq!(ring[0]["spec"]["replicas"], 3, "the group only grows");
    let degraded = condition(&h.stored_status(), "Degraded");
    assert_eq!(degraded["status"], "True");
    assert!(
        degraded["message"]
            .as_str()
            .is_some_and(|m| m.contains("the ring group only grows")),
        "{degraded}"
    );
}

#[tokio::test]
async fn a_new_ring_statefulset_starts_its_replicas_together() {
    // Goal: a new cluster's ring StatefulSet is Parallel with the spec's three replicas.
    let h = harness(dc_json(3, true), true).await;
    h.set_view(view(&[]));
    h.reconcile().await.expect("reconcile");
    let ring = ring_patches(&h.take_log());
    assert_eq!(
        (
            &ring[0]["spec"]["podManagementPolicy"],
            &ring[0]["spec"]["replicas"]
        ),
        (&json!("Parallel"), &json!(3))
    );
}

#[tokio::test]
async fn a_failing_ring_service_means_no_unsafe_step() {
    // Goal: with the coordinators answering 503 ring_unavailable, a scale-down neither
    // decommissions nor shrinks; the status says Degraded and why.
    let h = harness(dc_json(3, true), true).await;
    let all = ["dc-storage-0", "dc-storage-1", "dc-storage-2", "dc-storage-3"];
    h.world
        .lock()
        .expect("world")
        .statefulsets
        .insert("dc-storage".into(), 4);
    h.world.lock().expect("world").ready_pods = all.iter().map(|s| (*s).to_owned()).collect();
    h.set_view(view(&all));
    h.dynamo.lock().expect("dynamo").ring_down = true;
    for _ in 0..2 {
        h.reconcile().await.expect("reconcile");
        assert_eq!(sts_patches(&h.take_log()), vec![4]);
    }
    assert!(h.dynamo.lock().expect("dynamo").decommissions.is_empty());
    let st = h.stored_status();
    assert_eq!(st["phase"], "Degraded");
    let degraded = st["conditions"]
        .as_array()
        .expect("conditions")
        .iter()
        .find(|c| c["type"] == "Degraded")
        .expect("Degraded")
        .clone();
    assert_eq!(degraded["status"], "True");
    assert!(
        degraded["message"]
            .as_str()
            .unwrap_or_default()
            .contains("ring_unavailable"),
        "{degraded}"
    );
}

#[tokio::test]
async fn a_scale_down_below_n_is_refused_with_a_condition_and_an_event() {
    let h = harness(dc_json(2, true), true).await;
    let all = ["dc-storage-0", "dc-storage-1", "dc-storage-2"];
    h.world
        .lock()
        .expect("world")
        .statefulsets
        .insert("dc-storage".into(), 3);
    h.world.lock().expect("world").ready_pods = all.iter().map(|s| (*s).to_owned()).collect();
    h.set_view(view(&all));
    h.reconcile().await.expect("reconcile");
    let log = h.take_log();
    assert_eq!(sts_patches(&log), vec![3]);
    assert!(h.dynamo.lock().expect("dynamo").decommissions.is_empty());
    assert_eq!(reasons(&log), vec!["ScaleDownRefused"]);
    let st = h.stored_status();
    assert!(
        st["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .any(|c| c["type"] == "ScaleDownRefused" && c["status"] == "True")
    );
    // Said once: the next reconcile repeats no event.
    h.reconcile().await.expect("reconcile");
    assert!(reasons(&h.take_log()).is_empty());
}

#[tokio::test]
async fn a_scale_down_below_the_largest_bucket_n_is_refused_and_the_event_names_it() {
    // Goal: the cluster view's `max_n` (a bucket with n = 5) holds a 6-node cluster at
    // 6 when the spec asks for 4, though N is 3: no decommission, no shrink, the
    // condition and one Event name the bucket limit.
    let h = harness(dc_json(4, true), true).await;
    let all: Vec<String> = (0..6).map(|i| format!("dc-storage-{i}")).collect();
    let ids: Vec<&str> = all.iter().map(String::as_str).collect();
    h.world
        .lock()
        .expect("world")
        .statefulsets
        .insert("dc-storage".into(), 6);
    h.world.lock().expect("world").ready_pods = all.clone();
    let mut v = view(&ids);
    v.max_n = Some(5);
    h.set_view(v);
    h.reconcile().await.expect("reconcile");
    let log = h.take_log();
    assert_eq!(sts_patches(&log), vec![6]);
    assert!(h.dynamo.lock().expect("dynamo").decommissions.is_empty());
    let events: Vec<&Call> = log
        .iter()
        .filter(|c| c.method == "POST" && c.path().ends_with("/events"))
        .collect();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].body["reason"], "ScaleDownRefused");
    let note = events[0].body["note"].as_str().unwrap_or_default();
    assert!(
        note.contains("n = 5") && note.contains("largest n of a bucket"),
        "{note}"
    );
    let refused = condition(&h.stored_status(), "ScaleDownRefused");
    assert_eq!(refused["status"], "True");
    assert_eq!(refused["message"], note);
}

/// A settled 3-node cluster whose pods and StatefulSet run revision r1, each member up
/// and through one anti-entropy pass.
async fn settled_on_r1() -> Harness {
    let h = harness(dc_json(3, true), true).await;
    {
        let mut w = h.world.lock().expect("world");
        w.statefulsets.insert("dc-storage".into(), 3);
        w.partitions.insert("dc-storage".into(), 3);
        w.revisions
            .insert("dc-storage".into(), ("r1".into(), "r1".into()));
        for i in 0..3 {
            let pod = format!("dc-storage-{i}");
            w.ready_pods.push(pod.clone());
            w.pod_revisions.insert(pod, "r1".into());
        }
    }
    h.set_view(caught_up(view(&["dc-storage-0", "dc-storage-1", "dc-storage-2"])));
    h
}

/// `v` with every node through one anti-entropy pass since it started.
fn caught_up(mut v: ClusterView) -> ClusterView {
    for n in &mut v.nodes {
        n.anti_entropy = Some(AntiEntropyStatus {
            enabled: true,
            passes: 1,
            ..AntiEntropyStatus::default()
        });
    }
    v
}

impl Harness {
    /// Plays the StatefulSet controller recreating `pod` on r2: not ready yet, and down
    /// in the ring with no anti-entropy pass done.
    fn recreate(&self, pod: &str) {
        let mut w = self.world.lock().expect("world");
        w.ready_pods.retain(|p| p != pod);
        w.pod_revisions.insert(pod.into(), "r2".into());
        drop(w);
        self.node(pod, |n| {
            n.state = NodeState::Down;
            n.anti_entropy = None;
        });
    }

    fn node(&self, pod: &str, f: impl FnOnce(&mut NodeStatus)) {
        let mut d = self.dynamo.lock().expect("dynamo");
        let v = d.view.as_mut().expect("a view");
        f(v.nodes
            .iter_mut()
            .find(|n| n.node_id.as_str() == pod)
            .expect("a member"));
    }

    fn ready(&self, pod: &str) {
        self.world.lock().expect("world").ready_pods.push(pod.into());
    }

    /// Reconciles; returns the partition applied, the Events' reasons and the status's
    /// `waitingFor`.
    async fn roll_step(&self) -> (Vec<i64>, Vec<String>, String) {
        self.reconcile().await.expect("reconcile");
        let log = self.take_log();
        let waiting = self.stored_status()["waitingFor"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (sts_partitions(&log), reasons(&log), waiting)
    }
}

#[tokio::test]
async fn a_rolling_update_releases_one_pod_at_a_time_each_back_and_caught_up_first() {
    // Goal: a new image recreates no pod by itself (the partition stays at 3); the
    // operator lowers the partition one ordinal at a time, highest first, each time only
    // after the pod released last runs the new revision, is ready, is up in the ring and
    // finished an anti-entropy pass; the status says what it waits for and an Event
    // marks each pod released. Method: the test plays the StatefulSet controller (the
    // revisions, the pods' labels and readiness) and the ring (the member's state).
    let h = settled_on_r1().await;
    assert_eq!(h.roll_step().await, (vec![3], vec![], String::new()));

    // The image changes: applied with the partition still at 3.
    h.world.lock().expect("world").dc["spec"]["image"] = json!({"repository": "dynamo", "tag": "2.0"});
    h.reconcile().await.expect("reconcile");
    let log = h.take_log();
    assert_eq!(
        sts_partitions(&log),
        vec![3],
        "no pod follows the new template yet"
    );
    let body = &log
        .iter()
        .find(|c| c.method == "PATCH" && c.path().ends_with("/statefulsets/dc-storage"))
        .expect("the apply")
        .body;
    assert_eq!(
        body["spec"]["template"]["spec"]["containers"][0]["image"],
        "dynamo:2.0"
    );
    assert!(reasons(&log).is_empty());

    // The StatefulSet controller computes revision r2: dc-storage-2 is released.
    h.world
        .lock()
        .expect("world")
        .revisions
        .insert("dc-storage".into(), ("r1".into(), "r2".into()));
    h.reconcile().await.expect("reconcile");
    let log = h.take_log();
    assert_eq!(
        (sts_partitions(&log), reasons(&log)),
        (vec![2], vec!["UpdatingPod".to_owned()])
    );
    let event = log
        .iter()
        .find(|c| c.method == "POST" && c.path().ends_with("/events"))
        .expect("an event");
    // Its own Event per pod (the pod is the related object), not a series of the first.
    assert_eq!(
        (&event.body["related"]["kind"], &event.body["related"]["name"]),
        (&json!("Pod"), &json!("dc-storage-2"))
    );
    let waiting = h.stored_status()["waitingFor"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(
        waiting,
        "updating dc-storage-2: waiting for it to run the new revision"
    );
    let upgrading = condition(&h.stored_status(), "Upgrading");
    assert_eq!(
        (upgrading["status"].as_str(), upgrading["message"].as_str()),
        (Some("True"), Some(waiting.as_str()))
    );
    // Reconciling again changes nothing, and looks again soon: no watch reports the
    // ring or the node's anti-entropy.
    let action = h.reconcile().await.expect("reconcile");
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(reconcile::BUSY_REQUEUE)
    );
    let log = h.take_log();
    assert_eq!((sts_partitions(&log), reasons(&log)), (vec![2], vec![]));

    // dc-storage-2 comes back step by step; nothing more is released meanwhile.
    h.recreate("dc-storage-2");
    assert_eq!(
        h.roll_step().await,
        (
            vec![2],
            vec![],
            "updating dc-storage-2: waiting for it to be ready".into()
        )
    );
    h.ready("dc-storage-2");
    assert_eq!(
        h.roll_step().await,
        (
            vec![2],
            vec![],
            "updating dc-storage-2: waiting for it to be up in the ring".into()
        )
    );
    h.node("dc-storage-2", |n| {
        n.state = NodeState::Up;
        n.anti_entropy = Some(AntiEntropyStatus {
            enabled: true,
            ..AntiEntropyStatus::default()
        });
    });
    assert_eq!(
        h.roll_step().await,
        (
            vec![2],
            vec![],
            "updating dc-storage-2: waiting for its first anti-entropy pass since it restarted".into()
        )
    );
    h.node("dc-storage-2", |n| {
        if let Some(ae) = n.anti_entropy.as_mut() {
            ae.passes = 1;
        }
    });
    let (partitions, events, _) = h.roll_step().await;
    assert_eq!(
        (partitions, events),
        (vec![1], vec!["UpdatingPod".to_owned()]),
        "a new Event for dc-storage-1 within minutes of dc-storage-2's"
    );

    // dc-storage-1, then dc-storage-0, the same way.
    for (pod, next) in [("dc-storage-1", 0), ("dc-storage-0", 0)] {
        h.recreate(pod);
        h.ready(pod);
        h.node(pod, |n| {
            n.state = NodeState::Up;
            n.anti_entropy = Some(AntiEntropyStatus {
                enabled: true,
                passes: 1,
                ..AntiEntropyStatus::default()
            });
        });
        let (partitions, _, _) = h.roll_step().await;
        assert_eq!(partitions, vec![next], "after {pod}");
    }
    assert_eq!(
        h.stored_status()["waitingFor"],
        "the StatefulSet controller to finish the update of dc-storage"
    );
    // The controller ends the update (current = update): the partition is the replica
    // count again, and the cluster is up to date.
    h.world
        .lock()
        .expect("world")
        .revisions
        .insert("dc-storage".into(), ("r2".into(), "r2".into()));
    let (partitions, events, _) = h.roll_step().await;
    assert_eq!((partitions, events), (vec![3], vec![]));
    let st = h.stored_status();
    assert_eq!(condition(&st, "Upgrading")["status"], "False");
    assert_eq!(condition(&st, "Ready")["status"], "True");
    assert!(st["waitingFor"].is_null(), "{st}");
    assert_eq!(h.ctx.metrics.updates.get(), 3, "one update step per pod");
}

#[tokio::test]
async fn a_pod_that_does_not_come_back_stops_the_rolling_update() {
    // Goal: an updated pod that never becomes ready (a bad image, say) holds the
    // partition where it is, reconcile after reconcile; so does a failing ring service,
    // even once the pod is back.
    let h = settled_on_r1().await;
    h.world
        .lock()
        .expect("world")
        .revisions
        .insert("dc-storage".into(), ("r1".into(), "r2".into()));
    let (partitions, _, _) = h.roll_step().await;
    assert_eq!(partitions, vec![2]);
    h.recreate("dc-storage-2");
    for _ in 0..3 {
        assert_eq!(
            h.roll_step().await,
            (
                vec![2],
                vec![],
                "updating dc-storage-2: waiting for it to be ready".into()
            )
        );
    }
    assert_eq!(condition(&h.stored_status(), "Upgrading")["status"], "True");

    // Ready and up again, but the cluster view is unavailable: still no next pod.
    h.ready("dc-storage-2");
    h.node("dc-storage-2", |n| {
        n.state = NodeState::Up;
        n.anti_entropy = Some(AntiEntropyStatus {
            enabled: true,
            passes: 1,
            ..AntiEntropyStatus::default()
        });
    });
    h.dynamo.lock().expect("dynamo").ring_down = true;
    for _ in 0..2 {
        let (partitions, events, _) = h.roll_step().await;
        assert_eq!((partitions, events), (vec![2], vec![]));
    }
    assert!(
        condition(&h.stored_status(), "Upgrading")["message"]
            .as_str()
            .is_some_and(|m| m.contains("cluster view")),
        "{}",
        h.stored_status()
    );
    // The view answers again: the roll goes on.
    h.dynamo.lock().expect("dynamo").ring_down = false;
    let (partitions, events, _) = h.roll_step().await;
    assert_eq!((partitions, events), (vec![1], vec!["UpdatingPod".to_owned()]));
}

#[tokio::test]
async fn a_409_conflict_fails_the_reconcile_and_the_next_one_converges() {
    // Goal: a conflict on an apply is an error (backoff requeue), nothing after it runs
    // in that round (no membership change), and the retry converges.
    let h = harness(dc_json(3, true), true).await;
    h.world
        .lock()
        .expect("world")
        .statefulsets
        .insert("dc-storage".into(), 3);
    h.world.lock().expect("world").ready_pods = vec!["dc-storage-0".into()];
    h.set_view(view(&[]));
    h.world.lock().expect("world").fail_once.push((
        "PATCH".into(),
        format!("/apis/apps/v1/namespaces/{NS}/statefulsets/dc-storage"),
        409,
    ));
    let err = h.reconcile().await.expect_err("a conflict fails the reconcile");
    assert!(
        format!("{err:?}").contains("409") || format!("{err:?}").contains("Conflict"),
        "{err:?}"
    );
    let action = reconcile::error_policy(
        Arc::new(serde_json::from_value(dc_json(3, true)).expect("dc")),
        &err,
        h.ctx.clone(),
    );
    assert_eq!(
        action,
        kube::runtime::controller::Action::requeue(Duration::from_secs(5)),
        "the first failure in a row: 5 s"
    );
    assert!(
        h.dynamo.lock().expect("dynamo").joins.is_empty(),
        "no membership change in a failed round"
    );
    h.reconcile().await.expect("the retry converges");
    assert_eq!(h.dynamo.lock().expect("dynamo").joins.len(), 1);
}

#[tokio::test]
async fn deletion_runs_the_cleanup_and_removes_the_finalizer() {
    let mut dc = dc_json(3, true);
    dc["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    let h = harness(dc, true).await;
    h.set_view(view(&[]));
    h.reconcile().await.expect("reconcile");
    let log = h.take_log();
    assert_eq!(reasons(&log), vec!["Deleting"]);
    let last = log.last().expect("a request");
    assert!(
        last.is(
            "PATCH",
            &format!("/apis/dynamo.io/v1alpha1/namespaces/{NS}/dynamoclusters/dc")
        ),
        "{last:?}"
    );
    assert!(
        last.body.to_string().contains("remove"),
        "the finalizer is removed: {}",
        last.body
    );
    assert!(
        sts_patches(&log).is_empty(),
        "nothing is applied to a cluster being deleted"
    );
    assert!(h.dynamo.lock().expect("dynamo").decommissions.is_empty());
}

#[tokio::test]
async fn a_replica_without_the_lease_does_nothing() {
    // Goal: a follower sends no request at all, neither to Kubernetes nor to Dynamo.
    let h = harness(dc_json(3, true), false).await;
    h.set_view(view(&[]));
    h.reconcile().await.expect("reconcile");
    assert!(h.take_log().is_empty());
    assert!(h.dynamo.lock().expect("dynamo").tokens.is_empty());
}

#[tokio::test]
async fn the_lease_is_not_taken_from_a_live_holder_and_a_lost_race_is_a_follower() {
    // Goal: leader election against the API: a Lease renewed by another replica is left
    // alone (no write), an expired one is taken over with its resourceVersion, and a
    // 409 on that write (another replica won) leaves this one a follower.
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> = kube::Api::namespaced(client, NS);
    let cfg = LeaseConfig {
        name: "dynamo-operator".into(),
        identity: "replica-b".into(),
        duration: Duration::from_secs(15),
        renew_every: Duration::from_secs(5),
    };
    let now = Timestamp::from_second(1_800_000_000).expect("time");
    let lease = |renewed: &str| {
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "dynamo-operator", "namespace": NS, "resourceVersion": "7"},
               "spec": {"holderIdentity": "replica-a", "leaseDurationSeconds": 15, "renewTime": renewed}})
    };
    let path = format!("/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/dynamo-operator");
    let server = tokio::spawn(async move {
        let mut seen = Vec::new();
        // Round 1: held by a live replica-a (renewed 5 s ago).
        for (reply_status, reply) in [
            (200, lease("2027-01-15T08:00:00.000000Z")),
            // Round 2: expired (renewed a minute ago): GET, then the PUT, which loses.
            (200, lease("2027-01-15T07:59:05.000000Z")),
            (409, status(409, "Conflict")),
        ] {
            let (req, send) = handle.next_request().await.expect("a request");
            let (parts, body) = req.into_parts();
            let body: Value =
                serde_json::from_slice(&body.collect_bytes().await.expect("body")).unwrap_or(Value::Null);
            seen.push((parts.method.to_string(), parts.uri.path().to_owned(), body));
            send.send_response(
                Response::builder()
                    .status(reply_status)
                    .body(Body::from(serde_json::to_vec(&reply).expect("json")))
                    .expect("response"),
            );
        }
        seen
    });
    // 2027-01-15T08:00:05Z: five seconds after the first renewal.
    let t = Timestamp::from_second(1_800_000_005).expect("time");
    assert!(t > now);
    let held = tokio::time::timeout(TEST_TIMEOUT, lease::try_acquire(&api, &cfg, t))
        .await
        .expect("in time")
        .expect("round 1");
    assert!(!held, "a live lease of another replica is not taken");
    let won = tokio::time::timeout(TEST_TIMEOUT, lease::try_acquire(&api, &cfg, t))
        .await
        .expect("in time")
        .expect("round 2");
    assert!(!won, "a lost race (409) leaves this replica a follower");
    let seen = tokio::time::timeout(TEST_TIMEOUT, server)
        .await
        .expect("in time")
        .expect("server");
    assert_eq!(seen[0].0, "GET");
    assert_eq!(seen[1].0, "GET");
    assert_eq!((seen[2].0.as_str(), seen[2].1.as_str()), ("PUT", path.as_str()));
    assert_eq!(
        seen[2].2["metadata"]["resourceVersion"], "7",
        "the takeover is guarded by the resourceVersion"
    );
    assert_eq!(seen[2].2["spec"]["holderIdentity"], "replica-b");
    assert_eq!(seen[2].2["spec"]["leaseTransitions"], 1);
}
