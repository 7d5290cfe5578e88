//! Idempotency records through the real engine on fjall: a repeat of a remembered write
//! (same claim id and fingerprint, inside the window) applies nothing and answers as the
//! first did; the same id for another request is refused; a replica that got the record
//! with the write answers a repeat the same way; records survive a restart, and leave
//! with their window.

use dynamo_core::version::{ConflictRule, NewWrite};
use dynamo_core::wire::internal::IdempotencyClaim;
use dynamo_core::{DotSet, NodeId, Partitioning};
use dynamo_storage::engine::{Claim, Coordinated, Durability, Engine, KeyRef};
use dynamo_storage::error::StorageError;
use dynamo_storage::metrics::StorageMetrics;

const K: KeyRef<'static> = KeyRef {
    bucket: "b",
    key: "k",
};
const SIB: ConflictRule = ConflictRule::Siblings { max_siblings: 16 };
const WINDOW_MS: u64 = 1_000;
const CLAIM: IdempotencyClaim = IdempotencyClaim {
    id: 7,
    fingerprint: 70,
};

fn open(dir: &std::path::Path, id: &str) -> Engine {
    let metrics = StorageMetrics::new(&prometheus::Registry::new()).expect("metrics");
    Engine::open(
        dir,
        Partitioning::with_count(16).expect("q"),
        Durability::Sync,
        Some(NodeId::new(id).expect("id")),
        metrics,
    )
    .expect("open")
}

/// Coordinates `v` with `claim` at time `now_ms`.
fn put(e: &Engine, v: &str, claim: IdempotencyClaim, now_ms: u64) -> Result<Coordinated, StorageError> {
    e.coordinate_idempotent(
        &K,
        &DotSet::new(),
        NewWrite::value(v.into(), "text/plain", now_ms),
        SIB,
        None,
        Some(Claim {
            claim,
            window_ms: WINDOW_MS,
            now_ms,
        }),
    )
}

fn values(e: &Engine) -> Vec<String> {
    e.get(&K)
        .expect("get")
        .map(|o| {
            o.live_siblings()
                .map(|s| String::from_utf8_lossy(&s.value).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

// Goal: inside the window a repeat applies nothing (one sibling, no new dot) and gets the
// first write's dot and context; the same id with another fingerprint is refused and
// changes nothing; once the window has passed the same claim is a new write.
#[test]
fn a_repeat_inside_the_window_applies_nothing_and_answers_as_the_first() {
    let dir = tempfile::tempdir().expect("dir");
    let e = open(dir.path(), "node-0");
    let first = put(&e, "v", CLAIM, 100).expect("first");
    assert!(!first.replayed);
    let record = first.record.clone().expect("a claim gives a record");
    assert_eq!((record.dot, record.created_ms), (first.outcome.dot, 100));

    let again = put(&e, "v", CLAIM, 100 + WINDOW_MS - 1).expect("repeat");
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome, "answered as the first was");
    assert_eq!(again.object, first.object, "nothing applied");
    assert_eq!(values(&e), ["v"]);
    assert_eq!(e.metrics().idempotent_replays.get(), 1);

    let other = IdempotencyClaim {
        fingerprint: 71,
        ..CLAIM
    };
    assert!(matches!(
        put(&e, "w", other, 200),
        Err(StorageError::IdempotencyKeyReused)
    ));
    assert_eq!(values(&e), ["v"], "a refused reuse changes nothing");

    let late = put(&e, "v", CLAIM, 100 + WINDOW_MS).expect("after the window");
    assert!(!late.replayed);
    assert_ne!(late.outcome.dot, first.outcome.dot);
    assert_eq!(
        values(&e),
        ["v", "v"],
        "a new write beside the first (no context)"
    );
}

// Goal: a replica that merged the write with its record answers a repeat that it
// coordinates itself (the coordinating node was down on the retry) with the first dot
// and context, and stores nothing new; one merged without the record would mint again.
#[test]
fn a_replica_that_holds_the_record_answers_a_repeat() {
    let (da, db, dc) = (
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    );
    let (a, b, c) = (
        open(da.path(), "node-a"),
        open(db.path(), "node-b"),
        open(dc.path(), "node-c"),
    );
    let first = put(&a, "v", CLAIM, 100).expect("first");
    b.replicate_with_record(&K, &first.object, SIB, None, first.record.as_ref())
        .expect("replicate with record");
    c.replicate(&K, &first.object, SIB, None)
        .expect("replicate without");

    let at_b = put(&b, "v", CLAIM, 150).expect("repeat at b");
    assert!(at_b.replayed);
    assert_eq!(at_b.outcome, first.outcome);
    assert_eq!(values(&b), ["v"]);

    let at_c = put(&c, "v", CLAIM, 150).expect("repeat at c");
    assert!(
        !at_c.replayed,
        "no record, no memory: the limit docs/api.md states"
    );
    assert_eq!(values(&c), ["v", "v"]);
}

// Goal: records are on disk: a restart (clean or not) still answers a repeat; the purge
// removes exactly the records older than its cut, after which the claim is new.
#[test]
fn records_survive_a_restart_and_are_purged_after_their_window() {
    let dir = tempfile::tempdir().expect("dir");
    let e = open(dir.path(), "node-0");
    let first = put(&e, "v", CLAIM, 100).expect("first");
    e.persist().expect("persist");
    drop(e); // a crash

    let e = open(dir.path(), "node-0");
    let again = put(&e, "v", CLAIM, 200).expect("repeat after restart");
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome);

    assert_eq!(
        e.purge_idempotency_records(100, None, 10).expect("purge"),
        (0, None)
    );
    assert_eq!(
        e.purge_idempotency_records(101, None, 10).expect("purge"),
        (1, None)
    );
    let after = put(&e, "v", CLAIM, 300).expect("after the purge");
    assert!(!after.replayed);
}

// Goal: `replay` (what a conditional write whose precondition failed asks) answers a
// remembered write as a repeat of its coordinate would, applies nothing, and answers
// `None` for a claim it does not remember (or out of its window), and refuses another
// fingerprint.
#[test]
fn replay_answers_only_a_remembered_write_and_applies_nothing() {
    let dir = tempfile::tempdir().expect("dir");
    let e = open(dir.path(), "node-0");
    let claim = |claim, now_ms| Claim {
        claim,
        window_ms: WINDOW_MS,
        now_ms,
    };
    assert!(e.replay(&K, None, claim(CLAIM, 50)).expect("replay").is_none());
    assert!(values(&e).is_empty(), "nothing applied");
    let first = put(&e, "v", CLAIM, 100).expect("first");
    let again = e
        .replay(&K, None, claim(CLAIM, 200))
        .expect("replay")
        .expect("remembered");
    assert!(again.replayed);
    assert_eq!(again.outcome, first.outcome, "answered as the first was");
    assert_eq!(again.object, first.object, "nothing applied");
    let other = IdempotencyClaim {
        fingerprint: 71,
        ..CLAIM
    };
    assert!(matches!(
        e.replay(&K, None, claim(other, 200)),
        Err(StorageError::IdempotencyKeyReused)
    ));
    assert!(
        e.replay(&K, None, claim(CLAIM, 100 + WINDOW_MS))
            .expect("replay")
            .is_none(),
        "out of its window"
    );
    assert_eq!(values(&e), ["v"]);
}
