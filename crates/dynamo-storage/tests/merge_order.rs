//! Replica merge through the storage engine converges whatever the order (and repetition)
//! of delivery: a property test driving the real engine on fjall.

use dynamo_core::version::{ConflictRule, NewWrite, VersionedObject};
use dynamo_core::{ActorId, DotSet, PartitionId, Partitioning, key_hash};
use dynamo_storage::engine::{Durability, Engine, KeyRef};
use dynamo_storage::metrics::StorageMetrics;
use proptest::prelude::*;

const SIB: ConflictRule = ConflictRule::Siblings { max_siblings: 1000 };

/// A random history at three replicas: client writes through any replica (blind or with
/// the context read from any replica), deletes, and replica syncs.
fn arb_copies() -> impl Strategy<Value = Vec<VersionedObject>> {
    let step = (
        0usize..3,
        proptest::option::of(0usize..3),
        any::<bool>(),
        proptest::option::of(0usize..3),
    );
    proptest::collection::vec(step, 1..16).prop_map(|steps| {
        let mut r = vec![VersionedObject::new(); 3];
        for (t, (at, read_from, delete, sync_from)) in steps.into_iter().enumerate() {
            if let Some(from) = sync_from {
                let src = r[from].clone();
                r[at].sync(&src, SIB);
                continue;
            }
            let ctx = read_from
                .map(|i| r[i].context().clone())
                .unwrap_or_else(DotSet::new);
            let w = if delete {
                NewWrite::tombstone(t as u64)
            } else {
                NewWrite::value(format!("v{t}").into_bytes(), "text/plain", t as u64)
            };
            r[at].put(&ctx, ActorId(at as u64 + 1), w, SIB).expect("put");
        }
        r
    })
}

fn engine(dir: &std::path::Path) -> Engine {
    let metrics = StorageMetrics::new(&prometheus::Registry::new()).expect("metrics");
    let parts = Partitioning::with_count(16).expect("q");
    Engine::open(
        dir,
        parts,
        Durability::Buffered,
        Some(dynamo_core::NodeId::new("n").expect("id")),
        metrics,
    )
    .expect("open")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    // Goal: two nodes receiving the same copies in different orders, some twice, store
    // the same version set and have the same Merkle root, equal to the core merge.
    #[test]
    fn merging_in_any_order_converges(
        copies in arb_copies(),
        order_a in Just(vec![0usize, 1, 2, 0]).prop_shuffle(),
        order_b in Just(vec![2usize, 1, 0, 1]).prop_shuffle(),
    ) {
        let (da, db) = (tempfile::tempdir().expect("dir"), tempfile::tempdir().expect("dir"));
        let (a, b) = (engine(da.path()), engine(db.path()));
        let k = KeyRef { bucket: "b", key: "k" };
        for &i in &order_a {
            a.replicate(&k, &copies[i], SIB, None).expect("replicate");
        }
        for &i in &order_b {
            b.replicate(&k, &copies[i], SIB, None).expect("replicate");
        }
        let mut expected = VersionedObject::new();
        for c in &copies {
            expected.sync(c, SIB);
        }
        let got_a = a.get(&k).expect("get");
        let got_b = b.get(&k).expect("get");
        prop_assert_eq!(&got_a, &got_b);
        if !expected.is_empty() {
            prop_assert_eq!(got_a.as_ref(), Some(&expected));
        }
        let p = Partitioning::with_count(16).expect("q").partition_of(key_hash("b", "k"));
        let root = |e: &Engine, p: PartitionId| e.merkle_tree(p).map(|t| t.root());
        prop_assert_eq!(root(&a, p), root(&b, p));
    }
}
