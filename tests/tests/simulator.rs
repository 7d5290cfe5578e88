//! The deterministic simulator over many seeds (`dynamo_tests::sim`).
//!
//! `DYNAMO_SIM_SEEDS` picks the seeds (`7`, `1-100000`; default 1-1500 here), so a
//! failing seed replays alone: `DYNAMO_SIM_SEEDS=7 cargo test -p dynamo-tests --test
//! simulator -- --nocapture`. `make soak-sim` runs millions.

use dynamo_tests::sim::{self, Config, Mutant, Report, Stats};

fn seeds(default: &str) -> Vec<u64> {
    let spec = std::env::var("DYNAMO_SIM_SEEDS").unwrap_or_else(|_| default.to_owned());
    sim::parse_seeds(&spec).unwrap_or_else(|e| panic!("DYNAMO_SIM_SEEDS: {e}"))
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, usize::from)
}

fn describe(r: &Report) -> String {
    format!(
        "seed {}: {}\n  last steps:\n    {}",
        r.seed,
        r.violations.join("; "),
        r.trace_tail.join("\n    ")
    )
}

fn summary(label: &str, seeds: usize, total: &Stats) {
    println!(
        "{label}: {seeds} seeds, {} events, {} simulated s; writes {} acked / {} failed / {} indeterminate; reads {} ok / {} failed; {} crashes, {} partitions, {} messages lost, {} hints delivered",
        total.events,
        total.sim_ms / 1000,
        total.writes_acked,
        total.writes_failed,
        total.writes_indeterminate,
        total.reads_ok,
        total.reads_failed,
        total.crashes,
        total.partitions,
        total.dropped,
        total.hints_delivered
    );
}

/// Goal: under drops, delays, reordering, partitions and crashes that lose unsynced
/// writes, no seed breaks an invariant: acknowledged writes stay on W copies and read
/// back after the heal, superseded versions stay dead, dots are minted once, hints drain.
#[test]
fn every_seed_keeps_the_invariants() {
    let seeds = seeds("1-1500");
    let config = Config::default();
    let (failed, total) = sim::run_many(&seeds, &config, threads());
    summary("simulator", seeds.len(), &total);
    assert!(
        failed.is_empty(),
        "{} of {} seeds failed; first:\n{}",
        failed.len(),
        seeds.len(),
        describe(&failed[0])
    );
    // The workload did something worth checking: faults happened and writes got through.
    assert!(
        total.crashes > 0 && total.partitions > 0 && total.dropped > 0,
        "{total:?}"
    );
    assert!(total.writes_acked > total.writes_failed, "{total:?}");
    assert!(total.hints_delivered > 0, "{total:?}");
}

/// Goal: a seed is a program: the same seed gives the same run, step for step.
#[test]
fn a_seed_replays_exactly() {
    let config = Config::default();
    for seed in [3, 99, 2024] {
        let (a, b) = (sim::run(seed, &config), sim::run(seed, &config));
        assert_eq!(a.stats, b.stats, "seed {seed}");
        assert_eq!(a.trace_tail, b.trace_tail, "seed {seed}");
    }
    assert_ne!(
        sim::run(1, &config).stats,
        sim::run(2, &config).stats,
        "seeds differ"
    );
}

/// Goal: the checks find a quorum-counting bug: a driver that tells the write round a
/// failed replicate was stored acknowledges writes held by fewer than W nodes.
#[test]
fn a_round_that_counts_a_failed_replica_as_an_ack_is_caught() {
    let config = Config {
        mutant: Some(Mutant::FailedReplicaCountsAsAck),
        ..Config::default()
    };
    let seeds: Vec<u64> = (1..=300).collect();
    let (failed, _) = sim::run_many(&seeds, &config, threads());
    println!(
        "the quorum-counting bug: {} of {} seeds catch it",
        failed.len(),
        seeds.len()
    );
    let first = failed.first().expect("no seed caught the quorum-counting bug");
    assert!(
        first.violations.iter().any(|v| v.starts_with("invariant 1")),
        "{}",
        describe(first)
    );
    println!("{}", describe(first));
}

/// Goal: the checks find an at-most-once bug: a driver that retries a coordinate whose
/// outcome is unknown mints one client write twice.
#[test]
fn a_round_that_retries_an_unknown_coordinate_is_caught() {
    let config = Config {
        mutant: Some(Mutant::RetriesAnUnknownCoordinate),
        ..Config::default()
    };
    let seeds: Vec<u64> = (1..=300).collect();
    let (failed, _) = sim::run_many(&seeds, &config, threads());
    println!(
        "the at-most-once bug: {} of {} seeds catch it",
        failed.len(),
        seeds.len()
    );
    let first = failed.first().expect("no seed caught the at-most-once bug");
    assert!(
        first.violations.iter().any(|v| v.contains("applied twice")),
        "{}",
        describe(first)
    );
}

/// Goal: with no faults, no loss and no slow messages, nothing fails at all (the workload is not the
/// reason the invariants hold).
#[test]
fn without_faults_every_request_succeeds() {
    let config = Config {
        faults: false,
        drop_per_mille: 0,
        slow_per_mille: 0,
        ..Config::default()
    };
    let seeds: Vec<u64> = (1..=50).collect();
    let (failed, total) = sim::run_many(&seeds, &config, threads());
    assert!(failed.is_empty(), "{}", describe(&failed[0]));
    let failures = total.reads_failed + total.writes_failed + total.writes_indeterminate;
    assert_eq!(failures, 0, "{total:?}");
    assert_eq!(
        total.hints_delivered, 0,
        "no node was ever taken for down: {total:?}"
    );
    assert!(total.writes_acked > 0);
}

/// The cluster shapes and quorums the matrix runs: with and without fallbacks, and
/// every (R, W) with R + W > N over N = 3.
fn matrix() -> Vec<Config> {
    let mut out = Vec::new();
    for nodes in [3, 4, 5] {
        for (r, w) in [(2, 2), (1, 3), (3, 1), (2, 3)] {
            out.push(Config {
                nodes,
                r,
                w,
                ..Config::default()
            });
        }
    }
    out
}

/// Goal: every cluster shape and quorum of the matrix keeps the invariants too.
#[test]
fn every_shape_and_quorum_keeps_the_invariants() {
    let seeds = seeds("1-150");
    for config in matrix() {
        let (failed, total) = sim::run_many(&seeds, &config, threads());
        summary(
            &format!("{} nodes, R={} W={}", config.nodes, config.r, config.w),
            seeds.len(),
            &total,
        );
        assert!(
            failed.is_empty(),
            "{} nodes, R={} W={}: {} of {} seeds failed; first:\n{}",
            config.nodes,
            config.r,
            config.w,
            failed.len(),
            seeds.len(),
            describe(&failed[0])
        );
    }
}
