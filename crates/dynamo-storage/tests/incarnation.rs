//! Actor ids are node incarnations: a start after a stop that was not clean draws a new
//! one, so a dot the node may have shown before a crash lost it is never minted again for
//! another value. A clean stop keeps the actor. Drives the real engine on fjall.

use dynamo_core::version::{NewWrite, Resolution};
use dynamo_core::{DotSet, NodeId, Partitioning};
use dynamo_storage::engine::{Durability, Engine, KeyRef};
use dynamo_storage::metrics::StorageMetrics;

const K: KeyRef<'static> = KeyRef {
    bucket: "b",
    key: "k",
};
const LWW: Resolution = Resolution::LastWriterWins;

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

fn write(e: &Engine, v: &str) -> dynamo_core::Dot {
    let (_, out) = e
        .coordinate_put(
            &K,
            &DotSet::new(),
            NewWrite::value(v.into(), "text/plain", 1),
            LWW,
            None,
        )
        .expect("put");
    out.dot
}

// Goal: after a crash (the engine dropped without a clean stop) the node keeps its id and
// its data but mints with a new actor; in both durability modes.
#[test]
fn a_start_after_a_crash_is_a_new_incarnation() {
    for durability in [Durability::Sync, Durability::Buffered] {
        let dir = tempfile::tempdir().expect("dir");
        let (e, m) = open(dir.path(), durability);
        assert_eq!(m.unclean_restarts.get(), 0, "a new volume is not a restart");
        let first = e.identity().clone();
        let dot = write(&e, "before");
        assert_eq!(dot.actor, first.actor);
        e.persist().expect("persist");
        drop(e); // no close_clean: a crash

        let (e, m) = open(dir.path(), durability);
        assert_eq!(m.unclean_restarts.get(), 1);
        assert_eq!(e.identity().node_id, first.node_id, "{durability:?}: same node");
        assert_ne!(e.identity().actor, first.actor, "{durability:?}: new actor");
        assert!(e.get(&K).expect("get").is_some(), "{durability:?}: data kept");
        let next = write(&e, "after");
        assert_eq!(next.actor, e.identity().actor);
        assert_ne!(next, dot, "the lost-or-not dot is never minted again");
    }
}

// Goal: a clean stop keeps the actor across the restart, and only the restart right after
// it: the marker is consumed, so a crash after that start is noticed again.
#[test]
fn a_clean_stop_keeps_the_actor_once() {
    let dir = tempfile::tempdir().expect("dir");
    let (e, _) = open(dir.path(), Durability::Sync);
    let actor = e.identity().actor;
    write(&e, "v");
    e.close_clean().expect("close");
    drop(e);

    let (e, m) = open(dir.path(), Durability::Sync);
    assert_eq!(e.identity().actor, actor, "clean stop: same actor");
    assert_eq!(m.unclean_restarts.get(), 0);
    drop(e); // a crash this time

    let (e, m) = open(dir.path(), Durability::Sync);
    assert_ne!(e.identity().actor, actor, "crash after a clean start: new actor");
    assert_eq!(m.unclean_restarts.get(), 1);
}
