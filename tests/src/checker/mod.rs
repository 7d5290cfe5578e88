//! The seeded fault checker: a real cluster of processes on loopback, concurrent clients
//! that record every request, a fault schedule drawn from a seed, and after the heal the
//! safety checks of issue 10 (see `docs/testing.md`).
//!
//! Layout: [`history`] (the recorded ops), [`client`] (a recording REST client),
//! [`workload`] (set-add, single-writer registers with and without deletes, LWW blind
//! writes, blind sibling writes), [`faults`] (schedule, kill -9 / SIGSTOP / iptables
//! partitions, the rule guard, membership steps), [`epochs`] (check 4, sampled during the
//! run), [`handoff`] (check 7, watched during each membership step: an old holder lets go
//! only after the new holders hold the partition), [`converge`] (checks 5 and 6:
//! convergence without reads and released partitions, before anything reads) and
//! [`check`] (settling, checks 1–3). [`run`] plays one seed and
//! returns a [`Report`]; [`run_and_check`] also prints the failing keys' histories and
//! panics on a violation. [`Negative`] names the deliberately broken clusters the checker
//! must fail.
//!
//! A run is deterministic in what it *asks for* (the fault schedule and every client's
//! choices come from the seed), not in how requests interleave with faults: a replay of
//! a failing seed plays the same faults but may or may not hit the same race.

pub mod check;
pub mod client;
pub mod converge;
pub mod epochs;
pub mod faults;
pub mod handoff;
pub mod history;
pub mod workload;

use std::fmt;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use self::check::{LwwReport, Notes, Settled, Violation};
use self::client::{Api, CLIENT_TIMEOUT};
use self::converge::ConvergeReport;
use self::epochs::EpochReport;
use self::faults::{Applied, ChangePlayed, FaultKind, Firewall, Schedule};
use self::history::{History, Outcome, show_op};
use self::workload::{COUNTERS, CounterTally, LWW, REGS, REGS_DEL, client_rng};

/// The checker cluster's tombstone grace and GC interval: short, so tombstones are
/// collected within a run and writes after a collected delete are checked too.
const STORAGE_FLAGS: [&str; 4] = ["--tombstone-grace-ms", "1500", "--gc-interval-ms", "1000"];
/// The checker cluster's anti-entropy interval: short, so a replica that missed writes
/// converges within check 5's wait.
const ANTI_ENTROPY_INTERVAL_MS: u64 = 2_000;
/// The ring service's timeout of one partition pull: a pull into a paused receiver is
/// retried after this rather than the default minute.
const HANDOFF_TIMEOUT_MS: u64 = 10_000;
/// Longest wait for the coordinator to route with the ring service's final ring.
const ROUTE_LIMIT: Duration = Duration::from_secs(20);
use crate::{Cluster, Options};

/// A deliberately broken cluster, which the checker must fail: its negative controls
/// (`DYNAMO_CHECKER_NEGATIVE`, `docs/testing.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Negative {
    /// `ae-off`: storage nodes without anti-entropy (`--anti-entropy-interval-ms 0`):
    /// replicas that missed writes converge only when someone reads them (check 5).
    AntiEntropyOff,
    /// `early-release`: the ring service's `--unsafe-early-release`: old holders delete
    /// a partition as soon as the new ring is published, before the catch-up copy.
    EarlyRelease,
}

impl Negative {
    /// Its name in `DYNAMO_CHECKER_NEGATIVE`.
    pub fn name(self) -> &'static str {
        match self {
            Negative::AntiEntropyOff => "ae-off",
            Negative::EarlyRelease => "early-release",
        }
    }
}

impl std::str::FromStr for Negative {
    type Err = String;

    fn from_str(s: &str) -> Result<Negative, String> {
        match s.trim() {
            "ae-off" => Ok(Negative::AntiEntropyOff),
            "early-release" => Ok(Negative::EarlyRelease),
            other => Err(format!(
                "unknown negative control {other:?}: ae-off or early-release"
            )),
        }
    }
}

/// How close to a fault starting or healing a `503` counts as caused by it (the
/// coordinator's replica timeout is 500 ms; a request may start just before the fault).
pub const FAULT_EDGE: Duration = Duration::from_secs(1);

/// Most failing keys whose whole history is printed (all are written to the report
/// directory).
const PRINTED_KEYS: usize = 3;

/// One run of the checker.
#[derive(Debug, Clone)]
pub struct Config {
    /// The seed of the fault schedule and of every client's choices.
    pub seed: u64,
    /// The load phase (faults are played within it).
    pub duration: Duration,
    /// Storage nodes (3: every node is in every preference list; 4 and more: fallbacks
    /// and hinted handoff come into play).
    pub nodes: usize,
    /// Set-add clients, sharing `set_keys` keys per key generation.
    pub set_clients: usize,
    /// Keys per set-add key generation.
    pub set_keys: usize,
    /// Single-writer registers without deletes (one client each).
    pub registers: usize,
    /// Single-writer registers with deletes (one client each).
    pub deleting_registers: usize,
    /// LWW blind writers, sharing `lww_keys` keys.
    pub lww_clients: usize,
    /// Keys of the LWW bucket.
    pub lww_keys: usize,
    /// Blind writers of the siblings bucket.
    pub blind_clients: usize,
    /// CRDT counter incrementers, sharing `counter_keys` keys.
    pub counter_clients: usize,
    /// Keys of the counter bucket.
    pub counter_keys: usize,
    /// Longest wait for the cluster to come to rest after the heal.
    pub settle_limit: Duration,
    /// Plays a join, a decommission and a replace during the load, each with a fault
    /// (`faults` module docs).
    pub membership: bool,
    /// Longest wait for checks 5 and 6 (convergence without reads, releases) after the
    /// heal: a few anti-entropy intervals.
    pub converge_limit: Duration,
    /// A deliberately broken cluster to run instead of the real one.
    pub negative: Option<Negative>,
    /// Where a failing run writes its histories and service logs (nothing is written
    /// when `None`).
    pub report_dir: Option<PathBuf>,
}

impl Config {
    /// The default workload for `seed` over a load phase of `duration`.
    pub fn new(seed: u64, duration: Duration) -> Config {
        Config {
            seed,
            duration,
            nodes: 3,
            set_clients: 4,
            set_keys: 2,
            registers: 4,
            deleting_registers: 3,
            lww_clients: 2,
            lww_keys: 2,
            blind_clients: 2,
            counter_clients: 2,
            counter_keys: 3,
            settle_limit: Duration::from_secs(60),
            membership: false,
            converge_limit: Duration::from_secs(30),
            negative: None,
            report_dir: None,
        }
    }

    /// The command that replays this run.
    pub fn replay(&self) -> String {
        let mut s = format!(
            "make soak SEED={} DURATION={} NODES={} MEMBERSHIP={}",
            self.seed,
            self.duration.as_secs(),
            self.nodes,
            u8::from(self.membership)
        );
        if let Some(n) = self.negative {
            let _ = write!(s, " NEGATIVE={}", n.name());
        }
        s
    }

    /// The storage nodes' flags.
    fn storage_args(&self) -> Vec<String> {
        let ae = match self.negative {
            Some(Negative::AntiEntropyOff) => 0,
            _ => ANTI_ENTROPY_INTERVAL_MS,
        };
        let mut args: Vec<String> = STORAGE_FLAGS.iter().map(|s| (*s).to_owned()).collect();
        args.extend(["--anti-entropy-interval-ms".to_owned(), ae.to_string()]);
        args
    }

    /// The ring service's flags.
    fn ring_args(&self) -> Vec<String> {
        let mut args = vec!["--handoff-timeout-ms".to_owned(), HANDOFF_TIMEOUT_MS.to_string()];
        if self.negative == Some(Negative::EarlyRelease) {
            args.push("--unsafe-early-release".into());
        }
        args
    }
}

/// What one run did and found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The run's configuration.
    pub config: Config,
    /// The faults as played.
    pub faults: Vec<Applied>,
    /// The membership steps as played.
    pub changes: Vec<ChangePlayed>,
    /// How checks 5 and 6 went.
    pub converge: ConvergeReport,
    /// Why partitions were skipped, if they were.
    pub partitions_skipped: Option<String>,
    /// Requests made.
    pub ops: usize,
    /// Writes made (PUT and DELETE).
    pub writes: usize,
    /// Acknowledged writes.
    pub acked: usize,
    /// Requests answered `503`.
    pub status_503: usize,
    /// `503`s that began more than [`FAULT_EDGE`] away from any fault's start or heal
    /// (and any membership change's start or finish).
    pub status_503_steady: usize,
    /// `503`s by the fault in progress when they were sent (until [`FAULT_EDGE`] after
    /// its heal): `kill-9`, `pause`, `partition`, a membership step's fault (`pause
    /// during join`), a membership change without a fault in progress (`join`), or
    /// `none`.
    pub status_503_by_fault: Vec<(String, usize)>,
    /// Other failures: 4xx, other 5xx, no answer (404 on a read is not a failure).
    pub other_errors: usize,
    /// Error codes seen, with counts.
    pub errors_by_code: Vec<(String, usize)>,
    /// The LWW bucket's measured loss.
    pub lww: LwwReport,
    /// What the checks allowed but report.
    pub notes: Notes,
    /// The ring-epoch sampler's findings.
    pub epochs: EpochReport,
    /// Counters read from the services at the end: which fault paths the run exercised.
    pub exercised: Vec<(String, f64)>,
    /// How long the cluster took to come to rest, and whether it did.
    pub settle: Duration,
    /// True when it came to rest.
    pub stable: bool,
    /// Every broken rule.
    pub violations: Vec<Violation>,
}

impl Report {
    /// `503`s as a percentage of all requests.
    pub fn percent_503(&self) -> f64 {
        if self.ops == 0 {
            0.0
        } else {
            100.0 * self.status_503 as f64 / self.ops as f64
        }
    }

    /// The faults actually applied, as `kill-9 ×2, pause ×1, partition ×3`.
    pub fn fault_summary(&self) -> String {
        let count = |k: FaultKind| {
            self.faults
                .iter()
                .filter(|a| a.fault.kind == k && a.skipped.is_none())
                .count()
        };
        let skipped = self.faults.iter().filter(|a| a.skipped.is_some()).count();
        let mut s = format!(
            "kill-9 ×{}, pause ×{}, partition ×{}",
            count(FaultKind::Kill),
            count(FaultKind::Pause),
            count(FaultKind::Partition)
        );
        if skipped > 0 {
            let _ = write!(s, ", skipped ×{skipped}");
        }
        s
    }

    /// The membership steps as played, as `join 2.1 s (pause), decommission 3.0 s
    /// (kill-9, 1 retry), replace FAILED (…)`, or `—` without any.
    pub fn membership_summary(&self) -> String {
        if self.changes.is_empty() {
            return "—".into();
        }
        let steps: Vec<String> = self
            .changes
            .iter()
            .map(|c| {
                let kind = c.step.kind.to_string();
                if c.skipped {
                    return format!("{kind} skipped");
                }
                let fault = match c.fault {
                    Some(_) if c.overlapped => c.step.fault.to_string(),
                    Some(_) => format!("{} after it", c.step.fault),
                    None => "no fault".into(),
                };
                let retries = match c.retries {
                    0 => String::new(),
                    1 => ", 1 retry".into(),
                    n => format!(", {n} retries"),
                };
                match (c.took, &c.error) {
                    (Some(t), None) => format!("{kind} {:.1} s ({fault}{retries})", t.as_secs_f64()),
                    _ => format!("{kind} FAILED ({fault}{retries})"),
                }
            })
            .collect();
        steps.join(", ")
    }

    /// The header of [`Report::table_row`]'s table.
    pub fn table_header() -> &'static str {
        "| seed | load | nodes | faults | membership changes (took) | no-read convergence | requests | acknowledged | 503 (%) | other errors | LWW latest lost | result |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    }

    /// One row of the results table of `docs/testing.md`.
    pub fn table_row(&self) -> String {
        let seed = match self.config.negative {
            Some(n) => format!("{} ({})", self.config.seed, n.name()),
            None => self.config.seed.to_string(),
        };
        let converge = if self.converge.converged {
            format!("{:.1} s", self.converge.took.as_secs_f64())
        } else {
            "NO".into()
        };
        format!(
            "| {} | {} s | {} | {} | {} | {} | {} | {} | {} ({:.2} %) | {} | {}/{} | {} |",
            seed,
            self.config.duration.as_secs(),
            self.config.nodes,
            self.fault_summary(),
            self.membership_summary(),
            converge,
            self.ops,
            self.acked,
            self.status_503,
            self.percent_503(),
            self.other_errors,
            self.lww.latest_lost,
            self.lww.latest_checked,
            if self.violations.is_empty() {
                "pass".to_owned()
            } else {
                format!("FAIL ({} violations)", self.violations.len())
            }
        )
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "checker report: seed {} · {} s · {} nodes{}{} · replay: {}",
            c.seed,
            c.duration.as_secs(),
            c.nodes,
            if c.membership {
                " · membership changes"
            } else {
                ""
            },
            c.negative
                .map(|n| format!(" · NEGATIVE CONTROL {}", n.name()))
                .unwrap_or_default(),
            c.replay()
        )?;
        writeln!(f, "  faults: {}", self.fault_summary())?;
        if let Some(why) = &self.partitions_skipped {
            writeln!(f, "  partitions skipped: {why}")?;
        }
        for a in &self.faults {
            writeln!(f, "    {a}")?;
        }
        if !self.changes.is_empty() {
            writeln!(f, "  membership changes: {}", self.membership_summary())?;
            for c in &self.changes {
                writeln!(f, "    {c}")?;
            }
        }
        writeln!(f, "  {}", self.converge)?;
        writeln!(
            f,
            "  requests: {} ({} writes, {} acknowledged); 503: {} ({:.2} % of all; {} more than {} ms from a fault's start or heal); other errors: {}",
            self.ops,
            self.writes,
            self.acked,
            self.status_503,
            self.percent_503(),
            self.status_503_steady,
            FAULT_EDGE.as_millis(),
            self.other_errors
        )?;
        if !self.status_503_by_fault.is_empty() {
            let by: Vec<String> = self
                .status_503_by_fault
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            writeln!(f, "  503 by the fault in progress: {}", by.join(", "))?;
        }
        if !self.errors_by_code.is_empty() {
            let codes: Vec<String> = self
                .errors_by_code
                .iter()
                .map(|(c, n)| format!("{c} ×{n}"))
                .collect();
            writeln!(f, "  errors by code: {}", codes.join(", "))?;
        }
        writeln!(f, "  {}", self.lww)?;
        if self.notes.surfaced_indeterminate > 0 {
            writeln!(
                f,
                "  indeterminate writes that surfaced later as concurrent siblings (allowed): {}",
                self.notes.surfaced_indeterminate
            )?;
            for d in &self.notes.details {
                writeln!(f, "    {d}")?;
            }
        }
        for d in &self.lww.details {
            writeln!(f, "    {d}")?;
        }
        let exercised: Vec<String> = self.exercised.iter().map(|(n, v)| format!("{n} {v}")).collect();
        writeln!(
            f,
            "  paths exercised (since each process last started): {}",
            exercised.join(", ")
        )?;
        writeln!(
            f,
            "  ring epochs: {} samples, highest {:?}",
            self.epochs.samples, self.epochs.highest
        )?;
        writeln!(
            f,
            "  settle: {} in {:.1} s",
            if self.stable { "at rest" } else { "NOT at rest" },
            self.settle.as_secs_f64()
        )?;
        if self.violations.is_empty() {
            writeln!(f, "  result: pass")
        } else {
            writeln!(f, "  result: FAIL, {} violations:", self.violations.len())?;
            for v in &self.violations {
                writeln!(f, "    {v}")?;
            }
            Ok(())
        }
    }
}

/// Plays one seed: cluster, clients and faults, heal, settle, checks. Prints the
/// schedule first and the report last; on a violation also the failing keys' histories
/// (and writes them, with the service logs, under `report_dir`).
pub async fn run(config: &Config) -> Report {
    let schedule = Schedule::generate(config.seed, config.nodes, config.duration, config.membership);
    println!("checker: seed {} · replay: {}", config.seed, config.replay());
    if let Some(n) = config.negative {
        println!(
            "checker: NEGATIVE CONTROL {}: this cluster is broken on purpose and must fail",
            n.name()
        );
    }
    print!("{schedule}");
    let mut firewall = Firewall::open();
    let partitions_skipped = firewall.as_ref().err().cloned();
    if let Some(why) = &partitions_skipped {
        println!("checker: partition faults are skipped: {why}");
    }

    let mut cluster = Cluster::start(Options {
        nodes: config.nodes,
        durability: "sync".into(),
        storage_args: config.storage_args(),
        ring_args: config.ring_args(),
        ..Options::default()
    })
    .await;
    let r = cluster
        .req(reqwest::Method::PUT, &format!("/v1/buckets/{LWW}"))
        .json(&serde_json::json!({"conflict": "lww"}))
        .send()
        .await
        .expect("set the LWW bucket's properties");
    assert!(r.status().is_success(), "LWW bucket: {}", r.status());
    let r = cluster
        .req(reqwest::Method::PUT, &format!("/v1/buckets/{COUNTERS}"))
        .json(&serde_json::json!({"conflict": "crdt", "crdt_type": "counter"}))
        .send()
        .await
        .expect("set the counter bucket's properties");
    assert!(r.status().is_success(), "counter bucket: {}", r.status());

    let history = History::default();
    let t0 = Instant::now();
    let t0_wall_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("the clock is past 1970")
        .as_millis() as u64;
    let until = t0 + config.duration;
    let (http, base) = (cluster.http.clone(), cluster.url());
    let api = |name: String| Api::new(http.clone(), base.clone(), t0, history.clone(), name);

    let (stop_tx, stop_rx) = watch::channel(false);
    let sampled = Arc::new(Mutex::new(
        cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("node-{i}"), n.url()))
            .collect::<Vec<_>>(),
    ));
    let sampler = tokio::spawn(epochs::sample(
        cluster.http.clone(),
        cluster.url(),
        sampled.clone(),
        t0,
        stop_rx,
    ));
    let mut clients = Vec::new();
    let mut n = 0u64;
    let mut rng = || {
        n += 1;
        client_rng(config.seed, n)
    };
    for i in 0..config.set_clients {
        clients.push(tokio::spawn(workload::set_adder(
            api(format!("set-{i}")),
            config.set_keys,
            t0,
            rng(),
            until,
        )));
    }
    for i in 0..config.registers {
        clients.push(tokio::spawn(workload::register_writer(
            api(format!("reg-{i}")),
            REGS,
            format!("reg-{i}"),
            false,
            rng(),
            until,
        )));
    }
    for i in 0..config.deleting_registers {
        clients.push(tokio::spawn(workload::register_writer(
            api(format!("del-{i}")),
            REGS_DEL,
            format!("del-{i}"),
            true,
            rng(),
            until,
        )));
    }
    for i in 0..config.blind_clients {
        clients.push(tokio::spawn(workload::blind_writer(
            api(format!("blind-{i}")),
            rng(),
            until,
        )));
    }
    for i in 0..config.lww_clients {
        clients.push(tokio::spawn(workload::lww_writer(
            api(format!("lww-{i}")),
            config.lww_keys,
            rng(),
            until,
        )));
    }

    let counters: Vec<_> = (0..config.counter_clients)
        .map(|i| {
            tokio::spawn(workload::counter_incrementer(
                api(format!("counter-{i}")),
                config.counter_keys,
                rng(),
                until,
            ))
        })
        .collect();

    let played = faults::play(
        &mut cluster,
        &schedule,
        &mut firewall,
        &sampled,
        &history,
        t0,
        until,
    )
    .await;
    // Every client stops at `until` once its request in flight ends; each request is
    // bounded by the client timeout, a register's re-read loop by `until`.
    let stopped = tokio::time::timeout(CLIENT_TIMEOUT * 3, futures::future::join_all(clients))
        .await
        .expect("the workload clients did not stop within three client timeouts");
    for s in stopped {
        s.expect("a workload client panicked");
    }
    let mut tally = CounterTally::default();
    let counted = tokio::time::timeout(CLIENT_TIMEOUT * 3, futures::future::join_all(counters))
        .await
        .expect("the counter clients did not stop within three client timeouts");
    for t in counted {
        tally.absorb(t.expect("a counter client panicked"));
    }
    drop(firewall);

    let ops = history.ops();
    let mut keys: Vec<(String, String)> = ops.iter().map(|o| (o.bucket.clone(), o.key.clone())).collect();
    keys.sort();
    keys.dedup();
    // The checks judge placement under the final ring: the coordinator must route with it.
    let mut violations = Vec::new();
    let final_epoch = cluster.ring_state().await.map_or(0, |s| s.ring_epoch().0);
    if !cluster.wait_coordinator_epoch(final_epoch, ROUTE_LIMIT).await {
        violations.push(Violation {
            check: "membership",
            bucket: String::new(),
            key: String::new(),
            detail: format!(
                "the coordinator did not route with the final ring (epoch {final_epoch}) within {} s",
                ROUTE_LIMIT.as_secs()
            ),
        });
    }
    for c in played.changes.iter().filter(|c| !c.skipped) {
        violations.extend(handoff::judge(&c.handoff.observations, &ops));
        if let Some(e) = &c.error {
            violations.push(Violation {
                check: "membership",
                bucket: String::new(),
                key: String::new(),
                detail: format!("{}: {e}", c.what),
            });
        }
    }
    let placements = check::placements(&cluster, &keys, Instant::now() + config.settle_limit).await;
    // Before anything reads a key: reads repair.
    let (converge, not_converged) = converge::converge_without_reads(
        &cluster,
        &ops,
        &keys,
        &placements,
        &played.rings,
        config.converge_limit,
    )
    .await;
    println!("checker: {converge}");
    violations.extend(not_converged);
    let settled = check::settle(&cluster, &keys, &placements, config.settle_limit).await;
    let _ = stop_tx.send(true);
    let epochs = sampler.await.expect("the epoch sampler panicked");

    let (checked, lww, notes) = check::check(&ops, &settled, t0_wall_ms);
    violations.extend(checked);
    let (acked, more): (i64, i64) = tally.keys.values().fold((0, 0), |(a, m), (x, y)| (a + x, m + y));
    println!(
        "checker: counters: {} keys, increments acknowledged summing to {acked}, at most {more} more maybe applied",
        tally.keys.len()
    );
    violations.extend(check::check_counters(&api("counter-check".into()), &tally).await);
    let (exercised, broken_invariants) = exercised(&cluster).await;
    violations.extend(broken_invariants);
    violations.extend(epochs.violations.iter().map(|v| Violation {
        check: "4 epoch",
        bucket: String::new(),
        key: String::new(),
        detail: v.clone(),
    }));

    let report = summarize(
        config,
        played,
        partitions_skipped,
        &ops,
        (lww, notes),
        epochs,
        &settled,
        violations,
    );
    let report = Report {
        exercised,
        converge,
        ..report
    };
    println!("{report}");
    // A passing run keeps its report and logs too (the 503s of a pass are worth a look).
    explain(config, &report, &ops, &settled, &cluster);
    report
}

/// [`run`], then panics when the run found a violation.
pub async fn run_and_check(config: &Config) -> Report {
    let report = run(config).await;
    assert!(
        report.violations.is_empty(),
        "seed {} failed {} checks (replay: {}); the histories are printed above",
        config.seed,
        report.violations.len(),
        config.replay()
    );
    report
}

/// Counters that show which fault paths a run went through (fallbacks, hints, read
/// repair, tombstone GC), summed over the services; and every service invariant the
/// services counted as broken (`dynamo_invariant_violations_total`), as violations.
/// Counters restart with their process, so after a kill -9 these are lower bounds.
async fn exercised(cluster: &Cluster) -> (Vec<(String, f64)>, Vec<Violation>) {
    let mut services = vec![
        ("ring".to_owned(), cluster.ring.url()),
        ("coordinator".to_owned(), cluster.url()),
    ];
    services.extend(
        cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (format!("node-{i}"), n.url())),
    );
    let counters = [
        ("fallbacks", "dynamo_coordinator_sloppy_fallbacks_total"),
        ("read_repairs", "dynamo_coordinator_read_repairs_total"),
        ("hints_delivered", "dynamo_storage_hints_delivered_total"),
        (
            "tombstones_collected",
            "dynamo_storage_tombstones_collected_total",
        ),
        ("unclean_restarts", "dynamo_storage_unclean_restarts_total"),
        ("superseded_after_gc", "dynamo_storage_superseded_after_gc_total"),
        ("anti_entropy_keys", "dynamo_storage_anti_entropy_keys_total"),
        ("handoff_pulls", "dynamo_ring_handoff_pulls_total"),
        ("released_objects", "dynamo_storage_released_objects_total"),
    ];
    let mut sums = vec![0.0; counters.len()];
    let mut broken = Vec::new();
    for (name, url) in &services {
        let Some(text) = check::scrape(&cluster.http, url).await else {
            continue;
        };
        for (i, (_, metric)) in counters.iter().enumerate() {
            sums[i] += check::metric_lines(&text, metric).map(|(_, v)| v).sum::<f64>();
        }
        for (labels, v) in check::metric_lines(&text, "dynamo_invariant_violations_total") {
            if v > 0.0 {
                broken.push(Violation {
                    check: "service invariant",
                    bucket: String::new(),
                    key: String::new(),
                    detail: format!("{name} counted dynamo_invariant_violations_total{labels} = {v}"),
                });
            }
        }
    }
    let exercised = counters
        .iter()
        .zip(sums)
        .map(|((label, _), v)| ((*label).to_owned(), v))
        .collect();
    (exercised, broken)
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    config: &Config,
    played: faults::Played,
    partitions_skipped: Option<String>,
    ops: &[history::Op],
    (lww, notes): (LwwReport, Notes),
    epochs: EpochReport,
    settled: &Settled,
    violations: Vec<Violation>,
) -> Report {
    let writes = ops.iter().filter(|o| o.kind != history::Kind::Read).count();
    let acked = ops.iter().filter(|o| o.is_acked_write()).count();
    let status_503 = ops.iter().filter(|o| o.outcome.is_503()).count();
    // What was going on, when: the faults (ordinary, and those of membership steps),
    // then the membership changes themselves, as (what, start, end).
    let mut windows: Vec<(String, Duration, Duration)> = played
        .faults
        .iter()
        .filter(|a| a.skipped.is_none())
        .map(|a| (a.fault.kind.to_string(), a.start, a.healed))
        .collect();
    for c in played.changes.iter().filter(|c| !c.skipped) {
        if let Some((a, b)) = c.fault {
            windows.push((format!("{} during {}", c.step.fault, c.step.kind), a, b));
        }
    }
    for c in played.changes.iter().filter(|c| !c.skipped) {
        let end = c.start + c.took.unwrap_or_default();
        windows.push((c.step.kind.to_string(), c.start, end));
    }
    let near_fault = |o: &history::Op| {
        windows.iter().any(|(_, start, end)| {
            [start, end]
                .iter()
                .any(|&&edge| o.end + FAULT_EDGE >= edge && o.start <= edge + FAULT_EDGE)
        })
    };
    let status_503_steady = ops
        .iter()
        .filter(|o| o.outcome.is_503() && !near_fault(o))
        .count();
    let mut by_fault: std::collections::BTreeMap<String, usize> = Default::default();
    for o in ops.iter().filter(|o| o.outcome.is_503()) {
        let during = windows
            .iter()
            .find(|(_, start, end)| *start <= o.start && o.start <= *end + FAULT_EDGE)
            .map_or_else(|| "none".to_owned(), |(what, _, _)| what.clone());
        *by_fault.entry(during).or_default() += 1;
    }
    let mut by_code: std::collections::BTreeMap<String, usize> = Default::default();
    let mut other_errors = 0;
    for o in ops {
        let code = match &o.outcome {
            Outcome::Ok | Outcome::NotFound => continue,
            Outcome::Indeterminate { status, code } => {
                if *status != Some(503) {
                    other_errors += 1;
                }
                match status {
                    Some(s) => format!("{s} {code}"),
                    None => code.clone(),
                }
            }
            Outcome::Failed { status, code } => {
                other_errors += 1;
                format!("{status} {code}")
            }
        };
        *by_code.entry(code).or_default() += 1;
    }
    Report {
        config: config.clone(),
        faults: played.faults,
        changes: played.changes,
        converge: ConvergeReport::default(),
        partitions_skipped,
        ops: ops.len(),
        writes,
        acked,
        status_503,
        status_503_steady,
        status_503_by_fault: by_fault.into_iter().collect(),
        other_errors,
        errors_by_code: by_code.into_iter().collect(),
        lww,
        notes,
        epochs,
        exercised: Vec::new(),
        settle: settled.took,
        stable: settled.stable,
        violations,
    }
}

/// Prints (up to [`PRINTED_KEYS`]) and writes (all) the histories of the failing keys,
/// and writes the report and copies the service logs next to them (a previous run's
/// histories of the same seed are removed first).
fn explain(config: &Config, report: &Report, ops: &[history::Op], settled: &Settled, cluster: &Cluster) {
    let mut failing: Vec<(&str, &str)> = report
        .violations
        .iter()
        .filter(|v| !v.key.is_empty())
        .map(|v| (v.bucket.as_str(), v.key.as_str()))
        .collect();
    failing.dedup();
    failing.sort();
    failing.dedup();
    let dir = config.report_dir.as_ref().map(|d| {
        d.join(format!(
            "seed-{}-{}s-{}n",
            config.seed,
            config.duration.as_secs(),
            config.nodes
        ))
    });
    if let Some(d) = &dir {
        let _ = std::fs::remove_dir_all(d);
        let _ = std::fs::create_dir_all(d);
    }
    for (i, (bucket, key)) in failing.iter().enumerate() {
        let mut text = format!(
            "history of {bucket}/{key} (seed {}, replay: {}); contexts as {{actor:1-n, actor.extra}} with actors shortened to 4 hex digits\n",
            config.seed,
            config.replay()
        );
        for v in report
            .violations
            .iter()
            .filter(|v| v.bucket == *bucket && v.key == *key)
        {
            let _ = writeln!(text, "violation: [{}] {}", v.check, v.detail);
        }
        for f in &report.faults {
            let _ = writeln!(text, "fault: {f}");
        }
        for op in ops.iter().filter(|o| o.bucket == *bucket && o.key == *key) {
            let _ = writeln!(text, "{}", show_op(op));
        }
        if let Some(fk) = settled.keys.iter().find(|k| k.bucket == *bucket && k.key == *key) {
            let _ = write!(text, "final copies:\n{}", fk.show());
        }
        if i < PRINTED_KEYS {
            println!("{text}");
        }
        if let Some(d) = &dir {
            let _ = std::fs::write(d.join(format!("{bucket}-{key}.history")), &text);
        }
    }
    if failing.len() > PRINTED_KEYS {
        println!(
            "checker: {} more failing keys not printed",
            failing.len() - PRINTED_KEYS
        );
    }
    if let Some(d) = &dir {
        let _ = std::fs::write(d.join("report.txt"), report.to_string());
        if let Ok(entries) = std::fs::read_dir(cluster.dir.path()) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "log")
                    && let Some(name) = p.file_name()
                {
                    let _ = std::fs::copy(&p, d.join(name));
                }
            }
        }
        println!(
            "checker: report{} and service logs are in {}",
            if failing.is_empty() { "" } else { ", histories" },
            d.display()
        );
    }
}
