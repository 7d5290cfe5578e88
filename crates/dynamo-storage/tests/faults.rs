//! Fault tests against real `dynamo-storage` processes: kill -9, restarts, SIGTERM.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use dynamo_core::wire::internal::{HintFor, ReplicaBatch, ReplicaOp, ReplicaResult};
use dynamo_core::{DotSet, NodeId};

/// Writes from `writers` tasks until the node stops answering; returns the acknowledged keys.
async fn write_until_dead(url: String, writers: usize, acked: Arc<Mutex<BTreeSet<String>>>) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let url = url.clone();
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let c = dynamo_testkit::client(dynamo_testkit::Role::Member, Duration::from_secs(5));
            // Bounded: at most 5000 writes per writer.
            for i in 0..5000 {
                let key = format!("w{w}-{i}");
                let body = ReplicaBatch {
                    ops: vec![put_op("dur", &key, key.as_bytes(), DotSet::new())],
                    ring_epoch: None,
                };
                let Ok(resp) = c
                    .post(format!("{url}/internal/v1/replicas"))
                    .json(&body)
                    .send()
                    .await
                else {
                    return;
                };
                if !resp.status().is_success() {
                    return;
                }
                let Ok(r) = resp
                    .json::<dynamo_core::wire::internal::ReplicaBatchResult>()
                    .await
                else {
                    return;
                };
                if matches!(r.results.first(), Some(ReplicaResult::Put { .. })) {
                    acked.lock().expect("lock").insert(key);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

async fn acknowledged_writes_survive_kill9(durability: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut node = spawn_proc(dir.path(), "node-a", port, durability);
    wait_ready(&node.url()).await;

    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let writer = tokio::spawn(write_until_dead(node.url(), 8, acked.clone()));
    // Kill once a few hundred writes are acknowledged, in the middle of the stream.
    eventually("300 writes acknowledged", || async {
        acked.lock().expect("lock").len() >= 300
    })
    .await;
    node.kill9();
    tokio::time::timeout(WAIT, writer)
        .await
        .expect("writers stop")
        .expect("join");
    let acked = acked.lock().expect("lock").clone();

    let node = spawn_proc(dir.path(), "node-a", port, durability);
    wait_ready(&node.url()).await;
    let c = client();
    let keys: Vec<String> = acked.iter().cloned().collect();
    for chunk in keys.chunks(200) {
        let ops = chunk
            .iter()
            .map(|k| ReplicaOp::Get {
                bucket: bucket("dur"),
                key: k.clone(),
            })
            .collect();
        let r: dynamo_core::wire::internal::ReplicaBatchResult = c
            .post(format!("{}/internal/v1/replicas", node.url()))
            .json(&ReplicaBatch {
                ops,
                ring_epoch: None,
            })
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        for (k, res) in chunk.iter().zip(r.results) {
            match res {
                ReplicaResult::Got { object: Some(o) } => {
                    assert_eq!(
                        o.live_siblings().next().map(|s| s.value.clone()),
                        Some(k.as_bytes().to_vec())
                    )
                }
                other => panic!("acknowledged write {k} lost after kill -9 ({durability}): {other:?}"),
            }
        }
    }
    eprintln!(
        "{durability}: {} acknowledged writes all survived kill -9",
        acked.len()
    );
}

// Goal: in sync mode every acknowledged write is on disk when acknowledged (here checked
// against kill -9, the strongest fault a test can inject; power loss is fsync's promise).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_keeps_every_acknowledged_write_in_sync_mode() {
    acknowledged_writes_survive_kill9("sync").await;
}

// Goal: buffered mode keeps its promise: an acknowledged write survives kill -9.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_keeps_every_acknowledged_write_in_buffered_mode() {
    acknowledged_writes_survive_kill9("buffered").await;
}

// Goal: a hint survives a restart of the node holding it, is not lost while its owner is
// away, and is delivered (then deleted) once the owner answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hint_survives_restart_and_is_delivered_when_the_owner_returns() {
    let dir_a = tempfile::tempdir().expect("tempdir");
    let dir_b = tempfile::tempdir().expect("tempdir");
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn_proc(dir_a.path(), "node-a", port_a, "sync");
    wait_ready(&a.url()).await;
    let owner = HintFor {
        node: NodeId::new("node-b").expect("id"),
        address: format!("http://127.0.0.1:{port_b}"),
    };
    let op = ReplicaOp::CoordinatePut {
        bucket: bucket("h"),
        key: "k".into(),
        context: DotSet::new(),
        value: b"for b".to_vec(),
        content_type: String::new(),
        tombstone: false,
        conflict: SIB,
        hint: Some(owner),
        deadline_ms: None,
        idempotency: None,
    };
    let r = batch(&a.url(), vec![op]).await;
    let ReplicaResult::Put { object, .. } = &r.results[0] else {
        panic!("{r:?}")
    };
    let object = object.clone();

    a.kill9();
    let a = spawn_proc(dir_a.path(), "node-a", port_a, "sync");
    wait_ready(&a.url()).await;
    assert_eq!(
        metric(&a.url(), "dynamo_storage_hints_pending").await,
        1.0,
        "hint survived the restart"
    );
    // Several delivery rounds pass while the owner is away: the hint stays.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(metric(&a.url(), "dynamo_storage_hints_pending").await, 1.0);
    assert!(metric(&a.url(), "dynamo_storage_hint_delivery_failures_total").await >= 1.0);

    let b = spawn_proc(dir_b.path(), "node-b", port_b, "sync");
    wait_ready(&b.url()).await;
    eventually("the hint delivered", || async {
        metric(&a.url(), "dynamo_storage_hints_pending").await == 0.0
    })
    .await;
    assert_eq!(
        get(&b.url(), "h", "k").await,
        Some(object),
        "the owner has the write"
    );
    assert_eq!(
        metric(&a.url(), "dynamo_storage_hints_delivered_total").await,
        1.0
    );
    drop(a);
}

// Goal: SIGTERM shuts down cleanly (exit 0) and the data is there after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_exits_zero_and_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut node = spawn_proc(dir.path(), "node-a", port, "buffered");
    wait_ready(&node.url()).await;
    batch(&node.url(), vec![put_op("t", "k", b"v", DotSet::new())]).await;
    node.signal("-TERM");
    let status = dynamo_testkit::wait_exit(&mut node.child, "the node exits after SIGTERM").await;
    assert!(status.success(), "exit status {status:?}");
    let node = spawn_proc(dir.path(), "node-a", port, "buffered");
    wait_ready(&node.url()).await;
    assert!(get(&node.url(), "t", "k").await.is_some());
}

// Goal: the node id is bound to its volume: another id on the same data directory is
// refused at start.
#[tokio::test]
async fn a_volume_refuses_another_node_id() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let n = start_in_process(dir.path(), "node-a").await;
        n.shutdown().await;
    }
    let mut config = dynamo_storage::Config::for_dir(dir.path());
    config.node_id = Some("node-b".into());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let r = dynamo_storage::run(config, listener, tokio_util::sync::CancellationToken::new()).await;
    assert!(
        matches!(r, Err(dynamo_storage::StorageError::IdentityMismatch { .. })),
        "{r:?}"
    );
}
