//! A CRDT counter (`{"conflict": "crdt", "crdt_type": "counter"}`) incremented by 10
//! tasks, 20 times each, at the same time: the final value is exactly 200.
//!
//! Concurrent increments need no read and no context: each replica counts its own, and
//! replicas merge by adding up everyone's. Retries are safe too: the SDK sends every
//! increment with an `Idempotency-Key` of its own, the same on each retry, so an
//! increment whose answer was lost (a `503` after a replica applied it) is answered
//! again instead of being counted twice.
//!
//! ```sh
//! DYNAMO_TOKEN=$(cat data/root-token) cargo run -p dynamo-client --example counter
//! ```

mod common;

use std::process::ExitCode;

use dynamo_client::{BucketPropsPatch, ConflictMode, CrdtType};
use tokio::task::JoinSet;

const TASKS: i64 = 10;
const INCREMENTS_PER_TASK: i64 = 20;

#[tokio::main]
async fn main() -> ExitCode {
    common::exit(run().await)
}

async fn run() -> common::Result {
    let client = common::client()?;
    let bucket = common::bucket("counters");
    let key = common::fresh_key("page-views");
    let counter_bucket = BucketPropsPatch {
        conflict: Some(ConflictMode::Crdt),
        crdt_type: Some(CrdtType::Counter),
        ..BucketPropsPatch::default()
    };
    client.set_bucket_props(&bucket, &counter_bucket).await?;
    let counters = client.crdt(&bucket);

    let mut tasks = JoinSet::new();
    for _ in 0..TASKS {
        let (counters, key) = (counters.clone(), key.clone());
        tasks.spawn(async move {
            for _ in 0..INCREMENTS_PER_TASK {
                counters.increment(&key, 1).await?;
            }
            Ok::<(), dynamo_client::ClientError>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }

    let read = counters.get(&key).await?.ok_or("the counter is gone")?;
    let total = read.as_counter().ok_or("a counter's value is an integer")?;
    let want = TASKS * INCREMENTS_PER_TASK;
    println!("{bucket}/{key} after {TASKS} tasks x {INCREMENTS_PER_TASK} increments: {total}");
    common::check(total == want, format!("expected exactly {want}"))?;
    println!("ok: every increment counted once");
    Ok(())
}
