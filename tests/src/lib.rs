//! Harness for end-to-end tests: a whole cluster (ring service, storage nodes,
//! coordinator) as real processes of the workspace's binaries on loopback ports, so tests
//! can kill -9, SIGSTOP and restart any of them.
//!
//! The binaries are looked up beside the test executable (`target/<profile>/`); `make
//! test` builds them first (`cargo build --workspace --bins`).
//!
//! [`membership`] adds nodes to a running cluster and drives joins, decommissions and
//! replacements through the public API. [`checker`] is the seeded fault checker built on
//! this harness: concurrent recorded clients, a fault schedule drawn from a seed, and the
//! safety checks after the heal (`docs/testing.md`). [`sim`] is the deterministic
//! simulator: the core's rounds over a simulated network, thousands of seeds a second.

pub mod checker;
pub mod membership;
pub mod sim;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use dynamo_server::internal::testing::{TEST_CONTROL_KEY, TEST_MEMBER_KEY};

pub use dynamo_testkit::wait_ready;

/// Every wait in the harness is bounded by this.
pub use dynamo_testkit::WAIT;

/// The root token of test clusters.
pub const ROOT_TOKEN: &str = "test-root-token-0123456789abcdef";
/// The coordinators' context key (public: tests only).
pub const CONTEXT_KEY: &str = "1:dGVzdC1oYXJuZXNzLWNvbnRleHQta2V5LW5vdC1hLXNlY3JldA";

/// Returns the path of a workspace binary built beside the running test, or in
/// `DYNAMO_BIN_DIR` when that is set (to test binaries built elsewhere, e.g. a copy that
/// a rebuild cannot replace mid-run, or a deliberately broken build).
///
/// # Panics
/// When the binary is missing, naming the command that builds it.
pub fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("DYNAMO_BIN_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let exe = std::env::current_exe().expect("test executable path");
            // target/<profile>/deps/<test> → target/<profile>/<name>
            exe.parent()
                .and_then(Path::parent)
                .expect("target dir")
                .to_path_buf()
        }
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

pub use dynamo_testkit::free_port;

/// One service process.
pub struct Proc {
    name: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    /// Its port.
    pub port: u16,
}

impl Proc {
    /// Starts `bin` (a workspace binary) with `args`, logging to `<log_dir>/<name>.log`.
    pub fn spawn(bin: &str, name: &str, port: u16, args: Vec<String>, log_dir: &Path) -> Proc {
        let mut p = Proc {
            name: bin.to_owned(),
            args,
            log: log_dir.join(format!("{name}.log")),
            child: None,
            port,
        };
        p.start();
        p
    }

    /// Starts (or restarts) the process with its original arguments.
    pub fn start(&mut self) {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(binary(&self.name))
            .args(&self.args)
            // `DYNAMO_TEST_LOG` (a `DYNAMO_LOG` filter) turns up the services' logs when
            // chasing a failure, e.g. `warn,dynamo_coordinator::kv=debug`.
            .env(
                "DYNAMO_LOG",
                std::env::var("DYNAMO_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            // Every service of a test cluster shares the public test keys; a storage
            // node has no control flag and ignores that variable.
            .env("DYNAMO_MEMBER_KEY", TEST_MEMBER_KEY)
            .env("DYNAMO_CONTROL_KEY", TEST_CONTROL_KEY)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn service");
        self.child = Some(child);
    }

    /// Its base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pid(&self) -> String {
        self.child.as_ref().map(|c| c.id().to_string()).expect("running")
    }

    /// Its process id, while it runs (`None` after [`Proc::kill9`]).
    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.pid()])
            .status()
            .expect("kill");
        assert!(ok.success(), "kill {sig} failed");
    }

    /// kill -9, and reap.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGKILL through a shared reference, so a test can crash a node while clients
    /// borrow the cluster; [`Proc::kill9`] (or dropping it) reaps it later.
    pub fn crash(&self) {
        self.signal("-KILL");
    }

    /// SIGSTOP: the process hangs, its sockets stay open.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Its whole log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The tail of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(c) = &self.child {
            // A paused process cannot die of SIGKILL until continued on some kernels.
            let _ = Command::new("kill").args(["-CONT", &c.id().to_string()]).status();
        }
        self.kill9();
    }
}

/// Starts a coordinator with the harness's flags and `opts`' extra ones, ready.
async fn spawn_coordinator(opts: &Options, name: &str, ring_url: &str, logs: &Path) -> Proc {
    let port = free_port();
    let mut args = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--ring-url".into(),
        ring_url.to_owned(),
        "--root-token".into(),
        ROOT_TOKEN.into(),
        "--context-key".into(),
        CONTEXT_KEY.into(),
        "--replica-timeout-ms".into(),
        "500".into(),
        "--node-backoff-ms".into(),
        "300".into(),
    ];
    args.extend(opts.coordinator_args.iter().cloned());
    let coordinator = Proc::spawn("dynamo-coordinator", name, port, args, logs);
    wait_ready(&coordinator.url()).await;
    coordinator
}

/// A running cluster.
pub struct Cluster {
    /// Where every service keeps its data and logs.
    pub dir: tempfile::TempDir,
    /// The ring service (replica 0 of its group).
    pub ring: Proc,
    /// The other replicas of the ring group (`Options::ring_replicas` − 1).
    pub ring_others: Vec<Proc>,
    /// Every ring replica's URL, comma-separated: what the nodes and coordinators follow.
    pub ring_urls: String,
    /// The storage nodes, `node-0`…
    pub nodes: Vec<Proc>,
    /// The coordinator.
    pub coordinator: Proc,
    /// An HTTP client.
    pub http: dynamo_testkit::Http,
    /// What it was started with: nodes added later get the same storage flags.
    opts: Options,
}

/// Options of a test cluster.
#[derive(Debug, Clone)]
pub struct Options {
    /// Storage nodes.
    pub nodes: usize,
    /// Partition count.
    pub partitions: u32,
    /// Extra coordinator flags.
    pub coordinator_args: Vec<String>,
    /// The storage nodes' `--durability` (`buffered` by default: fast; the fault checker
    /// uses `sync`, as `make run` does, so a kill -9 loses nothing acknowledged).
    pub durability: String,
    /// Extra storage-node flags (flags the harness already sets cannot be repeated).
    pub storage_args: Vec<String>,
    /// Extra ring-service flags.
    pub ring_args: Vec<String>,
    /// False: the nodes are started but nobody joins them (the test does, e.g. with
    /// `dynamo cluster bootstrap`), and the coordinator starts before any ring exists.
    pub join: bool,
    /// Replicas of the ring service (one Raft group).
    pub ring_replicas: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            nodes: 3,
            partitions: 64,
            coordinator_args: Vec::new(),
            durability: "buffered".into(),
            storage_args: Vec::new(),
            ring_args: Vec::new(),
            join: true,
            ring_replicas: 1,
        }
    }
}

impl Cluster {
    /// Starts a cluster, joins every node and waits until the coordinator routes over all
    /// of them.
    pub async fn start(opts: Options) -> Cluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let logs = dir.path().to_path_buf();
        let ring_ports: Vec<u16> = (0..opts.ring_replicas.max(1))
            .map(|_| dynamo_testkit::stable_port())
            .collect();
        let replicas = ring_ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut rings: Vec<Proc> = ring_ports
            .iter()
            .enumerate()
            .map(|(i, port)| {
                // Replica 0 keeps the single instance's name, in its log and its directory.
                let name = if i == 0 {
                    "ring".to_owned()
                } else {
                    format!("ring-{i}")
                };
                let mut ring_args: Vec<String> = vec![
                    "--listen".into(),
                    format!("127.0.0.1:{port}"),
                    "--data-dir".into(),
                    dir.path().join(&name).display().to_string(),
                    "--partitions".into(),
                    opts.partitions.to_string(),
                    "--heartbeat-timeout-ms".into(),
                    "2000".into(),
                    "--replica-id".into(),
                    i.to_string(),
                    "--replicas".into(),
                    replicas.clone(),
                    "--election-timeout-ms".into(),
                    "300".into(),
                ];
                ring_args.extend(opts.ring_args.iter().cloned());
                Proc::spawn("dynamo-ring", &name, *port, ring_args, &logs)
            })
            .collect();
        let ring = rings.remove(0);
        let ring_others = rings;
        let ring_urls = std::iter::once(&ring)
            .chain(&ring_others)
            .map(Proc::url)
            .collect::<Vec<_>>()
            .join(",");
        let http = dynamo_testkit::http();
        for r in std::iter::once(&ring).chain(&ring_others) {
            wait_ready(&r.url()).await;
        }
        let mut nodes = Vec::new();
        for i in 0..opts.nodes {
            let node = spawn_storage(&opts, i, dir.path(), &ring_urls);
            wait_ready(&node.url()).await;
            nodes.push(node);
        }
        for (i, node) in nodes.iter().enumerate().filter(|_| opts.join) {
            let resp = dynamo_testkit::control_http()
                .post(format!("{}/internal/v1/nodes", ring.url()))
                .json(&serde_json::json!({"node_id": format!("node-{i}"), "address": node.url()}))
                .send()
                .await
                .expect("join");
            assert!(resp.status().is_success(), "join node-{i}: {}", resp.status());
            wait_members(&http, &ring.url(), i + 1).await;
        }
        let coordinator = spawn_coordinator(&opts, "coordinator", &ring_urls, &logs).await;
        let cluster = Cluster {
            dir,
            ring,
            ring_others,
            ring_urls,
            nodes,
            coordinator,
            http,
            opts,
        };
        if cluster.opts.join {
            cluster.wait_routable(cluster.opts.nodes).await;
            cluster.wait_volumes_bound().await;
        }
        cluster
    }

    /// Starts one more coordinator of this cluster (same flags, same context key), named
    /// `name` in its log, and waits until it routes over every node.
    pub async fn start_coordinator(&self, name: &str) -> Proc {
        let c = spawn_coordinator(&self.opts, name, &self.ring_urls, self.dir.path()).await;
        let url = c.url();
        dynamo_testkit::eventually(&format!("{name} routes to every node"), || async {
            let Ok(r) = self
                .http
                .request(reqwest::Method::GET, format!("{url}/v1/ring"))
                .bearer_auth(ROOT_TOKEN)
                .send()
                .await
            else {
                return false;
            };
            let Ok(v) = r.json::<serde_json::Value>().await else {
                return false;
            };
            let mut owners: Vec<&str> = v["owners"]
                .as_array()
                .map(|a| a.iter().filter_map(|o| o.as_str()).collect())
                .unwrap_or_default();
            owners.sort_unstable();
            owners.dedup();
            owners.len() == self.nodes.len()
        })
        .await;
        c
    }

    /// The coordinator's URL.
    pub fn url(&self) -> String {
        self.coordinator.url()
    }

    /// A request to the coordinator with the root token.
    pub fn req(&self, method: reqwest::Method, path: &str) -> reqwest_middleware::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url()))
            .bearer_auth(ROOT_TOKEN)
    }

    /// Waits until every running storage node's volume gate is open (the ring service
    /// bound its new volume, which its first heartbeat as a member does), so that direct
    /// reads of a node answer from its data.
    pub async fn wait_volumes_bound(&self) {
        for node in self.nodes.iter().filter(|n| n.id().is_some()) {
            let url = node.url();
            dynamo_testkit::eventually(&format!("{url}: volume bound"), || async {
                self.metric(&url, "dynamo_storage_volume_unconfirmed").await == 0.0
            })
            .await;
        }
    }

    /// Waits until the coordinator's ring holds `n` members.
    pub async fn wait_routable(&self, n: usize) {
        dynamo_testkit::eventually(&format!("the coordinator routes to {n} nodes"), || async {
            let Ok(r) = self.req(reqwest::Method::GET, "/v1/ring").send().await else {
                return false;
            };
            let Ok(v) = r.error_for_status().map(|r| r.json::<serde_json::Value>()) else {
                return false;
            };
            let Ok(v) = v.await else { return false };
            let mut owners: Vec<&str> = v["owners"]
                .as_array()
                .map(|a| a.iter().filter_map(|o| o.as_str()).collect())
                .unwrap_or_default();
            owners.sort_unstable();
            owners.dedup();
            owners.len() == n
        })
        .await;
    }

    /// Reads a key's versions directly from one storage node (bypassing quorums).
    pub async fn node_get(&self, node: usize, bucket: &str, key: &str) -> Option<serde_json::Value> {
        let body = serde_json::json!({"ops": [{"op": "get", "bucket": bucket, "key": key}]});
        let r: serde_json::Value = self
            .http
            .post(format!("{}/internal/v1/replicas", self.nodes[node].url()))
            .json(&body)
            .send()
            .await
            .expect("node get")
            .json()
            .await
            .expect("json");
        let obj = r["results"][0]["object"].clone();
        (!obj.is_null()).then_some(obj)
    }

    /// Reads many keys' versions directly from one storage node, in replica batches of
    /// [`dynamo_core::wire::internal::MAX_BATCH_OPS`]; `None` where the node has nothing.
    pub async fn node_get_many(
        &self,
        node: usize,
        bucket: &str,
        keys: &[String],
    ) -> Vec<Option<dynamo_core::version::VersionedObject>> {
        use dynamo_core::wire::internal::{MAX_BATCH_OPS, ReplicaBatchResult, ReplicaResult};
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(MAX_BATCH_OPS) {
            let ops: Vec<serde_json::Value> = chunk
                .iter()
                .map(|k| serde_json::json!({"op": "get", "bucket": bucket, "key": k}))
                .collect();
            let r: ReplicaBatchResult = self
                .http
                .post(format!("{}/internal/v1/replicas", self.nodes[node].url()))
                .json(&serde_json::json!({ "ops": ops }))
                .send()
                .await
                .expect("node get")
                .json()
                .await
                .expect("json");
            assert_eq!(r.results.len(), chunk.len(), "one result per key");
            out.extend(r.results.into_iter().map(|r| match r {
                ReplicaResult::Got { object } => object,
                other => panic!("a node read answered {other:?}"),
            }));
        }
        out
    }

    /// Waits until every storage node holds `bucket`/`key` with exactly one live value,
    /// `value` (a write acknowledged at W may reach the last replica a moment later).
    ///
    /// # Panics
    /// When some node does not within [`WAIT`].
    pub async fn wait_every_replica_holds(&self, bucket: &str, key: &str, value: &[u8]) {
        for node in 0..self.nodes.len() {
            dynamo_testkit::eventually(
                &format!("node-{node} holds {bucket}/{key} with one value"),
                || async {
                    self.node_get(node, bucket, key).await.is_some_and(|o| {
                        let o: dynamo_core::version::VersionedObject =
                            serde_json::from_value(o).expect("a stored object");
                        o.live_siblings().map(|s| s.value.as_slice()).collect::<Vec<_>>() == vec![value]
                    })
                },
            )
            .await;
        }
    }

    /// Reads a metric from a service's `/metrics` (0 when absent).
    pub async fn metric(&self, url: &str, name_with_labels: &str) -> f64 {
        let text = dynamo_testkit::scrape(&self.http, url).await.expect("metrics");
        dynamo_testkit::sample(&text, name_with_labels).unwrap_or(0.0)
    }
}

/// Starts storage node `node-<i>` on a fresh port, with its data under `dir/node-<i>`
/// and the flags of `opts` (not joined: that is a membership change).
fn spawn_storage(opts: &Options, i: usize, dir: &Path, ring_url: &str) -> Proc {
    let port = free_port();
    let mut args: Vec<String> = vec![
        "--node-id".into(),
        format!("node-{i}"),
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--data-dir".into(),
        dir.join(format!("node-{i}")).display().to_string(),
        "--partitions".into(),
        opts.partitions.to_string(),
        "--ring-url".into(),
        ring_url.to_owned(),
        "--durability".into(),
        opts.durability.clone(),
        "--hint-interval-ms".into(),
        "200".into(),
    ];
    args.extend(opts.storage_args.iter().cloned());
    Proc::spawn("dynamo-storage", &format!("node-{i}"), port, args, dir)
}

async fn wait_members(http: &dynamo_testkit::Http, ring_url: &str, n: usize) {
    dynamo_testkit::eventually(&format!("the ring has {n} members and no handoff"), || async {
        let Ok(r) = http
            .get(format!("{ring_url}/internal/v1/state?after=0&wait_ms=0"))
            .send()
            .await
        else {
            return false;
        };
        let Ok(s) = r.json::<serde_json::Value>().await else {
            return false;
        };
        let members = s["ring"]["members"].as_object().map_or(0, |m| m.len());
        let handoffs = s["handoffs"].as_array().map_or(0, Vec::len);
        members == n && handoffs == 0
    })
    .await;
}

/// What a finished command printed, stdout then stderr, for a failure's message.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The values of a JSON envelope's siblings (padded base64 decoded as UTF-8), sorted.
///
/// # Panics
/// When the envelope has no `siblings` or a value is not base64 of UTF-8.
pub fn sibling_values(env: &serde_json::Value) -> Vec<String> {
    use base64::Engine as _;
    let mut v: Vec<String> = env["siblings"]
        .as_array()
        .expect("siblings")
        .iter()
        .map(|s| {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(s["value"].as_str().expect("value"))
                .expect("padded base64");
            String::from_utf8(raw).expect("utf-8")
        })
        .collect();
    v.sort();
    v
}

/// Asserts that `r` is an error answer with `status` and the JSON error `code`, and a
/// message.
///
/// # Panics
/// When it is not.
pub async fn expect_error(r: reqwest::Response, status: u16, code: &str) {
    let got = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or(serde_json::Value::Null);
    assert_eq!(
        (got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "body {body}"
    );
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
}
