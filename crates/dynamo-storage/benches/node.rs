//! Load benchmark of one storage node: its own put/get throughput per durability mode.
//!
//! Starts a node in-process on a temporary directory and drives its real HTTP API
//! (`POST /internal/v1/replicas`) with a closed loop of [`CLIENTS`] concurrent clients, for
//! `DYNAMO_BENCH_SECONDS` seconds per cell (default 5): 1 KiB values, single-op
//! `coordinate_put` batches, then single-op `get`s of keys written before, then
//! `coordinate_put` batches of 16 ops. Once for `sync`, once for `buffered`.
//!
//! Run with `cargo bench -p dynamo-storage --bench node`. Clients and node share the
//! machine's cores, as they do under `dynamo dev`; the numbers are for comparing modes on
//! one machine, not absolute capacity. Results go to `docs/benchmarks.md` by hand. Not part
//! of `make test`, and never an assertion.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dynamo_core::version::ConflictRule;
use dynamo_core::wire::internal::{ReplicaBatch, ReplicaBatchResult, ReplicaOp, ReplicaResult};
use dynamo_core::{BucketName, DotSet};
use dynamo_storage::{Config, Durability};
use hdrhistogram::Histogram;
use tokio_util::sync::CancellationToken;

/// Concurrent clients, each with one request in flight.
const CLIENTS: usize = 32;
/// Value size.
const VALUE_BYTES: usize = 1024;
/// Operations per request in the batched cell.
const BATCH: usize = 16;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Cell {
    Put,
    Get,
    PutBatch,
}

impl Cell {
    fn name(self) -> &'static str {
        match self {
            Cell::Put => "put (1 op/request)",
            Cell::Get => "get (1 op/request)",
            Cell::PutBatch => "put (16 ops/request)",
        }
    }

    fn ops_per_request(self) -> usize {
        if self == Cell::PutBatch { BATCH } else { 1 }
    }
}

struct Row {
    mode: &'static str,
    cell: Cell,
    ops_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

fn bucket() -> BucketName {
    BucketName::new("bench").expect("valid bucket")
}

fn put(key: String, value: &[u8]) -> ReplicaOp {
    ReplicaOp::CoordinatePut {
        bucket: bucket(),
        key,
        context: DotSet::new(),
        value: value.to_vec(),
        content_type: "application/octet-stream".into(),
        tombstone: false,
        conflict: ConflictRule::Siblings { max_siblings: 32 },
        hint: None,
        deadline_ms: None,
        idempotency: None,
    }
}

/// A small xorshift generator: the bench needs spread, not quality.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Runs one cell for `duration`; `written[c]` is how many single puts client `c` made
/// (gets read those keys). Returns the row and, for puts, how many keys each client wrote.
async fn run_cell(
    http: &dynamo_server::internal::InternalClient,
    url: &str,
    mode: &'static str,
    cell: Cell,
    duration: Duration,
    written: Arc<Vec<u64>>,
    prefix: &'static str,
) -> (Row, Vec<u64>) {
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = Vec::with_capacity(CLIENTS);
    for c in 0..CLIENTS {
        let http = http.clone();
        let endpoint = dynamo_core::wire::routes::url(url, dynamo_core::wire::routes::storage::REPLICAS);
        let written = written.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let value = vec![b'x'; VALUE_BYTES];
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
            let mut requests = 0u64;
            let mut rng = 0x9e37_79b9_7f4a_7c15_u64 ^ (c as u64 + 1);
            while Instant::now() < deadline {
                let ops = match cell {
                    Cell::Put => vec![put(format!("{prefix}-{c}-{requests}"), &value)],
                    Cell::PutBatch => (0..BATCH)
                        .map(|i| put(format!("{prefix}-{c}-{requests}-{i}"), &value))
                        .collect(),
                    Cell::Get => {
                        let owner = (next_random(&mut rng) % CLIENTS as u64) as usize;
                        let n = written[owner].max(1);
                        let i = next_random(&mut rng) % n;
                        vec![ReplicaOp::Get {
                            bucket: bucket(),
                            key: format!("p-{owner}-{i}"),
                        }]
                    }
                };
                let sent = Instant::now();
                let ok = match http
                    .post(&endpoint)
                    .json(&ReplicaBatch {
                        ops,
                        ring_epoch: None,
                    })
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => match r.json::<ReplicaBatchResult>().await {
                        Ok(b) => b
                            .results
                            .iter()
                            .all(|r| !matches!(r, ReplicaResult::Error { .. })),
                        Err(_) => false,
                    },
                    _ => false,
                };
                let micros = sent.elapsed().as_micros() as u64;
                if ok {
                    hist.saturating_record(micros.max(1));
                    requests += 1;
                } else {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            (hist, requests)
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
    let mut per_client = Vec::with_capacity(CLIENTS);
    for t in tasks {
        let (h, n) = t.await.expect("client task");
        total.add(&h).expect("same bounds");
        per_client.push(n);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let ops = per_client.iter().sum::<u64>() as f64 * cell.ops_per_request() as f64;
    (
        Row {
            mode,
            cell,
            ops_per_second: ops / elapsed,
            p50_ms: total.value_at_quantile(0.50) as f64 / 1000.0,
            p99_ms: total.value_at_quantile(0.99) as f64 / 1000.0,
            errors: errors.load(Ordering::Relaxed),
        },
        per_client,
    )
}

async fn bench_mode(durability: Durability, duration: Duration) -> anyhow::Result<Vec<Row>> {
    let mode = match durability {
        Durability::Sync => "sync",
        Durability::Buffered => "buffered",
    };
    let dir = tempfile::tempdir()?;
    let mut config = Config::for_dir(dir.path());
    config.node_id = Some("bench-node".into());
    config.durability = durability;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = CancellationToken::new();
    let node = tokio::spawn(dynamo_storage::run(config, listener, stop.clone()));

    let http = dynamo_server::internal::client(
        dynamo_testkit::http_builder()
            .timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(CLIENTS)
            .build()?,
        dynamo_server::internal::testing::signer(dynamo_core::signature::Role::Member),
    );
    let ready_by = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        anyhow::ensure!(Instant::now() < ready_by, "node never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let none = Arc::new(vec![0u64; CLIENTS]);
    // Warm-up: connections, allocator, fjall's first memtable.
    run_cell(
        &http,
        &url,
        mode,
        Cell::Put,
        Duration::from_secs(1),
        none.clone(),
        "w",
    )
    .await;
    let (put_row, written) = run_cell(&http, &url, mode, Cell::Put, duration, none.clone(), "p").await;
    let (get_row, _) = run_cell(&http, &url, mode, Cell::Get, duration, Arc::new(written), "g").await;
    let (batch_row, _) = run_cell(&http, &url, mode, Cell::PutBatch, duration, none, "b").await;

    // Group commit at work: how many fsyncs the syncer ran and how many writes each covered.
    let text = http.get(format!("{url}/metrics")).send().await?.text().await?;
    let sample = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let fsyncs = sample("dynamo_storage_fsyncs_total");
    let covered = sample("dynamo_storage_fsync_batch_writes_sum");
    println!(
        "{mode}: {fsyncs:.0} group-commit fsyncs, {:.1} write requests per fsync on average",
        if fsyncs > 0.0 { covered / fsyncs } else { 0.0 }
    );

    stop.cancel();
    node.await??;
    Ok(vec![put_row, get_row, batch_row])
}

fn main() -> anyhow::Result<()> {
    let seconds: u64 = std::env::var("DYNAMO_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let duration = Duration::from_secs(seconds);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();
    for durability in [Durability::Sync, Durability::Buffered] {
        rows.extend(rt.block_on(bench_mode(durability, duration))?);
    }
    println!("\nstorage node, {CLIENTS} closed-loop clients, {VALUE_BYTES} B values, {seconds} s per cell\n");
    println!("| mode | operation | ops/s | p50 (ms) | p99 (ms) | errors |");
    println!("|---|---|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {} | {:.0} | {:.2} | {:.2} | {} |",
            r.mode,
            r.cell.name(),
            r.ops_per_second,
            r.p50_ms,
            r.p99_ms,
            r.errors
        );
    }
    println!();
    for cell in [Cell::Put, Cell::Get, Cell::PutBatch] {
        let of = |mode: &str| {
            rows.iter()
                .find(|r| r.mode == mode && r.cell == cell)
                .map_or(f64::NAN, |r| r.ops_per_second)
        };
        println!(
            "buffered/sync, {}: {:.2}",
            cell.name(),
            of("buffered") / of("sync")
        );
    }
    Ok(())
}
