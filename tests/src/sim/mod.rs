//! The deterministic simulator: the core's quorum rounds ([`dynamo_core::round`]), its
//! failure detector ([`dynamo_core::liveness`]) and the storage node's merge rules
//! ([`dynamo_core::version::StoredCopy`], `VersionedObject::sync`) run together over a
//! simulated network and simulated time, all drawn from one seed. No sockets, no threads,
//! no clock: a seed is a program, and a failing seed replays exactly
//! (`DYNAMO_SIM_SEEDS=<seed> cargo test -p dynamo-tests --test simulator`).
//!
//! What it simulates (`world`): storage nodes with group commit (writes answered after
//! an fsync; reads see what is applied but not yet synced, as fjall's memtable does),
//! crashes that lose what was not synced and restart as a new incarnation, hinted
//! handoff; coordinators that drive the rounds with per-hop timeouts and probes;
//! clients that read, write with the context they read, write blind and delete. The
//! network drops, delays and reorders messages; links and whole nodes are partitioned
//! away and healed.
//!
//! What it checks (`check`), after every step that can break it, the invariants of
//! ARCHITECTURE.md §4 that a single partition's replicas can break:
//! 1. an acknowledged write is on W durable copies from its acknowledgement on (owners'
//!    own copies or hints), and after the heal a quorum read returns it or a descendant;
//! 2. a version a replica durably saw superseded never becomes live there again, and
//!    after the heal no version an acknowledged write superseded is live;
//! 6. a dot is minted once, for one write; a client write is minted at most once;
//!
//! and that every request is answered exactly once, values come back uncorrupted, and
//! hints drain once the faults heal. Not simulated here: ring changes, tombstone GC,
//! anti-entropy (they have no driver in core yet), idempotency keys; the fault checker
//! (`tests/src/checker`) covers the real processes.
//!
//! [`Mutant`]s break one rule of the protocol on purpose, to show the checks find it.

mod check;
mod world;

use std::panic::AssertUnwindSafe;

pub use world::Stats;

/// One simulated cluster and workload.
#[derive(Debug, Clone)]
pub struct Config {
    /// Storage nodes (more than `n` gives fallbacks).
    pub nodes: usize,
    /// Coordinators (stateless; each keeps its own failure detector).
    pub coordinators: usize,
    /// Concurrent clients, one request each at a time.
    pub clients: usize,
    /// Requests per client.
    pub ops_per_client: usize,
    /// Distinct keys (few, so writes collide).
    pub keys: usize,
    /// Replicas per key.
    pub n: usize,
    /// Read quorum.
    pub r: usize,
    /// Write quorum.
    pub w: usize,
    /// Messages lost, per thousand.
    pub drop_per_mille: u32,
    /// Messages delayed 20-90 ms instead of 1-8 ms, per thousand (with the 100 ms hop
    /// timeout, a slow request and a slow reply time a call out).
    pub slow_per_mille: u32,
    /// Crashes and partitions during the load.
    pub faults: bool,
    /// A deliberate protocol bug.
    pub mutant: Option<Mutant>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nodes: 5,
            coordinators: 2,
            clients: 3,
            ops_per_client: 25,
            keys: 4,
            n: 3,
            r: 2,
            w: 2,
            drop_per_mille: 20,
            slow_per_mille: 50,
            faults: true,
            mutant: None,
        }
    }
}

/// A deliberate bug in the coordinator's driver, fed to the real rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutant {
    /// A replicate that failed is told to the write round as stored: the quorum-counting
    /// bug (a write acknowledged with fewer than W copies).
    FailedReplicaCountsAsAck,
    /// A coordinate whose outcome is unknown (timed out) is told to the write round as
    /// not applied, so it is retried on the next node: the at-most-once bug.
    RetriesAnUnknownCoordinate,
}

/// What one seed did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Invariant violations found (empty: the seed passed).
    pub violations: Vec<String>,
    /// What happened.
    pub stats: Stats,
    /// The last steps before the first violation (or the end), for the replay.
    pub trace_tail: Vec<String>,
}

impl Report {
    /// Returns true when no invariant was violated.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs one seed. A panic inside the protocol (a `debug_assert` of the merge rules, say)
/// is reported as a violation of its own.
pub fn run(seed: u64, config: &Config) -> Report {
    match std::panic::catch_unwind(AssertUnwindSafe(|| world::World::new(seed, config.clone()).run())) {
        Ok(report) => report,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic".into());
            Report {
                seed,
                violations: vec![format!("panicked: {what}")],
                stats: Stats::default(),
                trace_tail: Vec::new(),
            }
        }
    }
}

/// Runs `seeds` on `threads` threads; returns the reports of the seeds that failed, and
/// the totals over all of them.
pub fn run_many(seeds: &[u64], config: &Config, threads: usize) -> (Vec<Report>, Stats) {
    let threads = threads.clamp(1, 16);
    let chunks: Vec<&[u64]> = seeds.chunks(seeds.len().div_ceil(threads).max(1)).collect();
    let results: Vec<(Vec<Report>, Stats)> = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                s.spawn(move || {
                    let mut failed = Vec::new();
                    let mut total = Stats::default();
                    for &seed in chunk {
                        let r = run(seed, config);
                        total.add(&r.stats);
                        if !r.passed() {
                            failed.push(r);
                        }
                    }
                    (failed, total)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| (Vec::new(), Stats::default())))
            .collect()
    });
    let mut failed = Vec::new();
    let mut total = Stats::default();
    for (f, t) in results {
        failed.extend(f);
        total.add(&t);
    }
    failed.sort_by_key(|r| r.seed);
    (failed, total)
}

/// Parses a seed list: `7`, `1,5,9`, `1-2000`, or a mix.
///
/// # Errors
/// A message naming the part that is not a seed or a range.
pub fn parse_seeds(spec: &str) -> Result<Vec<u64>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("{part:?} is not a seed or a range like 1-100");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u64, u64) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if b < a || b - a > 100_000_000 {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}
