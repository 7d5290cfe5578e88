//! A key's versions: the sibling set with its causal history (dotted version vectors).
//!
//! This is the DVV set of Riak 2.x (Preguiça, Baquero et al., *Dotted Version Vectors*),
//! in the dot-store form of delta-state CRDTs: a [`VersionedObject`] is a causal history
//! ([`DotSet`]) plus the siblings, each tagged with the [`Dot`] of the write that made it.
//!
//! # Rules
//! - **put** (at the coordinating storage node, the actor): mint the dot
//!   `(actor, max counter of actor seen + 1)`, drop exactly the siblings whose dots the
//!   client's context contains, add the new sibling, and add the context and the new dot
//!   to the history. The context answered to the client is its own context plus the new
//!   dot: never a concurrent sibling it has not seen.
//! - **sync** (replica merge): a sibling survives when the other side holds it too, or the
//!   other side's history has not seen its dot; histories unite. Sync is commutative,
//!   associative and idempotent (property-tested below), so replicas converge whatever the
//!   order of delivery.
//! - **tombstones** are siblings with `tombstone = true`: a delete is a write like any
//!   other, superseding what its context saw; tombstone GC is the storage node's job.
//!
//! # Invariants
//! - every sibling's dot is in the history; siblings are sorted by dot with no duplicate
//!   dot (a dot names one write, so two replicas never hold different content under one);
//! - sibling count is bounded at write admission by the bucket's `max_siblings`
//!   ([`VersionError::TooManySiblings`]); sync never refuses, so a key may briefly hold
//!   more after concurrent writes through different coordinators;
//! - the number of siblings never exceeds the number of writes concurrent with each other:
//!   a read-modify-write with a fresh context replaces what it read, whatever the actor.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3Default;

use crate::dots::{Dot, DotSet};
use crate::ids::ActorId;
use crate::limits::{MAX_CONTEXT_DOTS, MAX_VECTOR_ENTRIES};

/// One version of a key's value, tagged with the dot of the write that made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// The write that made this version.
    pub dot: Dot,
    /// The opaque value (empty for a tombstone).
    #[serde(with = "crate::wire::base64_bytes")]
    pub value: Vec<u8>,
    /// The value's media type, as the client sent it.
    pub content_type: String,
    /// When the coordinating node accepted the write (ms since the Unix epoch).
    pub last_modified_ms: u64,
    /// True for a delete.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub tombstone: bool,
}

/// The content of a new write, before it has a dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWrite {
    /// The opaque value (ignored for a tombstone).
    pub value: Vec<u8>,
    /// The value's media type.
    pub content_type: String,
    /// The coordinating node's clock, in ms since the Unix epoch.
    pub now_ms: u64,
    /// True for a delete.
    pub tombstone: bool,
}

impl NewWrite {
    /// A write of `value` with `content_type` at `now_ms`.
    pub fn value(value: Vec<u8>, content_type: impl Into<String>, now_ms: u64) -> Self {
        NewWrite {
            value,
            content_type: content_type.into(),
            now_ms,
            tombstone: false,
        }
    }

    /// A delete at `now_ms`.
    pub fn tombstone(now_ms: u64) -> Self {
        NewWrite {
            value: Vec::new(),
            content_type: String::new(),
            now_ms,
            tombstone: true,
        }
    }
}

/// How a bucket resolves concurrent versions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Resolution {
    /// Keep concurrent versions as siblings, at most `max_siblings` after a write.
    Siblings {
        /// The bucket's bound on siblings.
        max_siblings: u32,
    },
    /// Keep one version: the latest by `(last_modified_ms, dot)`. A write that saw a
    /// version still replaces it whatever the clocks say, so causality wins over
    /// timestamps; among concurrent writes the later timestamp wins.
    #[serde(rename = "lww")]
    LastWriterWins,
}

/// Why a write was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    /// The write would leave more siblings than the bucket allows.
    #[error(
        "the write would leave {would_have} siblings; the bucket allows {max}: read, resolve, and write with the context"
    )]
    TooManySiblings {
        /// The bucket's `max_siblings`.
        max: u32,
        /// How many siblings the write would have left.
        would_have: usize,
    },
}

impl VersionError {
    /// Returns the wire error code.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            VersionError::TooManySiblings { .. } => crate::ErrorCode::TooManySiblings,
        }
    }
}

/// The result of an accepted put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutOutcome {
    /// The dot minted for the write.
    pub dot: Dot,
    /// The context to hand back to the writer: what it had seen plus its own write.
    pub context: DotSet,
}

/// A key's sibling set with its causal history.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "ObjectRepr")]
pub struct VersionedObject {
    history: DotSet,
    siblings: Vec<Sibling>,
}

#[derive(Deserialize)]
struct ObjectRepr {
    history: DotSet,
    siblings: Vec<Sibling>,
}

/// Written by reference: serde's `into` would clone every value of the object first.
impl Serialize for VersionedObject {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct ObjectReprRef<'a> {
            history: &'a DotSet,
            siblings: &'a [Sibling],
        }
        ObjectReprRef {
            history: &self.history,
            siblings: &self.siblings,
        }
        .serialize(s)
    }
}

/// A serialized object that breaks the invariants (a sibling outside the history, or a
/// dot held twice).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("object invariant broken: {0}")]
pub struct InvalidObject(&'static str);

impl TryFrom<ObjectRepr> for VersionedObject {
    type Error = InvalidObject;
    fn try_from(r: ObjectRepr) -> Result<Self, InvalidObject> {
        let mut siblings = r.siblings;
        siblings.sort_by_key(|s| s.dot);
        if siblings.windows(2).any(|w| w[0].dot == w[1].dot) {
            return Err(InvalidObject("two siblings share a dot"));
        }
        if !siblings.iter().all(|s| r.history.contains(&s.dot)) {
            return Err(InvalidObject("a sibling's dot is not in the history"));
        }
        Ok(VersionedObject {
            history: r.history,
            siblings,
        })
    }
}

impl VersionedObject {
    /// Returns the object of a key never written.
    pub fn new() -> Self {
        VersionedObject::default()
    }

    /// Rebuilds an object from its parts (a storage codec's decode), checking the
    /// invariants.
    ///
    /// # Errors
    /// [`InvalidObject`] when a sibling's dot is outside the history or two siblings share
    /// a dot.
    pub fn from_parts(history: DotSet, siblings: Vec<Sibling>) -> Result<Self, InvalidObject> {
        VersionedObject::try_from(ObjectRepr { history, siblings })
    }

    /// Splits the object into its history and siblings (a storage codec's encode).
    pub fn into_parts(self) -> (DotSet, Vec<Sibling>) {
        (self.history, self.siblings)
    }

    /// Returns the causal history: the context a read of this object hands to a client.
    pub fn context(&self) -> &DotSet {
        &self.history
    }

    /// Returns every sibling, tombstones included, sorted by dot.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// Iterates over the siblings that are not tombstones.
    pub fn live_siblings(&self) -> impl Iterator<Item = &Sibling> {
        self.siblings.iter().filter(|s| !s.tombstone)
    }

    /// Returns true when nothing live is stored: no sibling, or only tombstones.
    pub fn is_deleted(&self) -> bool {
        self.siblings.iter().all(|s| s.tombstone)
    }

    /// Returns true for a key never written (or fully forgotten).
    pub fn is_empty(&self) -> bool {
        self.siblings.is_empty() && self.history.is_empty()
    }

    /// Applies a client write coordinated by `actor`.
    ///
    /// `context` is what the client read (empty for a blind write). Exactly the siblings
    /// whose dots `context` contains are replaced; the others stay as siblings of the new
    /// write (a blind write never replaces a value silently).
    ///
    /// # Errors
    /// [`VersionError::TooManySiblings`] when, under [`Resolution::Siblings`], the write
    /// would leave more than `max_siblings` siblings. Nothing changes then.
    pub fn put(
        &mut self,
        context: &DotSet,
        actor: ActorId,
        write: NewWrite,
        resolution: Resolution,
    ) -> Result<PutOutcome, VersionError> {
        let kept = self.siblings.iter().filter(|s| !context.contains(&s.dot)).count();
        if let Resolution::Siblings { max_siblings } = resolution
            && kept + 1 > max_siblings as usize
        {
            return Err(VersionError::TooManySiblings {
                max: max_siblings,
                would_have: kept + 1,
            });
        }

        // The actor's counter must pass every dot of its own that anyone has seen, the
        // client's context included, so a dot is never minted twice.
        let counter = self.history.max_counter(actor).max(context.max_counter(actor)) + 1;
        let dot = Dot::new(actor, counter);

        self.siblings.retain(|s| !context.contains(&s.dot));
        self.siblings.push(Sibling {
            dot,
            value: if write.tombstone { Vec::new() } else { write.value },
            content_type: write.content_type,
            last_modified_ms: write.now_ms,
            tombstone: write.tombstone,
        });
        self.siblings.sort_by_key(|s| s.dot);
        self.history.union(context);
        self.history.insert(dot);
        self.bound_history();
        if resolution == Resolution::LastWriterWins {
            self.keep_latest();
        }

        let mut answered = context.clone();
        answered.insert(dot);
        answered.truncate_cloud(MAX_CONTEXT_DOTS);
        self.check_invariants();
        Ok(PutOutcome {
            dot,
            context: answered,
        })
    }

    /// Merges a replica's copy into this one (commutative, associative, idempotent).
    ///
    /// `resolution` must be the bucket's; with [`Resolution::LastWriterWins`] only the
    /// latest sibling is kept. The sibling bound is not enforced here: a replica never
    /// refuses data another replica acknowledged.
    pub fn sync(&mut self, other: &VersionedObject, resolution: Resolution) {
        let mut merged = Vec::with_capacity(self.siblings.len() + other.siblings.len());
        let (mut i, mut j) = (0, 0);
        let (a, b) = (&self.siblings, &other.siblings);
        // Both lists are sorted by dot: one merge pass decides every sibling.
        while i < a.len() || j < b.len() {
            let order = match (a.get(i), b.get(j)) {
                (Some(x), Some(y)) => x.dot.cmp(&y.dot),
                (Some(_), None) => Ordering::Less,
                _ => Ordering::Greater,
            };
            match order {
                Ordering::Equal => {
                    debug_assert_eq!(a[i], b[j], "one dot, two contents");
                    merged.push(a[i].clone());
                    i += 1;
                    j += 1;
                }
                Ordering::Less => {
                    if !other.history.contains(&a[i].dot) {
                        merged.push(a[i].clone());
                    }
                    i += 1;
                }
                Ordering::Greater => {
                    if !self.history.contains(&b[j].dot) {
                        merged.push(b[j].clone());
                    }
                    j += 1;
                }
            }
        }
        self.siblings = merged;
        self.history.union(&other.history);
        if resolution == Resolution::LastWriterWins {
            self.keep_latest();
        }
        self.check_invariants();
    }

    /// Returns a 128-bit digest of the version set: the history and the sibling dots.
    ///
    /// Two replicas with the same digest hold the same versions (a dot names one write,
    /// so the dots stand for the contents). Anti-entropy compares these in Merkle leaves.
    /// Encoding: for each vector entry `actor ‖ n`, a `0xff` separator, each cloud dot
    /// `actor ‖ counter`, `0xff`, each sibling `actor ‖ counter ‖ tombstone`, all integers
    /// little-endian u64 and the flag one byte; XXH3-128 with seed 0.
    pub fn digest(&self) -> u128 {
        let mut h = Xxh3Default::new();
        for (actor, n) in self.history.vector() {
            h.update(&actor.0.to_le_bytes());
            h.update(&n.to_le_bytes());
        }
        h.update(&[0xff]);
        for d in self.history.cloud() {
            h.update(&d.actor.0.to_le_bytes());
            h.update(&d.counter.to_le_bytes());
        }
        h.update(&[0xff]);
        for s in &self.siblings {
            h.update(&s.dot.actor.0.to_le_bytes());
            h.update(&s.dot.counter.to_le_bytes());
            h.update(&[u8::from(s.tombstone)]);
        }
        h.digest128()
    }

    /// Keeps only the latest sibling by `(last_modified_ms, dot)`: a total order, so every
    /// replica keeps the same one.
    fn keep_latest(&mut self) {
        if let Some(latest) = self
            .siblings
            .iter()
            .max_by_key(|s| (s.last_modified_ms, s.dot))
            .cloned()
        {
            self.siblings = vec![latest];
        }
    }

    /// Keeps the history within [`MAX_VECTOR_ENTRIES`] actors by forgetting actors that
    /// no sibling comes from, smallest counter first (Dynamo's truncation, §4.4). The
    /// cost: a stale replica's superseded sibling from a forgotten actor could come back
    /// as a sibling; a live sibling is never dropped, because its actor is never forgotten.
    fn bound_history(&mut self) {
        while self.history.vector_len() > MAX_VECTOR_ENTRIES {
            let victim = self
                .history
                .vector()
                .filter(|(a, _)| !self.siblings.iter().any(|s| s.dot.actor == *a))
                .min_by_key(|&(a, n)| (n, a))
                .map(|(a, _)| a);
            match victim {
                Some(actor) => self.history.forget_actor(actor),
                // Every actor has a live sibling: nothing can be forgotten safely.
                None => break,
            }
        }
    }

    fn check_invariants(&self) {
        debug_assert!(self.siblings.windows(2).all(|w| w[0].dot < w[1].dot));
        debug_assert!(self.siblings.iter().all(|s| self.history.contains(&s.dot)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SIB: Resolution = Resolution::Siblings { max_siblings: 1000 };

    fn w(v: &str, t: u64) -> NewWrite {
        NewWrite::value(v.as_bytes().to_vec(), "text/plain", t)
    }

    fn values(o: &VersionedObject) -> Vec<String> {
        let mut v: Vec<String> = o
            .live_siblings()
            .map(|s| String::from_utf8_lossy(&s.value).into_owned())
            .collect();
        v.sort();
        v
    }

    const A: ActorId = ActorId(1);
    const B: ActorId = ActorId(2);

    #[test]
    fn blind_writes_become_siblings() {
        let mut o = VersionedObject::new();
        o.put(&DotSet::new(), A, w("x", 1), SIB).expect("put");
        o.put(&DotSet::new(), A, w("y", 2), SIB).expect("put");
        assert_eq!(values(&o), ["x", "y"]);
    }

    #[test]
    fn a_write_with_the_read_context_replaces_what_it_read() {
        let mut o = VersionedObject::new();
        o.put(&DotSet::new(), A, w("x", 1), SIB).expect("put");
        o.put(&DotSet::new(), B, w("y", 2), SIB).expect("put");
        let ctx = o.context().clone();
        o.put(&ctx, A, w("z", 3), SIB).expect("put");
        assert_eq!(values(&o), ["z"]);
    }

    #[test]
    fn the_answered_context_never_covers_an_unseen_concurrent_sibling() {
        let mut o = VersionedObject::new();
        let first = o.put(&DotSet::new(), A, w("x", 1), SIB).expect("put");
        // A concurrent writer, also through A, that has not seen x.
        let other = o.put(&DotSet::new(), A, w("y", 2), SIB).expect("put");
        // The first writer writes again with the context it was answered.
        o.put(&first.context, A, w("x2", 3), SIB).expect("put");
        assert_eq!(values(&o), ["x2", "y"], "y was never seen by the first writer");
        assert!(!first.context.contains(&other.dot));
    }

    #[test]
    fn a_tombstone_is_a_sibling_until_superseded() {
        let mut o = VersionedObject::new();
        o.put(&DotSet::new(), A, w("x", 1), SIB).expect("put");
        let ctx = o.context().clone();
        o.put(&ctx, B, NewWrite::tombstone(2), SIB).expect("delete");
        assert!(o.is_deleted());
        assert_eq!(o.siblings().len(), 1);
        // A concurrent blind write survives the delete.
        o.put(&DotSet::new(), A, w("late", 3), SIB).expect("put");
        assert_eq!(values(&o), ["late"]);
        assert!(!o.is_deleted());
    }

    #[test]
    fn max_siblings_refuses_and_changes_nothing() {
        let r = Resolution::Siblings { max_siblings: 2 };
        let mut o = VersionedObject::new();
        o.put(&DotSet::new(), A, w("x", 1), r).expect("put");
        o.put(&DotSet::new(), A, w("y", 1), r).expect("put");
        let before = o.clone();
        let err = o.put(&DotSet::new(), A, w("z", 1), r).expect_err("third sibling");
        assert_eq!(
            err,
            VersionError::TooManySiblings {
                max: 2,
                would_have: 3
            }
        );
        assert_eq!(err.code(), crate::ErrorCode::TooManySiblings);
        assert_eq!(o, before);
        // Resolving with the context is always possible.
        let ctx = o.context().clone();
        o.put(&ctx, A, w("z", 2), r).expect("resolve");
        assert_eq!(values(&o), ["z"]);
    }

    #[test]
    fn lww_keeps_the_latest_concurrent_write() {
        let mut a = VersionedObject::new();
        let mut b = VersionedObject::new();
        a.put(&DotSet::new(), A, w("early", 10), Resolution::LastWriterWins)
            .expect("put");
        b.put(&DotSet::new(), B, w("late", 20), Resolution::LastWriterWins)
            .expect("put");
        let mut ab = a.clone();
        ab.sync(&b, Resolution::LastWriterWins);
        let mut ba = b.clone();
        ba.sync(&a, Resolution::LastWriterWins);
        assert_eq!(values(&ab), ["late"]);
        assert_eq!(ab, ba);
    }

    #[test]
    fn serde_rejects_broken_invariants() {
        let mut o = VersionedObject::new();
        o.put(&DotSet::new(), A, w("x", 1), SIB).expect("put");
        let json = serde_json::to_string(&o).expect("serialize");
        let back: VersionedObject = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, o);
        let orphan = json.replace(r#""history":{"vv":[[1,1]]}"#, r#""history":{"vv":[]}"#);
        assert_ne!(orphan, json);
        assert!(serde_json::from_str::<VersionedObject>(&orphan).is_err());
    }

    #[test]
    fn golden_json() {
        let mut o = VersionedObject::new();
        o.put(&DotSet::new(), A, w("hi", 1_700_000_000_000), SIB)
            .expect("put");
        assert_eq!(
            serde_json::to_string(&o).expect("serialize"),
            r#"{"history":{"vv":[[1,1]]},"siblings":[{"dot":{"actor":1,"counter":1},"value":"aGk=","content_type":"text/plain","last_modified_ms":1700000000000}]}"#
        );
    }

    // ---- property tests: a small model of replicas, clients and actors ----

    /// One step of a random history: a client write through a replica, or a sync.
    #[derive(Debug, Clone)]
    enum Step {
        /// Replica `at` coordinates a write; `read_from` is the replica whose context the
        /// client read first (None = blind write).
        Put {
            at: usize,
            read_from: Option<usize>,
            delete: bool,
        },
        Sync {
            from: usize,
            to: usize,
        },
    }

    fn arb_steps(replicas: usize) -> impl Strategy<Value = Vec<Step>> {
        let put = (
            0..replicas,
            proptest::option::of(0..replicas),
            proptest::bool::weighted(0.1),
        )
            .prop_map(|(at, read_from, delete)| Step::Put {
                at,
                read_from,
                delete,
            });
        let sync = (0..replicas, 0..replicas).prop_map(|(from, to)| Step::Sync { from, to });
        proptest::collection::vec(prop_oneof![2 => put, 1 => sync], 0..24)
    }

    fn run(steps: &[Step], replicas: usize, res: Resolution) -> Vec<VersionedObject> {
        let mut r = vec![VersionedObject::new(); replicas];
        for (t, step) in steps.iter().enumerate() {
            match *step {
                Step::Put {
                    at,
                    read_from,
                    delete,
                } => {
                    let ctx = read_from.map(|i| r[i].context().clone()).unwrap_or_default();
                    let write = if delete {
                        NewWrite::tombstone(t as u64)
                    } else {
                        w(&format!("v{t}"), t as u64)
                    };
                    r[at]
                        .put(&ctx, ActorId(at as u64), write, res)
                        .expect("unbounded siblings");
                }
                Step::Sync { from, to } => {
                    let src = r[from].clone();
                    r[to].sync(&src, res);
                }
            }
        }
        r
    }

    fn arb_objects() -> impl Strategy<Value = (Vec<VersionedObject>, bool)> {
        (arb_steps(3), any::<bool>()).prop_map(|(steps, lww)| {
            let res = if lww { Resolution::LastWriterWins } else { SIB };
            (run(&steps, 3, res), lww)
        })
    }

    proptest! {
        #[test]
        fn sync_is_commutative_associative_idempotent((objs, lww) in arb_objects()) {
            let res = if lww { Resolution::LastWriterWins } else { SIB };
            let (a, b, c) = (&objs[0], &objs[1], &objs[2]);
            let mut ab = a.clone(); ab.sync(b, res);
            let mut ba = b.clone(); ba.sync(a, res);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.sync(c, res);
            let mut bc = b.clone(); bc.sync(c, res);
            let mut a_bc = a.clone(); a_bc.sync(&bc, res);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut aa = a.clone(); aa.sync(a, res);
            prop_assert_eq!(&aa, a);
            prop_assert_eq!(ab.digest(), ba.digest());
        }

        #[test]
        fn put_drops_exactly_what_the_context_saw(
            (objs, _) in arb_objects(), ctx_from in 0usize..3, actor in 0u64..3
        ) {
            let mut target = objs[0].clone();
            let ctx = objs[ctx_from].context().clone();
            let before = target.clone();
            let out = target.put(&ctx, ActorId(actor), w("new", 99), SIB).expect("put");
            for s in before.siblings() {
                let kept = target.siblings().iter().any(|t| t.dot == s.dot);
                prop_assert_eq!(kept, !ctx.contains(&s.dot), "sibling {:?}", s.dot);
            }
            prop_assert!(target.siblings().iter().any(|s| s.dot == out.dot));
            prop_assert!(!before.context().contains(&out.dot), "a minted dot is fresh");
            // The answered context is the client's plus its own write, nothing more.
            let mut expect = ctx.clone();
            expect.insert(out.dot);
            prop_assert_eq!(out.context, expect);
        }

        #[test]
        fn replicas_converge_in_any_delivery_order(
            (objs, lww) in arb_objects(), order in Just([0usize, 1, 2]).prop_shuffle()
        ) {
            let res = if lww { Resolution::LastWriterWins } else { SIB };
            let mut fwd = VersionedObject::new();
            for o in &objs { fwd.sync(o, res); }
            let mut shuffled = VersionedObject::new();
            for &i in &order { shuffled.sync(&objs[i], res); }
            prop_assert_eq!(fwd, shuffled);
        }

        /// A blind write is never silently lost: after syncing every replica, a blind
        /// write survives unless a later write's context saw it.
        #[test]
        fn a_blind_write_never_silently_replaces_a_value((objs, lww) in arb_objects(), at in 0usize..3) {
            prop_assume!(!lww);
            let mut r = objs.clone();
            let before: Vec<Dot> = r[at].siblings().iter().map(|s| s.dot).collect();
            r[at].put(&DotSet::new(), ActorId(at as u64), w("blind", 100), SIB).expect("put");
            for d in before {
                prop_assert!(r[at].siblings().iter().any(|s| s.dot == d), "blind write dropped {:?}", d);
            }
        }

        #[test]
        fn concurrent_writes_through_different_actors_both_survive((objs, lww) in arb_objects()) {
            prop_assume!(!lww);
            let mut a = objs[0].clone();
            let mut b = objs[0].clone();
            let ctx = objs[0].context().clone();
            let da = a.put(&ctx, ActorId(7), w("a", 1), SIB).expect("put").dot;
            let db = b.put(&ctx, ActorId(8), w("b", 1), SIB).expect("put").dot;
            a.sync(&b, SIB);
            prop_assert!(a.siblings().iter().any(|s| s.dot == da));
            prop_assert!(a.siblings().iter().any(|s| s.dot == db));
        }

        /// No sibling explosion: many clients doing read-modify-write through few actors
        /// leave at most one sibling per client whose write raced (here: each client reads
        /// the current value then writes, interleaved arbitrarily; siblings ≤ clients).
        #[test]
        fn siblings_stay_bounded_by_concurrent_writers(
            schedule in proptest::collection::vec((0usize..4, 0u64..2), 1..200)
        ) {
            let clients = 4;
            let mut o = VersionedObject::new();
            let mut read: Vec<DotSet> = vec![DotSet::new(); clients];
            for (t, &(client, actor)) in schedule.iter().enumerate() {
                // Each client alternates: write with what it last read, then read again.
                o.put(&read[client], ActorId(actor), w(&format!("{t}"), t as u64), SIB).expect("put");
                read[client] = o.context().clone();
                prop_assert!(o.siblings().len() <= clients, "{} siblings", o.siblings().len());
            }
        }
    }
}
