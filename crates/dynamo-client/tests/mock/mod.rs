//! A mock coordinator on `127.0.0.1:0` for the SDK's and the CLI's tests (the CLI's
//! `tests/cli.rs` includes this file by path).
//!
//! It implements the public API's behaviours the clients depend on, with the core's real
//! version rules (`VersionedObject`, the context token), so siblings, contexts and
//! tombstones behave as the coordinator's will: blind writes become siblings, a write
//! with a context replaces what it saw, a delete leaves a tombstone whose 404 carries a
//! context. Tests steer it through [`State`]: scripted error answers, a concurrent write
//! slipped in before the next `PUT`, a scripted membership change that `GET /v1/cluster`
//! reports poll by poll (which a retry moves past its failure, and an abort ends), and a
//! log of every request as it arrived.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use dynamo_core::context;
use dynamo_core::etag::{ETag, Preconditions};
use dynamo_core::version::{ConflictRule, NewWrite, VersionedObject};
use dynamo_core::wire::cluster::{
    ChangeProgress, ClusterView, KeyPlacement, NodeRegistration, NodeState, NodeStatus,
};
use dynamo_core::wire::public::{BatchOpKind, BatchRequest, BatchResponse, BatchResult};
use dynamo_core::wire::{BucketProps, BucketPropsPatch, SiblingView, SiblingsEnvelope, rfc3339_from_ms};
use dynamo_core::{ActorId, DotSet, ErrorBody, ErrorCode, NodeId, PartitionId, RingEpoch};
use serde::Deserialize;
use serde_json::json;

/// The root token the mock accepts.
pub const TOKEN: &str = "mock-root-token";

const CONTEXT: &str = "x-dynamo-context";
const SIBLINGS: ConflictRule = ConflictRule::Siblings { max_siblings: 32 };

/// A running mock; the server stops when this is dropped.
pub struct Mock {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Mock {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Mock {
    /// Starts a mock on a free loopback port.
    pub async fn start() -> Mock {
        let state = Arc::new(State::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = router(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.expect("serve");
        });
        Mock { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

/// One request as it reached the mock.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    /// The path and query exactly as sent (still percent-encoded).
    pub uri: String,
    pub headers: HeaderMap,
    /// The decoded path parameters of object routes: `(bucket, key)`.
    pub object: Option<(String, String)>,
}

#[derive(Default)]
pub struct State {
    objects: Mutex<HashMap<(String, String), VersionedObject>>,
    buckets: Mutex<HashMap<String, BucketProps>>,
    /// The cluster's nodes; see [`State::nodes`].
    nodes: Mutex<Vec<NodeStatus>>,
    /// What `GET /v1/cluster` answers, one entry per request, the last one repeated: the
    /// ring epoch and the membership change in progress. Empty: epoch 7, no change.
    cluster_script: Mutex<VecDeque<(RingEpoch, Option<ChangeProgress>)>>,
    /// Error codes `GET /v1/cluster` answers, one per request, before its script.
    cluster_failures: Mutex<VecDeque<ErrorCode>>,
    /// `(secret, listing entry)` of tokens created through the admin API.
    tokens: Mutex<Vec<(String, serde_json::Value)>>,
    /// Error codes answered, one per request, before anything else.
    failures: Mutex<VecDeque<ErrorCode>>,
    /// Values written blind, as another client would, just before the next `PUT`.
    concurrent: Mutex<VecDeque<Vec<u8>>>,
    requests: Mutex<Vec<Seen>>,
    counter: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl State {
    /// Answers the next `times` requests with `code`.
    pub fn fail_next(&self, code: ErrorCode, times: usize) {
        lock(&self.failures).extend(std::iter::repeat_n(code, times));
    }

    /// Writes `value` blind (another client's concurrent write) just before applying the
    /// next `PUT` of any key.
    pub fn write_concurrently_before_next_put(&self, value: &[u8]) {
        lock(&self.concurrent).push_back(value.to_vec());
    }

    /// Stores a blind write directly, as if another client had made it.
    pub fn seed(&self, bucket: &str, key: &str, value: &[u8], content_type: &str) {
        let now = self.now_ms();
        let mut objects = lock(&self.objects);
        let object = objects.entry((bucket.into(), key.into())).or_default();
        object
            .put(
                &DotSet::new(),
                ActorId(2),
                NewWrite::value(value.to_vec(), content_type, now),
                SIBLINGS,
            )
            .expect("seed");
    }

    /// Returns the live values under a key, sorted.
    pub fn values(&self, bucket: &str, key: &str) -> Vec<Vec<u8>> {
        let objects = lock(&self.objects);
        let mut v: Vec<Vec<u8>> = objects
            .get(&(bucket.to_owned(), key.to_owned()))
            .map(|o| o.live_siblings().map(|s| s.value.clone()).collect())
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Scripts what `GET /v1/cluster` reports: one `(ring epoch, change)` per request, in
    /// order, the last one repeated (a change that failed stays failed until someone
    /// retries or aborts it). Membership calls answer with the view of the current entry.
    /// A retry of a failed current entry moves the script past it (the next entry is the
    /// change running again; when there is none, the entry stays, no longer failed); an
    /// abort ends the script with the current epoch and no change.
    pub fn script_cluster(&self, views: impl IntoIterator<Item = (RingEpoch, Option<ChangeProgress>)>) {
        *lock(&self.cluster_script) = views.into_iter().collect();
    }

    /// Answers the next `times` requests of `GET /v1/cluster` (only) with `code`, without
    /// moving its script on.
    pub fn fail_cluster_polls(&self, code: ErrorCode, times: usize) {
        lock(&self.cluster_failures).extend(std::iter::repeat_n(code, times));
    }

    /// The current view; `advance` moves the script on to its next entry.
    fn view(&self, advance: bool) -> ClusterView {
        let (epoch, change) = {
            let mut script = lock(&self.cluster_script);
            let current = script.front().cloned().unwrap_or((RingEpoch(7), None));
            if advance && script.len() > 1 {
                script.pop_front();
            }
            current
        };
        ClusterView {
            epoch,
            nodes: self.nodes().clone(),
            handoffs: vec![],
            change,
            max_n: None,
        }
    }

    /// The cluster's nodes. The mock's cluster starts with `node-a` (up, zone z1) and
    /// `node-b` (down, zone z2); nodes are never removed, so an empty list means "not
    /// yet seeded".
    fn nodes(&self) -> MutexGuard<'_, Vec<NodeStatus>> {
        let mut nodes = lock(&self.nodes);
        if nodes.is_empty() {
            nodes.extend([
                node("node-a", "z1", NodeState::Up),
                node("node-b", "z2", NodeState::Down),
            ]);
        }
        nodes
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Seen> {
        lock(&self.requests).clone()
    }

    /// The most recent request.
    pub fn last(&self) -> Seen {
        lock(&self.requests).last().cloned().expect("a request arrived")
    }

    fn now_ms(&self) -> u64 {
        // A deterministic clock: one second per write from a fixed start.
        1_700_000_000_000 + 1000 * self.counter.fetch_add(1, Ordering::Relaxed)
    }

    fn authorized(&self, token: &str) -> bool {
        token == TOKEN || lock(&self.tokens).iter().any(|(secret, _)| secret == token)
    }
}

fn router(state: Arc<State>) -> Router {
    Router::new()
        .route(
            "/v1/kv/{bucket}/{key}",
            get(get_object).put(put_object).delete(delete_object),
        )
        .route("/v1/batch", post(batch))
        .route("/v1/buckets/{bucket}", get(get_bucket).put(put_bucket))
        .route("/v1/cluster", get(get_cluster))
        .route("/v1/cluster/nodes", post(join_node))
        .route("/v1/cluster/nodes/{node}", delete(decommission))
        .route("/v1/cluster/nodes/{node}/replace", post(replace_node))
        .route("/v1/cluster/change/retry", post(retry_change))
        .route("/v1/cluster/change/abort", post(abort_change))
        .route("/v1/ring", get(get_ring))
        .route("/v1/admin/tokens", post(create_token).get(list_tokens))
        .route("/v1/admin/tokens/{id}", delete(delete_token))
        .fallback(|| async { error(ErrorCode::RouteNotFound, "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), gate))
        .with_state(state)
}

/// Records the request, then answers a scripted failure or a missing token before any
/// handler runs.
async fn gate(AxState(state): AxState<Arc<State>>, req: Request, next: Next) -> Response {
    let uri = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let object = uri.strip_prefix("/v1/kv/").and_then(|rest| {
        let path = rest.split('?').next().unwrap_or_default();
        let (b, k) = path.split_once('/')?;
        Some((percent_decode(b), percent_decode(k)))
    });
    lock(&state.requests).push(Seen {
        method: req.method().to_string(),
        uri,
        headers: req.headers().clone(),
        object,
    });
    if let Some(code) = lock(&state.failures).pop_front() {
        return error(code, "scripted failure");
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(t) if state.authorized(t) => next.run(req).await,
        _ => error(ErrorCode::Unauthorized, "missing or unknown token"),
    }
}

/// Percent-decodes a path segment (the mock's own, to check what the client encoded).
fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let pair = bytes
            .get(i + 1)
            .copied()
            .and_then(hex)
            .zip(bytes.get(i + 2).copied().and_then(hex));
        match (bytes[i], pair) {
            (b'%', Some((hi, lo))) => {
                out.push(hi * 16 + lo);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn error(code: ErrorCode, message: &str) -> Response {
    let mut body = ErrorBody::new(code, message);
    body.error.request_id = Some("mock-request".into());
    let status = StatusCode::from_u16(code.http_status()).expect("status");
    (status, Json(body)).into_response()
}

/// The mock's context keys (the SDK treats tokens as opaque; the mock seals them as a
/// coordinator would, for one scope).
fn mock_keys() -> &'static context::ContextKeys {
    static KEYS: std::sync::OnceLock<context::ContextKeys> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        context::ContextKeys::new(vec![dynamo_core::keys::Key::new(1, &[9; 32]).expect("key")]).expect("keys")
    })
}

fn with_context(mut resp: Response, context: &DotSet) -> Response {
    let value = HeaderValue::from_str(&mock_keys().seal(context, "mock", "mock")).expect("token is ASCII");
    resp.headers_mut().insert(CONTEXT, value);
    resp
}

fn with_etag(mut resp: Response, object: &VersionedObject) -> Response {
    let value = HeaderValue::from_str(&ETag::of(object).to_string()).expect("a tag is ASCII");
    resp.headers_mut().insert(header::ETAG, value);
    resp
}

/// The write's preconditions, checked against what the mock holds: `Ok(None)` to go on
/// as asked, `Ok(Some(context))` to write with the matched version set's context, or the
/// error answer (`400`, `412`).
#[allow(clippy::result_large_err)] // A test mock: the error is the answer itself.
fn check_preconditions(
    headers: &HeaderMap,
    current: Option<&VersionedObject>,
) -> Result<Option<DotSet>, Response> {
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let p = Preconditions::parse(text(header::IF_MATCH), text(header::IF_NONE_MATCH))
        .map_err(|e| error(ErrorCode::InvalidRequest, &e.to_string()))?;
    if p.is_empty() {
        return Ok(None);
    }
    if !p.holds(current) {
        return Err(error(
            ErrorCode::PreconditionFailed,
            "the precondition does not hold",
        ));
    }
    Ok(Some(current.map(|o| o.context().clone()).unwrap_or_default()))
}

fn envelope(object: &VersionedObject) -> Response {
    let siblings: Vec<SiblingView> = object
        .live_siblings()
        .map(|s| SiblingView {
            value: s.value.clone(),
            content_type: s.content_type.clone(),
            last_modified: rfc3339_from_ms(s.last_modified_ms),
        })
        .collect();
    let status = if siblings.len() > 1 {
        StatusCode::MULTIPLE_CHOICES
    } else {
        StatusCode::OK
    };
    let body = SiblingsEnvelope {
        context: mock_keys().seal(object.context(), "mock", "mock"),
        etag: Some(ETag::of(object).to_string()),
        siblings,
    };
    with_etag(
        with_context((status, Json(body)).into_response(), object.context()),
        object,
    )
}

async fn get_object(
    AxState(state): AxState<Arc<State>>,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let object = lock(&state.objects).get(&(bucket, key)).cloned();
    let Some(object) = object else {
        return error(ErrorCode::NotFound, "no value under the key");
    };
    if object.is_deleted() {
        return with_etag(
            with_context(
                error(ErrorCode::NotFound, "no value under the key"),
                object.context(),
            ),
            &object,
        );
    }
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let live: Vec<_> = object.live_siblings().collect();
    if !wants_json && let [only] = live.as_slice() {
        // The raw answer a browser or curl gets: the bytes, not the envelope.
        let resp = (
            [(header::CONTENT_TYPE, only.content_type.clone())],
            only.value.clone(),
        )
            .into_response();
        return with_etag(with_context(resp, object.context()), &object);
    }
    envelope(&object)
}

#[derive(Deserialize)]
struct WriteQuery {
    #[serde(default)]
    returnbody: Option<bool>,
}

fn request_context(headers: &HeaderMap) -> Result<DotSet, String> {
    match headers.get(CONTEXT).map(|v| v.to_str()) {
        None => Ok(DotSet::new()),
        Some(Ok(token)) => mock_keys().open(token, "mock", "mock").map_err(|e| e.to_string()),
        Some(Err(_)) => Err("the context is not ASCII".into()),
    }
}

async fn put_object(
    AxState(state): AxState<Arc<State>>,
    Path((bucket, key)): Path<(String, String)>,
    Query(q): Query<WriteQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let context = match request_context(&headers) {
        Ok(c) => c,
        Err(message) => return error(ErrorCode::InvalidContext, &message),
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_owned();
    let concurrent = lock(&state.concurrent).pop_front();
    if let Some(value) = concurrent {
        state.seed(&bucket, &key, &value, "text/plain");
    }
    let now = state.now_ms();
    let mut objects = lock(&state.objects);
    let context = match check_preconditions(&headers, objects.get(&(bucket.clone(), key.clone()))) {
        Ok(matched) => matched.unwrap_or(context),
        Err(resp) => return resp,
    };
    let object = objects.entry((bucket, key)).or_default();
    let outcome = match object.put(
        &context,
        ActorId(1),
        NewWrite::value(body.to_vec(), content_type, now),
        SIBLINGS,
    ) {
        Ok(o) => o,
        Err(e) => return error(e.code(), &e.to_string()),
    };
    if q.returnbody == Some(true) {
        return envelope(object);
    }
    with_etag(
        with_context(StatusCode::NO_CONTENT.into_response(), &outcome.context),
        object,
    )
}

async fn delete_object(
    AxState(state): AxState<Arc<State>>,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let context = match request_context(&headers) {
        Ok(c) => c,
        Err(message) => return error(ErrorCode::InvalidContext, &message),
    };
    let now = state.now_ms();
    let mut objects = lock(&state.objects);
    let context = match check_preconditions(&headers, objects.get(&(bucket.clone(), key.clone()))) {
        Ok(matched) => matched.unwrap_or(context),
        Err(resp) => return resp,
    };
    let object = objects.entry((bucket, key)).or_default();
    match object.put(&context, ActorId(1), NewWrite::tombstone(now), SIBLINGS) {
        Ok(outcome) => with_etag(
            with_context(StatusCode::NO_CONTENT.into_response(), &outcome.context),
            object,
        ),
        Err(e) => error(e.code(), &e.to_string()),
    }
}

/// `POST /v1/batch`, run in order (the mock has no concurrency to bound), without
/// permissions: each operation as the object handlers above would answer it.
async fn batch(AxState(state): AxState<Arc<State>>, Json(req): Json<BatchRequest>) -> Response {
    if req.ops.is_empty() || req.ops.len() > 100 {
        return error(ErrorCode::InvalidRequest, "a batch holds 1 to 100 operations");
    }
    let seal = |ctx: &DotSet| mock_keys().seal(ctx, "mock", "mock");
    let mut results = Vec::new();
    for op in req.ops {
        let now = state.now_ms();
        let mut objects = lock(&state.objects);
        let slot = (op.bucket.clone(), op.key.clone());
        let result = match op.op {
            BatchOpKind::Get => match objects.get(&slot) {
                Some(o) if !o.is_deleted() => {
                    let siblings: Vec<SiblingView> = o
                        .live_siblings()
                        .map(|s| SiblingView {
                            value: s.value.clone(),
                            content_type: s.content_type.clone(),
                            last_modified: rfc3339_from_ms(s.last_modified_ms),
                        })
                        .collect();
                    BatchResult {
                        status: if siblings.len() > 1 { 300 } else { 200 },
                        context: Some(seal(o.context())),
                        etag: Some(ETag::of(o).to_string()),
                        siblings: Some(siblings),
                        error: None,
                    }
                }
                _ => BatchResult {
                    status: 404,
                    context: None,
                    etag: None,
                    siblings: None,
                    error: Some(ErrorBody::new(ErrorCode::NotFound, "no value under the key").error),
                },
            },
            kind => {
                let context = match op.context.as_deref().map(|t| mock_keys().open(t, "mock", "mock")) {
                    None => DotSet::new(),
                    Some(Ok(c)) => c,
                    Some(Err(e)) => {
                        results.push(BatchResult {
                            status: 400,
                            context: None,
                            etag: None,
                            siblings: None,
                            error: Some(ErrorBody::new(ErrorCode::InvalidContext, e.to_string()).error),
                        });
                        continue;
                    }
                };
                let write = match kind {
                    BatchOpKind::Put => NewWrite::value(
                        op.value.unwrap_or_default(),
                        op.content_type
                            .unwrap_or_else(|| "application/octet-stream".into()),
                        now,
                    ),
                    _ => NewWrite::tombstone(now),
                };
                let object = objects.entry(slot).or_default();
                let outcome = object.put(&context, ActorId(1), write, SIBLINGS).expect("put");
                BatchResult {
                    status: 204,
                    context: Some(seal(&outcome.context)),
                    etag: Some(ETag::of(object).to_string()),
                    siblings: None,
                    error: None,
                }
            }
        };
        results.push(result);
    }
    Json(BatchResponse { results }).into_response()
}

async fn get_bucket(AxState(state): AxState<Arc<State>>, Path(bucket): Path<String>) -> Response {
    let props = lock(&state.buckets).get(&bucket).cloned().unwrap_or_default();
    Json(props).into_response()
}

async fn put_bucket(
    AxState(state): AxState<Arc<State>>,
    Path(bucket): Path<String>,
    body: Bytes,
) -> Response {
    let patch: BucketPropsPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return error(ErrorCode::InvalidJson, &e.to_string()),
    };
    let mut buckets = lock(&state.buckets);
    let current = buckets.get(&bucket).cloned().unwrap_or_default();
    match current.apply(&patch) {
        Ok(props) => {
            buckets.insert(bucket, props.clone());
            Json(props).into_response()
        }
        Err(e) => error(e.code(), &e.to_string()),
    }
}

fn node(id: &str, zone: &str, state: NodeState) -> NodeStatus {
    NodeStatus {
        node_id: NodeId::new(id).expect("node id"),
        address: format!("http://10.0.0.{}:7070", id.len()),
        zone: Some(zone.into()),
        state,
        last_heartbeat_ms_ago: Some(120),
        anti_entropy: None,
    }
}

async fn get_cluster(AxState(state): AxState<Arc<State>>) -> Response {
    if let Some(code) = lock(&state.cluster_failures).pop_front() {
        return error(code, "scripted failure");
    }
    Json(state.view(true)).into_response()
}

/// A membership change accepted: `202` with the view as it began, as the coordinator
/// answers.
fn accepted(state: &State) -> Response {
    (StatusCode::ACCEPTED, Json(state.view(false))).into_response()
}

fn joining(reg: NodeRegistration) -> NodeStatus {
    NodeStatus {
        node_id: reg.node_id,
        address: reg.address,
        zone: reg.zone,
        state: NodeState::Joining,
        last_heartbeat_ms_ago: None,
        anti_entropy: None,
    }
}

async fn join_node(AxState(state): AxState<Arc<State>>, body: Bytes) -> Response {
    let reg: NodeRegistration = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(ErrorCode::InvalidJson, &e.to_string()),
    };
    {
        let mut nodes = state.nodes();
        if nodes.iter().any(|n| n.node_id == reg.node_id) {
            return error(ErrorCode::MembershipConflict, "already a member");
        }
        nodes.push(joining(reg));
    }
    accepted(&state)
}

async fn decommission(AxState(state): AxState<Arc<State>>, Path(node): Path<String>) -> Response {
    {
        let mut nodes = state.nodes();
        match nodes.iter_mut().find(|n| n.node_id.as_str() == node) {
            Some(n) => n.state = NodeState::Leaving,
            None => return error(ErrorCode::NodeNotFound, "not a member"),
        }
    }
    accepted(&state)
}

async fn replace_node(AxState(state): AxState<Arc<State>>, Path(old): Path<String>, body: Bytes) -> Response {
    let reg: NodeRegistration = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return error(ErrorCode::InvalidJson, &e.to_string()),
    };
    {
        let mut nodes = state.nodes();
        if nodes.iter().any(|n| n.node_id == reg.node_id) {
            return error(ErrorCode::MembershipConflict, "already a member");
        }
        match nodes.iter_mut().find(|n| n.node_id.as_str() == old) {
            Some(n) => n.state = NodeState::Leaving,
            None => return error(ErrorCode::NodeNotFound, "not a member"),
        }
        nodes.push(joining(reg));
    }
    accepted(&state)
}

/// `POST /v1/cluster/change/retry`, as the ring service judges it: only a failed change
/// runs again (`202` with the view of it running); none, or one running, is `409
/// membership_conflict`.
async fn retry_change(AxState(state): AxState<Arc<State>>) -> Response {
    {
        let mut script = lock(&state.cluster_script);
        let failed = match script.front().and_then(|(_, change)| change.as_ref()) {
            None => {
                return error(
                    ErrorCode::MembershipConflict,
                    "no membership change is in progress",
                );
            }
            Some(p) => p.change.failed.is_some(),
        };
        if !failed {
            return error(
                ErrorCode::MembershipConflict,
                "the membership change is running; nothing to retry",
            );
        }
        if script.len() > 1 {
            script.pop_front();
        } else if let Some(p) = script.front_mut().and_then(|(_, change)| change.as_mut()) {
            p.change.failed = None;
            p.stuck = None;
        }
    }
    accepted(&state)
}

/// `POST /v1/cluster/change/abort`, as the ring service judges it: a change still copying
/// is undone (`200` with the view: a joining node forgotten, a leaving one up again, no
/// change); none, or one whose ring is published, is `409 membership_conflict`.
async fn abort_change(AxState(state): AxState<Arc<State>>) -> Response {
    {
        let mut script = lock(&state.cluster_script);
        let (epoch, change) = script.front().cloned().unwrap_or((RingEpoch(7), None));
        let Some(p) = change else {
            return error(
                ErrorCode::MembershipConflict,
                "no membership change is in progress",
            );
        };
        if p.change.phase != "copy" {
            return error(
                ErrorCode::MembershipConflict,
                "the new ring is already published; the change can only be retried",
            );
        }
        *script = VecDeque::from([(epoch, None)]);
    }
    {
        let mut nodes = state.nodes();
        nodes.retain(|n| n.state != NodeState::Joining);
        for n in nodes.iter_mut().filter(|n| n.state == NodeState::Leaving) {
            n.state = NodeState::Up;
        }
    }
    Json(state.view(false)).into_response()
}

#[derive(Deserialize)]
struct RingQuery {
    bucket: Option<String>,
    key: Option<String>,
}

async fn get_ring(Query(q): Query<RingQuery>) -> Response {
    let a = NodeId::new("node-a").expect("id");
    let b = NodeId::new("node-b").expect("id");
    match (q.bucket, q.key) {
        (Some(bucket), Some(key)) => {
            let partition = (dynamo_core::key_hash(&bucket, &key).0 >> 62) as u32;
            Json(KeyPlacement {
                epoch: RingEpoch(7),
                partition: PartitionId(partition),
                preference_list: vec![a, b],
                fallbacks: vec![NodeId::new("node-c").expect("id")],
            })
            .into_response()
        }
        _ => Json(json!({
            "epoch": 7,
            "partitions": 4,
            "owners": ["node-a", "node-b", "node-a", "node-b"],
        }))
        .into_response(),
    }
}

async fn create_token(AxState(state): AxState<Arc<State>>, Json(req): Json<serde_json::Value>) -> Response {
    let n = state.counter.fetch_add(1, Ordering::Relaxed);
    let id = format!("tok-{n}");
    let secret = format!("secret-{n}");
    let entry = json!({
        "id": id,
        "buckets": req["buckets"],
        "permissions": req["permissions"],
        "created": "2025-01-01T00:00:00.000Z",
    });
    lock(&state.tokens).push((secret.clone(), entry));
    (
        StatusCode::CREATED,
        Json(json!({
            "id": id,
            "token": secret,
            "buckets": req["buckets"],
            "permissions": req["permissions"],
        })),
    )
        .into_response()
}

async fn list_tokens(AxState(state): AxState<Arc<State>>) -> Response {
    let tokens: Vec<serde_json::Value> = lock(&state.tokens).iter().map(|(_, e)| e.clone()).collect();
    Json(json!({ "tokens": tokens })).into_response()
}

async fn delete_token(AxState(state): AxState<Arc<State>>, Path(id): Path<String>) -> Response {
    let mut tokens = lock(&state.tokens);
    let before = tokens.len();
    tokens.retain(|(_, e)| e["id"] != id.as_str());
    if tokens.len() == before {
        return error(ErrorCode::TokenNotFound, "no such token");
    }
    StatusCode::NO_CONTENT.into_response()
}
