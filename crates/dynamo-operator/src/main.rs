//! The `dynamo-operator` binary: `dynamo-operator` runs the controller (flags:
//! `dynamo-operator --help`); `dynamo-operator crd` prints the `DynamoCluster` CRD as
//! committed at `deploy/crds/dynamo.io_dynamoclusters.yaml`.

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), dynamo_server::config::MainError> {
    if std::env::args().nth(1).as_deref() == Some("crd") {
        print!("{}", dynamo_operator::crd::crd_yaml());
        return Ok(());
    }
    dynamo_server::config::service_main::<dynamo_operator::Config, _, _, _>(
        env!("CARGO_BIN_NAME"),
        dynamo_operator::run,
    )
    .await
}
