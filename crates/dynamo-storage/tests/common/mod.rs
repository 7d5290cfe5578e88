//! Test harness: storage nodes in-process or as real processes on loopback ports.
#![allow(dead_code)]

pub mod fake_ring;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use dynamo_core::version::{ConflictRule, VersionedObject};
use dynamo_core::wire::internal::{ReplicaBatch, ReplicaBatchResult, ReplicaOp, ReplicaResult};
use dynamo_core::{BucketName, DotSet};
use tokio_util::sync::CancellationToken;

pub const SIB: ConflictRule = ConflictRule::Siblings { max_siblings: 32 };

pub use dynamo_testkit::WAIT;

pub fn client() -> dynamo_testkit::Http {
    dynamo_testkit::client(dynamo_testkit::Role::Member, Duration::from_secs(10))
}

pub fn bucket(b: &str) -> BucketName {
    BucketName::new(b).expect("bucket")
}

/// A node running in this process.
pub struct InProcess {
    pub addr: SocketAddr,
    pub stop: CancellationToken,
    pub task: tokio::task::JoinHandle<Result<(), dynamo_storage::StorageError>>,
}

impl InProcess {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("stops in time")
            .expect("join")
            .expect("clean stop");
    }
}

pub async fn start_in_process(dir: &Path, node_id: &str) -> InProcess {
    let mut config = dynamo_storage::Config::for_dir(dir);
    config.node_id = Some(node_id.into());
    config.hint_interval_ms = 100;
    start_with(config).await
}

pub async fn start_with(config: dynamo_storage::Config) -> InProcess {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    let task = tokio::spawn(dynamo_storage::run(config, listener, stop.clone()));
    wait_ready(&format!("http://{addr}")).await;
    InProcess { addr, stop, task }
}

/// In-process nodes that follow a fake ring service: they learn their ring only when the
/// test [`Followers::publish`]es one.
pub struct Followers {
    pub ring: fake_ring::FakeRing,
    pub nodes: Vec<InProcess>,
    names: Vec<String>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Followers {
    /// Starts a fake ring service and nodes named `names`, each in a new directory, with
    /// `configure` applied to each configuration.
    pub async fn start(names: &[&str], configure: impl Fn(&mut dynamo_storage::Config)) -> Followers {
        let ring = fake_ring::FakeRing::start().await;
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for name in names {
            let dir = tempfile::tempdir().expect("tempdir");
            let mut config = dynamo_storage::Config::for_dir(dir.path());
            config.node_id = Some((*name).into());
            config.ring_url = Some(ring.url.clone());
            configure(&mut config);
            nodes.push(start_with(config).await);
            dirs.push(dir);
        }
        let f = Followers {
            ring,
            nodes,
            names: names.iter().map(|n| (*n).to_owned()).collect(),
            _dirs: dirs,
        };
        // As in a real cluster, where the nodes joined (and so were bound to their
        // volumes) before anything was written: a state without a ring listing them, so
        // each node's first heartbeat binds its new volume and its volume gate opens.
        let listing = dynamo_core::wire::cluster::ClusterState {
            nodes: f
                .names
                .iter()
                .zip(&f.nodes)
                .map(|(name, n)| fake_ring::up(name, &n.url()))
                .collect(),
            ..Default::default()
        };
        f.ring.publish(listing);
        for n in &f.nodes {
            let url = n.url();
            eventually("volume bound", || async {
                metric(&url, "dynamo_storage_volume_unconfirmed").await == 0.0
            })
            .await;
        }
        f
    }

    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Publishes `state` and waits until every node holds its ring's epoch.
    pub async fn publish(&self, state: dynamo_core::wire::cluster::ClusterState) {
        let epoch = state.ring.as_ref().map_or(0, |r| r.epoch().0) as f64;
        self.ring.publish(state);
        for n in &self.nodes {
            let url = n.url();
            eventually("ring learned", || async {
                metric(&url, "dynamo_storage_ring_epoch").await == epoch
            })
            .await;
        }
    }

    pub async fn shutdown(self) {
        for n in self.nodes {
            n.shutdown().await;
        }
        self.ring.stop();
    }
}

pub use dynamo_testkit::wait_ready;

#[allow(unused_imports)] // Not every test binary starts processes.
pub use dynamo_testkit::free_port;

/// A node as a real process of the `dynamo-storage` binary.
pub struct Proc {
    pub child: Child,
    pub port: u16,
}

impl Proc {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn kill9(&mut self) {
        self.child.kill().expect("kill -9");
        self.child.wait().expect("reap");
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(ok.success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn spawn_proc(dir: &Path, node_id: &str, port: u16, durability: &str) -> Proc {
    let child = Command::new(env!("CARGO_BIN_EXE_dynamo-storage"))
        .env(
            "DYNAMO_MEMBER_KEY",
            dynamo_server::internal::testing::TEST_MEMBER_KEY,
        )
        .args([
            "--data-dir",
            dir.to_str().expect("utf-8 path"),
            "--node-id",
            node_id,
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--durability",
            durability,
            "--hint-interval-ms",
            "100",
        ])
        .env("DYNAMO_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn dynamo-storage");
    Proc { child, port }
}

pub async fn batch(url: &str, ops: Vec<ReplicaOp>) -> ReplicaBatchResult {
    let resp = client()
        .post(format!("{url}/internal/v1/replicas"))
        .json(&ReplicaBatch {
            ops,
            ring_epoch: None,
        })
        .send()
        .await
        .expect("send");
    assert!(resp.status().is_success(), "status {}", resp.status());
    resp.json().await.expect("json")
}

pub fn put_op(b: &str, key: &str, value: &[u8], context: DotSet) -> ReplicaOp {
    ReplicaOp::CoordinatePut {
        bucket: bucket(b),
        key: key.into(),
        context,
        value: value.to_vec(),
        content_type: "application/octet-stream".into(),
        tombstone: false,
        conflict: SIB,
        hint: None,
        deadline_ms: None,
        idempotency: None,
    }
}

pub async fn get(url: &str, b: &str, key: &str) -> Option<VersionedObject> {
    let r = batch(
        url,
        vec![ReplicaOp::Get {
            bucket: bucket(b),
            key: key.into(),
        }],
    )
    .await;
    match r.results.into_iter().next() {
        Some(ReplicaResult::Got { object }) => object,
        other => panic!("unexpected {other:?}"),
    }
}

pub async fn metric(url: &str, name: &str) -> f64 {
    metric_opt(url, name)
        .await
        .unwrap_or_else(|| panic!("metric {name} not found"))
}

// Each test binary uses some of these, none all.
#[allow(unused_imports)]
pub use dynamo_testkit::{eventually, metric as metric_opt};

/// Writes `value` (a tombstone when `None`) to `key` of bucket `b` on `url` as a
/// coordinated put with `context`; returns the stored object.
#[allow(dead_code)] // Not every test binary writes this way.
pub async fn write(url: &str, b: &str, key: &str, value: Option<&[u8]>, context: DotSet) -> VersionedObject {
    let mut op = put_op(b, key, value.unwrap_or_default(), context);
    if value.is_none()
        && let ReplicaOp::CoordinatePut { tombstone, .. } = &mut op
    {
        *tombstone = true;
    }
    match batch(url, vec![op]).await.results.into_iter().next() {
        Some(ReplicaResult::Put { object, .. }) => object,
        other => panic!("write failed: {other:?}"),
    }
}

/// Merges `object` into `key` of bucket `b` on `url`, asserting it was taken.
#[allow(dead_code)]
pub async fn replicate(url: &str, b: &str, key: &str, object: &VersionedObject) {
    let r = batch(
        url,
        vec![ReplicaOp::Replicate {
            bucket: bucket(b),
            key: key.into(),
            object: object.clone(),
            conflict: SIB,
            hint: None,
            idempotency: None,
        }],
    )
    .await;
    assert_eq!(r.results, vec![ReplicaResult::Replicated]);
}

/// Asks `url` whether it holds (or collected) exactly the tombstone set `digest` of
/// `key` in bucket `b`: `(holds, collected)`.
#[allow(dead_code)]
pub async fn tombstone_status(url: &str, b: &str, key: &str, digest: u128) -> (bool, bool) {
    let r = batch(
        url,
        vec![ReplicaOp::TombstoneStatus {
            bucket: bucket(b),
            key: key.into(),
            digest,
        }],
    )
    .await;
    match r.results.into_iter().next() {
        Some(ReplicaResult::TombstoneStatus { holds, collected }) => (holds, collected),
        other => panic!("unexpected {other:?}"),
    }
}

/// The Merkle summary of partition `p` on `url`.
#[allow(dead_code)]
pub async fn summary(url: &str, p: u32) -> dynamo_core::merkle::MerkleSummary {
    client()
        .get(format!("{url}/internal/v1/merkle/{p}"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("summary json")
}
