//! Tracing set-up for the binaries: `RUST_LOG`-style filters from `DYNAMO_LOG`, human or
//! JSON lines on stderr, and, behind `--otlp-endpoint`, an OpenTelemetry exporter that
//! sends the services' spans to a collector over OTLP/HTTP (protobuf).
//!
//! The exporter batches spans on the tokio runtime and posts them to
//! `<endpoint>/v1/traces`. Each request's `request` span joins the caller's W3C trace
//! ([`link_request_span`]), so a PUT is one trace across the coordinator and its replicas.
//! Without an endpoint nothing of OpenTelemetry is installed: no exporter, no task, no
//! thread.

use std::time::Duration;

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing::{Level, Metadata};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::trace::TraceContext;

/// The OTLP/HTTP path of trace exports, appended to `--otlp-endpoint`.
pub const OTLP_TRACES_PATH: &str = "/v1/traces";

/// Timeout of one export request to the collector.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long dropping a [`TelemetryGuard`] waits for the last spans to be exported.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Telemetry that cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP endpoint is refused ([`check_otlp_endpoint`]).
    #[error("invalid --otlp-endpoint: {0}")]
    InvalidEndpoint(String),
    /// The exporter needs a tokio runtime to run its batch task on.
    #[error("the OTLP exporter must be set up inside a tokio runtime")]
    NoRuntime,
    /// The OTLP exporter could not be built.
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A global tracing subscriber was installed before.
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Installs the global tracing subscriber. `json` selects JSON lines (for Kubernetes log
/// pipelines); the filter comes from `DYNAMO_LOG`, defaulting to `info`.
///
/// Safe to call more than once: later calls are ignored (tests start services in-process).
pub fn init(json: bool) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_ansi(colors())
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Installs the global tracing subscriber as [`init`] does and, when `otlp_endpoint` is
/// given, an OpenTelemetry layer exporting spans to `<otlp_endpoint>/v1/traces` over
/// OTLP/HTTP with `service.name` = `service_name` (the binary's name).
///
/// The exporter gets the services' own spans (targets `dynamo*`) at debug and above, and
/// their events at info and above, whatever `DYNAMO_LOG` says: the per-request `request`
/// span is a debug span. Keep the returned guard alive until the end of `main`: dropping
/// it exports what is still buffered (waiting at most [`SHUTDOWN_TIMEOUT`]) and stops the
/// exporter. Call it inside a multi-threaded tokio runtime (`#[tokio::main]`).
///
/// Without an endpoint this is [`init`] and the guard does nothing.
///
/// # Errors
/// [`TelemetryError`] when the endpoint is refused, no tokio runtime is
/// running, the exporter cannot be built, or a subscriber is already installed (only
/// with an endpoint; [`init`]'s "later calls are ignored" holds otherwise).
pub fn init_with_otlp(
    json: bool,
    otlp_endpoint: Option<&str>,
    service_name: &str,
) -> Result<TelemetryGuard, TelemetryError> {
    let Some(endpoint) = otlp_endpoint else {
        init(json);
        return Ok(TelemetryGuard { provider: None });
    };
    check_otlp_endpoint(endpoint).map_err(TelemetryError::InvalidEndpoint)?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoRuntime);
    }
    // The exporter builds its own reqwest client, which needs a process-wide provider.
    dynamo_tls::install_default_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(format!("{}{OTLP_TRACES_PATH}", endpoint.trim_end_matches('/')))
        .with_timeout(EXPORT_TIMEOUT)
        .build()?;
    // The async-runtime processor: reqwest's async client needs the tokio reactor, which
    // the SDK's default (thread-based) batch processor does not provide.
    let processor = BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(
            Resource::builder()
                .with_service_name(service_name.to_owned())
                .build(),
        )
        .build();
    // From here on the guard owns the provider, so an error below still shuts it down.
    let guard = TelemetryGuard {
        provider: Some(provider.clone()),
    };
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("dynamo"))
        .with_filter(tracing_subscriber::filter::filter_fn(is_exported));
    let fmt = if json {
        tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_ansi(colors())
            .with_writer(std::io::stderr)
            .boxed()
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(log_filter()))
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(guard)
}

/// Colours only for a person at a terminal: a log file or a container's log pipeline
/// would keep the escape codes as text.
fn colors() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal()
}

fn log_filter() -> EnvFilter {
    EnvFilter::try_from_env("DYNAMO_LOG").unwrap_or_else(|_| EnvFilter::new("info"))
}

/// What the OpenTelemetry layer sees: the services' spans (debug and above) and events
/// (info and above). Dependencies' spans stay out, among them the exporter's own HTTP
/// client, which would otherwise trace its own exports.
fn is_exported(meta: &Metadata<'_>) -> bool {
    let max = if meta.is_span() { Level::DEBUG } else { Level::INFO };
    meta.target().starts_with("dynamo") && *meta.level() <= max
}

/// Checks an `--otlp-endpoint` value: an `http://` URL with a host, e.g.
/// `http://otel-collector:4318`. `https://` is refused with its reason (the exporter is
/// built without TLS, so every export would fail), and so are credentials (the
/// configuration is logged).
///
/// # Errors
/// Why the value is refused.
pub fn check_otlp_endpoint(endpoint: &str) -> Result<(), String> {
    if endpoint.contains('@') {
        return Err("must not hold credentials (user:password@), which would be logged".into());
    }
    if endpoint.starts_with("https://") {
        return Err(
            "https is not supported (the exporter is built without TLS): use the plain-HTTP OTLP \
             receiver of a collector or agent next to the service, e.g. http://localhost:4318"
                .into(),
        );
    }
    let authority = endpoint
        .strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or(""));
    match authority {
        Some(a)
            if !a.is_empty()
                && !a.starts_with(':')
                && !endpoint.contains(|c: char| c.is_whitespace() || c == '?' || c == '#')
                && endpoint.parse::<http::Uri>().is_ok() =>
        {
            Ok(())
        }
        _ => Err(format!(
            "must be an http URL such as http://otel-collector:4318, got {endpoint:?}"
        )),
    }
}

/// Keeps the OpenTelemetry exporter of [`init_with_otlp`] running; dropping it exports
/// the buffered spans and shuts the exporter down.
#[derive(Debug)]
#[must_use = "dropping the guard stops the OTLP exporter"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are being exported (an endpoint was given).
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // The SDK's shutdown blocks its caller until the batch task (on the tokio
        // runtime) has exported, and does not honour its timeout. Wait on another thread
        // so that a stuck collector, or a runtime that cannot run the task, costs at most
        // SHUTDOWN_TIMEOUT.
        let (done, finished) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("otlp-shutdown".into())
            .spawn(move || {
                let _ = done.send(provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT));
            });
        if spawned.is_err() {
            tracing::warn!("cannot start the otlp shutdown thread; buffered spans are lost");
            return;
        }
        match finished.recv_timeout(SHUTDOWN_TIMEOUT) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "otlp exporter shutdown failed"),
            Err(_) => tracing::warn!(
                timeout_ms = SHUTDOWN_TIMEOUT.as_millis() as u64,
                "otlp exporter did not shut down in time; buffered spans may be lost"
            ),
        }
    }
}

/// Reads the `traceparent` header only.
struct Traceparent<'a>(Option<&'a str>);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        if key.eq_ignore_ascii_case(crate::serve::TRACEPARENT_HEADER) {
            self.0
        } else {
            None
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .map(|_| crate::serve::TRACEPARENT_HEADER)
            .into_iter()
            .collect()
    }
}

/// Joins a request's span to the caller's trace in OpenTelemetry and makes `trace` name
/// the exported span: the span's parent becomes the incoming `traceparent`, and `trace`
/// takes the span's trace and span ids, so that calls made on behalf of the request
/// (which send [`TraceContext::child_traceparent`]) become its children.
///
/// Does nothing when the span is disabled or the OpenTelemetry layer is not installed;
/// `trace` then keeps the ids [`TraceContext::from_headers`] gave it.
pub fn link_request_span(span: &tracing::Span, traceparent: Option<&str>, trace: &mut TraceContext) {
    if span.is_disabled() {
        return;
    }
    if traceparent.is_some() {
        let parent = TraceContextPropagator::new().extract(&Traceparent(traceparent));
        // Err when the layer is absent (or filters the span out): nothing to link.
        let _ = span.set_parent(parent);
    }
    let cx = span.context();
    let otel = cx.span().span_context().clone();
    if otel.is_valid() {
        trace.trace_id = otel.trace_id().to_string();
        trace.span_id = otel.span_id().to_string();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_must_be_an_http_url() {
        for good in [
            "http://otel-collector:4318",
            "http://127.0.0.1:4318/",
            "http://[::1]:4318/otlp",
        ] {
            assert_eq!(check_otlp_endpoint(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "otel-collector:4318",
            "localhost",
            "grpc://collector:4317",
            "http://",
            "http://:4318",
            "http:// collector:4318",
            "http://collector:4318/v1?x=1",
            "not a url",
        ] {
            let e = check_otlp_endpoint(bad).expect_err(bad);
            assert!(e.contains("http URL"), "{e}");
        }
        let e = check_otlp_endpoint("https://collector.example.com").expect_err("no TLS");
        assert!(e.contains("without TLS"), "{e}");
        let e = check_otlp_endpoint("http://user:secret@collector:4318").expect_err("credentials");
        assert!(!e.contains("secret"), "{e}");
    }

    #[test]
    fn a_bad_endpoint_or_a_missing_runtime_installs_nothing() {
        let err = init_with_otlp(false, Some("collector:4318"), "dynamo-test").expect_err("not a URL");
        assert!(matches!(err, TelemetryError::InvalidEndpoint(_)), "{err}");
        assert!(err.to_string().contains("--otlp-endpoint"));
        let err =
            init_with_otlp(false, Some("http://127.0.0.1:4318"), "dynamo-test").expect_err("no runtime");
        assert!(matches!(err, TelemetryError::NoRuntime), "{err}");
    }

    #[test]
    fn linking_without_the_layer_keeps_the_ids() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut trace = TraceContext::from_headers("r", Some(tp));
        let before = trace.clone();
        // A subscriber that enables the span but has no OpenTelemetry layer.
        tracing::subscriber::with_default(tracing_subscriber::registry(), || {
            let span = tracing::debug_span!("request");
            assert!(!span.is_disabled());
            link_request_span(&span, Some(tp), &mut trace);
        });
        assert_eq!(trace, before);
        // No subscriber at all: the span is disabled.
        link_request_span(&tracing::debug_span!("request"), Some(tp), &mut trace);
        assert_eq!(trace, before);
    }
}
