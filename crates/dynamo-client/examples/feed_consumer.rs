//! A consumer of the change feed that restarts midway and still sees every write.
//!
//! The consumer takes a cursor "from now", then follows the bucket while a writer puts
//! 60 orders. After 20 changes it stops, keeping only the cursor of the last change it
//! handled (what a real consumer would persist), and starts again from it. Delivery is at
//! least once: a change may come twice (several replicas logged it, or the restart
//! repeats part of a page), so the consumer keeps a set of the keys it saw, which makes
//! handling a repeat harmless.
//!
//! ```sh
//! DYNAMO_TOKEN=$(cat data/root-token) cargo run -p dynamo-client --example feed_consumer
//! ```

mod common;

use std::collections::BTreeSet;
use std::process::ExitCode;
use std::time::Duration;

use dynamo_client::{Client, FeedCursor, FeedOptions};

const ORDERS: usize = 60;
const RESTART_AFTER: usize = 20;

#[tokio::main]
async fn main() -> ExitCode {
    common::exit(run().await)
}

async fn run() -> common::Result {
    let client = common::client()?;
    let bucket = common::bucket("orders");
    let run = common::fresh_key("run");

    // From now: an empty page and the cursor to continue from.
    let start = client
        .feed_page(&bucket, &FeedOptions::new().wait_ms(0))
        .await?
        .cursor;

    let writer = {
        let (client, bucket, run) = (client.clone(), bucket.clone(), run.clone());
        tokio::spawn(async move {
            for i in 0..ORDERS {
                client
                    .put(&bucket, &format!("{run}-{i:03}"), "paid", "text/plain", None)
                    .await?;
            }
            Ok::<(), dynamo_client::ClientError>(())
        })
    };

    let mut seen = BTreeSet::new();
    let saved = consume(&client, &bucket, &run, start, &mut seen, Some(RESTART_AFTER)).await?;
    println!(
        "stopped after {} orders; resuming from the saved cursor",
        seen.len()
    );
    consume(&client, &bucket, &run, saved, &mut seen, None).await?;
    writer.await??;

    println!("saw all {} orders across the restart", seen.len());
    common::check(seen.len() == ORDERS, format!("expected {ORDERS} orders"))?;
    println!("ok: every write delivered at least once");
    Ok(())
}

/// Follows the feed from `cursor`, noting this run's order keys in `seen`, until all
/// orders were seen or (with `stop_after`) that many changes were handled; returns the
/// cursor to resume from.
async fn consume(
    client: &Client,
    bucket: &str,
    run: &str,
    cursor: FeedCursor,
    seen: &mut BTreeSet<String>,
    stop_after: Option<usize>,
) -> common::Result<FeedCursor> {
    let mut changes = client.feed(bucket, FeedOptions::new().cursor(cursor.clone()).wait_ms(1000));
    let mut saved = cursor;
    let mut handled = 0;
    while seen.len() < ORDERS && stop_after.is_none_or(|n| handled < n) {
        let next = tokio::time::timeout(Duration::from_secs(30), changes.try_next()).await;
        let change = next
            .map_err(|_| "no change within 30 s")??
            .ok_or("the feed ended")?;
        if change.key.starts_with(run) && !change.deleted {
            // Idempotent handling: a repeat only re-inserts the same key.
            seen.insert(change.key.clone());
        }
        handled += 1;
        saved = change.cursor;
    }
    Ok(saved)
}
