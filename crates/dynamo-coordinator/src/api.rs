//! The public REST API (`/v1`), as `../shared/API.md` specifies it, plus the admin token
//! endpoints documented in `docs/api.md`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use dynamo_core::context;
use dynamo_core::ids::validate_key;
use dynamo_core::limits::MAX_VALUE_BYTES;
use dynamo_core::version::VersionedObject;
use dynamo_core::wire::cluster::{ClusterState, ClusterView, KeyPlacement, Permission, TokenRecord};
use dynamo_core::wire::internal::IdempotencyClaim;
use dynamo_core::wire::public::{NewToken, RingView, TokenInfo, TokenList, TokenRequest};
use dynamo_core::wire::routes;
use dynamo_core::wire::{
    BucketProps, BucketPropsPatch, ConflictMode, SiblingView, SiblingsEnvelope, rfc3339_from_ms,
};
use dynamo_core::{BucketName, DotSet, ErrorCode, NodeId, PartitionId, RingEpoch, key_hash};
use dynamo_server::ApiError;
use dynamo_server::extract::{Body, Json, Path, Query};
use serde::Deserialize;

use crate::auth::{self, AuthState, Principal};
use crate::config::Config;
use crate::kv::{Coordinator, WriteRequest};
use crate::metrics::CoordinatorMetrics;
use crate::state::ClusterCache;

/// The context header.
pub const CONTEXT_HEADER: &str = "x-dynamo-context";
/// Longest request URI accepted (a 1024-byte key percent-encoded is at most 3 KiB).
pub const MAX_URI_BYTES: usize = 8192;
/// Longest `Content-Type` stored with a value.
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;
/// How long admin calls wait for the ring service.
const RING_CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Shared state of the handlers.
pub struct AppState {
    /// The data path.
    pub coord: Arc<Coordinator>,
    /// The cluster cache.
    pub cache: ClusterCache,
    /// The configuration.
    pub config: Arc<Config>,
    /// Client for the ring service.
    pub client: reqwest::Client,
    /// Metrics.
    pub metrics: CoordinatorMetrics,
    /// Buckets whose first write this coordinator reported (or is reporting) to the ring
    /// service, so that a burst of writes to a new bucket sends one report, not one each.
    pub marked: Arc<std::sync::Mutex<std::collections::HashSet<BucketName>>>,
}

/// Builds the `/v1` routes behind authentication.
pub fn routes(state: AppState, auth: Arc<AuthState>) -> Router {
    Router::new()
        .route(
            "/v1/kv/{bucket}/{*key}",
            get(get_object).put(put_object).delete(delete_object),
        )
        .route("/v1/buckets/{bucket}", get(get_bucket).put(put_bucket))
        .route("/v1/cluster", get(get_cluster))
        .route("/v1/cluster/nodes", post(join_node))
        .route("/v1/cluster/nodes/{node}", delete(decommission_node))
        .route("/v1/ring", get(get_ring))
        .route("/v1/admin/tokens", post(create_token).get(list_tokens))
        .route("/v1/admin/tokens/{id}", delete(delete_token))
        .route("/v1/openapi.json", get(crate::openapi::serve))
        .layer(middleware::from_fn_with_state(auth, auth::authenticate))
        .layer(middleware::from_fn(limit_uri))
        // Behind an Arc: axum clones the state for every request, and a plain clone of
        // this one was a few dozen reference counts and a string.
        .with_state(Arc::new(state))
}

async fn limit_uri(req: Request, next: Next) -> Response {
    if req.uri().to_string().len() > MAX_URI_BYTES {
        return ApiError::new(
            ErrorCode::UriTooLong,
            format!("the request URI is longer than {MAX_URI_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(req).await
}

fn bucket_name(b: String) -> Result<BucketName, ApiError> {
    BucketName::new(b).map_err(ApiError::from)
}

fn quorum(value: Option<u8>, default: u8, n: u8, what: &str) -> Result<usize, ApiError> {
    let v = value.unwrap_or(default);
    if v == 0 || v > n {
        return Err(ApiError::new(
            ErrorCode::InvalidQuorum,
            format!("{what} must be 1..={n}, got {v}"),
        ));
    }
    Ok(usize::from(v))
}

fn timeout(config: &Config, ms: Option<u64>) -> Result<Duration, ApiError> {
    match ms {
        None => Ok(config.request_timeout()),
        Some(0) => Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "timeout_ms must be at least 1",
        )),
        Some(ms) => Ok(Duration::from_millis(ms.min(config.max_request_timeout_ms))),
    }
}

fn context_of(headers: &HeaderMap) -> Result<DotSet, ApiError> {
    match headers.get(CONTEXT_HEADER) {
        None => Ok(DotSet::new()),
        Some(v) => {
            let s = v
                .to_str()
                .map_err(|_| ApiError::new(ErrorCode::InvalidContext, "context is not ASCII"))?;
            context::decode(s).map_err(ApiError::from)
        }
    }
}

fn with_context(mut resp: Response, ctx: &DotSet) -> Response {
    if let Ok(v) = HeaderValue::from_str(&context::encode(ctx)) {
        resp.headers_mut().insert(CONTEXT_HEADER, v);
    }
    resp
}

fn envelope(obj: &VersionedObject, ctx: &DotSet) -> SiblingsEnvelope {
    SiblingsEnvelope {
        context: context::encode(ctx),
        siblings: obj
            .live_siblings()
            .map(|s| SiblingView {
                value: s.value.clone(),
                content_type: s.content_type.clone(),
                last_modified: rfc3339_from_ms(s.last_modified_ms),
            })
            .collect(),
    }
}

/// Records a request's outcome in the metrics.
fn observe<T>(m: &CoordinatorMetrics, op: &str, start: Instant, r: &Result<T, ApiError>) {
    m.request_duration
        .with_label_values(&[op])
        .observe(start.elapsed().as_secs_f64());
    let code = r.as_ref().err().map_or("ok", |e| e.code.as_str());
    m.requests.with_label_values(&[op, code]).inc();
}

/// Query of a read.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ReadParams {
    /// Read quorum for this request (1 ≤ r ≤ n).
    pub r: Option<u8>,
    /// Most milliseconds to wait for the quorum (capped by the server).
    pub timeout_ms: Option<u64>,
}

/// Query of a write.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WriteParams {
    /// Write quorum for this request (1 ≤ w ≤ n).
    pub w: Option<u8>,
    /// Most milliseconds to wait for the quorum (capped by the server).
    pub timeout_ms: Option<u64>,
    /// Answer `200` with the stored object instead of `204`.
    pub returnbody: Option<bool>,
}

fn object_target(
    state: &AppState,
    principal: &Principal,
    bucket: String,
    key: String,
    permission: Permission,
) -> Result<(BucketName, String, BucketProps, bool), ApiError> {
    let bucket = bucket_name(bucket)?;
    validate_key(&key).map_err(ApiError::from)?;
    principal.require(permission, Some(&bucket))?;
    let (props, has_data) = state.cache.bucket(&bucket, &state.config.default_props());
    if props.conflict == ConflictMode::Crdt {
        return Err(ApiError::new(
            ErrorCode::WrongBucketType,
            format!("bucket {bucket} holds CRDTs; CRDT operations are not served by this version"),
        ));
    }
    Ok((bucket, key, props, has_data))
}

/// `GET /v1/kv/{bucket}/{key}`.
#[utoipa::path(get, path = "/v1/kv/{bucket}/{key}", tag = "objects",
    params(("bucket" = String, Path), ("key" = String, Path), ReadParams),
    responses(
        (status = 200, description = "One value (raw body), or the envelope with `Accept: application/json`"),
        (status = 300, description = "Siblings", body = SiblingsEnvelopeDoc),
        (status = 404, description = "No live value (may carry `X-Dynamo-Context`)", body = ErrorBodyDoc),
        (status = 503, description = "Fewer than R replicas answered", body = ErrorBodyDoc)))]
pub async fn get_object(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path((bucket, key)): Path<(String, String)>,
    Query(params): Query<ReadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let r = async {
        let (bucket, key, props, _) = object_target(&state, &principal, bucket, key, Permission::Read)?;
        let r = quorum(params.r, props.r, props.n, "r")?;
        let t = timeout(&state.config, params.timeout_ms)?;
        state
            .coord
            .read(bucket.clone(), key.clone(), &props, r, t)
            .await
            .map(|o| (o, bucket, key))
    }
    .await;
    observe(&state.metrics, "get", start, &r);
    let (obj, bucket, key) = r?;
    let obj = match obj {
        Some(o) if !o.is_deleted() => o,
        found => {
            let missing = ApiError::new(
                ErrorCode::NotFound,
                format!("no value in bucket {bucket} under the key ({} bytes)", key.len()),
            )
            .into_response();
            // A tombstone's context lets the client write "after the delete".
            return Ok(match found {
                Some(tomb) => with_context(missing, tomb.context()),
                None => missing,
            });
        }
    };
    let wants_json = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/json"));
    let ctx = obj.context().clone();
    let live: Vec<_> = obj.live_siblings().collect();
    if wants_json || live.len() > 1 {
        let status = if live.len() > 1 {
            StatusCode::MULTIPLE_CHOICES
        } else {
            StatusCode::OK
        };
        return Ok(with_context(
            (status, Json(envelope(&obj, &ctx))).into_response(),
            &ctx,
        ));
    }
    let s = live[0];
    let ct = if s.content_type.is_empty() {
        "application/octet-stream"
    } else {
        &s.content_type
    };
    let mut resp = (StatusCode::OK, s.value.clone()).into_response();
    if let Ok(v) = HeaderValue::from_str(ct) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    Ok(with_context(resp, &ctx))
}

fn mark_written(state: &AppState, bucket: &BucketName, has_data: bool) {
    if has_data
        || !state
            .marked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(bucket.clone())
    {
        return;
    }
    let url = routes::url(state.cache.ring_url(), &routes::ring::bucket_written(bucket));
    let client = state.client.clone();
    let marked = state.marked.clone();
    let bucket = bucket.clone();
    state.coord.tracker.spawn(async move {
        // Best effort: a missed report only means `n` stays changeable a little longer;
        // the bucket is forgotten here so the next write reports it again.
        let ok = client
            .post(url)
            .timeout(RING_CALL_TIMEOUT)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !ok {
            tracing::debug!(bucket = %bucket, "could not report the bucket's first write");
            marked
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&bucket);
        }
    });
}

/// The `Idempotency-Key` header.
pub const IDEMPOTENCY_HEADER: &str = "idempotency-key";

/// Most bytes of an `Idempotency-Key` (API.md: 1–128 visible ASCII).
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 128;

/// Reads the `Idempotency-Key` of a write into the claim its coordinate carries: `id`
/// scopes the key to the caller (SHA-256 of the caller and the key), `fingerprint`
/// names exactly what was asked (SHA-256 of the method, bucket, key, content type,
/// context header and body, each length-prefixed so that no two requests share one).
///
/// # Errors
/// `400 invalid_request` for a key that is not 1–128 visible ASCII characters.
pub fn idempotency_claim(
    headers: &HeaderMap,
    principal: &Principal,
    method: &str,
    bucket: &BucketName,
    key: &str,
    body: Option<&[u8]>,
) -> Result<Option<IdempotencyClaim>, ApiError> {
    use sha2::{Digest, Sha256};
    let Some(raw) = headers.get(IDEMPOTENCY_HEADER) else {
        return Ok(None);
    };
    let k = raw.as_bytes();
    if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY_BYTES || !k.iter().all(|b| (0x21..=0x7e).contains(b)) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY_BYTES} visible ASCII characters"),
        ));
    }
    let digest = |parts: &[&[u8]]| {
        let mut h = Sha256::new();
        for p in parts {
            h.update((p.len() as u64).to_le_bytes());
            h.update(p);
        }
        let d = h.finalize();
        let mut first = [0u8; 16];
        first.copy_from_slice(&d[..16]);
        u128::from_le_bytes(first)
    };
    let header = |name: &str| headers.get(name).map_or(&[][..], |v| v.as_bytes());
    Ok(Some(IdempotencyClaim {
        id: digest(&[principal.scope().as_bytes(), k]),
        fingerprint: digest(&[
            method.as_bytes(),
            bucket.as_str().as_bytes(),
            key.as_bytes(),
            header(header::CONTENT_TYPE.as_str()),
            header(CONTEXT_HEADER),
            body.unwrap_or_default(),
        ]),
    }))
}

async fn write(
    state: &AppState,
    principal: &Principal,
    bucket: String,
    key: String,
    params: WriteParams,
    headers: &HeaderMap,
    value: Option<bytes::Bytes>,
) -> Result<Response, ApiError> {
    let (bucket, key, props, has_data) = object_target(state, principal, bucket, key, Permission::Write)?;
    let method = if value.is_some() { "PUT" } else { "DELETE" };
    let idempotency = idempotency_claim(headers, principal, method, &bucket, &key, value.as_deref())?;
    let w = quorum(params.w, props.w, props.n, "w")?;
    let t = timeout(&state.config, params.timeout_ms)?;
    let tombstone = value.is_none();
    let context = match (headers.get(CONTEXT_HEADER), tombstone) {
        // A DELETE without a context deletes what a quorum read finds (as Riak's client
        // does): the caller explicitly asked for the key to go, so this is not a silent
        // replacement, and a blind tombstone would leave the value visible as a sibling.
        (None, true) => {
            let r = usize::from(props.r);
            match state
                .coord
                .read(bucket.clone(), key.clone(), &props, r, t)
                .await?
            {
                Some(found) => found.context().clone(),
                None => DotSet::new(),
            }
        }
        _ => context_of(headers)?,
    };
    let value = value.map(|b| b.to_vec()).unwrap_or_default();
    if value.len() > MAX_VALUE_BYTES {
        return Err(ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("value is {} bytes; the limit is {MAX_VALUE_BYTES}", value.len()),
        ));
    }
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => "application/octet-stream".to_owned(),
        Some(v) => v
            .to_str()
            .ok()
            .filter(|s| s.len() <= MAX_CONTENT_TYPE_BYTES)
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidRequest,
                    "Content-Type must be ASCII, at most 255 bytes",
                )
            })?,
    };
    let req = WriteRequest {
        bucket: bucket.clone(),
        key,
        context,
        value,
        content_type: if tombstone { String::new() } else { content_type },
        tombstone,
        idempotency,
    };
    let outcome = state.coord.write(req, &props, w, t).await?;
    mark_written(state, &bucket, has_data);
    if params.returnbody.unwrap_or(false) && !tombstone {
        let ctx = outcome.object.context().clone();
        return Ok(with_context(
            (StatusCode::OK, Json(envelope(&outcome.object, &ctx))).into_response(),
            &ctx,
        ));
    }
    Ok(with_context(
        StatusCode::NO_CONTENT.into_response(),
        &outcome.context,
    ))
}

/// `PUT /v1/kv/{bucket}/{key}`.
#[utoipa::path(put, path = "/v1/kv/{bucket}/{key}", tag = "objects",
    params(("bucket" = String, Path), ("key" = String, Path), WriteParams,
        ("Idempotency-Key" = Option<String>, Header, description = "1-128 visible ASCII: a repeat of the same request within the window answers as the first did and applies nothing")),
    request_body(content = Vec<u8>, description = "The value, at most 1 MiB", content_type = "application/octet-stream"),
    responses(
        (status = 204, description = "Stored; `X-Dynamo-Context` covers what the writer had seen plus this write"),
        (status = 200, description = "Stored, with `?returnbody=true`", body = SiblingsEnvelopeDoc),
        (status = 409, description = "Too many siblings: read, resolve, write with the context", body = ErrorBodyDoc),
        (status = 413, description = "Value larger than 1 MiB", body = ErrorBodyDoc),
        (status = 422, description = "The Idempotency-Key was used for another request within its window", body = ErrorBodyDoc),
        (status = 503, description = "Fewer than W replicas stored it", body = ErrorBodyDoc)))]
pub async fn put_object(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path((bucket, key)): Path<(String, String)>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
    Body(body): Body,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let r = write(&state, &principal, bucket, key, params, &headers, Some(body)).await;
    observe(&state.metrics, "put", start, &r);
    r
}

/// `DELETE /v1/kv/{bucket}/{key}`.
#[utoipa::path(delete, path = "/v1/kv/{bucket}/{key}", tag = "objects",
    params(("bucket" = String, Path), ("key" = String, Path), WriteParams,
        ("Idempotency-Key" = Option<String>, Header, description = "1-128 visible ASCII: a repeat of the same request within the window answers as the first did and applies nothing")),
    responses(
        (status = 204, description = "A tombstone was written"),
        (status = 422, description = "The Idempotency-Key was used for another request within its window", body = ErrorBodyDoc),
        (status = 503, description = "Fewer than W replicas stored it", body = ErrorBodyDoc)))]
pub async fn delete_object(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path((bucket, key)): Path<(String, String)>,
    Query(params): Query<WriteParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let start = Instant::now();
    let r = write(&state, &principal, bucket, key, params, &headers, None).await;
    observe(&state.metrics, "delete", start, &r);
    r
}

/// `GET /v1/buckets/{bucket}`.
#[utoipa::path(get, path = "/v1/buckets/{bucket}", tag = "buckets",
    params(("bucket" = String, Path)),
    responses((status = 200, description = "Effective properties, defaults included", body = BucketPropsDoc)))]
pub async fn get_bucket(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(bucket): Path<String>,
) -> Result<Json<BucketProps>, ApiError> {
    let bucket = bucket_name(bucket)?;
    principal.require(Permission::Read, Some(&bucket))?;
    Ok(Json(state.cache.bucket(&bucket, &state.config.default_props()).0))
}

/// Relays an error body from the ring service, or maps its absence.
async fn ring_error(resp: reqwest::Response) -> ApiError {
    let status = resp.status();
    match resp.json::<dynamo_core::ErrorBody>().await {
        Ok(body) => ApiError::new(body.error.code, body.error.message),
        Err(_) => ApiError::new(
            ErrorCode::RingUnavailable,
            format!("ring service answered {status}"),
        ),
    }
}

fn ring_unreachable(e: reqwest::Error) -> ApiError {
    ApiError::new(
        ErrorCode::RingUnavailable,
        format!("ring service unreachable: {}", e.without_url()),
    )
}

/// `PUT /v1/buckets/{bucket}` (admin): a partial update of the properties.
#[utoipa::path(put, path = "/v1/buckets/{bucket}", tag = "buckets",
    params(("bucket" = String, Path)),
    request_body = BucketPropsDoc,
    responses(
        (status = 200, description = "The new effective properties", body = BucketPropsDoc),
        (status = 409, description = "`n` cannot change once the bucket holds data", body = ErrorBodyDoc),
        (status = 422, description = "Invalid properties", body = ErrorBodyDoc)))]
pub async fn put_bucket(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(bucket): Path<String>,
    Json(patch): Json<BucketPropsPatch>,
) -> Result<Json<BucketProps>, ApiError> {
    let bucket = bucket_name(bucket)?;
    principal.require(Permission::Admin, Some(&bucket))?;
    let (current, _) = state.cache.bucket(&bucket, &state.config.default_props());
    let next = current.apply(&patch).map_err(ApiError::from)?;
    // The ring service stores exactly the effective properties, so every coordinator
    // serves the same ones whatever its own defaults.
    let full = BucketPropsPatch {
        n: Some(next.n),
        r: Some(next.r),
        w: Some(next.w),
        conflict: Some(next.conflict),
        crdt_type: next.crdt_type,
        max_siblings: Some(next.max_siblings),
    };
    ring_change(
        &state,
        state
            .client
            .put(routes::url(
                state.cache.ring_url(),
                &routes::ring::bucket(&bucket),
            ))
            .json(&full),
    )
    .await?;
    Ok(Json(next))
}

fn view(s: &ClusterState) -> ClusterView {
    ClusterView {
        epoch: s.ring.as_ref().map_or(RingEpoch(0), |r| r.epoch()),
        nodes: s.nodes.clone(),
        handoffs: s.handoffs.clone(),
    }
}

/// `GET /v1/cluster`: served from the cached state, so it answers while the ring service
/// is away.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, description = "Nodes, their state, the ring epoch, handoffs in progress")))]
pub async fn get_cluster(State(state): State<Arc<AppState>>) -> Result<Json<ClusterView>, ApiError> {
    let s = state.cache.current()?;
    Ok(Json(view(&s)))
}

/// Query of `GET /v1/ring`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RingQuery {
    /// With `key`: show that key's placement.
    pub bucket: Option<String>,
    /// With `bucket`: show that key's placement.
    pub key: Option<String>,
}

/// `GET /v1/ring`, or a key's placement with `?bucket=&key=`.
#[utoipa::path(get, path = "/v1/ring", tag = "cluster", params(RingQuery),
    responses((status = 200, description = "The ring, or the key's partition, preference list and fallbacks")))]
pub async fn get_ring(
    State(state): State<Arc<AppState>>,
    Query(q): Query<RingQuery>,
) -> Result<Response, ApiError> {
    let s = state.cache.current()?;
    let ring = s
        .ring
        .as_ref()
        .ok_or_else(|| ApiError::new(ErrorCode::RingUnavailable, "no node has joined the cluster yet"))?;
    match (q.bucket, q.key) {
        (None, None) => Ok(Json(RingView {
            epoch: ring.epoch(),
            partitions: ring.partitioning().count(),
            owners: ring.owners().to_vec(),
        })
        .into_response()),
        (Some(b), Some(k)) => {
            let bucket = bucket_name(b)?;
            validate_key(&k).map_err(ApiError::from)?;
            let (props, _) = state.cache.bucket(&bucket, &state.config.default_props());
            let pl = ring.preference_list_for(key_hash(bucket.as_str(), &k), usize::from(props.n));
            Ok(Json(KeyPlacement {
                epoch: ring.epoch(),
                partition: PartitionId(pl.partition.0),
                preference_list: pl.preference_list,
                fallbacks: pl.fallbacks,
            })
            .into_response())
        }
        _ => Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "give both bucket and key, or neither",
        )),
    }
}

/// Sends an admin change to the ring service and, once it accepted it, refreshes the
/// cached state so this coordinator serves the change at once.
///
/// # Errors
/// The ring service's own error, or `503 ring_unavailable` when it does not answer.
async fn ring_change(state: &AppState, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
    let resp = req
        .timeout(RING_CALL_TIMEOUT)
        .send()
        .await
        .map_err(ring_unreachable)?;
    if !resp.status().is_success() {
        return Err(ring_error(resp).await);
    }
    state.cache.refresh(RING_CALL_TIMEOUT).await?;
    Ok(resp)
}

/// Relays a membership change to the ring service, answering its status and body.
async fn relay(state: &AppState, req: reqwest::RequestBuilder) -> Result<Response, ApiError> {
    let resp = ring_change(state, req).await?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, Json(body)).into_response())
}

/// `POST /v1/cluster/nodes` (admin): join a node; the ring changes once its data is in.
#[utoipa::path(post, path = "/v1/cluster/nodes", tag = "cluster", request_body = NodeRegistrationDoc,
    responses((status = 202, description = "Accepted: handoff to the new node runs, then the ring changes"),
        (status = 409, description = "Already a member, or another change is in progress", body = ErrorBodyDoc)))]
pub async fn join_node(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Json(reg): Json<dynamo_core::wire::cluster::NodeRegistration>,
) -> Result<Response, ApiError> {
    principal.require(Permission::Admin, None)?;
    let url = routes::url(state.cache.ring_url(), routes::ring::NODES);
    relay(&state, state.client.post(url).json(&reg)).await
}

/// `DELETE /v1/cluster/nodes/{node}` (admin): decommission; its data is handed off first.
#[utoipa::path(delete, path = "/v1/cluster/nodes/{node}", tag = "cluster", params(("node" = String, Path)),
    responses((status = 202, description = "Accepted: the node's data is handed off, then it leaves the ring"),
        (status = 404, description = "Not a member", body = ErrorBodyDoc)))]
pub async fn decommission_node(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(Permission::Admin, None)?;
    let node = NodeId::new(node).map_err(|e| ApiError::new(e.code(), e.to_string()))?;
    let url = routes::url(state.cache.ring_url(), &routes::ring::node(&node));
    relay(&state, state.client.delete(url)).await
}

/// `POST /v1/admin/tokens` (admin).
#[utoipa::path(post, path = "/v1/admin/tokens", tag = "admin", request_body = TokenRequest,
    responses((status = 201, description = "Created; the secret is in the answer, once", body = NewToken)))]
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Json(req): Json<TokenRequest>,
) -> Result<Response, ApiError> {
    principal.require(Permission::Admin, None)?;
    let mut permissions = req.permissions;
    permissions.sort();
    permissions.dedup();
    if permissions.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "a token needs at least one permission",
        ));
    }
    let (id, token) = auth::new_token();
    let created_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let record = TokenRecord {
        id: id.clone(),
        sha256: auth::token_sha256(&token),
        buckets: req.buckets.clone(),
        permissions: permissions.clone(),
        created_ms,
    };
    ring_change(
        &state,
        state
            .client
            .post(routes::url(state.cache.ring_url(), routes::ring::TOKENS))
            .json(&record),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewToken {
            id,
            token,
            buckets: req.buckets,
            permissions,
        }),
    )
        .into_response())
}

/// `GET /v1/admin/tokens` (admin).
#[utoipa::path(get, path = "/v1/admin/tokens", tag = "admin",
    responses((status = 200, description = "Every token, without secrets", body = TokenList)))]
pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<TokenList>, ApiError> {
    principal.require(Permission::Admin, None)?;
    let s = state.cache.current()?;
    Ok(Json(TokenList {
        tokens: s
            .tokens
            .iter()
            .map(|t| TokenInfo {
                id: t.id.clone(),
                buckets: t.buckets.clone(),
                permissions: t.permissions.clone(),
                created: rfc3339_from_ms(t.created_ms),
            })
            .collect(),
    }))
}

/// `DELETE /v1/admin/tokens/{id}` (admin).
#[utoipa::path(delete, path = "/v1/admin/tokens/{id}", tag = "admin", params(("id" = String, Path)),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such token", body = ErrorBodyDoc)))]
pub async fn delete_token(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    principal.require(Permission::Admin, None)?;
    if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(ApiError::new(ErrorCode::TokenNotFound, "no such token"));
    }
    ring_change(
        &state,
        state
            .client
            .delete(routes::url(state.cache.ring_url(), &routes::ring::token(&id))),
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// Schema stand-ins for the OpenAPI document: core types stay free of utoipa.

/// The siblings envelope: `{"context": "...", "siblings": [...]}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SiblingsEnvelopeDoc {
    /// The context token covering every sibling.
    context: String,
    /// The live siblings: `{"value": "<base64>", "content_type": "...", "last_modified": "<RFC 3339>"}`.
    siblings: Vec<SiblingDoc>,
}

/// One sibling in the envelope.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SiblingDoc {
    /// The value, base64.
    value: String,
    /// Its media type.
    content_type: String,
    /// When it was written, RFC 3339.
    last_modified: String,
}

/// `{"error": {"code": "...", "message": "...", "request_id": "..."}}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorBodyDoc {
    /// The error.
    error: ErrorDetailDoc,
}

/// The inside of an error body.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct ErrorDetailDoc {
    /// A stable snake_case code, listed in docs/api.md.
    code: String,
    /// A human message.
    message: String,
    /// The request id.
    request_id: Option<String>,
}

/// Bucket properties.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct BucketPropsDoc {
    /// Replicas per key (1–7; fixed once the bucket holds data).
    n: Option<u8>,
    /// Read quorum.
    r: Option<u8>,
    /// Write quorum.
    w: Option<u8>,
    /// `siblings`, `lww` or `crdt`.
    conflict: Option<String>,
    /// With `crdt`: `counter`, `set`, `map` or `register`.
    crdt_type: Option<String>,
    /// Most siblings a write may leave (1–256).
    max_siblings: Option<u32>,
}

/// Body of a join: `{"node_id": "...", "address": "http://host:port", "zone": "..."}`.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct NodeRegistrationDoc {
    /// The node's id.
    node_id: String,
    /// Its internal API address.
    address: String,
    /// Its failure domain.
    zone: Option<String>,
}
