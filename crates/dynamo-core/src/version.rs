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
//! - **a dot is minted once, ever.** An actor mints on exactly one stored copy
//!   ([`StoredCopy`]) and continues only while that copy provably remembers every dot it
//!   minted ([`VersionedObject::minting_actor`]); anything else starts a fresh actor.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3Default;

use crate::dots::{Dot, DotSet};
use crate::ids::{ActorId, Incarnation};
use crate::limits::{MAX_CONTEXT_DOTS, MAX_FRESH_ACTOR_DRAWS, MAX_VECTOR_ENTRIES};

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

/// How a replica resolves concurrent versions: the rule a bucket's `conflict` property
/// ([`crate::wire::ConflictMode`]) and `max_siblings` give it ([`crate::wire::BucketProps::conflict_rule`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum ConflictRule {
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
    /// Each version is a state of a [`crate::crdt::Crdt`] of `crdt_type`: concurrent
    /// states are kept as siblings like [`ConflictRule::Siblings`] (so every merge path
    /// stays the plain one), and the next operation coordinated on a copy merges them
    /// into one ([`StoredCopy::apply_crdt`]); reads merge them too, so no client sees a
    /// sibling. Plain writes are refused on such a key.
    Crdt {
        /// The bucket's CRDT type.
        crdt_type: crate::crdt::CrdtType,
    },
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
    /// The context claims the minting actor's counter is already at its maximum: no next
    /// dot exists (only a forged or corrupt context can say so).
    #[error("the context claims a dot counter that cannot be continued")]
    CounterExhausted,
    /// Every fresh actor id offered was already in the key's history or the context.
    #[error("no fresh actor id could be drawn")]
    NoFreshActor,
}

impl VersionError {
    /// Returns the wire error code.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            VersionError::TooManySiblings { .. } => crate::ErrorCode::TooManySiblings,
            VersionError::CounterExhausted => crate::ErrorCode::InvalidContext,
            VersionError::NoFreshActor => crate::ErrorCode::Internal,
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

/// Who mints on a stored copy: the actor chosen for it, and the incarnation of the node
/// that chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minter {
    /// The node incarnation in which `actor` was chosen.
    pub incarnation: Incarnation,
    /// The actor minting on the copy.
    pub actor: ActorId,
}

/// One node's stored copy of a key (its own replica, or a hint held for another node):
/// the versions, and the actor that may continue minting on it.
///
/// Invariant: an actor mints on one copy only, and the copy is written durably with the
/// dot it minted, so the copy's history is the actor's whole record for the key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredCopy {
    /// The versions.
    pub object: VersionedObject,
    /// The actor minting on this copy, if any write was coordinated on it.
    pub minter: Option<Minter>,
}

impl StoredCopy {
    /// A copy of `object` that has never coordinated a write here.
    pub fn replica(object: VersionedObject) -> Self {
        StoredCopy { object, minter: None }
    }

    /// Coordinates a client write on this copy in node incarnation `incarnation`: picks
    /// the minting actor ([`VersionedObject::minting_actor`], drawing from `fresh` when
    /// the copy's own actor cannot be continued), applies the put, and remembers the
    /// actor.
    ///
    /// # Errors
    /// As [`VersionedObject::minting_actor`] and [`VersionedObject::put`]; nothing
    /// changes then.
    pub fn coordinate(
        &mut self,
        context: &DotSet,
        incarnation: Incarnation,
        fresh: impl IntoIterator<Item = ActorId>,
        write: NewWrite,
        conflict: ConflictRule,
    ) -> Result<PutOutcome, VersionError> {
        let own = self
            .minter
            .filter(|m| m.incarnation == incarnation)
            .map(|m| m.actor);
        let actor = self.object.minting_actor(context, own, fresh)?;
        let outcome = self.object.put(context, actor, write, conflict)?;
        self.minter = Some(Minter { incarnation, actor });
        Ok(outcome)
    }
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

    /// Returns the actor that must mint the next dot on this copy.
    ///
    /// `own` is the actor this copy was minting with (in the current incarnation of its
    /// node), `fresh` a supply of random actor ids. `own` is continued only when this
    /// copy's history holds its dots (so the next counter passes every dot it minted)
    /// and the context claims none beyond them; otherwise the first fresh id that neither
    /// the history nor the context knows is used. That covers every way a copy can forget
    /// its dots while others still hold them: a delivered hint or a collected tombstone
    /// (the copy is gone: no `own`), a crash that lost unsynced writes (a new
    /// incarnation: no `own`), a truncation that dropped the actor (no dots), a context
    /// from a copy this one lost (dots beyond ours), and a counter at `u64::MAX`.
    ///
    /// # Errors
    /// [`VersionError::NoFreshActor`] when every one of the first
    /// [`MAX_FRESH_ACTOR_DRAWS`] fresh ids is already known here.
    pub fn minting_actor(
        &self,
        context: &DotSet,
        own: Option<ActorId>,
        fresh: impl IntoIterator<Item = ActorId>,
    ) -> Result<ActorId, VersionError> {
        if let Some(a) = own {
            let n = self.history.max_counter(a);
            if (1..u64::MAX).contains(&n) && context.max_counter(a) <= n {
                return Ok(a);
            }
        }
        fresh
            .into_iter()
            .take(MAX_FRESH_ACTOR_DRAWS)
            .find(|f| self.history.max_counter(*f) == 0 && context.max_counter(*f) == 0)
            .ok_or(VersionError::NoFreshActor)
    }

    /// Applies a client write coordinated by `actor`.
    ///
    /// The caller guarantees that no dot of `actor` past this copy's history exists
    /// anywhere: use [`StoredCopy::coordinate`], which picks the actor by
    /// [`VersionedObject::minting_actor`], rather than calling this directly.
    ///
    /// `context` is what the client read (empty for a blind write). Exactly the siblings
    /// whose dots `context` contains are replaced; the others stay as siblings of the new
    /// write (a blind write never replaces a value silently).
    ///
    /// # Errors
    /// [`VersionError::TooManySiblings`] when, under [`ConflictRule::Siblings`], the write
    /// would leave more than `max_siblings` siblings; [`VersionError::CounterExhausted`]
    /// when the context holds `actor`'s counter `u64::MAX`. Nothing changes then.
    pub fn put(
        &mut self,
        context: &DotSet,
        actor: ActorId,
        write: NewWrite,
        conflict: ConflictRule,
    ) -> Result<PutOutcome, VersionError> {
        let kept = self.siblings.iter().filter(|s| !context.contains(&s.dot)).count();
        if let ConflictRule::Siblings { max_siblings } = conflict
            && kept + 1 > max_siblings as usize
        {
            return Err(VersionError::TooManySiblings {
                max: max_siblings,
                would_have: kept + 1,
            });
        }

        // The actor's counter must pass every dot of its own that anyone has seen, the
        // client's context included, so a dot is never minted twice. Checked before
        // anything changes: a context at `u64::MAX` must not wrap to a dot that exists.
        let counter = self
            .history
            .max_counter(actor)
            .max(context.max_counter(actor))
            .checked_add(1)
            .ok_or(VersionError::CounterExhausted)?;
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
        self.bound_history(MAX_VECTOR_ENTRIES, Some(actor));
        if conflict == ConflictRule::LastWriterWins {
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
    /// `conflict` must be the bucket's rule; with [`ConflictRule::LastWriterWins`] only the
    /// latest sibling is kept. The sibling bound is not enforced here: a replica never
    /// refuses data another replica acknowledged.
    pub fn sync(&mut self, other: &VersionedObject, conflict: ConflictRule) {
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
        if conflict == ConflictRule::LastWriterWins {
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
    ///
    /// `minter`, the actor minting on this copy, is never forgotten either, live sibling or
    /// not (an LWW write may lose its own sibling to a later timestamp): forgotten, an
    /// older counter of it brought back by a merge would let the copy mint a dot again.
    fn bound_history(&mut self, max_entries: usize, minter: Option<ActorId>) {
        while self.history.vector_len() > max_entries {
            let victim = self
                .history
                .vector()
                .filter(|(a, _)| Some(*a) != minter && !self.siblings.iter().any(|s| s.dot.actor == *a))
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

    const SIB: ConflictRule = ConflictRule::Siblings { max_siblings: 1000 };

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
        let r = ConflictRule::Siblings { max_siblings: 2 };
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
        a.put(&DotSet::new(), A, w("early", 10), ConflictRule::LastWriterWins)
            .expect("put");
        b.put(&DotSet::new(), B, w("late", 20), ConflictRule::LastWriterWins)
            .expect("put");
        let mut ab = a.clone();
        ab.sync(&b, ConflictRule::LastWriterWins);
        let mut ba = b.clone();
        ba.sync(&a, ConflictRule::LastWriterWins);
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

    fn run(steps: &[Step], replicas: usize, res: ConflictRule) -> Vec<VersionedObject> {
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
            let res = if lww { ConflictRule::LastWriterWins } else { SIB };
            (run(&steps, 3, res), lww)
        })
    }

    proptest! {
        #[test]
        fn sync_is_commutative_associative_idempotent((objs, lww) in arb_objects()) {
            let res = if lww { ConflictRule::LastWriterWins } else { SIB };
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
            let res = if lww { ConflictRule::LastWriterWins } else { SIB };
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

    // ---- a dot is minted once, ever: a model of nodes, copies, hints, GC and crashes ----

    /// One step against a model cluster of three nodes, each with its own copy of one key,
    /// hints held for the others, a durable snapshot (what an fsync kept) and an
    /// incarnation.
    #[derive(Debug, Clone)]
    enum Life {
        /// Node `at` coordinates a write on its own copy, or, with `hint_for`, on the hint
        /// it holds for that owner (a fallback); the context is a read of `ctx_from`.
        Coordinate {
            at: usize,
            hint_for: Option<usize>,
            ctx_from: Option<usize>,
            delete: bool,
        },
        /// `from`'s own copy is merged into `to`'s (replication, read repair, handoff).
        Replicate { from: usize, to: usize },
        /// `at` delivers its hint for `owner` and deletes it.
        Deliver { at: usize, owner: usize },
        /// `at` forgets its copy of the key (tombstone GC).
        Collect { at: usize },
        /// `at` truncates its copy's history to one actor (Dynamo §4.4 under pressure).
        Truncate { at: usize },
        /// `at` fsyncs.
        Sync { at: usize },
        /// `at` crashes: what was not synced is lost; it restarts as a new incarnation.
        Crash { at: usize },
    }

    #[derive(Debug, Clone, Default)]
    struct ModelNode {
        incarnation: u64,
        own: Option<StoredCopy>,
        hints: std::collections::BTreeMap<usize, StoredCopy>,
        synced: (Option<StoredCopy>, std::collections::BTreeMap<usize, StoredCopy>),
    }

    impl ModelNode {
        fn read(&self) -> VersionedObject {
            let mut o = self.own.as_ref().map(|c| c.object.clone()).unwrap_or_default();
            for h in self.hints.values() {
                o.sync(&h.object, SIB);
            }
            o
        }
    }

    fn arb_life() -> impl Strategy<Value = Vec<Life>> {
        let n = 0..3usize;
        let step = prop_oneof![
            6 => (n.clone(), proptest::option::of(0..3usize), proptest::option::of(0..3usize), proptest::bool::weighted(0.2))
                .prop_map(|(at, hint_for, ctx_from, delete)| Life::Coordinate { at, hint_for: hint_for.filter(|o| *o != at), ctx_from, delete }),
            2 => (n.clone(), 0..3usize).prop_map(|(from, to)| Life::Replicate { from, to }),
            2 => (n.clone(), 0..3usize).prop_map(|(at, owner)| Life::Deliver { at, owner }),
            1 => n.clone().prop_map(|at| Life::Collect { at }),
            1 => n.clone().prop_map(|at| Life::Truncate { at }),
            2 => n.clone().prop_map(|at| Life::Sync { at }),
            1 => n.prop_map(|at| Life::Crash { at }),
        ];
        proptest::collection::vec(step, 1..60)
    }

    /// Runs a life; returns the first dot minted twice, if any.
    fn live(steps: &[Life]) -> Option<Dot> {
        let mut nodes: Vec<ModelNode> = (0..3)
            .map(|i| ModelNode {
                incarnation: 100 + i,
                ..ModelNode::default()
            })
            .collect();
        let mut next_id = 1000u64;
        let mut minted = std::collections::HashSet::new();
        for (t, step) in steps.iter().enumerate() {
            match *step {
                Life::Coordinate {
                    at,
                    hint_for,
                    ctx_from,
                    delete,
                } => {
                    let ctx = ctx_from
                        .map(|i| nodes[i].read().context().clone())
                        .unwrap_or_default();
                    let incarnation = Incarnation(nodes[at].incarnation);
                    let node = &mut nodes[at];
                    let copy = match hint_for {
                        Some(owner) => node.hints.entry(owner).or_default(),
                        None => node.own.get_or_insert_with(StoredCopy::default),
                    };
                    // Random ids in production; here a counter stands for "never seen".
                    let fresh = std::iter::repeat_with(|| {
                        next_id += 1;
                        ActorId(next_id)
                    });
                    let write = if delete {
                        NewWrite::tombstone(t as u64)
                    } else {
                        w(&format!("v{t}"), t as u64)
                    };
                    let out = copy
                        .coordinate(&ctx, incarnation, fresh, write, SIB)
                        .expect("unbounded siblings");
                    if !minted.insert(out.dot) {
                        return Some(out.dot);
                    }
                }
                Life::Replicate { from, to } => {
                    if let Some(src) = nodes[from].own.as_ref().map(|c| c.object.clone()) {
                        nodes[to]
                            .own
                            .get_or_insert_with(StoredCopy::default)
                            .object
                            .sync(&src, SIB);
                    }
                }
                Life::Deliver { at, owner } => {
                    if let Some(h) = nodes[at].hints.remove(&owner) {
                        nodes[owner]
                            .own
                            .get_or_insert_with(StoredCopy::default)
                            .object
                            .sync(&h.object, SIB);
                    }
                }
                Life::Collect { at } => nodes[at].own = None,
                Life::Truncate { at } => {
                    if let Some(c) = &mut nodes[at].own {
                        // As inside a put: the copy's minter is kept.
                        let minter = c.minter.map(|m| m.actor);
                        c.object.bound_history(1, minter);
                    }
                }
                Life::Sync { at } => {
                    let n = &mut nodes[at];
                    n.synced = (n.own.clone(), n.hints.clone());
                }
                Life::Crash { at } => {
                    let n = &mut nodes[at];
                    (n.own, n.hints) = n.synced.clone();
                    next_id += 1;
                    n.incarnation = next_id;
                }
            }
        }
        None
    }

    proptest! {
        /// Goal: whatever interleaving of hinted writes, deliveries, GC, truncation, fsyncs
        /// and crashes, no dot is minted twice.
        #[test]
        fn no_dot_is_ever_minted_twice(steps in arb_life()) {
            prop_assert_eq!(live(&steps), None);
        }
    }

    /// Regression (found by `no_dot_is_ever_minted_twice` in CI): a truncation that forgot
    /// the copy's own minting actor, followed by a merge that brought back an older
    /// counter of that actor, let the copy continue the actor at a counter it had already
    /// used. Truncation keeps the minter's actor, as it does inside every put.
    #[test]
    fn truncation_never_forgets_the_minting_actor() {
        use Life::*;
        let c = |at, hint_for, ctx_from| Coordinate {
            at,
            hint_for,
            ctx_from,
            delete: false,
        };
        let steps = [
            c(2, None, None),
            c(1, None, Some(2)),
            c(2, None, None),
            c(0, Some(2), Some(2)),
            Deliver { at: 0, owner: 2 },
            Truncate { at: 2 },
            Replicate { from: 1, to: 2 },
            c(2, None, None),
        ];
        assert_eq!(live(&steps), None);
    }

    /// Goal: the model finds the bug it guards against. A fallback that mints with the
    /// node's one actor from its hint record mints the same dot again once the hint was
    /// delivered and deleted (the bug of issue 10).
    #[test]
    fn a_node_wide_actor_mints_a_dot_twice_after_a_delivered_hint() {
        let node_actor = ActorId(7);
        let mut hint = VersionedObject::new();
        let first = hint
            .put(&DotSet::new(), node_actor, w("a", 1), SIB)
            .expect("put")
            .dot;
        // Delivered and deleted: the next hinted write starts from an empty record.
        let mut hint = VersionedObject::new();
        let second = hint
            .put(&DotSet::new(), node_actor, w("b", 2), SIB)
            .expect("put")
            .dot;
        assert_eq!(first, second, "the old scheme collides");
        // With stored copies, the deleted copy's actor is gone with it.
        let inc = Incarnation(1);
        let mut ids = (1..).map(ActorId);
        let mut copy = StoredCopy::default();
        let a = copy
            .coordinate(&DotSet::new(), inc, &mut ids, w("a", 1), SIB)
            .expect("put")
            .dot;
        let mut copy = StoredCopy::default();
        let b = copy
            .coordinate(&DotSet::new(), inc, &mut ids, w("b", 2), SIB)
            .expect("put")
            .dot;
        assert_ne!(a, b);
    }

    #[test]
    fn a_copy_continues_its_own_actor_only_while_it_remembers_it() {
        let inc = Incarnation(1);
        let mut ids = (10..).map(ActorId);
        let mut copy = StoredCopy::default();
        let d1 = copy
            .coordinate(&DotSet::new(), inc, &mut ids, w("a", 1), SIB)
            .expect("put")
            .dot;
        let ctx = copy.object.context().clone();
        let d2 = copy
            .coordinate(&ctx, inc, &mut ids, w("b", 2), SIB)
            .expect("put")
            .dot;
        assert_eq!(
            (d2.actor, d2.counter),
            (d1.actor, 2),
            "same copy, same incarnation: continue"
        );
        // Another incarnation (a crash may have lost dots): a fresh actor.
        let d3 = copy
            .coordinate(&DotSet::new(), Incarnation(2), &mut ids, w("c", 3), SIB)
            .expect("put")
            .dot;
        assert_ne!(d3.actor, d1.actor);
        assert_eq!(d3.counter, 1);
        // A context that knows more of our actor than we do (we lost a copy): fresh.
        let mut forged = copy.object.context().clone();
        forged.insert(Dot::new(d3.actor, 9));
        let d4 = copy
            .coordinate(&forged, Incarnation(2), &mut ids, w("d", 4), SIB)
            .expect("put")
            .dot;
        assert_ne!(d4.actor, d3.actor);
    }

    /// Goal: a context at `u64::MAX` for some actor never wraps a counter.
    #[test]
    fn a_maximal_counter_in_a_context_never_wraps() {
        let mut o = VersionedObject::new();
        let ctx = DotSet::from_parts([(A, u64::MAX)], []).expect("set");
        let before = o.clone();
        assert_eq!(
            o.put(&ctx, A, w("x", 1), SIB),
            Err(VersionError::CounterExhausted)
        );
        assert_eq!(o, before, "nothing changes");
        assert_eq!(
            VersionError::CounterExhausted.code(),
            crate::ErrorCode::InvalidContext
        );
        // Through a stored copy the write goes to a fresh actor instead.
        let mut copy = StoredCopy::default();
        let out = copy
            .coordinate(&ctx, Incarnation(1), [A, B], w("x", 1), SIB)
            .expect("fresh actor");
        assert_eq!(out.dot, Dot::new(B, 1), "A is known to the context, so B");
        assert_eq!(
            copy.object.minting_actor(&ctx, None, [A]),
            Err(VersionError::NoFreshActor)
        );
    }

    /// Goal: truncation that forgets the copy's own actor makes the next write use a fresh
    /// one (restarting the old actor at 1 would re-mint dots stale replicas still hold).
    #[test]
    fn a_truncated_own_actor_is_not_continued() {
        let inc = Incarnation(1);
        let mut ids = (100..).map(ActorId);
        let mut copy = StoredCopy::default();
        let d1 = copy
            .coordinate(&DotSet::new(), inc, &mut ids, w("a", 1), SIB)
            .expect("put")
            .dot;
        // Another actor's write supersedes ours; then the history is truncated.
        let ctx = copy.object.context().clone();
        copy.object.put(&ctx, ActorId(5), w("b", 2), SIB).expect("put");
        // Forgotten as if by a put of another minter (the minter is otherwise kept).
        copy.object.bound_history(1, None);
        assert_eq!(copy.object.context().max_counter(d1.actor), 0, "forgotten");
        let ctx = copy.object.context().clone();
        let d3 = copy
            .coordinate(&ctx, inc, &mut ids, w("c", 3), SIB)
            .expect("put")
            .dot;
        assert_ne!(d3.actor, d1.actor);
    }
}
