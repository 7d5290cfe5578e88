//! Serving: health routes, the layers every service puts in front of its routes, and
//! graceful shutdown with a drain deadline.
//!
//! Shutdown order (STYLE §6): `/readyz` turns 503, the listener stops accepting, in-flight
//! requests drain until the deadline, then [`serve`] returns and the caller stops its
//! workers and persists its storage.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dynamo_core::ErrorCode;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::ApiError;
use crate::config::ServeArgs;
use crate::error::REQUEST_ID;
use crate::metrics::{self, HttpMetrics};

/// Largest request head (start line and headers) read, in bytes; a larger one is
/// answered `431` and the connection closed.
pub const MAX_HEADER_BYTES: usize = 64 << 10;
/// Concurrent streams one HTTP/2 connection may open.
const H2_MAX_STREAMS: u32 = 256;
/// HTTP/2 keep-alive pings: a peer that answers none within this is disconnected.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);
/// Pause after a failed `accept` (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The request-id header, read from callers and forwarded on internal calls.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// A condition a service needs besides serving, e.g. the coordinator's "has heard from the
/// ring service": `Err` says why it is not met.
type Gate = Arc<dyn Fn() -> Result<(), ApiError> + Send + Sync>;

/// A degraded condition that leaves the service ready but that `/readyz` names, e.g. the
/// coordinator refusing scoped tokens while no ring replica answers: `Some` says what.
type Note = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// Whether the service should receive traffic; `/readyz` answers from it: the flag that
/// [`serve`] raises once it accepts and lowers at shutdown, and the service's own gate.
#[derive(Clone, Default)]
pub struct Readiness {
    flag: Arc<AtomicBool>,
    gate: Option<Gate>,
    note: Option<Note>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("flag", &self.flag.load(Ordering::SeqCst))
            .field("gate", &self.gate.is_some())
            .field("note", &self.note.is_some())
            .finish()
    }
}

impl Readiness {
    /// Returns a flag that starts not ready.
    pub fn new() -> Self {
        Readiness::default()
    }

    /// Adds a condition `/readyz` also needs (its error is the answer while it fails).
    pub fn with_gate(mut self, gate: impl Fn() -> Result<(), ApiError> + Send + Sync + 'static) -> Self {
        self.gate = Some(Arc::new(gate));
        self
    }

    /// Adds a degraded condition `/readyz` names while ready (`200`, `ready; degraded:
    /// <note>`): one a probe must not act on, since taking the service out of rotation
    /// would not help, but an operator reading the probe should see.
    pub fn with_note(mut self, note: impl Fn() -> Option<String> + Send + Sync + 'static) -> Self {
        self.note = Some(Arc::new(note));
        self
    }

    /// Sets the flag.
    pub fn set(&self, ready: bool) {
        self.flag.store(ready, Ordering::SeqCst);
    }

    /// Returns whether the flag is up and the gate, if any, is met.
    pub fn is_ready(&self) -> bool {
        self.check().is_ok()
    }

    fn check(&self) -> Result<(), ApiError> {
        if !self.flag.load(Ordering::SeqCst) {
            return Err(ApiError::new(ErrorCode::ShuttingDown, "not ready"));
        }
        self.gate.as_ref().map_or(Ok(()), |g| g())
    }
}

/// Limits applied in front of a service's routes.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body accepted, in bytes (`413 body_too_large` above).
    pub max_body_bytes: usize,
    /// Most requests served at once; more are answered `503 overloaded` at once rather
    /// than queued, so a client's timeout budget is not spent waiting in line.
    pub max_concurrent_requests: usize,
}

/// Builds `/healthz` (the process is alive), `/readyz` (ready for traffic) and `/metrics`.
/// None needs a token or reveals data.
pub fn health_routes(readiness: Readiness, registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness
                    .check()
                    .map(|()| readiness.note.as_ref().and_then(|n| n()));
                async move {
                    match ready {
                        Ok(None) => (StatusCode::OK, "ready".to_owned()).into_response(),
                        Ok(Some(note)) => {
                            (StatusCode::OK, format!("ready; degraded: {note}")).into_response()
                        }
                        Err(e) => e.into_response(),
                    }
                }
            }),
        )
        .route("/metrics", get(metrics::render).with_state(registry))
}

#[derive(Clone, Default)]
struct NextRequestId(Arc<AtomicU64>);

impl MakeRequestId for NextRequestId {
    fn make_request_id<B>(&mut self, _req: &axum::http::Request<B>) -> Option<RequestId> {
        // Unique within the process; the pid keeps ids of different processes apart in
        // merged logs.
        let n = self.0.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{:x}-{n:x}", std::process::id()))
            .ok()
            .map(RequestId::new)
    }
}

/// The W3C trace-context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Runs the rest of the request inside a span and task-locals carrying its request id and
/// trace context, so logs, error bodies and internal calls name it. The span continues
/// the caller's `traceparent` in OpenTelemetry when the exporter is installed
/// ([`crate::telemetry::init_with_otlp`]).
pub async fn request_id_scope(req: Request, next: Next) -> Response {
    let headers = req.headers();
    let id = headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let parent = headers.get(TRACEPARENT_HEADER).and_then(|v| v.to_str().ok());
    let mut trace = crate::trace::TraceContext::from_headers(&id, parent);
    // Never the path: it holds keys, which are not logged.
    let span = tracing::debug_span!(
        "request",
        request_id = %id,
        trace_id = tracing::field::Empty,
        method = %req.method()
    );
    // With the OTLP exporter on, the exported span continues the caller's trace and
    // `trace` takes its ids; without it this changes nothing.
    crate::telemetry::link_request_span(&span, parent, &mut trace);
    span.record("trace_id", tracing::field::display(&trace.trace_id));
    let fut = crate::trace::scope(trace, REQUEST_ID.scope(id, next.run(req)));
    tracing::Instrument::instrument(fut, span).await
}

async fn limit_concurrency(State(permits): State<Arc<Semaphore>>, req: Request, next: Next) -> Response {
    match permits.try_acquire() {
        Ok(_permit) => next.run(req).await,
        Err(_) => ApiError::new(ErrorCode::Overloaded, "too many requests in flight; retry")
            .retry_after(1)
            .into_response(),
    }
}

/// Wraps a service's routes with the common layers: JSON 404/405 fallbacks, body limit,
/// concurrency limit, request ids (set if absent, echoed back), panic catching and HTTP
/// metrics. The health routes stay outside the concurrency limit so probes answer under
/// load.
pub fn with_common_layers(routes: Router, health: Router, limits: Limits, metrics: HttpMetrics) -> Router {
    let header = HeaderName::from_static(REQUEST_ID_HEADER);
    let routes = routes
        .fallback(crate::error::route_not_found)
        .method_not_allowed_fallback(crate::error::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            Arc::new(Semaphore::new(limits.max_concurrent_requests)),
            limit_concurrency,
        ))
        // axum's own limit (not tower-http's layer): an oversized body then fails in the
        // extractor, whose rejection answers `413 body_too_large` as JSON.
        .layer(axum::extract::DefaultBodyLimit::max(limits.max_body_bytes));
    health
        .merge(routes)
        .layer(middleware::from_fn(request_id_scope))
        .layer(middleware::from_fn_with_state(metrics, metrics::track))
        .layer(PropagateRequestIdLayer::new(header.clone()))
        .layer(SetRequestIdLayer::new(header, NextRequestId::default()))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::new(ErrorCode::Internal, "the request handler failed").into_response()
        }))
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then marks the service not
/// ready, stops accepting and drains in-flight requests for at most `--drain-timeout-ms`.
///
/// Every connection is bounded (`args`): at most `--max-connections` at once (past it the
/// listener stops accepting, so the kernel's backlog, not this process, holds the rest),
/// request headers within `--header-read-timeout-ms` (a client that trickles or stalls its
/// headers is disconnected; on a kept-alive connection the clock starts with the next
/// request's first byte), and a request body within `--body-read-timeout-ms`
/// (`400 request_timeout`).
///
/// # Errors
/// An I/O error from the listener.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    readiness: Readiness,
    args: ServeArgs,
) -> std::io::Result<()> {
    let app = app.layer(RequestBodyTimeoutLayer::new(Duration::from_millis(
        args.body_read_timeout_ms,
    )));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_millis(args.header_read_timeout_ms))
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(Some(H2_KEEPALIVE))
        .keep_alive_timeout(H2_KEEPALIVE);
    // Loaded before the first accept: a certificate that cannot be served stops the
    // service at start, with the file named, rather than failing every handshake.
    let tls = args
        .tls
        .server()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?
        .map(|t| t.acceptor());
    let handshake_timeout = Duration::from_millis(args.header_read_timeout_ms);
    let connections = Arc::new(Semaphore::new(args.max_connections));
    let graceful = GracefulShutdown::new();
    readiness.set(true);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = shutdown.cancelled() => break,
            a = listener.accept() => a,
        };
        let tcp = match accepted {
            Ok((tcp, _)) => tcp,
            Err(e) => {
                // Out of file descriptors and the like: the process is fine, the moment
                // is not. Pause instead of spinning on the same error.
                tracing::warn!(error = %e, "accept failed; retrying");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Every exchange here is a small request answered by a small response; with
        // Nagle's algorithm on, a response written in two segments waits for the peer's
        // delayed ACK (up to 40 ms) before its second half leaves.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY on an accepted connection");
        }
        let service = TowerToHyperService::new(
            app.clone()
                .map_request(|req: hyper::Request<hyper::body::Incoming>| req.map(axum::body::Body::new)),
        );
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        tokio::spawn(async move {
            // The permit is the connection's from accept to close, handshake included.
            let _permit = permit;
            let Some(tls) = tls else {
                return serve_connection(&builder, watcher, tcp, service).await;
            };
            // A client that opens a connection and never finishes its hello is held to
            // the same bound as one that never finishes its headers.
            match tokio::time::timeout(handshake_timeout, tls.accept(tcp)).await {
                Ok(Ok(stream)) => serve_connection(&builder, watcher, stream, service).await,
                Ok(Err(e)) => tracing::debug!(error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!("TLS handshake not finished in time; connection closed"),
            }
        });
    }
    readiness.set(false);
    drop(listener);
    let drain = Duration::from_millis(args.drain_timeout_ms);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!(drain_ms = drain.as_millis() as u64, "drain deadline passed; dropping open connections");
        }
    }
    Ok(())
}

/// Serves HTTP on one accepted connection (plain or TLS) until it closes or the
/// graceful shutdown ends it.
async fn serve_connection<I, S>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: I,
    service: S,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<hyper::Request<hyper::body::Incoming>, Response = Response> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = watcher.watch(
        builder
            .serve_connection_with_upgrades(TokioIo::new(io), service)
            .into_owned(),
    );
    // A peer that hung up or broke the protocol: nothing to tell anyone.
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::post;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn app() -> Router {
        let registry = Arc::new(Registry::new());
        let metrics = HttpMetrics::new(&registry, "test").expect("metrics");
        let routes = Router::new()
            .route(
                "/echo",
                post(
                    |crate::extract::Json(v): crate::extract::Json<serde_json::Value>| async move {
                        crate::extract::Json(v)
                    },
                ),
            )
            .route(
                "/boom",
                get(|| async { ApiError::new(ErrorCode::QuorumUnavailable, "2 of 3 needed") }),
            );
        let ready = Readiness::new();
        ready.set(true);
        with_common_layers(
            routes,
            health_routes(ready, registry),
            Limits {
                max_body_bytes: 64,
                max_concurrent_requests: 8,
            },
            metrics,
        )
    }

    async fn call(req: axum::http::Request<Body>) -> (StatusCode, serde_json::Value, Option<String>) {
        let resp = app().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let rid = resp
            .headers()
            .get(REQUEST_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
            rid,
        )
    }

    fn req(method: &str, uri: &str, body: &'static str) -> axum::http::Request<Body> {
        axum::http::Request::builder()
            .method(method)
            .uri(uri)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("request")
    }

    #[tokio::test]
    async fn errors_are_json_with_code_and_request_id() {
        let (status, body, rid) = call(req("GET", "/boom", "")).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["error"]["code"], "quorum_unavailable");
        assert_eq!(body["error"]["request_id"].as_str(), rid.as_deref());
        assert!(rid.is_some());
        // The API's contract: every 503 (and 429) says when to retry; a 4xx does not.
        let resp = app().oneshot(req("GET", "/boom", "")).await.expect("infallible");
        assert_eq!(resp.headers()[axum::http::header::RETRY_AFTER], "1");
        let resp = app()
            .oneshot(req("GET", "/nowhere", ""))
            .await
            .expect("infallible");
        assert!(resp.headers().get(axum::http::header::RETRY_AFTER).is_none());
    }

    #[tokio::test]
    async fn rejections_go_through_the_common_mapping() {
        let (status, body, _) = call(req("POST", "/echo", "{nope")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_json"))
        );
        let big: &'static str =
            Box::leak("[1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4,5,6,7,8,9,0,1,2,3,4]".into());
        let (status, body, _) = call(req("POST", "/echo", big)).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large"))
        );
        let (status, body, _) = call(req("GET", "/nowhere", "")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::NOT_FOUND, Some("route_not_found"))
        );
        let (status, body, _) = call(req("GET", "/echo", "")).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
        );
        let (status, body, _) = call(req("POST", "/echo", "{\"a\":1}")).await;
        assert_eq!((status, body), (StatusCode::OK, serde_json::json!({"a": 1})));
    }

    #[tokio::test]
    async fn an_incoming_request_id_is_kept() {
        let mut r = req("GET", "/boom", "");
        r.headers_mut()
            .insert(REQUEST_ID_HEADER, HeaderValue::from_static("abc-123"));
        let (_, body, rid) = call(r).await;
        assert_eq!(rid.as_deref(), Some("abc-123"));
        assert_eq!(body["error"]["request_id"], "abc-123");
    }

    // Goal: past the in-flight cap a request is answered at once with 503 overloaded and
    // a Retry-After, not queued; health probes still answer.
    #[tokio::test]
    async fn past_the_in_flight_cap_requests_are_overloaded_with_retry_after() {
        let registry = Arc::new(Registry::new());
        let gate = Arc::new(tokio::sync::Notify::new());
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel::<()>();
        let entered = Arc::new(std::sync::Mutex::new(Some(entered_tx)));
        let held = gate.clone();
        let routes = Router::new().route(
            "/slow",
            get(move || {
                let (held, entered) = (held.clone(), entered.clone());
                async move {
                    if let Some(tx) = entered.lock().expect("lock").take() {
                        let _ = tx.send(());
                    }
                    held.notified().await;
                }
            }),
        );
        let ready = Readiness::new();
        ready.set(true);
        let app = with_common_layers(
            routes,
            health_routes(ready, registry.clone()),
            Limits {
                max_body_bytes: 64,
                max_concurrent_requests: 1,
            },
            HttpMetrics::new(&registry, "test").expect("metrics"),
        );
        let first = tokio::spawn(app.clone().oneshot(req("GET", "/slow", "")));
        // Once the first request waits in the handler, it holds the only permit.
        tokio::time::timeout(Duration::from_secs(10), entered_rx)
            .await
            .expect("the first request reached the handler")
            .expect("sent");
        let r = app
            .clone()
            .oneshot(req("GET", "/slow", ""))
            .await
            .expect("infallible");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "1");
        let body = r.into_body().collect().await.expect("body").to_bytes();
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(body["error"]["code"], "overloaded");
        let probe = app
            .clone()
            .oneshot(req("GET", "/healthz", ""))
            .await
            .expect("infallible");
        assert_eq!(probe.status(), StatusCode::OK, "probes stay outside the cap");
        gate.notify_waiters();
        let first = tokio::time::timeout(Duration::from_secs(10), first)
            .await
            .expect("the first request ends")
            .expect("join")
            .expect("infallible");
        assert_eq!(first.status(), StatusCode::OK);
    }

    #[tokio::test]
    async fn serve_drains_and_turns_not_ready_on_shutdown() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let shutdown = CancellationToken::new();
        let ready = Readiness::new();
        let task = tokio::spawn(serve(
            listener,
            app(),
            shutdown.clone(),
            ready.clone(),
            ServeArgs::default(),
        ));
        for _ in 0..100 {
            if ready.is_ready() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(ready.is_ready());
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(10), task)
            .await
            .expect("serve returns after shutdown")
            .expect("join")
            .expect("io");
        assert!(!ready.is_ready());
    }
}
