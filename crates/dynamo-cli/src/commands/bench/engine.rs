//! The closed loop: `concurrency` clients, each issuing its next operation as soon as the
//! previous one answers, for a warm-up and then a measured window.
//!
//! Each client owns its random source (seeded from the run's seed), its [`Stats`] and
//! its round-robin position, so the hot path shares nothing but a relaxed counter for
//! the progress bar. An operation counts when it *started* inside the measured window;
//! none starts after the window ends, and those in flight then finish (or time out) and
//! still count, so no slow request is dropped from the tail. Throughput is successes
//! over the window's length.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use indicatif::ProgressBar;
use rand::SeedableRng as _;
use rand::rngs::SmallRng;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::cpu;
use super::report::Stats;
use super::target::Backend;
use super::workload::{KeyChooser, Mode, Op, Workload, task_seed};
use crate::error::CliError;

/// How often the progress bar's throughput is refreshed.
const PROGRESS_TICK: Duration = Duration::from_millis(250);

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The operation mix.
    pub workload: Workload,
    /// How updates write.
    pub mode: Mode,
    /// Shared by every client (it is immutable).
    pub keys: Arc<KeyChooser>,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Run, unmeasured, before the window.
    pub warmup: Duration,
    /// The measured window.
    pub duration: Duration,
    /// The run's seed.
    pub seed: u64,
    /// A bound on one operation (both requests of an `rmw` update), beyond the
    /// clients' own request timeouts; past it the operation counts as `timeout`.
    pub op_timeout: Duration,
}

/// What a run measured.
#[derive(Debug)]
pub struct Measured {
    /// Every client's stats, merged.
    pub stats: Stats,
    /// The measured window's length.
    pub window: Duration,
    /// The generator's CPU use over the window, 100 = one core; `None` when unknown.
    pub cpu_percent: Option<f64>,
}

/// Runs the plan against `backend` and returns the merged measurements.
///
/// # Errors
/// [`CliError::Local`] when a client task panicked.
pub async fn run(backend: Arc<Backend>, plan: &Plan, progress: &ProgressBar) -> Result<Measured, CliError> {
    let start = Instant::now();
    let window_start = start + plan.warmup;
    let window_end = window_start + plan.duration;
    let done = Arc::new(AtomicU64::new(0));
    let lanes = backend.lanes().max(1);

    let mut clients = JoinSet::new();
    for task in 0..plan.concurrency {
        let backend = backend.clone();
        let plan = plan.clone();
        let done = done.clone();
        clients.spawn(async move {
            let mut rng = SmallRng::seed_from_u64(task_seed(plan.seed, task as u64));
            let mut stats = Stats::new();
            // Clients start on different members, then move one member per request.
            let mut lane = task % lanes;
            loop {
                let began = Instant::now();
                if began >= window_end {
                    break;
                }
                let op = plan.workload.next_op(&mut rng);
                let record = plan.keys.next_record(&mut rng);
                let outcome = tokio::time::timeout(plan.op_timeout, async {
                    match op {
                        Op::Read => backend.read(lane, record).await,
                        Op::Update => backend.update(lane, record, plan.mode).await,
                    }
                })
                .await;
                let latency = began.elapsed();
                lane = (lane + 1) % lanes;
                done.fetch_add(1, Ordering::Relaxed);
                if began < window_start {
                    continue;
                }
                match outcome {
                    Ok(Ok(seen)) => {
                        stats.record(op, latency);
                        if let Some(siblings) = seen {
                            stats.saw_siblings(siblings);
                        }
                    }
                    Ok(Err(code)) => stats.error(&code),
                    Err(_elapsed) => stats.error("timeout"),
                }
            }
            stats
        });
    }

    let ticker = show_progress(progress, done.clone(), start, window_start, window_end);
    tokio::time::sleep_until(window_start).await;
    let cpu_before = cpu::process_cpu_time();
    let measured_from = Instant::now();
    tokio::time::sleep_until(window_end).await;
    let cpu_after = cpu::process_cpu_time();
    let cpu_percent = cpu::cpu_percent(cpu_before, cpu_after, measured_from.elapsed());
    progress.set_message("finishing in-flight requests");

    let mut stats = Stats::new();
    while let Some(joined) = clients.join_next().await {
        let client = joined.map_err(|e| CliError::Local(format!("a bench client failed: {e}")))?;
        stats.merge(&client);
    }
    ticker.abort();
    progress.finish_and_clear();
    Ok(Measured {
        stats,
        window: plan.duration,
        cpu_percent,
    })
}

/// What `--load` did.
#[derive(Debug)]
pub struct Loaded {
    /// Successful inserts and failures by code (no latencies are reported for it).
    pub stats: Stats,
    /// From the first insert until the last answered.
    pub elapsed: Duration,
}

/// Inserts every record `0..records` once, `concurrency` at a time.
///
/// # Errors
/// [`CliError::Local`] when a loader task panicked.
pub async fn load(
    backend: Arc<Backend>,
    records: u64,
    concurrency: usize,
    op_timeout: Duration,
    progress: &ProgressBar,
) -> Result<Loaded, CliError> {
    let start = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let lanes = backend.lanes().max(1);
    let mut loaders = JoinSet::new();
    for task in 0..concurrency {
        let backend = backend.clone();
        let next = next.clone();
        let progress = progress.clone();
        loaders.spawn(async move {
            let mut stats = Stats::new();
            let mut lane = task % lanes;
            loop {
                let record = next.fetch_add(1, Ordering::Relaxed);
                if record >= records {
                    break;
                }
                let began = Instant::now();
                match tokio::time::timeout(op_timeout, backend.insert(lane, record)).await {
                    Ok(Ok(())) => stats.record(Op::Update, began.elapsed()),
                    Ok(Err(code)) => stats.error(&code),
                    Err(_elapsed) => stats.error("timeout"),
                }
                lane = (lane + 1) % lanes;
                progress.inc(1);
            }
            stats
        });
    }
    let mut stats = Stats::new();
    while let Some(joined) = loaders.join_next().await {
        let loader = joined.map_err(|e| CliError::Local(format!("a loader failed: {e}")))?;
        stats.merge(&loader);
    }
    progress.finish_and_clear();
    Ok(Loaded {
        stats,
        elapsed: start.elapsed(),
    })
}

/// Refreshes the bar until aborted: position in ms since the start, the phase, and the
/// throughput over the last tick.
fn show_progress(
    progress: &ProgressBar,
    done: Arc<AtomicU64>,
    start: Instant,
    window_start: Instant,
    window_end: Instant,
) -> tokio::task::JoinHandle<()> {
    let progress = progress.clone();
    tokio::spawn(async move {
        if progress.is_hidden() {
            return;
        }
        let mut last = (Instant::now(), 0u64);
        let mut tick = tokio::time::interval(PROGRESS_TICK);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let count = done.load(Ordering::Relaxed);
            let rate = (count - last.1) as f64 / now.duration_since(last.0).as_secs_f64().max(1e-3);
            last = (now, count);
            let phase = if now < window_start {
                "warm-up"
            } else if now < window_end {
                "measuring"
            } else {
                "finishing"
            };
            progress.set_position(u64::try_from(now.duration_since(start).as_millis()).unwrap_or(u64::MAX));
            progress.set_message(format!("{phase}: {rate:.0} ops/s"));
        }
    })
}
