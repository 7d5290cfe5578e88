//! Tombstone GC across three in-process nodes that learn their ring from a fake ring
//! service: a tombstone is collected only where every replica holds it (or collected it),
//! so a deleted value can never come back from a replica that missed the delete.

mod common;

use common::fake_ring::{ring_of, state_of};
use common::*;
use dynamo_core::DotSet;
use dynamo_core::version::VersionedObject;

/// Short enough for a test, long enough that the writes of a scenario all land first.
const GRACE_MS: u64 = 300;
const GC_INTERVAL_MS: u64 = 100;
const COLLECTED: &str = "dynamo_storage_tombstones_collected_total";
const ROUNDS: &str = "dynamo_storage_gc_rounds_total";
const BLOCKED: &str = "dynamo_storage_tombstones_blocked_total";

/// Three nodes `node-a/b/c` whose ring (every key's preference list is all three, n = 3)
/// comes from a fake ring service. `dead_c`: node-c is in the ring at an address where
/// nothing answers, and is not started.
async fn three(dead_c: bool) -> Followers {
    let names = ["node-a", "node-b", "node-c"];
    let started = if dead_c { 2 } else { 3 };
    let c = Followers::start(&names[..started], |config| {
        config.tombstone_grace_ms = GRACE_MS;
        config.gc_interval_ms = GC_INTERVAL_MS;
        config.hint_interval_ms = 100;
    })
    .await;
    let mut members: Vec<(&str, String)> = names[..started]
        .iter()
        .copied()
        .zip(c.nodes.iter().map(InProcess::url))
        .collect();
    if dead_c {
        members.push(("node-c", format!("http://127.0.0.1:{}", free_port())));
    }
    c.publish(state_of(1, &ring_of(&members))).await;
    c
}

/// Coordinates a write (or a delete, with `value = None`) at `url`; returns the object.
async fn write(url: &str, key: &str, value: Option<&[u8]>, context: DotSet) -> VersionedObject {
    common::write(url, "gc", key, value, context).await
}

async fn replicate(url: &str, key: &str, object: &VersionedObject) {
    common::replicate(url, "gc", key, object).await;
}

async fn status(url: &str, key: &str, digest: u128) -> (bool, bool) {
    tombstone_status(url, "gc", key, digest).await
}

/// Waits until every node in `urls` has finished `rounds` more GC rounds, all of them
/// started after the grace of anything written so far had passed.
async fn wait_rounds(urls: &[String], rounds: f64) {
    tokio::time::sleep(std::time::Duration::from_millis(GRACE_MS + 50)).await;
    for url in urls {
        let start = metric(url, ROUNDS).await;
        eventually("gc rounds pass", || async {
            metric(url, ROUNDS).await >= start + rounds
        })
        .await;
    }
}

// Goal: a tombstone held identically by all three replicas is collected on all three,
// eventually: the key is gone everywhere, each node counts one collection, remembers it
// (answers `collected`), and the partition's Merkle tree is back to empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_held_by_all_three_is_collected_on_all_three() {
    let c = three(false).await;
    let v = write(&c.url(0), "k", Some(b"value"), DotSet::new()).await;
    for i in 1..3 {
        replicate(&c.url(i), "k", &v).await;
    }
    let t = write(&c.url(0), "k", None, v.context().clone()).await;
    assert!(t.is_deleted());
    for i in 1..3 {
        replicate(&c.url(i), "k", &t).await;
    }
    for i in 0..3 {
        let url = c.url(i);
        eventually("collected everywhere", || async {
            get(&url, "gc", "k").await.is_none()
        })
        .await;
    }
    let p = dynamo_core::Partitioning::with_count(256)
        .expect("q")
        .partition_of(dynamo_core::key_hash("gc", "k"));
    for i in 0..3 {
        let url = c.url(i);
        assert_eq!(metric(&url, COLLECTED).await, 1.0);
        assert_eq!(status(&url, "k", t.digest()).await, (false, true));
        assert_eq!(summary(&url, p.0).await.root, 0, "node {i}");
    }
    c.shutdown().await;
}

// Goal (regression, issue 10; found by the fault checker, seed 2 on four nodes): once a
// tombstone is collected, a copy older than the delete that arrives late (a fallback's
// hint delivered after the owner's partition heals, a replicate or read repair still in
// flight) does not bring the deleted value back; and a write after the collection
// descends from the delete, so the old copy stays superseded after it too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_older_than_a_collected_tombstone_stays_deleted() {
    let c = three(false).await;
    let v = write(&c.url(0), "k", Some(b"old"), DotSet::new()).await;
    let t = write(&c.url(0), "k", None, v.context().clone()).await;
    for i in 1..3 {
        replicate(&c.url(i), "k", &t).await;
    }
    for i in 0..3 {
        let url = c.url(i);
        eventually("collected everywhere", || async {
            get(&url, "gc", "k").await.is_none()
        })
        .await;
    }
    for i in 0..3 {
        replicate(&c.url(i), "k", &v).await;
        assert_eq!(
            get(&c.url(i), "gc", "k").await,
            None,
            "node {i}: the old value is back"
        );
    }
    let blind = write(&c.url(1), "k", Some(b"new"), DotSet::new()).await;
    assert!(
        blind.context().covers(t.context()),
        "a write after the collection descends from the delete"
    );
    replicate(&c.url(1), "k", &v).await;
    let after = get(&c.url(1), "gc", "k").await.expect("the new write");
    let values: Vec<&[u8]> = after.live_siblings().map(|s| s.value.as_slice()).collect();
    assert_eq!(values, [b"new".as_slice()], "only the write after the delete");
    c.shutdown().await;
}

// Goal: a tombstone that one replica lacks is collected nowhere, however many GC rounds
// pass: node-c still holds the old value of `k1` (it missed the delete) and never had
// `k2`. Once node-c gets the tombstones, they are collected everywhere (so the first part
// is not vacuous). Breaking the rule (approving a peer that answers neither) makes this
// test fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_one_replica_lacks_is_not_collected_anywhere() {
    let c = three(false).await;
    let v = write(&c.url(0), "k1", Some(b"old value"), DotSet::new()).await;
    for i in 1..3 {
        replicate(&c.url(i), "k1", &v).await;
    }
    let t1 = write(&c.url(0), "k1", None, v.context().clone()).await;
    replicate(&c.url(1), "k1", &t1).await;
    let t2 = write(&c.url(0), "k2", None, DotSet::new()).await;
    replicate(&c.url(1), "k2", &t2).await;

    let ab = [c.url(0), c.url(1)];
    wait_rounds(&ab, 5.0).await;
    for url in &ab {
        assert_eq!(
            get(url, "gc", "k1").await.as_ref(),
            Some(&t1),
            "{url} keeps the tombstone"
        );
        assert_eq!(
            get(url, "gc", "k2").await.as_ref(),
            Some(&t2),
            "{url} keeps the tombstone"
        );
        assert!(
            metric(url, BLOCKED).await >= 2.0,
            "the tombstones were checked, and blocked"
        );
    }
    let on_c = get(&c.url(2), "gc", "k1").await.expect("c holds the old value");
    assert_eq!(
        on_c.live_siblings().next().map(|s| s.value.clone()),
        Some(b"old value".to_vec())
    );
    assert_eq!(get(&c.url(2), "gc", "k2").await, None);
    assert_eq!(status(&c.url(2), "k1", t1.digest()).await, (false, false));
    for i in 0..3 {
        assert_eq!(metric(&c.url(i), COLLECTED).await, 0.0, "node {i}");
    }

    // Node-c gets the delete: now every replica holds the same tombstones.
    replicate(&c.url(2), "k1", &t1).await;
    replicate(&c.url(2), "k2", &t2).await;
    for i in 0..3 {
        let url = c.url(i);
        eventually("collected everywhere once all hold it", || async {
            get(&url, "gc", "k1").await.is_none() && get(&url, "gc", "k2").await.is_none()
        })
        .await;
        assert_eq!(metric(&url, COLLECTED).await, 2.0, "node {i}");
    }
    c.shutdown().await;
}

// Goal: a tombstone next to a live sibling (a write concurrent with the delete) is not
// collected: the key is not deleted, so GC leaves it on every replica, round after round.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_with_a_newer_live_sibling_is_not_collected() {
    let c = three(false).await;
    let v = write(&c.url(0), "k", Some(b"v0"), DotSet::new()).await;
    for i in 1..3 {
        replicate(&c.url(i), "k", &v).await;
    }
    // The delete at node-a saw v0; a blind write at node-b did not see the delete.
    let t = write(&c.url(0), "k", None, v.context().clone()).await;
    let w = write(&c.url(1), "k", Some(b"newer"), DotSet::new()).await;
    for i in 0..3 {
        replicate(&c.url(i), "k", &t).await;
        replicate(&c.url(i), "k", &w).await;
    }
    let merged = get(&c.url(0), "gc", "k").await.expect("stored");
    assert!(
        merged.siblings().iter().any(|s| s.tombstone),
        "the tombstone is a sibling"
    );
    let live: Vec<Vec<u8>> = merged.live_siblings().map(|s| s.value.clone()).collect();
    assert_eq!(live, vec![b"newer".to_vec()]);

    let urls: Vec<String> = (0..3).map(|i| c.url(i)).collect();
    wait_rounds(&urls, 5.0).await;
    for url in &urls {
        assert_eq!(get(url, "gc", "k").await.as_ref(), Some(&merged), "{url}");
        assert_eq!(metric(url, COLLECTED).await, 0.0);
    }
    c.shutdown().await;
}

// Goal: a replica that does not answer blocks collection: node-c is in the ring but
// nothing listens at its address, so the tombstone held by node-a and node-b stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tombstone_is_not_collected_while_a_replica_does_not_answer() {
    let c = three(true).await;
    let t = write(&c.url(0), "k", None, DotSet::new()).await;
    replicate(&c.url(1), "k", &t).await;
    let ab = [c.url(0), c.url(1)];
    wait_rounds(&ab, 3.0).await;
    for url in &ab {
        assert_eq!(get(url, "gc", "k").await.as_ref(), Some(&t), "{url}");
        assert_eq!(metric(url, COLLECTED).await, 0.0);
        assert!(metric(url, BLOCKED).await >= 1.0);
    }
    c.shutdown().await;
}
