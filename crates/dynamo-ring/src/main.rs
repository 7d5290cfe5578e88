//! The `dynamo-ring` binary: parse flags, set up logging, bind, run.

use clap::Parser;
use dynamo_ring::{Config, run};

// mimalloc, not glibc's malloc: under load glibc's took about a quarter of the
// coordinator's CPU, consolidating and splitting value-sized buffers; every binary of the
// workspace uses the same allocator (docs/benchmarks.md, profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    // Kept to the end of main: dropping it flushes the spans still buffered for export.
    let _telemetry = dynamo_server::telemetry::init_with_otlp(
        config.log_json,
        config.otlp_endpoint.as_deref(),
        env!("CARGO_BIN_NAME"),
    )?;
    config.validate()?;
    tracing::info!(config = ?config, "configuration");
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let shutdown = dynamo_server::shutdown::on_signals();
    run(config, listener, shutdown).await?;
    Ok(())
}
