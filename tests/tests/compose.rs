//! The container cluster of `deploy/docker-compose.yml`, with faults between real hosts.
//!
//! Builds the image offline (the Dockerfile's `prebuilt` target with this build's
//! binaries, on a Debian base made by `scripts/docker-image.sh`), starts the compose
//! cluster (3 ring replicas, 3 storage nodes, 2 coordinators, each its own container on its
//! own network), writes and reads through both coordinators, then: a storage node cut off
//! the network (`docker network disconnect`), a hung one (`docker pause`), one killed
//! (`docker kill -s KILL`) and started again on its volume, and one whose volume is
//! removed (a wiped disk) and which is replaced by a spare node. After each heal every
//! acknowledged write must read back, through both coordinators.
//!
//! Needs Docker and docker-compose: where they are missing it says so and passes, unless
//! `DYNAMO_REQUIRE_TOOLS=1` (CI), when it fails. Everything it makes carries the label
//! `io.dynamo.cluster=<project>` and is removed by that label, even when it fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use base64::Engine as _;
use dynamo_tests::{binary, output_text};

/// The image tag the test builds and runs.
const IMAGE: &str = "dynamo:compose-test";
/// The bucket every write goes to.
const BUCKET: &str = "compose";
/// How long one read-back of every key may keep trying after a heal.
const HEAL_BOUND: Duration = Duration::from_secs(90);
/// Each HTTP request's bound.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Why the test cannot run here, if it cannot.
fn missing_tools() -> Option<String> {
    let ok = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !ok("docker", &["info"]) {
        return Some("`docker info` fails: no Docker engine".into());
    }
    if !ok("docker-compose", &["version"]) {
        return Some("docker-compose is not installed".into());
    }
    let base = std::env::var("DYNAMO_BASE_IMAGE").unwrap_or_else(|_| "dynamo-base:bookworm".into());
    if !ok("docker", &["image", "inspect", &base]) && !ok("sh", &["-c", "command -v debootstrap"]) {
        return Some(format!(
            "the base image {base} is missing and debootstrap (apt) is not installed to make it"
        ));
    }
    None
}

/// A compose project of the test's own, removed by label when dropped.
struct Project {
    name: String,
    ports: [u16; 2],
}

impl Project {
    fn new() -> Project {
        Project {
            name: format!("dynamotest{}", std::process::id()),
            ports: [dynamo_testkit::free_port(), dynamo_testkit::free_port()],
        }
    }

    fn compose(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .arg("-f")
            .arg(repo().join("deploy/docker-compose.yml"))
            .args(args)
            .env("COMPOSE_PROJECT_NAME", &self.name)
            .env("DYNAMO_IMAGE", IMAGE)
            .env("DYNAMO_COORDINATOR_1_PORT", self.ports[0].to_string())
            .env("DYNAMO_COORDINATOR_2_PORT", self.ports[1].to_string())
            .env("DYNAMO_PUBLISH_ADDRESS", "127.0.0.1")
            .output()
            .expect("run docker-compose")
    }

    /// Runs a compose command that must succeed.
    fn must(&self, args: &[&str]) -> String {
        let out = self.compose(args);
        assert!(
            out.status.success(),
            "docker-compose {args:?}: {}",
            output_text(&out)
        );
        output_text(&out)
    }

    /// The container of `service` (compose v1 names them `<project>_<service>_1`).
    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    fn coordinator(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    /// The logs of every service, for a failure's message.
    fn logs(&self) -> String {
        let out = self.compose(&["logs", "--no-color", "--tail", "40"]);
        output_text(&out)
    }
}

fn docker(args: &[&str]) -> Output {
    Command::new("docker").args(args).output().expect("run docker")
}

fn docker_must(args: &[&str]) -> String {
    let out = docker(args);
    assert!(out.status.success(), "docker {args:?}: {}", output_text(&out));
    output_text(&out)
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.compose(&[
            "--profile",
            "spare",
            "--profile",
            "tools",
            "down",
            "-v",
            "--remove-orphans",
            "-t",
            "2",
        ]);
        // Whatever compose did not know about (a container of `run`, a volume it lost
        // track of), by label.
        let label = format!("label=io.dynamo.cluster={}", self.name);
        for (kind, list) in [
            ("container", vec!["ps", "-aq", "--filter", &label]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
        ] {
            let out = docker(&list);
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let rm: Vec<&str> = match kind {
                    "container" => vec!["rm", "-f", "-v", id],
                    "volume" => vec!["volume", "rm", "-f", id],
                    _ => vec!["network", "rm", id],
                };
                let _ = docker(&rm);
            }
        }
    }
}

/// Builds the image from this build's binaries.
fn build_image() {
    let bin_dir = binary("dynamo")
        .parent()
        .expect("the binaries' directory")
        .to_path_buf();
    let rel = bin_dir
        .strip_prefix(repo())
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| {
            panic!(
                "{} is outside the repository: the build context cannot reach it",
                bin_dir.display()
            )
        });
    let out = Command::new(repo().join("scripts/docker-image.sh"))
        .arg(&rel)
        .arg(IMAGE)
        .current_dir(repo())
        .output()
        .expect("run scripts/docker-image.sh");
    assert!(out.status.success(), "building the image: {}", output_text(&out));
}

/// The writes the cluster acknowledged: key → value.
#[derive(Default)]
struct Acked(BTreeMap<String, String>);

struct Api {
    http: reqwest::Client,
    token: String,
}

impl Api {
    /// Writes `count` keys named `<phase>-<i>` through the coordinators in turn, each
    /// tried a few times; counts the acknowledged ones (a write whose every try failed is
    /// not acknowledged and is not checked).
    async fn write(&self, project: &Project, acked: &mut Acked, phase: &str, count: usize) -> usize {
        let mut ok = 0;
        for i in 0..count {
            let key = format!("{phase}-{i}");
            let value = format!("{phase} value {i}");
            let url = format!("{}/v1/kv/{BUCKET}/{key}", project.coordinator(i % 2));
            for _ in 0..3 {
                let sent = self
                    .http
                    .put(&url)
                    .bearer_auth(&self.token)
                    .header("content-type", "text/plain")
                    // Its tries are one logical write: a retry after a lost answer applies
                    // nothing twice.
                    .header("idempotency-key", format!("{}-{key}", project.name))
                    .body(value.clone())
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    acked.0.insert(key.clone(), value.clone());
                    ok += 1;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        ok
    }

    /// Reads `key` through coordinator `c`: its value(s), or why not.
    async fn read(&self, project: &Project, c: usize, key: &str) -> Result<Vec<String>, String> {
        let resp = self
            .http
            .get(format!("{}/v1/kv/{BUCKET}/{key}", project.coordinator(c)))
            .bearer_auth(&self.token)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let body: serde_json::Value = resp.json().await.map_err(|e| format!("{status}: {e}"))?;
        // 300: siblings. A retried write whose first try reached only a node that then
        // hung is stored twice, as two siblings (docs/api.md, "Idempotent retries");
        // the write is there either way.
        if status != 200 && status != 300 {
            return Err(format!("{status}: {body}"));
        }
        // The envelope: every sibling, its value in padded base64.
        let siblings = body["siblings"]
            .as_array()
            .ok_or_else(|| format!("no siblings in {body}"))?;
        Ok(siblings
            .iter()
            .filter_map(|s| s["value"].as_str())
            .filter_map(|v| base64::engine::general_purpose::STANDARD.decode(v).ok())
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .collect())
    }

    /// Every acknowledged write reads back through both coordinators, within
    /// [`HEAL_BOUND`]; returns how long it took.
    async fn check_all(&self, project: &Project, acked: &Acked, after: &str) -> Duration {
        let start = Instant::now();
        let mut pending: Vec<(&String, &String, usize)> =
            acked.0.iter().flat_map(|(k, v)| [(k, v, 0), (k, v, 1)]).collect();
        let mut last = String::new();
        while !pending.is_empty() {
            let mut still = Vec::new();
            for (k, v, c) in pending {
                match self.read(project, c, k).await {
                    Ok(values) if values.contains(v) => {}
                    Ok(values) => {
                        last = format!("{k} through coordinator-{}: {values:?}, not {v:?}", c + 1);
                        still.push((k, v, c));
                    }
                    Err(e) => {
                        last = format!("{k} through coordinator-{}: {e}", c + 1);
                        still.push((k, v, c));
                    }
                }
            }
            pending = still;
            if !pending.is_empty() {
                assert!(
                    start.elapsed() < HEAL_BOUND,
                    "after {after}: {} acknowledged writes still unreadable after {HEAL_BOUND:?}; last: {last}\n{}",
                    pending.len(),
                    project.logs()
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        start.elapsed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_cluster_keeps_every_acknowledged_write_through_host_faults() {
    if let Some(why) = missing_tools() {
        assert!(
            std::env::var("DYNAMO_REQUIRE_TOOLS").as_deref() != Ok("1"),
            "DYNAMO_REQUIRE_TOOLS=1 but {why}"
        );
        eprintln!("skipped: {why}");
        return;
    }
    tokio::task::block_in_place(build_image);
    let project = Project::new();
    project.must(&["up", "-d"]);

    // The init steps: secrets made, nodes joined.
    let joined = tokio::task::block_in_place(|| docker_must(&["wait", &project.container("join")]));
    assert_eq!(joined.trim(), "0", "the join step failed:\n{}", project.logs());
    let token_dir = tempfile::tempdir().expect("tempdir");
    let token_file = token_dir.path().join("root-token");
    docker_must(&[
        "cp",
        &format!("{}:/etc/dynamo/secrets/root-token", project.container("secrets")),
        &token_file.display().to_string(),
    ]);
    let token = std::fs::read_to_string(&token_file)
        .expect("the root token")
        .trim()
        .to_owned();
    let api = Api {
        http: dynamo_testkit::http_builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("http client"),
        token,
    };
    for c in 0..2 {
        dynamo_testkit::wait_ready(&project.coordinator(c)).await;
    }

    let mut acked = Acked::default();
    let n = api.write(&project, &mut acked, "healthy", 40).await;
    assert_eq!(
        n,
        40,
        "a healthy cluster acknowledges every write:\n{}",
        project.logs()
    );
    let took = api.check_all(&project, &acked, "the first writes").await;
    eprintln!("healthy: 40 writes read back through both coordinators in {took:?}");

    // A partition: storage-3 off the network, writes go on, it comes back under its name.
    let network = format!("{}_dynamo", project.name);
    let s3 = project.container("storage-3");
    docker_must(&["network", "disconnect", &network, &s3]);
    let n = api.write(&project, &mut acked, "partition", 30).await;
    docker_must(&["network", "connect", "--alias", "storage-3", &network, &s3]);
    let took = api
        .check_all(&project, &acked, "the partition of storage-3")
        .await;
    eprintln!("partition: {n}/30 acknowledged while storage-3 was cut off; all read back {took:?} after");

    // A hung host: storage-2 paused, then resumed.
    let s2 = project.container("storage-2");
    docker_must(&["pause", &s2]);
    let n = api.write(&project, &mut acked, "paused", 30).await;
    docker_must(&["unpause", &s2]);
    let took = api.check_all(&project, &acked, "the pause of storage-2").await;
    eprintln!("pause: {n}/30 acknowledged while storage-2 hung; all read back {took:?} after");

    // A crash: storage-1 killed, started again on its volume.
    let s1 = project.container("storage-1");
    docker_must(&["kill", "-s", "KILL", &s1]);
    let n = api.write(&project, &mut acked, "killed", 30).await;
    docker_must(&["start", &s1]);
    let took = api.check_all(&project, &acked, "the kill of storage-1").await;
    eprintln!("kill: {n}/30 acknowledged while storage-1 was down; all read back {took:?} after");

    // A wiped disk: storage-3 and its volume gone for good, the spare takes its place.
    project.must(&["rm", "-s", "-f", "storage-3"]);
    docker_must(&["volume", "rm", &format!("{}_storage-3", project.name)]);
    let n = api.write(&project, &mut acked, "wiped", 30).await;
    project.must(&["--profile", "spare", "up", "-d", "--no-deps", "storage-4"]);
    let replaced = tokio::task::block_in_place(|| {
        project.compose(&[
            "--profile",
            "tools",
            "run",
            "--rm",
            "cli",
            "cluster",
            "replace",
            "storage-3",
            "--node-id",
            "storage-4",
            "--address",
            "http://storage-4:7100",
            "--wait",
            "--wait-timeout",
            "180",
        ])
    });
    assert!(
        replaced.status.success(),
        "the replace of storage-3 failed: {}\n{}",
        output_text(&replaced),
        project.logs()
    );
    let took = api
        .check_all(&project, &acked, "the replace of the wiped storage-3")
        .await;
    eprintln!(
        "wiped disk: {n}/30 acknowledged with storage-3 gone; after its replace by storage-4 all {} \
         acknowledged writes read back through both coordinators in {took:?}",
        acked.0.len()
    );
    let view = project.must(&["--profile", "tools", "run", "--rm", "cli", "cluster"]);
    assert!(
        view.contains("storage-4") && !view.contains("storage-3 "),
        "{view}"
    );
}
