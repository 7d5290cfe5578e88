//! The SDK's examples (`crates/dynamo-client/examples`), which `docs/consistency.md`
//! quotes, run against a real cluster: each checks its own result and exits non-zero
//! when it is wrong.

use std::path::PathBuf;
use std::process::Command;

use dynamo_tests::{Cluster, Options, ROOT_TOKEN, binary, output_text};

/// The examples, by name.
const EXAMPLES: [&str; 5] = [
    "cart_siblings",
    "cart_crdt",
    "counter",
    "create_only",
    "feed_consumer",
];

/// An example's binary, built beside the services (`cargo build --examples`, which
/// `cargo test --workspace` and `make test` do).
fn example(name: &str) -> PathBuf {
    let services = binary("dynamo-coordinator");
    let path = services
        .parent()
        .expect("the binaries' directory")
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build -p dynamo-client --examples` first",
        path.display()
    );
    path
}

// Goal: every example the consistency guide shows runs to its own successful check
// against a cluster of processes: the siblings cart, the CRDT cart, the counter, the
// create-only write and the change-feed consumer. Method: one cluster, each example
// with a bucket prefix of its own; a failure prints the example's output.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_example_runs_and_checks_its_result() {
    let c = Cluster::start(Options::default()).await;
    for name in EXAMPLES {
        let bin = example(name);
        let out = tokio::task::spawn_blocking({
            let url = c.url();
            move || {
                Command::new(bin)
                    .env("DYNAMO_URL", url)
                    .env("DYNAMO_TOKEN", ROOT_TOKEN)
                    .env("DYNAMO_EXAMPLE_PREFIX", format!("ex-{}", name.replace('_', "-")))
                    .output()
                    .expect("run the example")
            }
        })
        .await
        .expect("join");
        assert!(
            out.status.success(),
            "example {name} failed:\n{}",
            output_text(&out)
        );
        println!("example {name}:\n{}", String::from_utf8_lossy(&out.stdout));
    }
}
