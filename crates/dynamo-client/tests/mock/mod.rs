//! A mock coordinator on `127.0.0.1:0` for the SDK's and the CLI's tests (the CLI's
//! `tests/cli.rs` includes this file by path).
//!
//! It implements the public API's behaviours the clients depend on, with the core's real
//! version rules (`VersionedObject`, the context token), so siblings, contexts and
//! tombstones behave as the coordinator's will: blind writes become siblings, a write
//! with a context replaces what it saw, a delete leaves a tombstone whose 404 carries a
//! context. CRDT buckets (`/v1/crdt`) apply ops with the core's real CRDTs, so a remove
//! needs and honours the observed context, and an `Idempotency-Key` repeat is answered as
//! the first attempt without applying again. Tests steer it through [`State`]: scripted
//! error answers, a concurrent write slipped in before the next `PUT` or CRDT op, a CRDT
//! op applied but answered with an error (a lost quorum), `context_not_seen` answers, a
//! scripted membership change that `GET /v1/cluster` reports poll by poll (which a retry
//! moves past its failure, and an abort ends), and a log of every request as it arrived.
//! Listings (`GET /v1/kv/{bucket}?list`) page over the live keys as the coordinator
//! does, including its empty pages: a page reads at most `limit` keys, deleted ones
//! included, and answers the live ones among them. The change feed (`GET
//! /v1/feed/{bucket}`) serves a log of every `PUT`, `DELETE` and [`State::seed`] (not
//! batches or CRDT ops), long-polling up to `wait_ms`; its cursors differ on every page,
//! so tests can follow how they chain, and tests can script empty pages and expire every
//! cursor issued so far.
#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use dynamo_core::context;
use dynamo_core::crdt::{Crdt, CrdtOp, CrdtType};
use dynamo_core::etag::{ETag, Preconditions};
use dynamo_core::version::{ConflictRule, NewWrite, VersionedObject};
use dynamo_core::wire::cluster::{
    ChangeProgress, ClusterView, KeyPlacement, NodeRegistration, NodeState, NodeStatus,
};
use dynamo_core::wire::public::{
    BatchOpKind, BatchRequest, BatchResponse, BatchResult, FeedChange, FeedPage, KeyList,
};
use dynamo_core::wire::{
    BucketProps, BucketPropsPatch, ConflictMode, SiblingView, SiblingsEnvelope, rfc3339_from_ms,
};
use dynamo_core::{ActorId, DotSet, ErrorBody, ErrorCode, NodeId, PartitionId, RingEpoch};
use serde::Deserialize;
use serde_json::json;

/// The root token the mock accepts.
pub const TOKEN: &str = "mock-root-token";

const CONTEXT: &str = "x-dynamo-context";
const CRDT_TYPE: &str = "x-dynamo-crdt-type";
const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// The most body bytes the mock records and accepts.
const MAX_BODY_BYTES: usize = 16 << 20;
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
    /// The decoded path parameters of object and CRDT routes: `(bucket, key)`.
    pub object: Option<(String, String)>,
    /// The request body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
}

impl Seen {
    /// Returns a header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Returns the body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A CRDT op's answer as the mock sent it, kept to answer a repeat of its
/// `Idempotency-Key`.
#[derive(Clone)]
struct CrdtAnswer {
    /// What identifies the request: body and context (as the coordinator's fingerprint).
    fingerprint: (Bytes, Option<HeaderValue>),
    value: serde_json::Value,
    crdt_type: CrdtType,
    context: DotSet,
    etag: String,
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
    /// Error codes answered, one per request, before anything else, each with the
    /// `Retry-After` seconds it carries, if any.
    failures: Mutex<VecDeque<(ErrorCode, Option<u64>)>>,
    /// Values written blind, as another client would, just before the next `PUT`.
    concurrent: Mutex<VecDeque<Vec<u8>>>,
    /// CRDT values and their versions (the version makes the `ETag`).
    crdts: Mutex<HashMap<(String, String), (Crdt, u64)>>,
    /// Ops applied, as another client would, just before the next CRDT op.
    concurrent_crdt: Mutex<VecDeque<CrdtOp>>,
    /// Error codes answered, one per CRDT op, after the op was applied.
    crdt_failures_after_apply: Mutex<VecDeque<ErrorCode>>,
    /// CRDT ops carrying a context still to answer `context_not_seen`.
    context_not_seen: Mutex<usize>,
    /// CRDT answers by `Idempotency-Key`.
    crdt_answers: Mutex<HashMap<String, CrdtAnswer>>,
    requests: Mutex<Vec<Seen>>,
    counter: AtomicU64,
    /// The change feed's log: every change of every bucket, in order; a cursor is a
    /// position in it.
    feed: Mutex<Vec<(String, FeedChange)>>,
    /// Woken when the log grows, for the feed's long polls.
    feed_grew: tokio::sync::Notify,
    /// Cursors before this position answer `410 cursor_expired`.
    feed_expired_before: Mutex<usize>,
    /// Feed polls with a cursor still to answer with an empty page at once.
    feed_empty_pages: Mutex<usize>,
    /// Feed pages answered, to make every page's cursor unique.
    feed_pages: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl State {
    /// Answers the next `times` requests with `code`.
    pub fn fail_next(&self, code: ErrorCode, times: usize) {
        lock(&self.failures).extend(std::iter::repeat_n((code, None), times));
    }

    /// Answers the next `times` requests with `code` and `Retry-After: retry_after_secs`.
    pub fn fail_next_with_retry_after(&self, code: ErrorCode, times: usize, retry_after_secs: u64) {
        lock(&self.failures).extend(std::iter::repeat_n((code, Some(retry_after_secs)), times));
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
        self.log_change(bucket, key, object);
    }

    /// Appends a change of `key` as it now stands to the feed's log, and wakes the
    /// feed's long polls.
    fn log_change(&self, bucket: &str, key: &str, object: &VersionedObject) {
        let change = FeedChange {
            key: key.to_owned(),
            context: mock_keys().seal(object.context(), "mock", "mock"),
            deleted: object.is_deleted(),
        };
        lock(&self.feed).push((bucket.to_owned(), change));
        self.feed_grew.notify_waiters();
    }

    /// Answers the next `times` feed polls that carry a cursor with an empty page (and a
    /// new cursor at the same position) at once, whatever the log holds.
    pub fn answer_empty_feed_pages(&self, times: usize) {
        *lock(&self.feed_empty_pages) += times;
    }

    /// Expires every feed cursor issued before the last change logged, as a purge past
    /// the feed's retention would: polls with one answer `410 cursor_expired`.
    pub fn expire_feed_cursors(&self) {
        *lock(&self.feed_expired_before) = lock(&self.feed).len();
    }

    /// Makes `bucket` a CRDT bucket of type `crdt_type`.
    pub fn crdt_bucket(&self, bucket: &str, crdt_type: CrdtType) {
        let props = BucketProps {
            conflict: ConflictMode::Crdt,
            crdt_type: Some(crdt_type),
            ..BucketProps::default()
        };
        lock(&self.buckets).insert(bucket.into(), props);
    }

    /// Returns a CRDT key's value as a read would answer it.
    pub fn crdt_value(&self, bucket: &str, key: &str) -> Option<serde_json::Value> {
        lock(&self.crdts)
            .get(&(bucket.to_owned(), key.to_owned()))
            .map(|(crdt, _)| crdt.value())
    }

    /// Applies `op` as another client would (another replica's actor), just before the
    /// next CRDT op, whatever that op's fate.
    pub fn apply_concurrently_before_next_crdt_op(&self, op: CrdtOp) {
        lock(&self.concurrent_crdt).push_back(op);
    }

    /// Applies the next `times` CRDT ops and answers them with `code` anyway, as a
    /// coordinator does when the coordinating replica stored the op but too few others
    /// acknowledged it.
    pub fn fail_crdt_ops_after_applying(&self, code: ErrorCode, times: usize) {
        lock(&self.crdt_failures_after_apply).extend(std::iter::repeat_n(code, times));
    }

    /// Answers the next `times` CRDT ops that carry a context with `context_not_seen`,
    /// applying nothing (the replicas reached have not seen the context).
    pub fn answer_context_not_seen(&self, times: usize) {
        *lock(&self.context_not_seen) += times;
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
            ring_group: None,
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
        .route("/v1/kv/{bucket}", get(list_keys))
        .route("/v1/feed/{bucket}", get(get_feed))
        .route("/v1/crdt/{bucket}/{key}", get(get_crdt).post(post_crdt))
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
    let object = uri
        .strip_prefix("/v1/kv/")
        .or_else(|| uri.strip_prefix("/v1/crdt/"))
        .and_then(|rest| {
            let path = rest.split('?').next().unwrap_or_default();
            let (b, k) = path.split_once('/')?;
            Some((percent_decode(b), percent_decode(k)))
        });
    let (parts, body) = req.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY_BYTES).await else {
        return error(ErrorCode::BodyTooLarge, "the mock takes at most 16 MiB");
    };
    let req = Request::from_parts(parts, Body::from(body.clone()));
    lock(&state.requests).push(Seen {
        method: req.method().to_string(),
        uri,
        headers: req.headers().clone(),
        object,
        body,
        at: Instant::now(),
    });
    let failure = lock(&state.failures).pop_front();
    if let Some((code, retry_after)) = failure {
        let mut resp = error(code, "scripted failure");
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        return resp;
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
    let (slot_bucket, slot_key) = (bucket.clone(), key.clone());
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
    state.log_change(&slot_bucket, &slot_key, object);
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
    let (slot_bucket, slot_key) = (bucket.clone(), key.clone());
    let object = objects.entry((bucket, key)).or_default();
    match object.put(&context, ActorId(1), NewWrite::tombstone(now), SIBLINGS) {
        Ok(outcome) => {
            state.log_change(&slot_bucket, &slot_key, object);
            with_etag(
                with_context(StatusCode::NO_CONTENT.into_response(), &outcome.context),
                object,
            )
        }
        Err(e) => error(e.code(), &e.to_string()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    list: Option<String>,
    prefix: Option<String>,
    start_after: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/kv/{bucket}?list`: the keys after `start_after` with `prefix`, in byte order.
/// A page reads at most `limit` keys, deleted ones included, and answers the live ones,
/// so a run of deleted keys gives a page with fewer keys, or none, and a `next`: the last
/// key read, while keys remain.
async fn list_keys(
    AxState(state): AxState<Arc<State>>,
    Path(bucket): Path<String>,
    Query(q): Query<ListQuery>,
) -> Response {
    if q.list.is_none() {
        return error(ErrorCode::InvalidParameter, "add ?list");
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return error(ErrorCode::InvalidParameter, "limit must be 1..=1000");
    }
    let prefix = q.prefix.unwrap_or_default();
    let objects = lock(&state.objects);
    let mut candidates: Vec<(&String, bool)> = objects
        .iter()
        .filter(|((b, k), _)| {
            *b == bucket && k.starts_with(&prefix) && q.start_after.as_ref().is_none_or(|after| k > after)
        })
        .map(|((_, k), o)| (k, !o.is_deleted()))
        .collect();
    candidates.sort();
    let read = &candidates[..candidates.len().min(limit)];
    let keys: Vec<String> = read
        .iter()
        .filter(|(_, live)| *live)
        .map(|(k, _)| (*k).clone())
        .collect();
    let next = (candidates.len() > limit)
        .then(|| read.last().map(|(k, _)| (*k).clone()))
        .flatten();
    Json(KeyList { keys, next }).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FeedQuery {
    cursor: Option<String>,
    limit: Option<usize>,
    wait_ms: Option<u64>,
}

/// A mock feed cursor: `<bucket>.<position in the log>.<page number>` (the page number
/// only makes every page's cursor unique).
fn feed_cursor(state: &State, bucket: &str, pos: usize) -> String {
    let page = state.feed_pages.fetch_add(1, Ordering::Relaxed);
    format!("{bucket}.{pos}.{page}")
}

/// `GET /v1/feed/{bucket}`: without a cursor, an empty page from the log's end; with
/// one, the bucket's changes after it (at most `limit`), waiting up to `wait_ms` for one.
async fn get_feed(
    AxState(state): AxState<Arc<State>>,
    Path(bucket): Path<String>,
    Query(q): Query<FeedQuery>,
) -> Response {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return error(ErrorCode::InvalidParameter, "limit must be 1..=1000");
    }
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms > 30_000 {
        return error(ErrorCode::InvalidParameter, "wait_ms must be at most 30000");
    }
    let Some(cursor) = q.cursor else {
        let pos = lock(&state.feed).len();
        let cursor = feed_cursor(&state, &bucket, pos);
        return Json(FeedPage {
            changes: vec![],
            cursor,
        })
        .into_response();
    };
    let mut parts = cursor.rsplitn(3, '.');
    let (_page, pos, issued_for) = (parts.next(), parts.next(), parts.next());
    let Some(pos) = pos.and_then(|p| p.parse::<usize>().ok()) else {
        return error(ErrorCode::InvalidParameter, "cursor: not a cursor");
    };
    if issued_for != Some(bucket.as_str()) {
        return error(ErrorCode::InvalidParameter, "cursor: issued for another bucket");
    }
    if pos < *lock(&state.feed_expired_before) {
        return error(ErrorCode::CursorExpired, "the cursor is older than the retention");
    }
    {
        let mut empty = lock(&state.feed_empty_pages);
        if *empty > 0 {
            *empty -= 1;
            let cursor = feed_cursor(&state, &bucket, pos);
            return Json(FeedPage {
                changes: vec![],
                cursor,
            })
            .into_response();
        }
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(wait_ms);
    loop {
        // Registered before the log is read, so a change logged in between still wakes it.
        let grew = state.feed_grew.notified();
        tokio::pin!(grew);
        grew.as_mut().enable();
        let (changes, next) = {
            let log = lock(&state.feed);
            let mut changes = Vec::new();
            let mut next = log.len();
            for (i, (b, change)) in log.iter().enumerate().skip(pos) {
                if changes.len() == limit {
                    next = i;
                    break;
                }
                if *b == bucket {
                    changes.push(change.clone());
                }
            }
            (changes, next)
        };
        let timed_out = changes.is_empty() && tokio::time::timeout_at(deadline, grew).await.is_err();
        if !changes.is_empty() || timed_out {
            let cursor = feed_cursor(&state, &bucket, next);
            return Json(FeedPage { changes, cursor }).into_response();
        }
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

/// The CRDT type of `bucket`, or the `409 wrong_bucket_type` answer.
#[allow(clippy::result_large_err)] // A test mock: the error is the answer itself.
fn crdt_type_of(state: &State, bucket: &str) -> Result<CrdtType, Response> {
    match lock(&state.buckets).get(bucket) {
        Some(BucketProps {
            conflict: ConflictMode::Crdt,
            crdt_type: Some(t),
            ..
        }) => Ok(*t),
        _ => Err(error(ErrorCode::WrongBucketType, "not a CRDT bucket")),
    }
}

fn crdt_etag(version: u64) -> String {
    format!("\"crdt-{version}\"")
}

fn crdt_answer(value: &serde_json::Value, crdt_type: CrdtType, context: &DotSet, etag: &str) -> Response {
    let mut resp = with_context(Json(value.clone()).into_response(), context);
    let headers = resp.headers_mut();
    headers.insert(CRDT_TYPE, HeaderValue::from_static(crdt_type.as_str()));
    headers.insert(header::ETAG, HeaderValue::from_str(etag).expect("a tag is ASCII"));
    resp
}

async fn get_crdt(
    AxState(state): AxState<Arc<State>>,
    Path((bucket, key)): Path<(String, String)>,
) -> Response {
    if let Err(resp) = crdt_type_of(&state, &bucket) {
        return resp;
    }
    match lock(&state.crdts).get(&(bucket, key)) {
        Some((crdt, version)) => crdt_answer(
            &crdt.value(),
            crdt.crdt_type(),
            &crdt.context(),
            &crdt_etag(*version),
        ),
        None => error(ErrorCode::NotFound, "no value under the key"),
    }
}

/// `POST /v1/crdt/{bucket}/{key}`, checked in the coordinator's order: the bucket, the
/// media type, the op, the context, then the `Idempotency-Key`, the preconditions and
/// the op itself.
async fn post_crdt(
    AxState(state): AxState<Arc<State>>,
    Path((bucket, key)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let crdt_type = match crdt_type_of(&state, &bucket) {
        Ok(t) => t,
        Err(resp) => return resp,
    };
    let media = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if media.is_some_and(|m| !m.starts_with("application/json")) {
        return error(
            ErrorCode::UnsupportedMediaType,
            "a CRDT operation is application/json",
        );
    }
    let op = match CrdtOp::from_json(&body) {
        Ok(op) if op.kind() == crdt_type => op,
        Ok(op) => {
            let message = format!("a {} operation does not apply to a {crdt_type}", op.name());
            return error(ErrorCode::InvalidCrdtOperation, &message);
        }
        Err(e) => return error(e.code(), &e.to_string()),
    };
    let observed = match headers.get(CONTEXT) {
        None => None,
        Some(_) => match request_context(&headers) {
            Ok(c) => Some(c),
            Err(message) => return error(ErrorCode::InvalidContext, &message),
        },
    };
    if op.needs_context() && observed.is_none() {
        return error(
            ErrorCode::InvalidCrdtOperation,
            "a remove needs the context the client observed",
        );
    }
    let fingerprint = (body.clone(), headers.get(CONTEXT).cloned());
    let idempotency = headers
        .get(IDEMPOTENCY_KEY)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(k) = &idempotency
        && let Some(first) = lock(&state.crdt_answers).get(k).cloned()
    {
        if first.fingerprint != fingerprint {
            return error(
                ErrorCode::IdempotencyKeyReused,
                "the key came with another request",
            );
        }
        return crdt_answer(&first.value, first.crdt_type, &first.context, &first.etag);
    }
    let slot = (bucket, key);
    let concurrent = lock(&state.concurrent_crdt).pop_front();
    if let Some(other) = concurrent {
        let now = state.now_ms();
        let mut crdts = lock(&state.crdts);
        let (crdt, version) = crdts
            .entry(slot.clone())
            .or_insert_with(|| (Crdt::new(crdt_type), 0));
        crdt.apply(&other, ActorId(2), None, now)
            .expect("a concurrent op applies");
        *version += 1;
    }
    if observed.is_some() {
        let mut pending = lock(&state.context_not_seen);
        if *pending > 0 {
            *pending -= 1;
            return error(
                ErrorCode::ContextNotSeen,
                "no reachable replica has seen the context",
            );
        }
    }
    let now = state.now_ms();
    let mut crdts = lock(&state.crdts);
    let current = crdts.get(&slot);
    let tag = current.map(|(_, version)| crdt_etag(*version));
    let text = |name| headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let holds = match (text(header::IF_MATCH), text(header::IF_NONE_MATCH)) {
        (Some("*"), _) => current.is_some(),
        (Some(wanted), _) => tag.as_deref() == Some(wanted),
        (None, Some("*")) => current.is_none(),
        (None, _) => true,
    };
    if !holds {
        return error(ErrorCode::PreconditionFailed, "the precondition does not hold");
    }
    // Applied to a copy, so a refused op leaves a missing key missing.
    let (mut crdt, version) = current.cloned().unwrap_or_else(|| (Crdt::new(crdt_type), 0));
    if let Err(e) = crdt.apply(&op, ActorId(1), observed.as_ref(), now) {
        return error(e.code(), &e.to_string());
    }
    let answer = CrdtAnswer {
        fingerprint,
        value: crdt.value(),
        crdt_type,
        context: crdt.context(),
        etag: crdt_etag(version + 1),
    };
    crdts.insert(slot, (crdt, version + 1));
    drop(crdts);
    if let Some(k) = idempotency {
        lock(&state.crdt_answers).insert(k, answer.clone());
    }
    if let Some(code) = lock(&state.crdt_failures_after_apply).pop_front() {
        return error(code, "scripted failure after applying");
    }
    crdt_answer(&answer.value, answer.crdt_type, &answer.context, &answer.etag)
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
        volume: None,
        volume_refused: None,
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
        volume: None,
        volume_refused: None,
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
