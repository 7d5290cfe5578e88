//! A storage node's side of a membership change, against a fake ring service: it fences
//! replica operations planned with an older ring, deletes the partitions a finished change
//! released from it (and says so), hands hints for a node that left to the partition's
//! holders, and serves a catch-up copy only once it knows the new ring.

mod common;

use std::collections::BTreeSet;

use common::fake_ring::{ring_of, state_of};
use common::*;
use dynamo_core::ring::{Member, Ring};
use dynamo_core::wire::cluster::Release;
use dynamo_core::wire::internal::{HintFor, ReplicaBatch, ReplicaBatchResult, ReplicaOp, ReplicaResult};
use dynamo_core::{DotSet, ErrorCode, NodeId, PartitionId, Partitioning, RingEpoch, key_hash};

/// Nodes with no background work of their own but what a test turns on.
async fn nodes(names: &[&str]) -> Followers {
    Followers::start(names, |config| {
        config.durability = dynamo_storage::engine::Durability::Buffered;
        config.anti_entropy_interval_ms = 0;
        config.gc_interval_ms = 3_600_000;
        config.hint_interval_ms = 100;
    })
    .await
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("id")
}

fn partition_of(key: &str) -> PartitionId {
    Partitioning::with_count(256)
        .expect("q")
        .partition_of(key_hash("b", key))
}

fn holders(ring: &Ring, p: PartitionId) -> Vec<NodeId> {
    ring.preference_list(p, 3).preference_list
}

async fn batch_at(url: &str, epoch: Option<u64>, ops: Vec<ReplicaOp>) -> Vec<ReplicaResult> {
    let resp = client()
        .post(format!("{url}/internal/v1/replicas"))
        .json(&ReplicaBatch {
            ops,
            ring_epoch: epoch.map(RingEpoch),
        })
        .send()
        .await
        .expect("send");
    assert!(resp.status().is_success(), "status {}", resp.status());
    resp.json::<ReplicaBatchResult>().await.expect("json").results
}

fn hinted_put(key: &str, owner: &str, address: &str) -> ReplicaOp {
    let mut op = put_op("b", key, b"held", DotSet::new());
    if let ReplicaOp::CoordinatePut { hint, .. } = &mut op {
        *hint = Some(HintFor {
            node: id(owner),
            address: address.to_owned(),
        });
    }
    op
}

fn get_op(key: &str) -> ReplicaOp {
    ReplicaOp::Get {
        bucket: bucket("b"),
        key: key.into(),
    }
}

fn is_stale(r: &ReplicaResult) -> bool {
    matches!(
        r,
        ReplicaResult::Error {
            code: ErrorCode::StaleRing,
            ..
        }
    )
}

// Goal: once a node knows ring 2, in which it holds nothing, operations planned with
// ring 1 are refused `stale_ring` (reads and writes alike, nothing applied), while a
// hinted write, an operation planned with ring 2, and an unfenced batch are applied; a
// node that still holds the partition takes ring-1 operations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_planned_for_an_older_ring_are_fenced_where_the_partition_moved() {
    let f = nodes(&["node-a", "node-b", "node-c", "node-d"]).await;
    let members: Vec<(&str, String)> = ["node-a", "node-b", "node-c", "node-d"]
        .iter()
        .enumerate()
        .map(|(i, n)| (*n, f.url(i)))
        .collect();
    let r1 = ring_of(&members);
    f.publish(state_of(1, &r1)).await;
    let r2 = r1.with_member_removed(&id("node-d")).expect("remove");
    f.publish(state_of(2, &r2)).await;

    let d = f.url(3);
    let r = batch_at(
        &d,
        Some(1),
        vec![
            put_op("b", "fenced", b"x", DotSet::new()),
            get_op("fenced"),
            hinted_put("hinted", "node-a", &f.url(0)),
        ],
    )
    .await;
    assert!(is_stale(&r[0]) && is_stale(&r[1]), "{r:?}");
    assert!(matches!(r[2], ReplicaResult::Put { .. }), "{r:?}");
    assert!(
        get(&d, "b", "fenced").await.is_none(),
        "the fenced write was not applied"
    );

    let r = batch_at(&d, Some(2), vec![put_op("b", "current", b"x", DotSet::new())]).await;
    assert!(
        matches!(r[0], ReplicaResult::Put { .. }),
        "planned with the node's ring: {r:?}"
    );
    let r = batch_at(&d, None, vec![put_op("b", "unfenced", b"x", DotSet::new())]).await;
    assert!(matches!(r[0], ReplicaResult::Put { .. }), "{r:?}");

    // node-a holds every partition of the three-node ring 2.
    let r = batch_at(&f.url(0), Some(1), vec![put_op("b", "kept", b"x", DotSet::new())]).await;
    assert!(matches!(r[0], ReplicaResult::Put { .. }), "{r:?}");
    assert_eq!(
        metric(
            &d,
            "dynamo_storage_ops_total{code=\"stale_ring\",op=\"coordinate_put\"}"
        )
        .await,
        1.0
    );
    f.shutdown().await;
}

// Goal: a release deletes exactly the node's copies of the released partitions that it
// no longer holds (a listed partition it holds again stays), counts them, and is
// acknowledged to the ring service, which drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_deletes_exactly_the_released_partitions_and_is_acknowledged() {
    let f = nodes(&["node-a", "node-b", "node-c", "node-d"]).await;
    let urls: Vec<String> = (0..4).map(|i| f.url(i)).collect();
    let r1 = ring_of(&[
        ("node-a", urls[0].clone()),
        ("node-b", urls[1].clone()),
        ("node-c", urls[2].clone()),
    ]);
    f.publish(state_of(1, &r1)).await;
    let a = &urls[0];
    let keys: Vec<String> = (0..300).map(|i| format!("k{i}")).collect();
    for chunk in keys.chunks(100) {
        let ops = chunk
            .iter()
            .map(|k| put_op("b", k, b"v", DotSet::new()))
            .collect();
        batch(a, ops).await;
    }
    let r2 = r1
        .with_member_added(
            id("node-d"),
            Member {
                zone: None,
                address: Some(urls[3].clone()),
            },
        )
        .expect("join");
    let lost: BTreeSet<PartitionId> = (0..256)
        .map(PartitionId)
        .filter(|&p| !holders(&r2, p).contains(&id("node-a")))
        .collect();
    let kept_listed = (0..256)
        .map(PartitionId)
        .find(|p| !lost.contains(p) && keys.iter().any(|k| partition_of(k) == *p))
        .expect("a held partition with keys");
    let mut state = state_of(2, &r2);
    state.releases = vec![Release {
        node: id("node-a"),
        epoch: r2.epoch(),
        partitions: lost.iter().copied().chain([kept_listed]).collect(),
    }];
    f.publish(state).await;

    eventually("the release acknowledged", || async {
        f.ring
            .releases_done()
            .iter()
            .any(|d| d.node == id("node-a") && d.epoch == r2.epoch())
    })
    .await;
    let mut deleted = 0;
    for k in &keys {
        let here = get(a, "b", k).await.is_some();
        let released = lost.contains(&partition_of(k));
        assert_eq!(here, !released, "{k} in partition {}", partition_of(k).0);
        deleted += usize::from(released);
    }
    assert!(deleted > 0, "some keys were in released partitions");
    assert_eq!(
        metric(a, "dynamo_storage_released_objects_total").await,
        deleted as f64
    );
    // The Merkle trees follow: a released partition's tree is empty again.
    let p = lost
        .iter()
        .find(|p| keys.iter().any(|k| partition_of(k) == **p))
        .expect("p");
    let (released, empty) = (summary(a, p.0).await, summary(&urls[3], p.0).await);
    assert_eq!(
        released.root, empty.root,
        "the released partition's tree is an empty node's"
    );
    f.shutdown().await;
}

// Goal: a hint held for a node that is no longer a member is delivered to every holder
// of its partition under the current ring, then dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hints_for_a_node_that_left_go_to_the_partitions_holders() {
    let f = nodes(&["node-a", "node-b", "node-c", "node-d"]).await;
    let urls: Vec<String> = (0..4).map(|i| f.url(i)).collect();
    let members: Vec<(&str, String)> = ["node-a", "node-b", "node-c", "node-d"]
        .iter()
        .zip(&urls)
        .map(|(n, u)| (*n, u.clone()))
        .collect();
    let r1 = ring_of(&members);
    f.publish(state_of(1, &r1)).await;
    // The hint names a node that left; its address no longer answers.
    let r = batch(
        &urls[3],
        vec![hinted_put("orphan", "node-gone", "http://127.0.0.1:9")],
    )
    .await;
    assert!(matches!(r.results[0], ReplicaResult::Put { .. }), "{r:?}");

    let want = holders(&r1, partition_of("orphan"));
    for h in &want {
        let i = members.iter().position(|(n, _)| id(n) == *h).expect("member");
        let url = urls[i].clone();
        eventually("the hint reached a holder", || async {
            get(&url, "b", "orphan").await.is_some()
        })
        .await;
    }
    eventually("the hint is dropped", || async {
        metric(&urls[3], "dynamo_storage_hints_pending").await == 0.0
    })
    .await;
    f.shutdown().await;
}

// Goal: a catch-up copy (`min_epoch`) is served only once the source knows that ring:
// asked before, the scan waits and answers once the ring arrives; asked for a ring that
// never comes, it answers `503 ring_behind`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catch_up_scan_waits_for_the_new_ring() {
    let f = nodes(&["node-a", "node-b"]).await;
    let r1 = ring_of(&[("node-a", f.url(0))]);
    f.publish(state_of(1, &r1)).await;
    let a = f.url(0);
    let scan = |epoch: u64| {
        let url = format!("{a}/internal/v1/partitions/0/objects?min_epoch={epoch}");
        async move { client().get(url).send().await.expect("send") }
    };
    let waiting = tokio::spawn(scan(2));
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "the scan waits for ring 2");
    let r2 = r1
        .with_member_added(
            id("node-b"),
            Member {
                zone: None,
                address: Some(f.url(1)),
            },
        )
        .expect("join");
    f.publish(state_of(2, &r2)).await;
    let resp = waiting.await.expect("join");
    assert!(resp.status().is_success(), "{}", resp.status());

    let resp = scan(3).await;
    assert_eq!(resp.status().as_u16(), 503);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert_eq!(body["error"]["code"], "ring_behind", "{body}");
    f.shutdown().await;
}

// Goal: while a node knows of a membership change in progress it approves no tombstone
// collection (a new holder may have copied the value the tombstone deletes); once the
// change is over, the same question is approved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_tombstone_collection_is_approved_during_a_change() {
    use dynamo_core::wire::cluster::{ChangeKindName, ChangeSummary};
    let f = nodes(&["node-a"]).await;
    let a = f.url(0);
    let r1 = ring_of(&[("node-a", a.clone())]);
    f.publish(state_of(1, &r1)).await;
    let put = write(&a, "b", "gone", Some(b"v"), DotSet::new()).await;
    let digest = write(&a, "b", "gone", None, put.context().clone()).await.digest();
    let status = || tombstone_status(&a, "b", "gone", digest);
    assert_eq!(status().await, (true, false));
    let mut changing = state_of(2, &r1);
    changing.change = Some(ChangeSummary {
        kind: ChangeKindName::Join,
        node: id("node-z"),
        replacement: None,
        phase: "copy".into(),
        epoch: RingEpoch(2),
        failed: None,
    });
    f.ring.publish(changing);
    eventually("the node knows of the change", || async {
        status().await == (false, false)
    })
    .await;
    f.ring.publish(state_of(3, &r1));
    eventually("approved again after the change", || async {
        status().await == (true, false)
    })
    .await;
    f.shutdown().await;
}
