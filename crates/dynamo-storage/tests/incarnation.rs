//! A dot is minted once, ever, through the real engine on fjall: a start after a stop that
//! was not clean is a new incarnation, so a copy's actor (which may have shown a dot a
//! crash lost) is not continued; a clean stop keeps it; and a copy that is deleted (a
//! delivered hint, a collected tombstone) takes its actor with it.

use dynamo_core::version::{ConflictRule, NewWrite};
use dynamo_core::{DotSet, NodeId, Partitioning};
use dynamo_storage::engine::{Durability, Engine, HintFor, KeyRef};
use dynamo_storage::metrics::StorageMetrics;

const K: KeyRef<'static> = KeyRef {
    bucket: "b",
    key: "k",
};
const LWW: ConflictRule = ConflictRule::LastWriterWins;

fn open(dir: &std::path::Path, durability: Durability) -> (Engine, StorageMetrics) {
    let metrics = StorageMetrics::new(&prometheus::Registry::new()).expect("metrics");
    let engine = Engine::open(
        dir,
        Partitioning::with_count(16).expect("q"),
        durability,
        Some(NodeId::new("node-0").expect("id")),
        metrics.clone(),
    )
    .expect("open");
    (engine, metrics)
}

/// Coordinates a write with `ctx`, as the node itself or as a fallback for `hint`;
/// returns the dot and the context answered.
fn write_with(e: &Engine, ctx: &DotSet, v: &str, hint: Option<&HintFor>) -> (dynamo_core::Dot, DotSet) {
    let (_, out) = e
        .coordinate_put(&K, ctx, NewWrite::value(v.into(), "text/plain", 1), LWW, hint)
        .expect("put");
    (out.dot, out.context)
}

// Goal: after a crash (the engine dropped without a clean stop) the node keeps its id and
// its data but is a new incarnation, and its next write uses a new actor, even with a
// context that saw the old one; in both durability modes.
#[test]
fn a_start_after_a_crash_is_a_new_incarnation() {
    for durability in [Durability::Sync, Durability::Buffered] {
        let dir = tempfile::tempdir().expect("dir");
        let (e, m) = open(dir.path(), durability);
        assert_eq!(m.unclean_restarts.get(), 0, "a new volume is not a restart");
        let first = e.identity().clone();
        let (dot, ctx) = write_with(&e, &DotSet::new(), "before", None);
        e.persist().expect("persist");
        drop(e); // no close_clean: a crash

        let (e, m) = open(dir.path(), durability);
        assert_eq!(m.unclean_restarts.get(), 1);
        assert_eq!(e.identity().node_id, first.node_id, "{durability:?}: same node");
        assert_ne!(
            e.identity().incarnation,
            first.incarnation,
            "{durability:?}: new incarnation"
        );
        assert!(e.get(&K).expect("get").is_some(), "{durability:?}: data kept");
        let (next, _) = write_with(&e, &ctx, "after", None);
        assert_ne!(
            next.actor, dot.actor,
            "{durability:?}: the crashed copy's actor is not continued"
        );
        assert_eq!(next.counter, 1);
    }
}

// Goal: a clean stop keeps the incarnation across the restart, and only the restart right
// after it: the marker is consumed, so a crash after that start is noticed again. Within
// one incarnation a copy continues its actor.
#[test]
fn a_clean_stop_keeps_the_incarnation_once() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, _) = open(dir.path(), Durability::Sync);
    let incarnation = e.identity().incarnation;
    let (d1, ctx) = write_with(&e, &DotSet::new(), "v", None);
    e.close_clean().expect("close");
    drop(e);

    let (e, m) = open(dir.path(), Durability::Sync);
    assert_eq!(
        e.identity().incarnation,
        incarnation,
        "clean stop: same incarnation"
    );
    assert_eq!(m.unclean_restarts.get(), 0);
    let (d2, _) = write_with(&e, &ctx, "v2", None);
    assert_eq!(
        (d2.actor, d2.counter),
        (d1.actor, 2),
        "the copy's actor continues"
    );
    drop(e); // a crash this time

    let (e, m) = open(dir.path(), Durability::Sync);
    assert_ne!(
        e.identity().incarnation,
        incarnation,
        "crash after a clean start: new incarnation"
    );
    assert_eq!(m.unclean_restarts.get(), 1);
}

// Goal (regression, issue 10): a fallback that coordinated a hinted write, delivered the
// hint and deleted it, mints a new dot for the next hinted write, not the same one again.
// Before, both writes got `(node actor, 1)`: the owner, having seen the first, dropped the
// second while the client was told it was stored.
#[test]
fn a_fallback_never_reuses_a_dot_after_its_hint_was_delivered() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, _) = open(dir.path(), Durability::Sync);
    let owner = HintFor {
        node: NodeId::new("node-9").expect("id"),
        address: "http://127.0.0.1:1".into(),
    };
    let (first, _) = write_with(&e, &DotSet::new(), "a", Some(&owner));
    let hints = e.pending_hints(&owner.node, 10, usize::MAX).expect("hints");
    assert_eq!(hints.len(), 1);
    assert!(e.remove_delivered_hint(&owner.node, &hints[0]).expect("remove"));
    let (second, _) = write_with(&e, &DotSet::new(), "b", Some(&owner));
    assert_ne!(second, first, "a delivered hint's dot is minted again");
    // The node's own copy of the same key mints with an actor of its own, too.
    let (own, _) = write_with(&e, &DotSet::new(), "c", None);
    assert!(own != first && own != second);
}

// Goal (regression, issue 10, Riak's KV679): once a tombstone is collected, the next write
// to the key on that node does not restart the old actor's counter.
#[test]
fn a_write_after_tombstone_gc_never_reuses_a_dot() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, _) = open(dir.path(), Durability::Sync);
    let (d1, ctx) = write_with(&e, &DotSet::new(), "v", None);
    let (_, out) = e
        .coordinate_put(&K, &ctx, NewWrite::tombstone(2), LWW, None)
        .expect("delete");
    let digest = e.get(&K).expect("get").expect("tombstone").digest();
    assert!(e.collect_tombstone(&K, digest, 3).expect("collect"));
    assert!(e.get(&K).expect("get").is_none());
    let (d3, _) = write_with(&e, &DotSet::new(), "again", None);
    assert_ne!(d3.actor, d1.actor, "the collected copy's actor is gone with it");
    assert_ne!(d3, out.dot);
}
