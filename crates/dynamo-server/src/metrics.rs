//! Prometheus plumbing: each service instance owns a [`Registry`] (so services sharing a
//! process, as under `dynamo dev` or in tests, never collide), HTTP request metrics
//! labelled by route template, and the `/metrics` handler.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};

/// Latency buckets in seconds, from 100 µs to 10 s: fine below a millisecond, where a
/// storage node's answers live, and coarse up to the longest timeout.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Request counts and latencies of one HTTP service.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    duration: HistogramVec,
}

impl HttpMetrics {
    /// Registers `dynamo_<component>_http_requests_total{route,method,status}` and
    /// `dynamo_<component>_http_request_duration_seconds{route,method}` in `registry`.
    ///
    /// # Errors
    /// A [`prometheus::Error`] if the names are already registered there.
    pub fn new(registry: &Registry, component: &str) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                format!("dynamo_{component}_http_requests_total"),
                "HTTP requests answered, by route template, method and status code",
            ),
            &["route", "method", "status"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                format!("dynamo_{component}_http_request_duration_seconds"),
                "Time from request to response head, by route template and method",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route", "method"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(HttpMetrics { requests, duration })
    }
}

/// Middleware recording [`HttpMetrics`]; routes are labelled by template (never by key or
/// bucket), unmatched paths as `unmatched`.
pub async fn track(State(m): State<HttpMetrics>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let start = Instant::now();
    let resp = next.run(req).await;
    m.duration
        .with_label_values(&[&route, &method])
        .observe(start.elapsed().as_secs_f64());
    m.requests
        .with_label_values(&[&route, &method, resp.status().as_str()])
        .inc();
    resp
}

/// Handler for `/metrics`: the registry in the Prometheus text format.
pub async fn render(State(registry): State<Arc<Registry>>) -> Response {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::error!(error = %e, "metrics encoding failed");
    }
    let mut resp = buf.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The invariants services check at run time (ARCHITECTURE.md §4), as the values of the
/// `invariant` label of `dynamo_invariant_violations_total`.
pub mod invariant {
    /// A ring epoch went, or would have gone, backwards (invariant 5).
    pub const RING_EPOCH_MONOTONIC: &str = "ring_epoch_monotonic";
    /// The ring service would have dropped its ring.
    pub const RING_NEVER_DISAPPEARS: &str = "ring_never_disappears";
    /// A ring change would have kept its epoch.
    pub const RING_CHANGE_BUMPS_EPOCH: &str = "ring_change_bumps_epoch";
    /// A membership change's handoff plan and the ring it published disagree.
    pub const PLAN_MATCHES_PUBLISHED_RING: &str = "plan_matches_published_ring";
}

/// `dynamo_invariant_violations_total{invariant}`: run-time checks of a core invariant
/// that failed, one counter family per service instance, the same in every service.
#[derive(Clone)]
pub struct InvariantViolations(IntCounterVec);

impl InvariantViolations {
    /// Registers the family in `registry`, with the series of `exported` at 0 from the
    /// start (an alert sees them before the first breach).
    ///
    /// # Errors
    /// A [`prometheus::Error`] if the name is already registered there.
    pub fn new(registry: &Registry, exported: &[&str]) -> Result<Self, prometheus::Error> {
        let c = IntCounterVec::new(
            Opts::new(
                "dynamo_invariant_violations_total",
                "Runtime checks of a core invariant that failed, by invariant",
            ),
            &["invariant"],
        )?;
        registry.register(Box::new(c.clone()))?;
        for i in exported {
            c.with_label_values(&[*i]);
        }
        Ok(InvariantViolations(c))
    }

    /// Counts a breach of `invariant` (one of [`invariant`]'s names).
    pub fn record(&self, invariant: &str) {
        self.0.with_label_values(&[invariant]).inc();
    }

    /// Returns how often `invariant` was breached.
    pub fn count(&self, invariant: &str) -> u64 {
        self.0.with_label_values(&[invariant]).get()
    }
}
