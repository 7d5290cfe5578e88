//! The `dynamo-ring` binary: parse flags, set up logging, bind, run.

use clap::Parser;
use dynamo_ring::{Config, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    dynamo_server::telemetry::init(config.log_json);
    config.validate()?;
    tracing::info!(config = ?config, "configuration");
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let shutdown = dynamo_server::shutdown::on_signals();
    run(config, listener, shutdown).await?;
    Ok(())
}
