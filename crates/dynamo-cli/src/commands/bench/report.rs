//! What a run measured: per-client [`Stats`], merged at the end, and the [`Report`] made
//! of them, as one JSON line for scripts and as a summary for people.
//!
//! The JSON line is a contract with `make bench`: its keys are pinned by a test.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::Target;
use super::workload::{Distribution, Mode, Op, Workload};
use crate::output;

/// The largest latency a histogram holds, in µs (10 minutes, far above any timeout);
/// larger values are recorded as this.
const MAX_LATENCY_US: u64 = 600_000_000;

/// Significant figures the histograms keep: 0.1 % precision.
const SIGNIFICANT_FIGURES: u8 = 3;

/// What one client measured, or all of them once merged.
///
/// Latencies are in µs and only of successful operations; a failed operation counts
/// under its error code and nowhere else.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Latencies of successful reads.
    pub read: Histogram<u64>,
    /// Latencies of successful updates (both requests of an `rmw` update).
    pub update: Histogram<u64>,
    /// Failed operations by error code (`quorum_unavailable`, `timeout`, `http_503`, …).
    pub errors: BTreeMap<String, u64>,
    /// Reads (including the reads of `rmw` updates) that found a value.
    pub found_reads: u64,
    /// Siblings those reads saw, in total.
    pub siblings: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// Returns empty stats.
    pub fn new() -> Stats {
        Stats {
            read: new_histogram(),
            update: new_histogram(),
            errors: BTreeMap::new(),
            found_reads: 0,
            siblings: 0,
        }
    }

    /// Records a successful operation that took `latency`.
    pub fn record(&mut self, op: Op, latency: Duration) {
        let histogram = match op {
            Op::Read => &mut self.read,
            Op::Update => &mut self.update,
        };
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        histogram.saturating_record(us.clamp(1, MAX_LATENCY_US));
    }

    /// Records a read that found a value with `siblings` siblings.
    pub fn saw_siblings(&mut self, siblings: u32) {
        self.found_reads += 1;
        self.siblings += u64::from(siblings);
    }

    /// Counts a failed operation under `code`.
    pub fn error(&mut self, code: &str) {
        match self.errors.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(code.to_owned(), 1);
            }
        }
    }

    /// Adds `other`'s measurements to these.
    pub fn merge(&mut self, other: &Stats) {
        // Invariant: every histogram comes from `new_histogram`, so `add` cannot fail.
        self.read.add(&other.read).expect("histograms share their bounds");
        self.update
            .add(&other.update)
            .expect("histograms share their bounds");
        for (code, n) in &other.errors {
            *self.errors.entry(code.clone()).or_insert(0) += n;
        }
        self.found_reads += other.found_reads;
        self.siblings += other.siblings;
    }

    /// Returns the successful operations.
    pub fn ops(&self) -> u64 {
        self.read.len() + self.update.len()
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, SIGNIFICANT_FIGURES)
        .expect("the bounds are valid constants")
}

/// One operation type's latencies in ms; `None` (JSON `null`) when it never succeeded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct OpLatency {
    /// Successful operations.
    pub count: u64,
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// 99.9th percentile.
    pub p999: Option<f64>,
    /// The slowest.
    pub max: Option<f64>,
}

impl OpLatency {
    /// Summarises a histogram of µs in ms (µs precision).
    pub fn of(histogram: &Histogram<u64>) -> OpLatency {
        let count = histogram.len();
        let ms = |us: u64| (count > 0).then(|| us as f64 / 1000.0);
        OpLatency {
            count,
            p50: ms(histogram.value_at_quantile(0.5)),
            p90: ms(histogram.value_at_quantile(0.9)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p999: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
        }
    }
}

/// Latencies per operation type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Latencies {
    /// Reads.
    pub read: OpLatency,
    /// Updates.
    pub update: OpLatency,
}

/// The `--load` phase.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadReport {
    /// Records inserted successfully.
    pub records: u64,
    /// How long the load took, in seconds.
    pub duration_s: f64,
    /// Successful inserts per second.
    pub throughput_ops_s: f64,
    /// Failed inserts by error code.
    pub errors: BTreeMap<String, u64>,
}

/// One run, as printed. Field order is the JSON line's key order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// `dynamo` or `etcd`.
    pub target: Target,
    /// The operation mix.
    pub workload: Workload,
    /// How updates write.
    pub mode: Mode,
    /// How keys are chosen.
    pub distribution: Distribution,
    /// The record count.
    pub records: u64,
    /// Bytes per value.
    pub value_size: u64,
    /// Concurrent clients.
    pub concurrency: u64,
    /// The measured window, in seconds (warm-up excluded).
    pub duration_s: f64,
    /// Replicas per key (dynamo; `null` for etcd or when unknown).
    pub n: Option<u8>,
    /// Read quorum (dynamo).
    pub r: Option<u8>,
    /// Write quorum (dynamo).
    pub w: Option<u8>,
    /// Successful operations in the window.
    pub ops: u64,
    /// `ops / duration_s`.
    pub throughput_ops_s: f64,
    /// Failed operations by error code (not in `ops`).
    pub errors: BTreeMap<String, u64>,
    /// Latencies of successful operations.
    pub latency_ms: Latencies,
    /// Mean siblings per read that found a value (`null` when none did).
    pub siblings_per_read: Option<f64>,
    /// The generator's CPU use over the window, 100 = one core (`null` when unknown).
    pub generator_cpu_percent: Option<f64>,
    /// The `--load` phase, when asked for.
    pub load: Option<LoadReport>,
}

/// What the run was, besides what it measured.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// See [`Report::target`].
    pub target: Target,
    /// See [`Report::workload`].
    pub workload: Workload,
    /// See [`Report::mode`].
    pub mode: Mode,
    /// See [`Report::distribution`].
    pub distribution: Distribution,
    /// See [`Report::records`].
    pub records: u64,
    /// See [`Report::value_size`].
    pub value_size: u64,
    /// See [`Report::concurrency`].
    pub concurrency: u64,
    /// Replicas and quorums: `(n, r, w)`.
    pub nrw: (Option<u8>, Option<u8>, Option<u8>),
}

impl Report {
    /// Builds the report of a run that measured `stats` over `window`.
    pub fn new(
        settings: &RunSettings,
        stats: &Stats,
        window: Duration,
        cpu_percent: Option<f64>,
        load: Option<LoadReport>,
    ) -> Report {
        let seconds = window.as_secs_f64();
        Report {
            target: settings.target,
            workload: settings.workload,
            mode: settings.mode,
            distribution: settings.distribution,
            records: settings.records,
            value_size: settings.value_size,
            concurrency: settings.concurrency,
            duration_s: round(seconds, 3),
            n: settings.nrw.0,
            r: settings.nrw.1,
            w: settings.nrw.2,
            ops: stats.ops(),
            throughput_ops_s: rate(stats.ops(), window),
            errors: stats.errors.clone(),
            latency_ms: Latencies {
                read: OpLatency::of(&stats.read),
                update: OpLatency::of(&stats.update),
            },
            siblings_per_read: (stats.found_reads > 0)
                .then(|| round(stats.siblings as f64 / stats.found_reads as f64, 3)),
            generator_cpu_percent: cpu_percent.map(|p| round(p, 1)),
            load,
        }
    }

    /// Returns the report as one line of JSON, without the newline.
    pub fn json_line(&self) -> String {
        // Serialising plain structs of numbers, strings and maps with string keys
        // cannot fail.
        serde_json::to_string(self).expect("the report is plain data")
    }

    /// Returns the summary for people, several lines ending in a newline.
    pub fn human(&self) -> String {
        let mut out = format!(
            "{} · workload {} ({}) · {} keys · {} records × {} B · concurrency {} · {:.1} s",
            self.target.name(),
            value_name(&self.workload),
            value_name(&self.mode),
            value_name(&self.distribution),
            self.records,
            self.value_size,
            self.concurrency,
            self.duration_s,
        );
        if let (Some(n), Some(r), Some(w)) = (self.n, self.r, self.w) {
            out.push_str(&format!(" · N={n} R={r} W={w}"));
        }
        out.push('\n');
        if let Some(load) = &self.load {
            out.push_str(&format!(
                "load: {} records in {:.1} s, {:.1} ops/s, errors: {}\n",
                load.records,
                load.duration_s,
                load.throughput_ops_s,
                errors_text(&load.errors)
            ));
        }
        let mut rows = Vec::new();
        for (name, latency) in [
            ("read", &self.latency_ms.read),
            ("update", &self.latency_ms.update),
        ] {
            if latency.count == 0 {
                continue;
            }
            let cell = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |ms| format!("{ms:.3}"));
            rows.push(vec![
                name.to_owned(),
                latency.count.to_string(),
                format!("{:.1}", rate_of(latency.count, self.duration_s)),
                cell(latency.p50),
                cell(latency.p90),
                cell(latency.p99),
                cell(latency.p999),
                cell(latency.max),
            ]);
        }
        rows.push(vec![
            "total".into(),
            self.ops.to_string(),
            format!("{:.1}", self.throughput_ops_s),
        ]);
        out.push_str(&output::table(
            &[
                "OP", "COUNT", "OPS/S", "P50 MS", "P90 MS", "P99 MS", "P99.9 MS", "MAX MS",
            ],
            &rows,
        ));
        out.push_str(&format!("errors: {}\n", errors_text(&self.errors)));
        match self.siblings_per_read {
            Some(s) => out.push_str(&format!("siblings per read: {s:.3}\n")),
            None => out.push_str("siblings per read: - (no read found a value)\n"),
        }
        match self.generator_cpu_percent {
            Some(p) => out.push_str(&format!("generator CPU: {p:.1} % of one core\n")),
            None => out.push_str("generator CPU: unknown on this platform\n"),
        }
        out
    }
}

/// Returns `count / window` in operations per second, to 0.1.
pub fn rate(count: u64, window: Duration) -> f64 {
    rate_of(count, window.as_secs_f64())
}

fn rate_of(count: u64, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    round(count as f64 / seconds, 1)
}

/// Rounds to `digits` decimals, so the JSON line carries no false precision.
pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// `code n, code n`, or `none`.
fn errors_text(errors: &BTreeMap<String, u64>) -> String {
    if errors.is_empty() {
        return "none".into();
    }
    errors
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Returns a clap value's name as the JSON line spells it (`a`, `rmw`, `zipfian`).
pub fn value_name<T: Serialize>(value: &T) -> String {
    serde_json::to_value(value)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RunSettings {
        RunSettings {
            target: Target::Dynamo,
            workload: Workload::A,
            mode: Mode::Plain,
            distribution: Distribution::Zipfian,
            records: 100_000,
            value_size: 1024,
            concurrency: 32,
            nrw: (Some(3), Some(2), Some(2)),
        }
    }

    // Goal: merged per-client histograms give the percentiles of all samples together,
    // errors add up by code, and failures never reach the latencies.
    #[test]
    fn merged_stats_report_percentiles_of_every_sample() {
        let mut a = Stats::new();
        let mut b = Stats::new();
        for ms in 1..=500u64 {
            a.record(Op::Read, Duration::from_millis(ms));
        }
        for ms in 501..=1000u64 {
            b.record(Op::Read, Duration::from_millis(ms));
        }
        b.record(Op::Update, Duration::from_micros(250));
        a.error("timeout");
        b.error("timeout");
        b.error("quorum_unavailable");
        b.saw_siblings(1);
        b.saw_siblings(3);
        a.merge(&b);
        assert_eq!(a.ops(), 1001);
        assert_eq!(a.errors.values().sum::<u64>(), 3);
        assert_eq!(a.errors.get("timeout"), Some(&2));
        let read = OpLatency::of(&a.read);
        assert_eq!(read.count, 1000);
        // 0.1 % precision: 500 ms is recorded within 0.5 ms.
        let near = |v: Option<f64>, ms: f64| v.is_some_and(|v| (v - ms).abs() <= ms * 0.001 + 0.001);
        assert!(near(read.p50, 500.0), "{read:?}");
        assert!(near(read.p90, 900.0), "{read:?}");
        assert!(near(read.p99, 990.0), "{read:?}");
        assert!(near(read.p999, 999.0), "{read:?}");
        assert!(near(read.max, 1000.0), "{read:?}");
        let update = OpLatency::of(&a.update);
        assert_eq!((update.count, update.p50), (1, Some(0.25)));
        let report = Report::new(&settings(), &a, Duration::from_secs(10), Some(35.46), None);
        assert_eq!(report.throughput_ops_s, 100.1);
        assert_eq!(report.siblings_per_read, Some(2.0));
        assert_eq!(report.generator_cpu_percent, Some(35.5));
        let empty = OpLatency::of(&Stats::new().update);
        assert_eq!((empty.count, empty.p50, empty.max), (0, None, None));
    }

    // Goal: the JSON line is one line with exactly the keys `make bench` reads, in order,
    // and the shapes of its nested objects (golden keys).
    #[test]
    fn the_json_line_has_the_contracted_keys() {
        let mut stats = Stats::new();
        stats.record(Op::Read, Duration::from_micros(900));
        stats.error("quorum_unavailable");
        let load = LoadReport {
            records: 10,
            duration_s: 0.5,
            throughput_ops_s: 20.0,
            errors: BTreeMap::new(),
        };
        let report = Report::new(&settings(), &stats, Duration::from_secs(30), None, Some(load));
        let line = report.json_line();
        assert!(!line.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&line).expect("json");
        let keys: Vec<&str> = value
            .as_object()
            .expect("an object")
            .keys()
            .map(String::as_str)
            .collect();
        let mut expected = vec![
            "target",
            "workload",
            "mode",
            "distribution",
            "records",
            "value_size",
            "concurrency",
            "duration_s",
            "n",
            "r",
            "w",
            "ops",
            "throughput_ops_s",
            "errors",
            "latency_ms",
            "siblings_per_read",
            "generator_cpu_percent",
            "load",
        ];
        expected.sort_unstable(); // serde_json's map is ordered by key without `preserve_order`
        let mut keys_sorted = keys.clone();
        keys_sorted.sort_unstable();
        assert_eq!(keys_sorted, expected);
        assert!(line.starts_with(r#"{"target":"dynamo","workload":"a","mode":"plain","distribution":"zipfian","records":100000,"value_size":1024,"concurrency":32,"duration_s":30.0,"n":3,"r":2,"w":2,"ops":1,"throughput_ops_s":0.0,"errors":{"quorum_unavailable":1},"latency_ms":{"read":{"count":1,"p50":0.9,"p90":0.9,"p99":0.9,"p999":0.9,"max":0.9},"update":{"count":0,"p50":null,"p90":null,"p99":null,"p999":null,"max":null}},"siblings_per_read":null,"generator_cpu_percent":null,"load":{"records":10,"duration_s":0.5,"throughput_ops_s":20.0,"errors":{}}}"#), "{line}");
    }

    // Goal: the human summary shows each operation's figures in ms, the errors by code,
    // the siblings and the generator's CPU.
    #[test]
    fn the_summary_reads_well() {
        let mut stats = Stats::new();
        stats.record(Op::Read, Duration::from_micros(1500));
        stats.record(Op::Update, Duration::from_micros(2500));
        stats.error("timeout");
        stats.saw_siblings(1);
        let report = Report::new(&settings(), &stats, Duration::from_secs(2), Some(12.0), None);
        let text = report.human();
        assert!(text.starts_with("dynamo · workload a (plain) · zipfian keys · 100000 records × 1024 B · concurrency 32 · 2.0 s · N=3 R=2 W=2\n"), "{text}");
        assert!(
            text.contains("OP      COUNT  OPS/S  P50 MS  P90 MS  P99 MS  P99.9 MS  MAX MS\n"),
            "{text}"
        );
        assert!(
            text.contains("read    1      0.5    1.500   1.500   1.500   1.500     1.500\n"),
            "{text}"
        );
        assert!(text.contains("total   2      1.0\n"), "{text}");
        assert!(text.contains("errors: timeout 1\n"), "{text}");
        assert!(text.contains("siblings per read: 1.000\n"), "{text}");
        assert!(text.contains("generator CPU: 12.0 % of one core\n"), "{text}");
    }
}
