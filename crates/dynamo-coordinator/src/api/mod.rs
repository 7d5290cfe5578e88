//! The public REST API (`/v1`), as `../shared/API.md` specifies it, plus the admin token
//! endpoints documented in `docs/api.md`.
//!
//! By concept: `objects` (the key-value calls, their idempotency and preconditions),
//! `crdt` (operations on CRDT buckets and their merged reads), `list` (a bucket's keys),
//! `feed` (the change feed),
//! `batch` (many object calls in one request), `buckets`,
//! `cluster` (the cluster view, the ring, joins, decommissions, replacements, and the
//! retry or abort of a failed change) and `tokens`; this file holds the router, the
//! shared state and the helpers every handler uses, and the relay of admin calls to the
//! ring service.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Extension;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use dynamo_core::context::ContextKeys;
use dynamo_core::etag::{ETag, Preconditions};
use dynamo_core::ids::validate_key;
use dynamo_core::limits::MAX_VALUE_BYTES;
use dynamo_core::version::VersionedObject;
use dynamo_core::wire::cluster::NodeRegistration;
use dynamo_core::wire::cluster::{
    ClusterState, ClusterView, KeyPlacement, MAX_TOKEN_RATE_LIMIT_RPS, MAX_TOKEN_TTL_S, Permission,
    TokenRecord,
};
use dynamo_core::wire::internal::IdempotencyClaim;
use dynamo_core::wire::public::{
    BatchOp, BatchOpKind, BatchRequest, BatchResponse, BatchResult, NewToken, RingView, TokenInfo, TokenList,
    TokenRequest,
};
use dynamo_core::wire::routes;
use dynamo_core::wire::{
    BucketProps, BucketPropsPatch, ConflictMode, SiblingView, SiblingsEnvelope, rfc3339_from_ms,
};
use dynamo_core::{BucketName, DotSet, ErrorBody, ErrorCode, NodeId, PartitionId, RingEpoch, key_hash};
use dynamo_server::ApiError;
use dynamo_server::extract::{Body, Json, Path, Query, page_limit};
use dynamo_server::internal::SendError;
use serde::Deserialize;

use crate::auth::{self, AuthState, Principal};
use crate::config::Config;
use crate::kv::{Coordinator, WriteRequest};
use crate::metrics::CoordinatorMetrics;
use crate::state::ClusterCache;

mod batch;
mod buckets;
mod cluster;
mod crdt;
mod feed;
mod list;
mod objects;
mod tokens;

pub use batch::*;
pub use buckets::*;
pub use cluster::*;
pub use crdt::*;
pub use feed::*;
pub use list::*;
pub use objects::*;
pub use tokens::*;

pub use dynamo_core::wire::{CONTEXT_HEADER, CRDT_TYPE_HEADER};
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
    /// Client for the ring service, signing as control: it relays admin calls, made only
    /// after the caller's admin token was checked.
    pub client: dynamo_server::internal::InternalClient,
    /// Client for storage nodes, signing as a member (the cluster view asks each node for
    /// its anti-entropy progress).
    pub member_client: dynamo_server::internal::InternalClient,
    /// Metrics.
    pub metrics: CoordinatorMetrics,
    /// The keys context tokens are sealed with.
    pub context_keys: Arc<ContextKeys>,
    /// Buckets whose first write this coordinator reported (or is reporting) to the ring
    /// service, so that a burst of writes to a new bucket sends one report, not one each.
    pub marked: Arc<std::sync::Mutex<std::collections::HashSet<BucketName>>>,
}

/// Builds the `/v1` routes: all behind authentication but the OpenAPI document.
pub fn routes(state: AppState, auth: Arc<AuthState>) -> Router {
    Router::new()
        .route(
            "/v1/kv/{bucket}/{*key}",
            get(get_object).put(put_object).delete(delete_object),
        )
        .route("/v1/kv/{bucket}", get(list_keys))
        .route("/v1/feed/{bucket}", get(get_feed))
        .route("/v1/crdt/{bucket}/{*key}", get(get_crdt).post(post_crdt))
        .route("/v1/batch", post(batch))
        .route("/v1/buckets/{bucket}", get(get_bucket).put(put_bucket))
        .route("/v1/cluster", get(get_cluster))
        .route("/v1/cluster/nodes", post(join_node))
        .route("/v1/cluster/nodes/{node}", delete(decommission_node))
        .route("/v1/cluster/nodes/{node}/replace", post(replace_node))
        .route("/v1/cluster/change/retry", post(retry_change))
        .route("/v1/cluster/change/abort", post(abort_change))
        .route("/v1/ring", get(get_ring))
        .route("/v1/admin/tokens", post(create_token).get(list_tokens))
        .route("/v1/admin/tokens/{id}", delete(delete_token))
        .layer(middleware::from_fn_with_state(auth, auth::authenticate))
        // Added after the authentication layer, so outside it: the document describes
        // the API and reveals no data (as `/healthz`), and clients are generated from
        // it before they hold a token.
        .route("/v1/openapi.json", get(crate::openapi::serve))
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

/// The context tokens of one key: sealed for it, and opened only if they were sealed for
/// it (a context of another key, or of another cluster, is forged here).
pub(crate) struct KeyContexts<'a> {
    keys: &'a ContextKeys,
    bucket: &'a str,
    key: &'a str,
}

impl<'a> KeyContexts<'a> {
    pub(crate) fn new(state: &'a AppState, bucket: &'a BucketName, key: &'a str) -> KeyContexts<'a> {
        KeyContexts {
            keys: &state.context_keys,
            bucket: bucket.as_str(),
            key,
        }
    }

    /// Opens a context token sent for this key (`X-Dynamo-Context`, or a batch
    /// operation's `context`).
    fn open_token(&self, token: &str) -> Result<DotSet, ApiError> {
        self.keys
            .open(token, self.bucket, self.key)
            .map_err(ApiError::from)
    }

    /// Attaches `ctx`, sealed, as the answer's `X-Dynamo-Context`.
    fn attach(&self, mut resp: Response, ctx: &DotSet) -> Response {
        if let Ok(v) = HeaderValue::from_str(&self.keys.seal(ctx, self.bucket, self.key)) {
            resp.headers_mut().insert(CONTEXT_HEADER, v);
        }
        resp
    }

    /// The siblings envelope of `obj`, with `ctx` sealed.
    fn envelope(&self, obj: &VersionedObject, ctx: &DotSet) -> SiblingsEnvelope {
        SiblingsEnvelope {
            context: self.keys.seal(ctx, self.bucket, self.key),
            etag: Some(ETag::of(obj).to_string()),
            siblings: sibling_views(obj),
        }
    }
}

/// The live siblings of `obj` as the API shows them.
fn sibling_views(obj: &VersionedObject) -> Vec<SiblingView> {
    obj.live_siblings()
        .map(|s| SiblingView {
            value: s.value.clone(),
            content_type: s.content_type.clone(),
            last_modified: rfc3339_from_ms(s.last_modified_ms),
        })
        .collect()
}

impl KeyContexts<'_> {
    /// Seals `ctx` as a token for this key.
    fn seal(&self, ctx: &DotSet) -> String {
        self.keys.seal(ctx, self.bucket, self.key)
    }
}

/// Writes the audit line of an admin action: who (the token id, never a secret), what,
/// on what, and how it ended. Target `audit`, so a log pipeline can route these apart
/// (`DYNAMO_LOG=audit=info` keeps them alone).
fn audit<T>(principal: &Principal, action: &'static str, object: &str, outcome: &Result<T, ApiError>) {
    match outcome {
        Ok(_) => audit_line(principal, action, object, "ok", ""),
        Err(e) => audit_line(principal, action, object, "refused", e.code.as_str()),
    }
}

/// [`audit`] of an action whose answer is relayed from the ring service.
fn audit_relayed(
    principal: &Principal,
    action: &'static str,
    object: &str,
    outcome: &Result<Response, ApiError>,
) {
    match outcome {
        Ok(r) if r.status().is_success() => audit_line(principal, action, object, "ok", ""),
        Ok(r) => audit_line(principal, action, object, "refused", r.status().as_str()),
        Err(_) => audit(principal, action, object, outcome),
    }
}

fn audit_line(principal: &Principal, action: &'static str, object: &str, result: &str, code: &str) {
    tracing::info!(
        target: "audit",
        principal = principal.name(),
        action,
        object,
        result,
        code,
        "admin action"
    );
}

/// Records a request's outcome in the metrics.
fn observe<T>(m: &CoordinatorMetrics, op: &str, start: Instant, r: &Result<T, ApiError>) {
    m.request_duration
        .with_label_values(&[op])
        .observe(start.elapsed().as_secs_f64());
    let code = r.as_ref().err().map_or("ok", |e| e.code.as_str());
    m.requests.with_label_values(&[op, code]).inc();
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

fn ring_unreachable(e: SendError) -> ApiError {
    ApiError::new(
        ErrorCode::RingUnavailable,
        format!("ring service unreachable: {}", e.without_url()),
    )
}

/// Sends a write to the ring service at `route` on one of its replicas: `request` makes
/// the request for a replica's full URL (the method, the body).
///
/// It goes to the current replica; when no connection to it could be made (nothing was
/// sent), to the next one, each replica at most once. Any other failure is final: a
/// timeout or a broken connection after sending may have been applied, and another
/// replica would apply it a second time (a join, a token), so the caller answers
/// `503 ring_unavailable`, as it did with a single replica.
///
/// # Errors
/// The [`SendError`] of the last attempt.
async fn send_to_ring(
    state: &AppState,
    route: &str,
    request: impl Fn(String) -> reqwest_middleware::RequestBuilder,
) -> Result<reqwest::Response, SendError> {
    state
        .cache
        .ring_urls()
        .call(
            |base| {
                request(routes::url(base, route))
                    .timeout(RING_CALL_TIMEOUT)
                    .send()
            },
            SendError::is_connect,
        )
        .await
}

/// Sends an admin change to the ring service ([`send_to_ring`]) and, once it accepted
/// it, refreshes the cached state so this coordinator serves the change at once.
///
/// # Errors
/// The ring service's own error, or `503 ring_unavailable` when it does not answer.
async fn ring_change(
    state: &AppState,
    route: &str,
    request: impl Fn(String) -> reqwest_middleware::RequestBuilder,
) -> Result<reqwest::Response, ApiError> {
    let resp = send_to_ring(state, route, request)
        .await
        .map_err(ring_unreachable)?;
    if !resp.status().is_success() {
        return Err(ring_error(resp).await);
    }
    state.cache.refresh(RING_CALL_TIMEOUT).await?;
    Ok(resp)
}

/// Relays a membership change to the ring service ([`ring_change`]), answering its
/// status and body.
async fn relay(
    state: &AppState,
    route: &str,
    request: impl Fn(String) -> reqwest_middleware::RequestBuilder,
) -> Result<Response, ApiError> {
    let resp = ring_change(state, route, request).await?;
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
    Ok((status, Json(body)).into_response())
}
