//! The persisted state across restarts of the ring service on the same directory.

mod common;

use axum::http::StatusCode;
use common::*;
use dynamo_core::wire::cluster::{Handoff, NodeRegistration};
use dynamo_core::{BucketName, NodeId, Partitioning};
use dynamo_ring::RingServiceError;
use dynamo_ring::cluster::{Cluster, Settings};
use dynamo_ring::plan::{ChangeKind, ChangePhase};
use dynamo_ring::store::{LoadError, STATE_FILE, StateFile, save};
use dynamo_server::internal::testing::{TEST_CONTROL_KEY, TEST_MEMBER_KEY};
use serde_json::{Value, json};

fn token(id: &str, hash_digit: char) -> Value {
    json!({
        "id": id,
        "sha256": hash_digit.to_string().repeat(64),
        "buckets": "*",
        "permissions": ["read", "write"],
        "created_ms": 1_700_000_000_000u64,
    })
}

// Goal (ARCHITECTURE §4 invariant 5): the ring epoch and the state version never go
// backwards across restarts; everything but liveness timestamps survives a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_5_ring_epoch_never_goes_backwards_across_restarts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = start(config(dir.path())).await;
    let a = FakeNode::start("node-a", &ring.url).await;
    let b = FakeNode::start("node-b", &ring.url).await;
    let c = FakeNode::start("node-c", &ring.url).await;
    join_and_wait(&ring.url, &a, 1).await;
    join_and_wait(&ring.url, &b, 2).await;
    let (s, _) = call(
        "PUT",
        &format!("{}/internal/v1/buckets/photos", ring.url),
        Some(json!({"n": 2, "r": 1, "w": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = call(
        "POST",
        &format!("{}/internal/v1/buckets/photos/written", ring.url),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, _) = call(
        "POST",
        &format!("{}/internal/v1/tokens", ring.url),
        Some(token("t1", 'a')),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let before = state(&ring.url).await;
    ring.shutdown().await;

    let ring = start(config(dir.path())).await;
    let after = state(&ring.url).await;
    assert_eq!(after, before, "the whole document survives");
    // No version is reused: a poller that saw `before` gets nothing new.
    let (s, _) = call(
        "GET",
        &format!(
            "{}/internal/v1/state?after={}&wait_ms=0",
            ring.url, before.version
        ),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NOT_MODIFIED);
    join_and_wait(&ring.url, &c, 3).await;
    let third = state(&ring.url).await;
    assert!(third.version > before.version);
    ring.shutdown().await;

    let ring = start(config(dir.path())).await;
    let again = state(&ring.url).await;
    assert_eq!(again.ring.as_ref().map(|r| r.epoch().0), Some(3));
    assert_eq!(again.version, third.version);
    assert_eq!(metric(&ring.url, "dynamo_ring_epoch").await, 3.0);
    assert_eq!(
        metric(&ring.url, "dynamo_ring_state_version").await,
        third.version as f64
    );
    ring.shutdown().await;
}

/// Writes the `state.json` a single-instance ring service of before kept: nodes a and b
/// joined (ring epoch 2, Q = 32), a bucket and a token; returns the cluster it holds.
fn legacy_state_file(dir: &std::path::Path) -> Cluster {
    let settings = Settings {
        partitioning: Partitioning::with_count(32).expect("q"),
        n: 3,
        early_release: false,
    };
    let mut c = Cluster::empty();
    for (i, name) in ["node-a", "node-b"].iter().enumerate() {
        let reg = NodeRegistration {
            node_id: NodeId::new(*name).expect("id"),
            address: format!("http://127.0.0.1:{}", 9100 + i),
            zone: None,
        };
        c.begin(ChangeKind::Join { node: reg }, settings).expect("join");
        c.state.version += 1;
        let id = c.change.as_ref().expect("change").id;
        let done = |c: &Cluster| -> Vec<Handoff> {
            c.state
                .handoffs
                .iter()
                .map(|h| Handoff {
                    done: true,
                    ..h.clone()
                })
                .collect()
        };
        c.record_progress(id, ChangePhase::Copy, &done(&c), 0)
            .expect("copied");
        c.publish(id, settings).expect("publish");
        c.record_progress(id, ChangePhase::CatchUp, &done(&c), 0)
            .expect("caught up");
        c.finish(id, &|_| true).expect("finish");
        c.state.version += 1;
    }
    c.patch_bucket(
        &BucketName::new("photos").expect("bucket"),
        &serde_json::from_value(json!({"n": 2})).expect("patch"),
    )
    .expect("bucket");
    c.add_token(serde_json::from_value(token("t1", 'a')).expect("token"))
        .expect("token");
    c.state.version += 1;
    c.state.change = None;
    save(dir, &StateFile::of(&c)).expect("save");
    c
}

// Goal (issue 15): the state file of a single-instance ring service is migrated into the
// ring group on its first start, once: the group serves its ring, buckets and tokens at
// its version, the file is renamed `state.json.migrated`, the next change is the next
// version, a restart neither loses nor re-applies anything, and a state file that turns
// up later is not migrated over the group's state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_single_instance_state_file_is_migrated_once_into_the_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let legacy = legacy_state_file(dir.path());
    let ring = start(config(dir.path())).await;
    let migrated = state(&ring.url).await;
    assert_eq!(migrated.version, legacy.state.version);
    assert_eq!(migrated.ring, legacy.state.ring);
    assert_eq!(migrated.buckets, legacy.state.buckets);
    assert_eq!(migrated.tokens, legacy.state.tokens);
    assert!(!dir.path().join(STATE_FILE).exists(), "the file is moved aside");
    assert!(dir.path().join(format!("{STATE_FILE}.migrated")).exists());
    let (s, _) = call(
        "PUT",
        &format!("{}/internal/v1/buckets/docs", ring.url),
        Some(json!({"r": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let next = state(&ring.url).await;
    assert_eq!(next.version, legacy.state.version + 1);
    ring.shutdown().await;

    let ring = start(config(dir.path())).await;
    assert_eq!(
        state(&ring.url).await,
        next,
        "a restart loses and re-applies nothing"
    );
    ring.shutdown().await;

    // A state file that turns up again is not migrated over the group's state.
    legacy_state_file(dir.path());
    let ring = start(config(dir.path())).await;
    assert_eq!(state(&ring.url).await, next, "the group's state wins");
    assert!(dir.path().join(STATE_FILE).exists(), "the file is left as it was");
    ring.shutdown().await;
}

// Goal: a tampered or corrupt single-instance state file (the migration's input) stops
// the service at start-up with an error naming the file, never a panic and never an
// empty ring; the file is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_state_file_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    legacy_state_file(dir.path());
    let path = dir.path().join(STATE_FILE);
    let good = std::fs::read_to_string(&path).expect("read");
    let good_json: Value = serde_json::from_str(&good).expect("json");

    let mut stranger = good_json.clone();
    stranger["state"]["ring"]["owners"][0] = json!("node-z");
    let mut missing_node = good_json.clone();
    missing_node["state"]["nodes"]
        .as_array_mut()
        .expect("nodes")
        .remove(0);
    let mut future = good_json.clone();
    future["format"] = json!(2);
    let mut bad_epoch = good_json.clone();
    bad_epoch["state"]["ring"]["epoch"] = json!("two");
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "{{{ not json".into()),
        ("truncated", good[..good.len() / 2].into()),
        ("owner outside the membership", stranger.to_string()),
        ("ring member missing from the nodes", missing_node.to_string()),
        ("unknown format", future.to_string()),
        ("mistyped epoch", bad_epoch.to_string()),
    ];
    for (what, content) in cases {
        std::fs::write(&path, &content).expect("write");
        let e = start_err(config(dir.path())).await;
        assert!(
            matches!(e, RingServiceError::State(LoadError::Corrupt { .. })),
            "{what}: {e:?}"
        );
        assert!(e.to_string().contains("state.json"), "{what}: {e}");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            content,
            "{what}: file untouched"
        );
    }

    // A state made with another Q is refused too.
    std::fs::write(&path, &good).expect("write");
    let mut other_q = config(dir.path());
    other_q.partitions = 64;
    let e = start_err(other_q).await;
    assert!(
        matches!(
            e,
            RingServiceError::PartitionMismatch {
                stored: 32,
                configured: 64
            }
        ),
        "{e:?}"
    );

    // The good file still loads.
    let ring = start(config(dir.path())).await;
    assert_eq!(ring_of(&ring.url).await.epoch().0, 2);
    ring.shutdown().await;
}

// Goal: a membership change interrupted by a restart of the ring service resumes from
// its persisted plan and completes; nothing is published before its pulls succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_in_progress_resumes_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.handoff_max_attempts = 100;
    let ring = start(cfg.clone()).await;
    let a = FakeNode::start("node-a", &ring.url).await;
    let b = FakeNode::start("node-b", &ring.url).await;
    join_and_wait(&ring.url, &a, 1).await;

    b.fail_next(u32::MAX);
    let (s, _) = call(
        "POST",
        &format!("{}/internal/v1/nodes", ring.url),
        Some(b.registration()),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    dynamo_testkit::eventually("pull attempts", || std::future::ready(b.requests() >= 4)).await;
    ring.shutdown().await;

    b.fail_next(0);
    let ring = start(cfg).await;
    let (_, v) = call("GET", &format!("{}/internal/v1/change", ring.url), None).await;
    assert!(
        v["change"].is_null() || v["change"]["kind"]["kind"] == "join",
        "{v}"
    );
    let done = wait_state(&ring.url, "the resumed join", |s| {
        settled(s) && s.ring.as_ref().is_some_and(|r| r.epoch().0 == 2)
    })
    .await;
    assert_eq!(done.ring.expect("ring").members().len(), 2);
    let copied: std::collections::BTreeSet<u32> = b.pulls().iter().map(|p| p.partition).collect();
    assert_eq!(copied.len(), 32, "every partition reached b");
    ring.shutdown().await;
}

// Goal: the binary reads its flags, serves, keeps its state in --data-dir, and exits 0
// on SIGTERM (the shutdown path a Kubernetes pod takes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_serves_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let control_key_file = dir.path().join("control-key");
    std::fs::write(&control_key_file, format!("# a key file\n{TEST_CONTROL_KEY}\n")).expect("key file");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_dynamo-ring"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--partitions", "16"])
        .env("DYNAMO_DATA_DIR", dir.path())
        .env("DYNAMO_LOG", "warn")
        .env("DYNAMO_MEMBER_KEY", TEST_MEMBER_KEY)
        .env("DYNAMO_CONTROL_KEY_FILE", &control_key_file)
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn dynamo-ring");
    let url = format!("http://127.0.0.1:{port}");
    dynamo_testkit::wait_ready(&url).await;
    let (s, _) = call(
        "PUT",
        &format!("{url}/internal/v1/buckets/b"),
        Some(json!({"r": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(
        dir.path().join(dynamo_ring::raft::DB_DIR).exists(),
        "state in --data-dir (from the env)"
    );

    let ok = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(ok.success());
    let status = dynamo_testkit::wait_exit(&mut child, "dynamo-ring exits after SIGTERM").await;
    assert!(status.success(), "{status}");

    // Bad flags are refused with a non-zero exit, before anything is bound.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dynamo-ring"))
        .args(["--partitions", "100"])
        .env("DYNAMO_DATA_DIR", dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--partitions"),
        "{out:?}"
    );

    // Without its keys it does not start: internal routes are never open.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dynamo-ring"))
        .args(["--listen", "127.0.0.1:0"])
        .env("DYNAMO_DATA_DIR", dir.path())
        .env("DYNAMO_CONTROL_KEY", TEST_CONTROL_KEY)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--member-key"),
        "{out:?}"
    );
}
