//! Anti-entropy between two in-process nodes that learn their ring from a fake ring
//! service: diverged replicas converge without a read, both ways, moving only the keys
//! that differ, and keys of a bucket the pair does not both replicate stay put.

mod common;

use std::collections::BTreeMap;

use common::fake_ring::{ring_of, state_of};
use common::*;
use dynamo_core::DotSet;
use dynamo_core::version::VersionedObject;
use dynamo_core::wire::BucketProps;
use dynamo_core::wire::cluster::BucketRecord;

const PASSES: &str = "dynamo_storage_anti_entropy_passes_total";
const PULLED: &str = "dynamo_storage_anti_entropy_keys_total{direction=\"pulled\"}";
const PUSHED: &str = "dynamo_storage_anti_entropy_keys_total{direction=\"pushed\"}";
const IN_SYNC: &str = "dynamo_storage_anti_entropy_exchanges_total{result=\"in_sync\"}";

/// Two nodes, `node-a` and `node-b`, with anti-entropy every 100 ms but no ring until
/// [`publish`]: passes find nothing to do until then, so the test sets up the divergence
/// first.
async fn two() -> Followers {
    Followers::start(&["node-a", "node-b"], |config| {
        config.durability = dynamo_storage::engine::Durability::Buffered;
        config.anti_entropy_interval_ms = 100;
        config.anti_entropy_tranquility = 0;
        // No GC in this test: tombstones must stay to be compared.
        config.gc_interval_ms = 3_600_000;
    })
    .await
}

/// Publishes the ring of `two` (both nodes in every preference list) with `buckets`.
async fn publish(two: &Followers, buckets: &[(&str, u8)]) {
    let members = [("node-a", two.url(0)), ("node-b", two.url(1))];
    let mut state = state_of(1, &ring_of(&members));
    for (name, n) in buckets {
        state.buckets.insert(
            bucket(name),
            BucketRecord {
                props: BucketProps {
                    n: *n,
                    r: 1,
                    w: 1,
                    ..BucketProps::default()
                },
                has_data: true,
            },
        );
    }
    two.publish(state).await;
}

/// Every key of bucket `b` named in `keys`, as node `url` holds it.
async fn snapshot(url: &str, b: &str, keys: &[String]) -> BTreeMap<String, Option<VersionedObject>> {
    let mut out = BTreeMap::new();
    for k in keys {
        out.insert(k.clone(), get(url, b, k).await);
    }
    out
}

// Goal: two replicas that diverged every way (keys only on one side, concurrent writes
// on both, a delete that reached one) converge through anti-entropy alone: afterwards
// both hold the same version set of every key (the union: siblings for the concurrent
// writes, the tombstone for the delete), exactly the differing keys moved (8 pulled and
// 10 pushed by node-a, which initiates), and the next pass finds the trees equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn diverged_replicas_converge_moving_only_the_differing_keys() {
    let two = two().await;
    let (a, b) = (two.url(0), two.url(1));
    let mut keys = Vec::new();
    // 300 keys both hold alike.
    for i in 0..300 {
        let k = format!("same-{i}");
        let o = write(&a, "ae", &k, Some(format!("v{i}").as_bytes()), DotSet::new()).await;
        replicate(&b, "ae", &k, &o).await;
        keys.push(k);
    }
    // 7 only on a, 5 only on b.
    for i in 0..7 {
        let k = format!("only-a-{i}");
        write(&a, "ae", &k, Some(b"a"), DotSet::new()).await;
        keys.push(k);
    }
    for i in 0..5 {
        let k = format!("only-b-{i}");
        write(&b, "ae", &k, Some(b"b"), DotSet::new()).await;
        keys.push(k);
    }
    // 2 written concurrently on both (siblings once merged), 1 deleted on a only.
    for i in 0..2 {
        let k = format!("both-{i}");
        write(&a, "ae", &k, Some(b"from a"), DotSet::new()).await;
        write(&b, "ae", &k, Some(b"from b"), DotSet::new()).await;
        keys.push(k);
    }
    let k = "deleted".to_owned();
    let o = write(&a, "ae", &k, Some(b"doomed"), DotSet::new()).await;
    replicate(&b, "ae", &k, &o).await;
    write(&a, "ae", &k, None, o.context().clone()).await;
    keys.push(k);

    let passes = metric(&a, PASSES).await;
    publish(&two, &[("ae", 3)]).await;
    // Two passes after the ring is known: the first repairs, the second finds nothing.
    eventually("two anti-entropy passes", || async {
        metric(&a, PASSES).await >= passes + 2.0
    })
    .await;

    let on_a = snapshot(&a, "ae", &keys).await;
    let on_b = snapshot(&b, "ae", &keys).await;
    for k in &keys {
        let (x, y) = (&on_a[k], &on_b[k]);
        assert!(x.is_some(), "{k} missing on node-a");
        assert_eq!(
            x.as_ref().map(VersionedObject::digest),
            y.as_ref().map(VersionedObject::digest),
            "{k} differs"
        );
    }
    for i in 0..2 {
        let k = format!("both-{i}");
        assert_eq!(on_a[&k].as_ref().map(|o| o.siblings().len()), Some(2), "{k}");
    }
    assert!(on_b["deleted"].as_ref().is_some_and(VersionedObject::is_deleted));
    // Pulled by a: the 5 only on b, the 2 concurrent ones and the deleted key (b's copy
    // differs; that a's tombstone already covers it is known only after the merge);
    // pushed: the 7 only on a, the 2 merged concurrent keys and the delete.
    assert_eq!(metric(&a, PULLED).await, 8.0);
    assert_eq!(metric(&a, PUSHED).await, 10.0);
    // node-b initiates nothing (its id sorts last), so it moved nothing itself.
    assert_eq!(metric(&b, PULLED).await + metric(&b, PUSHED).await, 0.0);
    let settled = metric(&a, IN_SYNC).await;
    let now = metric(&a, PASSES).await;
    eventually("another pass", || async { metric(&a, PASSES).await >= now + 1.0 }).await;
    assert!(metric(&a, IN_SYNC).await > settled, "in sync after the repair");
    assert_eq!(metric(&a, PULLED).await, 8.0, "nothing more to move");
    two.shutdown().await;
}

// Goal: a key of a bucket whose n leaves one of the pair out is not copied to it: with
// n = 1 only the first node of the preference list holds the bucket's keys, so
// anti-entropy between the two leaves the key where it was written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_of_a_bucket_the_pair_does_not_share_stay_put() {
    let two = two().await;
    let (a, b) = (two.url(0), two.url(1));
    write(&a, "solo", "k", Some(b"one copy"), DotSet::new()).await;
    write(&a, "ae", "shared", Some(b"two copies"), DotSet::new()).await;
    let passes = metric(&a, PASSES).await;
    publish(&two, &[("solo", 1), ("ae", 2)]).await;
    eventually("the shared key is copied", || async {
        get(&b, "ae", "shared").await.is_some()
    })
    .await;
    eventually("two passes", || async {
        metric(&a, PASSES).await >= passes + 2.0
    })
    .await;
    assert!(get(&b, "solo", "k").await.is_none(), "an n = 1 key was copied");
    two.shutdown().await;
}
