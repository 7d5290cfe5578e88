//! The `dynamo-ring` binary: the one service `main` (`dynamo_server::config::service_main`).

// mimalloc, not glibc's malloc: under load glibc's took about a quarter of the
// coordinator's CPU, consolidating and splitting value-sized buffers; every binary of the
// workspace uses the same allocator (docs/benchmarks.md, profile).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), dynamo_server::config::MainError> {
    dynamo_server::config::service_main::<dynamo_ring::Config, _, _, _>(
        env!("CARGO_BIN_NAME"),
        dynamo_ring::run,
    )
    .await
}
