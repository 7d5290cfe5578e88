//! Tracing set-up for the binaries: `RUST_LOG`-style filters from `DYNAMO_LOG`, human or
//! JSON lines on stderr.

use tracing_subscriber::EnvFilter;

/// Installs the global tracing subscriber. `json` selects JSON lines (for Kubernetes log
/// pipelines); the filter comes from `DYNAMO_LOG`, defaulting to `info`.
///
/// Safe to call more than once: later calls are ignored (tests start services in-process).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_env("DYNAMO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
