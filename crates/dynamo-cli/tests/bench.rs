//! `dynamo bench` end to end: the binary against the mock coordinator and a fake etcd
//! gateway on loopback, for a second or two each. What is asserted is the contract with
//! scripts (one JSON line on stdout, its fields, errors counted by code), never speed.

#[path = "../../dynamo-client/tests/mock/mod.rs"]
mod mock;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use dynamo_core::ErrorCode;
use mock::{Mock, TOKEN};
use serde_json::{Value, json};

/// Every run of the binary finishes within this.
const WAIT: Duration = Duration::from_secs(60);

/// What a run of the binary left behind.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The one JSON line on stdout, parsed; panics unless stdout is exactly that.
    fn json(&self) -> Value {
        let lines: Vec<&str> = self.stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one line on stdout: {:?}\n{}",
            self.stdout,
            self.stderr
        );
        assert!(self.stdout.ends_with('\n'));
        serde_json::from_str(lines[0]).expect("the line is JSON")
    }
}

/// Runs `dynamo` with `args`, isolated from the caller's `DYNAMO_*` environment.
async fn dynamo(args: Vec<String>) -> Run {
    let run = tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_dynamo"))
            .args(&args)
            .env_remove("DYNAMO_ENDPOINT")
            .env_remove("DYNAMO_TOKEN")
            .env_remove("DYNAMO_DATA_DIR")
            .env_remove("DYNAMO_TIMEOUT_MS")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("run dynamo");
        Run {
            code: out.status.code().expect("exited, not killed"),
            stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    });
    tokio::time::timeout(WAIT, run)
        .await
        .expect("dynamo finished in time")
        .expect("join")
}

/// `--endpoint <mock> --token <token> bench --json --no-progress`, then `rest`.
fn bench_args(endpoint: &str, rest: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = [
        "--endpoint",
        endpoint,
        "--token",
        TOKEN,
        "--timeout-ms",
        "5000",
        "bench",
        "--json",
        "--no-progress",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.extend(rest.iter().map(|s| s.to_string()));
    v
}

fn count(v: &Value) -> u64 {
    v.as_u64().expect("a count")
}

// Goal: a whole run against the mock coordinator: --load inserts every record, the run
// reads and updates (rmw: the write carries the read's context), and the JSON line has
// the contracted fields with sane values and nothing else reaches stdout.
#[tokio::test]
async fn a_dynamo_run_prints_one_json_line() {
    let mock = Mock::start().await;
    let run = dynamo(bench_args(
        &mock.url(),
        &[
            "--duration",
            "2",
            "--warmup",
            "0.2",
            "--records",
            "200",
            "--concurrency",
            "4",
            "--load",
            "--mode",
            "rmw",
            "--seed",
            "7",
            "--n",
            "3",
            "--r",
            "2",
            "--w",
            "2",
        ],
    ))
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["target"], "dynamo");
    assert_eq!(report["workload"], "a");
    assert_eq!(report["mode"], "rmw");
    assert_eq!(report["distribution"], "zipfian");
    assert_eq!(
        (report["records"].as_u64(), report["value_size"].as_u64()),
        (Some(200), Some(1024))
    );
    assert_eq!(report["concurrency"], 4);
    assert_eq!(report["duration_s"], 2.0);
    assert_eq!(
        (report["n"].as_u64(), report["r"].as_u64(), report["w"].as_u64()),
        (Some(3), Some(2), Some(2))
    );
    let ops = count(&report["ops"]);
    assert!(ops > 0);
    let read = &report["latency_ms"]["read"];
    let update = &report["latency_ms"]["update"];
    assert_eq!(count(&read["count"]) + count(&update["count"]), ops);
    assert!(count(&read["count"]) > 0 && count(&update["count"]) > 0);
    for q in ["p50", "p90", "p99", "p999", "max"] {
        assert!(read[q].as_f64().is_some_and(|ms| ms > 0.0), "{q}: {report}");
    }
    assert!(read["p50"].as_f64() <= read["max"].as_f64());
    assert_eq!(report["errors"], json!({}), "{report}");
    assert!(report["throughput_ops_s"].as_f64().is_some_and(|t| t > 0.0));
    assert!(
        report["siblings_per_read"].as_f64().is_some_and(|s| s >= 1.0),
        "{report}"
    );
    if cfg!(target_os = "linux") {
        assert!(report["generator_cpu_percent"].as_f64().is_some_and(|p| p >= 0.0));
    }
    let load = &report["load"];
    assert_eq!(load["records"], 200, "{report}");
    assert_eq!(load["errors"], json!({}));
    assert!(load["throughput_ops_s"].as_f64().is_some_and(|t| t > 0.0));

    // Every record was inserted, under YCSB's key names in the bench bucket.
    for record in [0, 99, 199] {
        assert!(!mock.state.values("bench", &format!("user{record}")).is_empty());
    }
    let requests = mock.state.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.method == "PUT" && r.uri == "/v1/buckets/bench")
    );
    // Reads send r, writes send w, and rmw writes carry the read's context.
    assert!(
        requests
            .iter()
            .any(|r| r.method == "GET" && r.uri.ends_with("?r=2"))
    );
    assert!(
        requests.iter().any(|r| r.method == "PUT"
            && r.uri.ends_with("?w=2")
            && r.headers.contains_key("x-dynamo-context"))
    );
    // The summary goes to stderr.
    assert!(run.stderr.contains("P99.9 MS"), "{}", run.stderr);
}

// Goal: failed requests are counted by their error code, apart from the latencies, and
// the run still measures the rest. Method: the mock answers its first 50 requests with
// `quorum_unavailable`; the first is the bucket-properties read (which the bench only
// warns about), the 49 others are measured reads (no warm-up, no retries).
#[tokio::test]
async fn errors_are_counted_by_code() {
    let mock = Mock::start().await;
    mock.state.fail_next(ErrorCode::QuorumUnavailable, 50);
    let run = dynamo(bench_args(
        &mock.url(),
        &[
            "--duration",
            "1",
            "--warmup",
            "0",
            "--records",
            "50",
            "--concurrency",
            "4",
            "--workload",
            "c",
        ],
    ))
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["errors"], json!({"quorum_unavailable": 49}), "{report}");
    let ops = count(&report["ops"]);
    assert!(ops > 0);
    assert_eq!(
        count(&report["latency_ms"]["read"]["count"]),
        ops,
        "failures are not latencies"
    );
    assert_eq!(report["latency_ms"]["update"]["count"], 0);
    assert_eq!(report["load"], Value::Null);
    assert!(
        run.stderr.contains("warning: cannot read the properties"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("errors: quorum_unavailable 49"),
        "{}",
        run.stderr
    );
}

// Goal: a run whose every operation fails still prints its report, then exits 1; a
// coordinator that is not there counts as `transport`.
#[tokio::test]
async fn a_run_where_everything_fails_exits_1() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", unused.local_addr().expect("addr"));
    drop(unused);
    let run = dynamo(bench_args(
        &url,
        &[
            "--duration",
            "0.5",
            "--warmup",
            "0",
            "--records",
            "10",
            "--concurrency",
            "2",
        ],
    ))
    .await;
    assert_eq!(run.code, 1, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["ops"], 0);
    assert!(
        report["errors"]["transport"].as_u64().is_some_and(|n| n > 0),
        "{report}"
    );
}

/// A fake etcd cluster's data: one map behind every member's gateway, whose first
/// `fail_ranges` ranges (through any member) answer 503.
#[derive(Default)]
struct FakeEtcd {
    kv: Mutex<HashMap<Vec<u8>, Vec<u8>>>,
    fail_ranges: AtomicU64,
}

/// One member's gateway: the shared data and the requests it received.
struct Member {
    etcd: Arc<FakeEtcd>,
    requests: AtomicU64,
}

fn decode(v: &Value) -> Vec<u8> {
    STANDARD
        .decode(v.as_str().expect("a base64 string"))
        .expect("base64")
}

async fn etcd_put(State(member): State<Arc<Member>>, Json(body): Json<Value>) -> Response {
    member.requests.fetch_add(1, Ordering::Relaxed);
    let (key, value) = (decode(&body["key"]), decode(&body["value"]));
    member.etcd.kv.lock().expect("lock").insert(key, value);
    Json(json!({"header": {"revision": "2"}})).into_response()
}

async fn etcd_range(State(member): State<Arc<Member>>, Json(body): Json<Value>) -> Response {
    member.requests.fetch_add(1, Ordering::Relaxed);
    let failing = member
        .etcd
        .fail_ranges
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
        .is_ok();
    if failing {
        let body = json!({"error": "etcdserver: too many requests", "code": 14});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let key = decode(&body["key"]);
    match member.etcd.kv.lock().expect("lock").get(&key) {
        // proto3 JSON leaves out empty fields: no `kvs` at all when nothing matched.
        None => Json(json!({"header": {"revision": "2"}})).into_response(),
        Some(value) => Json(json!({
            "header": {"revision": "2"},
            "kvs": [{"key": STANDARD.encode(&key), "value": STANDARD.encode(value), "mod_revision": "2"}],
            "count": "1",
        }))
        .into_response(),
    }
}

/// Starts one member's gateway on a free loopback port.
async fn start_member(etcd: Arc<FakeEtcd>) -> (SocketAddr, Arc<Member>, tokio::task::JoinHandle<()>) {
    let member = Arc::new(Member {
        etcd,
        requests: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v3/kv/put", post(etcd_put))
        .route("/v3/kv/range", post(etcd_range))
        .with_state(member.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    (addr, member, task)
}

// Goal: the etcd target drives the gateway with the same key names (`<bucket>/user<N>`),
// spreads requests over every member, counts error answers as `http_<status>`, and
// reports null quorums. Method: two fake members of one fake cluster; the first 7
// ranges fail with 503; no warm-up, so all 7 are measured.
#[tokio::test]
async fn an_etcd_run_spreads_requests_and_counts_http_errors() {
    let etcd = Arc::new(FakeEtcd::default());
    etcd.fail_ranges.store(7, Ordering::Relaxed);
    let (a, member_a, task_a) = start_member(etcd.clone()).await;
    let (b, member_b, task_b) = start_member(etcd.clone()).await;
    let endpoints = format!("http://{a},http://{b}/");
    let run = dynamo(bench_args(
        "http://127.0.0.1:1",
        &[
            "--target",
            "etcd",
            "--endpoints",
            &endpoints,
            "--duration",
            "1.5",
            "--warmup",
            "0",
            "--records",
            "200",
            "--concurrency",
            "4",
            "--load",
            "--workload",
            "b",
            "--distribution",
            "uniform",
            "--value-size",
            "100",
        ],
    ))
    .await;
    task_a.abort();
    task_b.abort();
    assert_eq!(run.code, 0, "{}", run.stderr);
    let report = run.json();
    assert_eq!(report["target"], "etcd");
    for q in ["n", "r", "w"] {
        assert_eq!(report[q], Value::Null);
    }
    assert!(count(&report["ops"]) > 0);
    assert_eq!(report["load"]["records"], 200, "{report}");
    assert_eq!(report["errors"], json!({"http_503": 7}), "{report}");
    assert!(member_a.requests.load(Ordering::Relaxed) > 50, "member a");
    assert!(member_b.requests.load(Ordering::Relaxed) > 50, "member b");
    let kv = etcd.kv.lock().expect("lock");
    assert_eq!(kv.len(), 200);
    for record in [0, 199] {
        let value = kv
            .get(format!("bench/user{record}").as_bytes())
            .expect("inserted");
        assert_eq!(value.len(), 100);
    }
    // After the load every range finds its key: one version each.
    assert_eq!(report["siblings_per_read"], 1.0, "{report}");
}

// Goal: contradictory flags are usage errors (exit 2) and nothing is printed on stdout.
#[tokio::test]
async fn bad_flags_exit_2() {
    let mock = Mock::start().await;
    for rest in [
        &["--target", "etcd", "--n", "3"][..],
        &["--n", "1", "--w", "2"],
        &["--workload", "z"],
    ] {
        let run = dynamo(bench_args(&mock.url(), rest)).await;
        assert_eq!(run.code, 2, "{rest:?}: {}", run.stderr);
        assert!(run.stdout.is_empty());
    }
    assert!(mock.state.requests().is_empty());
}
