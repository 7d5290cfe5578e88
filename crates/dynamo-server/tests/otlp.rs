//! The OTLP exporter end to end: a request served through the common layers is exported
//! to a collector as a `request` span in the caller's W3C trace. This test binary is its
//! own process, so installing the global subscriber here touches no other test.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use dynamo_server::metrics::HttpMetrics;
use dynamo_server::serve::{self, Limits, Readiness};
use http_body_util::BodyExt;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tower::ServiceExt;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// Starts a fake OTLP/HTTP collector on loopback; returns its base URL and the bodies of
/// the exports it received.
async fn start_collector() -> (String, Arc<Mutex<Vec<Bytes>>>) {
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let seen = bodies.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("lock").push(body);
                // An empty protobuf body is a valid (fully successful) export response.
                (
                    StatusCode::OK,
                    [("content-type", "application/x-protobuf")],
                    Bytes::new(),
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}

/// A service with one route that answers the `traceparent` it would send downstream.
fn app() -> Router {
    let registry = Arc::new(prometheus::Registry::new());
    let metrics = HttpMetrics::new(&registry, "otlp_test").expect("metrics");
    let routes = Router::new().route(
        "/op",
        get(|| async {
            tracing::info!("handling the operation");
            // A dependency's span: not exported.
            tracing::info_span!(target: "hyper", "noise").in_scope(|| {});
            dynamo_server::trace::current()
                .map(|t| t.child_traceparent())
                .unwrap_or_default()
        }),
    );
    let ready = Readiness::new();
    ready.set(true);
    serve::with_common_layers(
        routes,
        serve::health_routes(ready, registry),
        Limits {
            max_body_bytes: 1024,
            max_concurrent_requests: 8,
        },
        metrics,
    )
}

/// Sends `GET /op`, with `traceparent` if given; returns the downstream traceparent.
async fn call(traceparent: Option<&str>) -> String {
    let mut req = Request::builder().uri("/op").header("x-request-id", "req-otlp");
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let resp = app()
        .oneshot(req.body(Body::empty()).expect("request"))
        .await
        .expect("infallible");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    String::from_utf8(body.to_vec()).expect("utf-8")
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_spans_reach_the_collector_in_the_callers_trace() {
    // Goal: with --otlp-endpoint set, a request carrying a traceparent is exported (once
    // the guard is dropped, which flushes) as a `request` span of that trace whose parent
    // is the caller's span, under the binary's service.name; the traceparent sent
    // downstream names that exported span; a request without a traceparent gets a trace
    // id that the exported span and downstream calls share; dependencies' spans stay out.
    tokio::time::timeout(Duration::from_secs(30), async {
        let (url, bodies) = start_collector().await;
        let guard = dynamo_server::telemetry::init_with_otlp(false, Some(&format!("{url}/")), "otlp-test")
            .expect("telemetry");
        assert!(guard.is_exporting());

        let downstream = call(Some(&format!("00-{TRACE_ID}-{PARENT_ID}-01"))).await;
        let fresh = call(None).await;
        drop(guard);

        let bodies = bodies.lock().expect("lock").clone();
        assert!(!bodies.is_empty(), "the collector received no export");
        let trace_bytes = unhex(TRACE_ID);
        assert!(
            bodies
                .iter()
                .any(|b| b.windows(16).any(|w| w == trace_bytes.as_slice())),
            "no export holds the caller's trace id"
        );

        let mut spans: Vec<Span> = Vec::new();
        for body in &bodies {
            let export = ExportTraceServiceRequest::decode(body.as_ref()).expect("an OTLP protobuf export");
            for rs in export.resource_spans {
                let service = rs
                    .resource
                    .iter()
                    .flat_map(|r| &r.attributes)
                    .find(|kv| kv.key == "service.name")
                    .and_then(|kv| kv.value.as_ref()?.value.clone());
                assert_eq!(service, Some(Value::StringValue("otlp-test".into())));
                spans.extend(rs.scope_spans.into_iter().flat_map(|ss| ss.spans));
            }
        }
        assert!(
            spans.iter().all(|s| s.name != "noise"),
            "a dependency's span was exported"
        );

        let joined = spans
            .iter()
            .find(|s| s.name == "request" && s.trace_id == trace_bytes)
            .expect("the request span in the caller's trace");
        assert_eq!(joined.parent_span_id, unhex(PARENT_ID));
        assert_eq!(
            downstream,
            format!("00-{TRACE_ID}-{}-01", hex(&joined.span_id)),
            "calls made for the request are children of its exported span"
        );

        let parts: Vec<&str> = fresh.split('-').collect();
        assert_eq!(parts.len(), 4, "{fresh}");
        let root = spans
            .iter()
            .find(|s| s.name == "request" && hex(&s.trace_id) == parts[1])
            .expect("the request without a traceparent, under the id sent downstream");
        assert!(
            root.parent_span_id.is_empty(),
            "a new trace starts at the request"
        );
        assert_eq!(hex(&root.span_id), parts[2]);
    })
    .await
    .expect("the test finishes in time");
}
