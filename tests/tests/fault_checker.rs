//! The seeded fault checker (issue 10, membership faults issue 13): a few fixed seeds in
//! `make test`, long runs and the negative controls with `make soak`. What the checks
//! mean: `docs/testing.md`.

use std::path::PathBuf;
use std::time::Duration;

use dynamo_tests::checker::{Config, Negative, Report, run};

/// The seeds of `make test`: (seed, storage nodes). Three nodes put every node in every
/// preference list; four bring fallbacks and hinted handoff into play.
const SHORT_RUNS: [(u64, usize); 2] = [(1, 3), (2, 4)];

/// The load phase of each short run: two of them fit in `make test`'s three minutes.
const SHORT_LOAD: Duration = Duration::from_secs(40);

fn report_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fault-checker")
}

/// Runs every config (a failing seed does not stop the others), prints the results
/// table, and panics naming every failing seed; for a negative control (a cluster broken
/// on purpose), naming every seed that passed instead.
async fn run_all(configs: Vec<Config>) {
    let mut reports: Vec<Report> = Vec::new();
    for c in configs {
        reports.push(run(&c).await);
    }
    println!("{}", Report::table_header());
    for r in &reports {
        println!("{}", r.table_row());
    }
    if let Some(negative) = reports.first().and_then(|r| r.config.negative) {
        let passed: Vec<String> = reports
            .iter()
            .filter(|r| r.violations.is_empty())
            .map(|r| format!("seed {} (replay: {})", r.config.seed, r.config.replay()))
            .collect();
        for r in reports.iter().filter(|r| !r.violations.is_empty()) {
            let mut checks: Vec<&str> = r.violations.iter().map(|v| v.check).collect();
            checks.sort_unstable();
            checks.dedup();
            println!(
                "negative control {}: seed {} caught by {} violations ({})",
                negative.name(),
                r.config.seed,
                r.violations.len(),
                checks.join(", ")
            );
        }
        assert!(
            passed.is_empty(),
            "the fault checker did not notice the broken cluster ({}) on:\n{}",
            negative.name(),
            passed.join("\n")
        );
        return;
    }
    let failed: Vec<String> = reports
        .iter()
        .filter(|r| !r.violations.is_empty())
        .map(|r| {
            format!(
                "seed {} ({} violations, first: {}; replay: {})",
                r.config.seed,
                r.violations.len(),
                r.violations[0],
                r.config.replay()
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "the fault checker failed:\n{}\n(histories printed above; logs under {})",
        failed.join("\n"),
        report_dir().display()
    );
}

// Goal: under one fault at a time (kill -9, SIGSTOP, partitions), no acknowledged write
// is lost, nothing superseded comes back, replicas converge and ring epochs never go
// backwards, for a couple of fixed seeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fixed_seeds_keep_every_acknowledged_write() {
    let configs = SHORT_RUNS
        .iter()
        .map(|&(seed, nodes)| Config {
            nodes,
            report_dir: Some(report_dir()),
            ..Config::new(seed, SHORT_LOAD)
        })
        .collect();
    run_all(configs).await;
}

/// Parses `DYNAMO_CHECKER_SEEDS`: comma-separated seeds and inclusive ranges, e.g.
/// `1-30,42`.
fn seeds(spec: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u64 = a.trim().parse().expect("DYNAMO_CHECKER_SEEDS: a range start");
                let b: u64 = b.trim().parse().expect("DYNAMO_CHECKER_SEEDS: a range end");
                out.extend(a..=b);
            }
            None => out.push(part.parse().expect("DYNAMO_CHECKER_SEEDS: a seed")),
        }
    }
    out
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} does not parse")),
        _ => default,
    }
}

// Goal: the long runs of `make soak SEED=… DURATION=… NODES=… MEMBERSHIP=…`, and the
// negative controls (`NEGATIVE=ae-off|early-release`): every seed must fail those.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run with `make soak SEED=… DURATION=…`"]
async fn soak() {
    let spec = std::env::var("DYNAMO_CHECKER_SEEDS").unwrap_or_else(|_| "1".into());
    let duration = Duration::from_secs(env_or("DYNAMO_CHECKER_DURATION_S", 120));
    let nodes = env_or("DYNAMO_CHECKER_NODES", 3);
    let membership = env_or("DYNAMO_CHECKER_MEMBERSHIP", 1u8) != 0;
    let negative: Option<Negative> = match std::env::var("DYNAMO_CHECKER_NEGATIVE") {
        Ok(v) if !v.trim().is_empty() => Some(
            v.parse()
                .unwrap_or_else(|e| panic!("DYNAMO_CHECKER_NEGATIVE: {e}")),
        ),
        _ => None,
    };
    let configs = seeds(&spec)
        .into_iter()
        .map(|seed| Config {
            nodes,
            membership,
            negative,
            report_dir: Some(report_dir()),
            ..Config::new(seed, duration)
        })
        .collect();
    run_all(configs).await;
}

#[test]
fn seed_lists_parse() {
    assert_eq!(seeds("1-3, 7,9-9"), [1, 2, 3, 7, 9]);
    assert_eq!(seeds(""), Vec::<u64>::new());
}
