//! `dynamo bench`: a closed-loop load generator after YCSB, for Dynamo and for etcd.
//!
//! `concurrency` clients each pick an operation by the workload's mix (YCSB A, B, C, or
//! W for write-only) and a record by the key distribution (YCSB's scrambled zipfian or
//! uniform), issue it, and record its latency in an HDR histogram per operation type;
//! failures are counted by error code and never mixed into the latencies. After an
//! optional `--load` (every record inserted once, reported on its own) and a warm-up, a
//! measured window of `--duration` seconds gives the report: a summary for people, and
//! with `--json` exactly one JSON line on stdout for scripts (`make bench`).
//!
//! The same generator drives etcd (`--target etcd`) through its v3 HTTP/JSON gateway, so
//! the two stores are compared with one generator on one machine in one run. The
//! generator's own CPU use over the window is reported too: a generator that saturates
//! its cores measures itself, not the store.
//!
//! # Layout
//! - [`workload`]: the operation mixes, modes, key distributions and key names.
//! - [`zipf`]: YCSB's (scrambled) zipfian generator.
//! - [`target`]: the store behind read / update / insert (the SDK for Dynamo).
//! - [`etcd`]: the etcd gateway client.
//! - [`engine`]: the closed loop and the load phase.
//! - [`report`]: histograms, the JSON line and the summary.
//! - [`cpu`]: the process's own CPU time.
//!
//! The JSON line's keys and the flags are a contract with `make bench`'s script: extend
//! them, never rename them.

pub mod cpu;
pub mod engine;
pub mod etcd;
pub mod report;
pub mod target;
pub mod workload;
pub mod zipf;

use std::borrow::Cow;
use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use dynamo_client::{BucketPropsPatch, Bytes, ConflictMode, RequestOptions, RetryPolicy};
use dynamo_core::limits::MAX_VALUE_BYTES;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::SmallRng;
use rand::{RngCore as _, SeedableRng as _};
use serde::Serialize;

use self::report::{LoadReport, Report, RunSettings};
use self::target::{Backend, Dynamo};
use self::workload::{Distribution, KeyChooser, Mode, Workload, task_seed};
use crate::cli::GlobalArgs;
use crate::error::CliError;
use crate::output;

/// The code a failed operation counts under: an [`dynamo_client::ErrorCode`]'s string,
/// `timeout`, `transport`, `decode`, or `http_<status>` for etcd.
pub type ErrorKey = Cow<'static, str>;

/// The etcd member a run talks to when `--endpoints` is not given.
const DEFAULT_ETCD_ENDPOINT: &str = "http://127.0.0.1:2379";

/// The most concurrent clients a run may have.
const MAX_CONCURRENCY: usize = 4096;

/// Extra time an operation may take beyond the request timeout (two requests in `rmw`
/// mode, and scheduling) before the engine counts it as a `timeout` itself.
const OP_TIMEOUT_MARGIN: Duration = Duration::from_secs(1);

/// Arguments of `dynamo bench`. With the global `--json`, exactly one JSON line goes to
/// stdout and the summary to stderr.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The store to drive: a Dynamo cluster (through the SDK) or etcd (its v3 HTTP/JSON
    /// gateway).
    #[arg(long, value_enum, default_value_t = Target::Dynamo)]
    pub target: Target,

    /// Comma-separated URLs to spread requests over, round-robin: etcd members' client
    /// URLs [default for etcd: http://127.0.0.1:2379], or coordinators [default for
    /// dynamo: the global --endpoint].
    #[arg(long, value_delimiter = ',')]
    pub endpoints: Vec<String>,

    /// The operation mix: a = 50 % reads / 50 % updates, b = 95/5, c = reads only,
    /// w = updates only.
    #[arg(long, value_enum, default_value_t = Workload::A)]
    pub workload: Workload,

    /// How an update writes: `plain` = a blind write; `rmw` = a read, then a write with
    /// the read's context (for etcd a range, then a put).
    #[arg(long, value_enum, default_value_t = Mode::Plain)]
    pub mode: Mode,

    /// How records are chosen: YCSB's scrambled zipfian (θ = 0.99) or uniform.
    #[arg(long, value_enum, default_value_t = Distribution::Zipfian)]
    pub distribution: Distribution,

    /// The number of records (keys `user0` … `user<N-1>`).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub records: u64,

    /// Bytes per value.
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,

    /// Concurrent clients (closed loop: each waits for its answer before the next
    /// request).
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,

    /// The measured window, in seconds.
    #[arg(long, default_value_t = 30.0)]
    pub duration: f64,

    /// Seconds of load before the window, not measured.
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,

    /// Insert every record once before the run (`concurrency` at a time), reported on
    /// its own.
    #[arg(long)]
    pub load: bool,

    /// Replicas per key, set on the bench bucket before the run (dynamo).
    #[arg(long)]
    pub n: Option<u8>,

    /// Read quorum: set on the bench bucket and sent with every read (dynamo).
    #[arg(long)]
    pub r: Option<u8>,

    /// Write quorum: set on the bench bucket and sent with every write (dynamo).
    #[arg(long)]
    pub w: Option<u8>,

    /// Set the bench bucket's conflict mode before the run (dynamo). In `plain` mode
    /// every update is a blind write, which on a `siblings` bucket adds a sibling until
    /// the bucket's max_siblings refuses further writes (`too_many_siblings`); `lww`
    /// compares like-for-like with etcd's last-writer-wins. Unset: left as it is.
    #[arg(long, value_enum)]
    pub conflict: Option<BenchConflict>,

    /// The bucket to use (for etcd, the key prefix `<bucket>/`).
    #[arg(long, default_value = "bench")]
    pub bucket: String,

    /// The seed of every random choice (operations, keys, value bytes) [default: random,
    /// printed on stderr].
    #[arg(long)]
    pub seed: Option<u64>,

    /// No progress bar (there is none anyway when stderr is not a terminal).
    #[arg(long)]
    pub no_progress: bool,
}

/// `--target` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// A Dynamo cluster.
    Dynamo,
    /// etcd, through its v3 HTTP/JSON gateway.
    Etcd,
}

impl Target {
    /// Returns the name, as the flag and the JSON line spell it.
    pub fn name(self) -> &'static str {
        match self {
            Target::Dynamo => "dynamo",
            Target::Etcd => "etcd",
        }
    }
}

/// `--conflict` values: the modes a bench bucket can use (CRDT buckets take operations,
/// not values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchConflict {
    /// Keep concurrent writes as siblings.
    Siblings,
    /// The last writer by timestamp wins.
    Lww,
}

impl BenchArgs {
    /// Checks ranges and combinations before anything is sent.
    fn validate(&self) -> Result<(), CliError> {
        let usage = |m: String| Err(CliError::Usage(m));
        if self.value_size > MAX_VALUE_BYTES {
            return usage(format!(
                "--value-size {} is over the {MAX_VALUE_BYTES}-byte value limit",
                self.value_size
            ));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return usage(format!("--concurrency must be 1..={MAX_CONCURRENCY}"));
        }
        if !(self.duration.is_finite() && self.duration > 0.0 && self.duration <= 86_400.0) {
            return usage("--duration must be more than 0 and at most 86400 seconds".into());
        }
        if !(self.warmup.is_finite() && self.warmup >= 0.0 && self.warmup <= 86_400.0) {
            return usage("--warmup must be 0 to 86400 seconds".into());
        }
        if self.endpoints.iter().any(|e| e.trim().is_empty()) {
            return usage("--endpoints has an empty URL".into());
        }
        if self.target == Target::Etcd
            && (self.n.is_some() || self.r.is_some() || self.w.is_some() || self.conflict.is_some())
        {
            return usage("--n, --r, --w and --conflict apply to --target dynamo only".into());
        }
        for (name, v) in [("--n", self.n), ("--r", self.r), ("--w", self.w)] {
            if v == Some(0) {
                return usage(format!("{name} must be at least 1"));
            }
        }
        if let Some(n) = self.n {
            for (name, v) in [("--r", self.r), ("--w", self.w)] {
                if v.is_some_and(|q| q > n) {
                    return usage(format!("{name} cannot exceed --n {n}"));
                }
            }
        }
        Ok(())
    }
}

/// Runs the benchmark and prints its report.
///
/// # Errors
/// A usage error for bad flags or a missing token; the API's error when setting the
/// bucket's properties fails; [`CliError::Failed`] (after printing the report) when
/// every operation of the window failed.
pub async fn run(global: &GlobalArgs, args: &BenchArgs) -> Result<(), CliError> {
    args.validate()?;
    let seed = args.seed.unwrap_or_else(rand::random);
    let mut value = vec![0u8; args.value_size];
    SmallRng::seed_from_u64(task_seed(seed, u64::MAX)).fill_bytes(&mut value);
    let timeout = Duration::from_millis(global.timeout_ms.max(1));

    let (backend, nrw) = match args.target {
        Target::Dynamo => dynamo_backend(global, args, value, timeout).await?,
        Target::Etcd => {
            let endpoints = if args.endpoints.is_empty() {
                vec![DEFAULT_ETCD_ENDPOINT.to_owned()]
            } else {
                args.endpoints.clone()
            };
            let etcd = etcd::Etcd::new(&endpoints, &args.bucket, &value, args.concurrency, timeout)?;
            (Backend::Etcd(etcd), (None, None, None))
        }
    };
    let backend = Arc::new(backend);
    eprintln!(
        "bench: {} ({} endpoint(s)), workload {} ({}), seed {seed}",
        args.target.name(),
        backend.lanes(),
        report::value_name(&args.workload),
        report::value_name(&args.mode),
    );
    let show_progress = !args.no_progress && std::io::stderr().is_terminal();
    // Two requests per operation in `rmw` mode, each bounded by the client's timeout.
    let op_timeout = timeout * 2 + OP_TIMEOUT_MARGIN;

    let load = if args.load {
        let bar = progress_bar(
            show_progress,
            Some(args.records),
            "{prefix} [{bar:30}] {pos}/{len} {per_sec}",
        );
        bar.set_prefix("load");
        let loaded = engine::load(backend.clone(), args.records, args.concurrency, op_timeout, &bar).await?;
        Some(LoadReport {
            records: loaded.stats.ops(),
            duration_s: report::round(loaded.elapsed.as_secs_f64(), 3),
            throughput_ops_s: report::rate(loaded.stats.ops(), loaded.elapsed),
            errors: loaded.stats.errors,
        })
    } else {
        None
    };

    let plan = engine::Plan {
        workload: args.workload,
        mode: args.mode,
        keys: Arc::new(KeyChooser::new(args.distribution, args.records)),
        concurrency: args.concurrency,
        warmup: Duration::from_secs_f64(args.warmup),
        duration: Duration::from_secs_f64(args.duration),
        seed,
        op_timeout,
    };
    let total_ms = u64::try_from((plan.warmup + plan.duration).as_millis()).unwrap_or(u64::MAX);
    let bar = progress_bar(
        show_progress,
        Some(total_ms),
        "{prefix} [{bar:30}] {elapsed} {msg}",
    );
    bar.set_prefix("run");
    let measured = engine::run(backend, &plan, &bar).await?;

    let settings = RunSettings {
        target: args.target,
        workload: args.workload,
        mode: args.mode,
        distribution: args.distribution,
        records: args.records,
        value_size: args.value_size as u64,
        concurrency: args.concurrency as u64,
        nrw,
    };
    let report = Report::new(
        &settings,
        &measured.stats,
        measured.window,
        measured.cpu_percent,
        load,
    );
    if global.json {
        eprint!("{}", report.human());
        output::line(&report.json_line())?;
    } else {
        output::stdout(report.human().as_bytes())?;
    }
    if report.ops == 0 && !report.errors.is_empty() {
        return Err(CliError::Failed {
            code: dynamo_client::ErrorCode::Internal,
            message: "every operation of the run failed; see the errors above".into(),
        });
    }
    Ok(())
}

/// Connects to the cluster, applies `--n/--r/--w/--conflict` to the bench bucket, and
/// returns the backend with the (n, r, w) the run uses.
async fn dynamo_backend(
    global: &GlobalArgs,
    args: &BenchArgs,
    value: Vec<u8>,
    timeout: Duration,
) -> Result<(Backend, (Option<u8>, Option<u8>, Option<u8>)), CliError> {
    let endpoints = if args.endpoints.is_empty() {
        vec![global.endpoint.clone()]
    } else {
        args.endpoints.clone()
    };
    // No retries: a benchmark counts each failure where it happens, and a retried
    // request's backoff would hide inside a success's latency.
    let clients = endpoints
        .iter()
        .map(|e| global.client_for(e, RetryPolicy::none(), timeout))
        .collect::<Result<Vec<_>, _>>()?;
    let admin = &clients[0];
    let patch = BucketPropsPatch {
        n: args.n,
        r: args.r,
        w: args.w,
        conflict: args.conflict.map(|c| match c {
            BenchConflict::Siblings => ConflictMode::Siblings,
            BenchConflict::Lww => ConflictMode::Lww,
        }),
        ..BucketPropsPatch::default()
    };
    let changes = patch.n.is_some() || patch.r.is_some() || patch.w.is_some() || patch.conflict.is_some();
    let props = if changes {
        Some(admin.set_bucket_props(&args.bucket, &patch).await?)
    } else {
        match admin.bucket_props(&args.bucket).await {
            Ok(props) => Some(props),
            Err(e) => {
                // Only the report's n/r/w depend on it; the run itself can go on.
                eprintln!(
                    "warning: cannot read the properties of bucket {}: {e}",
                    args.bucket
                );
                None
            }
        }
    };
    let nrw = (
        props.as_ref().map(|p| p.n),
        args.r.or(props.as_ref().map(|p| p.r)),
        args.w.or(props.as_ref().map(|p| p.w)),
    );
    let dynamo = Dynamo {
        clients,
        bucket: args.bucket.clone(),
        options: RequestOptions {
            r: args.r,
            w: args.w,
            timeout_ms: None,
        },
        value: Bytes::from(value),
    };
    Ok((Backend::Dynamo(dynamo), nrw))
}

/// A bar on stderr, or a hidden one.
fn progress_bar(show: bool, len: Option<u64>, template: &str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(len, ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser as _;

    fn parse(args: &[&str]) -> BenchArgs {
        let cli = Cli::try_parse_from(
            std::iter::once("dynamo")
                .chain(std::iter::once("bench"))
                .chain(args.iter().copied()),
        )
        .expect("parses");
        match cli.command {
            Command::Bench(b) => b,
            other => panic!("not bench: {other:?}"),
        }
    }

    // Goal: the defaults are the contract's, and the global --json applies to bench.
    #[test]
    fn defaults_match_the_contract() {
        let cli = Cli::try_parse_from(["dynamo", "bench", "--json"]).expect("parses");
        assert!(cli.global.json);
        let b = parse(&[]);
        assert_eq!(b.target, Target::Dynamo);
        assert_eq!(b.workload, Workload::A);
        assert_eq!(b.mode, Mode::Plain);
        assert_eq!(b.distribution, Distribution::Zipfian);
        assert_eq!(
            (b.records, b.value_size, b.concurrency, b.duration, b.warmup),
            (100_000, 1024, 32, 30.0, 2.0)
        );
        assert_eq!(b.bucket, "bench");
        assert!(!b.load && !b.no_progress && b.seed.is_none());
        assert!(b.validate().is_ok());
        let e = parse(&[
            "--target",
            "etcd",
            "--endpoints",
            "http://a:1,http://b:2",
            "--workload",
            "w",
            "--mode",
            "rmw",
        ]);
        assert_eq!(e.endpoints, ["http://a:1", "http://b:2"]);
    }

    // Goal: impossible combinations are usage errors before anything is sent.
    #[test]
    fn bad_combinations_are_refused() {
        for args in [
            &["--target", "etcd", "--n", "3"][..],
            &["--n", "2", "--r", "3"],
            &["--w", "0"],
            &["--concurrency", "0"],
            &["--duration", "0"],
            &["--warmup", "-1"],
            &["--value-size", "2000000"],
            &["--endpoints", "http://a:1,"],
        ] {
            let parsed = Cli::try_parse_from(
                std::iter::once("dynamo")
                    .chain(std::iter::once("bench"))
                    .chain(args.iter().copied()),
            );
            match parsed {
                Err(_) => {}
                Ok(cli) => match cli.command {
                    Command::Bench(b) => assert!(b.validate().is_err(), "{args:?} accepted"),
                    other => panic!("not bench: {other:?}"),
                },
            }
        }
        assert!(Cli::try_parse_from(["dynamo", "bench", "--records", "0"]).is_err());
    }
}
