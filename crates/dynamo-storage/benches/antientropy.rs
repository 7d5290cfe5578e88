//! The cost of one anti-entropy exchange against the size of the difference.
//!
//! Two nodes hold the same partition of `size` keys (10^4, 10^5, 10^6 by default; set
//! `DYNAMO_BENCH_AE_SIZES=10000,100000`); then `k` of its keys get a new version on one
//! of them (1, 10, 100, 1000), and that node runs one [`exchange`] of the partition with
//! the other, served over HTTP in this process, unpaced. Each cell reports the exchange's
//! wall time, round trips, keys whose digests were compared and stored bytes moved (both
//! ways: a key whose digests differ is read from the peer and pushed to it, since the
//! digests do not say which side is newer), so the claim "the cost follows the
//! difference, not the data" can be read off the rows of one size.
//!
//! Output: one JSON object per cell on stdout (what `scripts/bench.sh` records for the
//! report) and a table on stderr. Run with `cargo bench -p dynamo-storage --bench
//! antientropy`; part of `make bench`, never of `make test`, never an assertion.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use dynamo_core::version::{ConflictRule, NewWrite};
use dynamo_core::wire::cluster::ClusterState;
use dynamo_core::{DotSet, NodeId, PartitionId, Partitioning, key_hash};
use dynamo_storage::Config;
use dynamo_storage::antientropy::{Buckets, Pacer, exchange};
use dynamo_storage::engine::{Durability, Engine, KeyRef};
use dynamo_storage::metrics::StorageMetrics;
use tokio_util::sync::CancellationToken;

/// Q of both nodes: partition 0 is half the hash space, so `size` keys fit in it.
const Q: u64 = 2;
/// The bench's partition.
const P: PartitionId = PartitionId(0);
/// Value size: the exchange's cost is about keys; bytes moved scale with it.
const VALUE_BYTES: usize = 128;
/// The bucket (default properties: n = 3, so both replicas hold it).
const BUCKET: &str = "ae";
const SIB: ConflictRule = ConflictRule::Siblings { max_siblings: 64 };

fn open(dir: &Path, id: &str) -> anyhow::Result<Arc<Engine>> {
    let metrics = StorageMetrics::new(&prometheus::Registry::new())?;
    Ok(Arc::new(Engine::open(
        dir,
        Partitioning::with_count(Q)?,
        Durability::Buffered,
        Some(NodeId::new(id)?),
        metrics,
    )?))
}

/// The first `size` keys (in a fixed order) that fall in partition [`P`].
fn keys(size: usize) -> Vec<String> {
    let parts = Partitioning::with_count(Q).expect("q");
    (0u64..)
        .map(|i| format!("key-{i:09}"))
        .filter(|k| parts.partition_of(key_hash(BUCKET, k)) == P)
        .take(size)
        .collect()
}

/// Writes every key on `a` and the identical version set on `b`.
fn load(a: &Engine, b: &Engine, keys: &[String]) -> anyhow::Result<()> {
    for k in keys {
        let r = KeyRef {
            bucket: BUCKET,
            key: k,
        };
        a.coordinate_put(
            &r,
            &DotSet::new(),
            NewWrite::value(vec![7; VALUE_BYTES], "application/octet-stream", 1),
            SIB,
            None,
        )?;
        let o = a
            .get(&r)?
            .ok_or_else(|| anyhow::anyhow!("{k} was just written"))?;
        b.replicate(&r, &o, SIB, None)?;
    }
    a.persist()?;
    b.persist()?;
    Ok(())
}

struct Cell {
    size: usize,
    differing: usize,
    seconds: f64,
    round_trips: u64,
    keys_compared: u64,
    differing_leaves: u64,
    pushed: u64,
    bytes: u64,
}

async fn bench_size(size: usize, ks: &[usize]) -> anyhow::Result<Vec<Cell>> {
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let all = keys(size);
    let started = Instant::now();
    {
        let a = open(dir_a.path(), "node-a")?;
        let b = open(dir_b.path(), "node-b")?;
        let (a2, b2, all2) = (a.clone(), b.clone(), all.clone());
        tokio::task::spawn_blocking(move || load(&a2, &b2, &all2)).await??;
        b.close_clean()?;
        a.close_clean()?;
    }
    eprintln!(
        "loaded {size} keys on both nodes in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut config = Config::for_dir(dir_b.path());
    config.node_id = Some("node-b".into());
    config.partitions = Q;
    config.durability = Durability::Buffered;
    config.anti_entropy_interval_ms = 0;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let node = tokio::spawn(dynamo_storage::run(config, listener, stop.clone()));
    let client = dynamo_testkit::http();
    let deadline = Instant::now() + Duration::from_secs(300);
    while !client
        .get(format!("{url}/readyz"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        anyhow::ensure!(Instant::now() < deadline, "node-b not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let a = open(dir_a.path(), "node-a")?;
    let state = ClusterState::default();
    let buckets = Buckets::new(&state);
    let mut cells = Vec::new();
    let mut next = 0usize;
    for &k in ks.iter().filter(|&&k| k <= size) {
        // k keys the peer has not seen: a newer version of each on this node.
        for key in &all[next..next + k] {
            let r = KeyRef { bucket: BUCKET, key };
            let ctx = a.get(&r)?.map(|o| o.context().clone()).unwrap_or_default();
            a.coordinate_put(
                &r,
                &ctx,
                NewWrite::value(vec![9; VALUE_BYTES], "application/octet-stream", 2),
                SIB,
                None,
            )?;
        }
        next += k;
        let mut pacer = Pacer::new(u64::MAX);
        let t = Instant::now();
        let stats = exchange(&a, &client, &url, P, &buckets, (0, 1), &mut pacer, &stop).await?;
        let seconds = t.elapsed().as_secs_f64();
        anyhow::ensure!(stats.pushed as usize == k, "pushed {} of {k}", stats.pushed);
        cells.push(Cell {
            size,
            differing: k,
            seconds,
            round_trips: stats.round_trips,
            keys_compared: stats.keys_compared,
            differing_leaves: stats.differing_leaves,
            pushed: stats.pushed,
            bytes: stats.bytes_pushed + stats.bytes_pulled,
        });
    }
    stop.cancel();
    node.await??;
    Ok(cells)
}

fn list(var: &str, default: &[usize]) -> Vec<usize> {
    std::env::var(var)
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<usize>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is read from the command line.
    let sizes = list("DYNAMO_BENCH_AE_SIZES", &[10_000, 100_000, 1_000_000]);
    let ks = list("DYNAMO_BENCH_AE_DIFFERING", &[1, 10, 100, 1000]);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut cells = Vec::new();
    for size in sizes {
        cells.extend(rt.block_on(bench_size(size, &ks))?);
    }
    eprintln!(
        "\n| keys in the partition | differing | time (ms) | round trips | keys compared | leaves | bytes moved |"
    );
    eprintln!("|---:|---:|---:|---:|---:|---:|---:|");
    for c in &cells {
        eprintln!(
            "| {} | {} | {:.1} | {} | {} | {} | {} |",
            c.size,
            c.differing,
            c.seconds * 1000.0,
            c.round_trips,
            c.keys_compared,
            c.differing_leaves,
            c.bytes
        );
        println!(
            "{}",
            serde_json::json!({
                "experiment": "ae_cost",
                "keys": c.size,
                "differing": c.differing,
                "seconds": c.seconds,
                "round_trips": c.round_trips,
                "keys_compared": c.keys_compared,
                "differing_leaves": c.differing_leaves,
                "pushed": c.pushed,
                "bytes": c.bytes,
                "value_bytes": VALUE_BYTES,
            })
        );
    }
    Ok(())
}
