//! CRDT states inside a key's version set: how an operation is coordinated on a stored
//! copy and how a read turns the versions into one value.
//!
//! A CRDT key is an ordinary [`VersionedObject`] whose versions are serialized [`Crdt`]
//! states ([`CRDT_CONTENT_TYPE`]). Replicas merge copies with the plain sibling merge
//! ([`VersionedObject::sync`]), so hinted handoff, read repair, anti-entropy and the
//! Merkle digests need nothing new. Concurrent operations coordinated on different copies
//! leave sibling states; the next operation on a copy merges every state it holds into
//! one, applies itself and replaces them all (its context is the copy's whole history),
//! and a read merges the states of what it gathered. No client ever sees a sibling.
//!
//! Invariant (what makes a merge of the live states the whole value): the live states of
//! a copy include the effect of every dot in its history. An operation replaces only what
//! it merged; a sync drops a state only when the other side has seen its dot, and then
//! the other side's states include it.
//!
//! The operation's actor is the copy's minting actor ([`VersionedObject::minting_actor`]),
//! so a CRDT-internal dot or a counter entry is continued only on the copy that holds all
//! of that actor's earlier operations, the same rule that keeps version dots unique.

use serde_json::Value;

use super::{Crdt, CrdtError, CrdtOp, CrdtType};
use crate::dots::DotSet;
use crate::ids::{ActorId, Incarnation};
use crate::version::{ConflictRule, Minter, NewWrite, PutOutcome, StoredCopy, VersionError, VersionedObject};

/// The media type of a stored CRDT state.
pub const CRDT_CONTENT_TYPE: &str = "application/vnd.dynamo.crdt+json";

/// Why a CRDT operation was not applied. Nothing changes then.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CrdtWriteError {
    /// The operation itself was refused.
    #[error(transparent)]
    Op(#[from] CrdtError),
    /// No dot could be minted.
    #[error(transparent)]
    Version(#[from] VersionError),
    /// A version of the key is not a state of the bucket's type: it was written before
    /// the bucket became a CRDT bucket (or one of another type).
    #[error("the key holds a value that is not a {expected} (written before the bucket's type changed)")]
    NotAState {
        /// The bucket's type.
        expected: CrdtType,
    },
    /// The state after the operation would be larger than the value limit.
    #[error("the {crdt_type} would be {len} bytes; the limit is {max}")]
    StateTooLarge {
        /// The type.
        crdt_type: CrdtType,
        /// The serialized state's length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl CrdtWriteError {
    /// Returns the wire error code.
    pub fn code(&self) -> crate::ErrorCode {
        match self {
            CrdtWriteError::Op(e) => e.code(),
            CrdtWriteError::Version(e) => e.code(),
            CrdtWriteError::NotAState { .. } => crate::ErrorCode::WrongBucketType,
            CrdtWriteError::StateTooLarge { .. } => crate::ErrorCode::ValueTooLarge,
        }
    }
}

/// Returns the value of a CRDT key: the merge of the states of `object`'s live versions,
/// `None` when it holds none (tombstones, left from before the bucket became a CRDT
/// bucket, count as nothing).
///
/// # Errors
/// [`CrdtWriteError::NotAState`] when a live version is not a `crdt_type` state.
pub fn state_of(object: &VersionedObject, crdt_type: CrdtType) -> Result<Option<Crdt>, CrdtWriteError> {
    let mut merged: Option<Crdt> = None;
    for s in object.live_siblings() {
        let not_a_state = || CrdtWriteError::NotAState { expected: crdt_type };
        if s.content_type != CRDT_CONTENT_TYPE {
            return Err(not_a_state());
        }
        let state: Crdt = serde_json::from_slice(&s.value).map_err(|_| not_a_state())?;
        if state.crdt_type() != crdt_type {
            return Err(not_a_state());
        }
        match &mut merged {
            None => merged = Some(state),
            // Same type checked above: the merge cannot fail.
            Some(m) => m.merge(&state).map_err(|_| not_a_state())?,
        }
    }
    Ok(merged)
}

/// What [`StoredCopy::apply_crdt`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct CrdtOutcome {
    /// The version written: its dot and the copy's context.
    pub put: PutOutcome,
    /// The copy's state after the operation.
    pub state: Crdt,
}

impl CrdtOutcome {
    /// The JSON value after the operation, as this copy holds it.
    pub fn value(&self) -> Value {
        self.state.value()
    }
}

impl StoredCopy {
    /// Coordinates a CRDT operation on this copy in node incarnation `incarnation`:
    /// merges every state the copy holds, applies `op` as the copy's minting actor (drawn
    /// from `fresh` when the copy's own cannot be continued), and writes the result as
    /// one version that replaces all of them.
    ///
    /// # Errors
    /// [`CrdtWriteError::Op`] for a refused operation (a remove whose `observed` context
    /// names dots this copy has not seen is [`CrdtError::ContextNotSeen`]: sync a fresher
    /// copy in and retry); [`CrdtWriteError::NotAState`]; [`CrdtWriteError::StateTooLarge`]
    /// when the new state exceeds `max_state_bytes`; a [`VersionError`] from minting.
    /// Nothing changes on error.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_crdt(
        &mut self,
        incarnation: Incarnation,
        fresh: impl IntoIterator<Item = ActorId>,
        crdt_type: CrdtType,
        op: &CrdtOp,
        observed: Option<&DotSet>,
        now_ms: u64,
        max_state_bytes: usize,
    ) -> Result<CrdtOutcome, CrdtWriteError> {
        let mut state = state_of(&self.object, crdt_type)?.unwrap_or_else(|| Crdt::new(crdt_type));
        // The whole history as the context: the new version replaces every state merged
        // above, and no other (there is none).
        let context = self.object.context().clone();
        let own = self
            .minter
            .filter(|m| m.incarnation == incarnation)
            .map(|m| m.actor);
        let actor = self.object.minting_actor(&context, own, fresh)?;
        state.apply(op, actor, observed, now_ms)?;
        let bytes =
            serde_json::to_vec(&state).map_err(|_| CrdtWriteError::NotAState { expected: crdt_type })?;
        if bytes.len() > max_state_bytes {
            return Err(CrdtWriteError::StateTooLarge {
                crdt_type,
                len: bytes.len(),
                max: max_state_bytes,
            });
        }
        let put = self.object.put(
            &context,
            actor,
            NewWrite::value(bytes, CRDT_CONTENT_TYPE, now_ms),
            ConflictRule::Crdt { crdt_type },
        )?;
        self.minter = Some(Minter { incarnation, actor });
        Ok(CrdtOutcome { put, state })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dots::Dot;
    use proptest::prelude::*;
    use serde_json::json;

    const COUNTER: CrdtType = CrdtType::Counter;
    const LIMIT: usize = crate::limits::MAX_VALUE_BYTES;

    /// Actor ids never handed out before in this test process (a node draws random ones).
    fn fresh() -> impl Iterator<Item = ActorId> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static NEXT: AtomicU64 = AtomicU64::new(1 << 32);
        std::iter::repeat_with(|| ActorId(NEXT.fetch_add(1, Ordering::Relaxed)))
    }

    fn rule(t: CrdtType) -> ConflictRule {
        ConflictRule::Crdt { crdt_type: t }
    }

    #[test]
    fn an_operation_merges_every_sibling_state_into_one_version() {
        // Goal: concurrent operations on two copies leave two sibling states; a read sees
        // their sum, and the next operation on a copy holding both leaves one version.
        let inc = Incarnation(1);
        let (mut a, mut b) = (StoredCopy::default(), StoredCopy::default());
        a.apply_crdt(inc, fresh(), COUNTER, &CrdtOp::Increment(2), None, 1, LIMIT)
            .expect("a");
        b.apply_crdt(inc, fresh(), COUNTER, &CrdtOp::Increment(3), None, 1, LIMIT)
            .expect("b");
        a.object.sync(&b.object, rule(COUNTER));
        assert_eq!(a.object.siblings().len(), 2, "concurrent states are siblings");
        let read = state_of(&a.object, COUNTER).expect("state").expect("some");
        assert_eq!(read.value(), json!(5));
        let out = a
            .apply_crdt(inc, fresh(), COUNTER, &CrdtOp::Increment(-1), None, 2, LIMIT)
            .expect("merge and apply");
        assert_eq!(out.value(), json!(4));
        assert_eq!(a.object.siblings().len(), 1, "the operation replaced both states");
        assert_eq!(
            state_of(&a.object, COUNTER).expect("state").map(|c| c.value()),
            Some(json!(4))
        );
    }

    #[test]
    fn a_value_that_is_not_a_state_is_refused_and_nothing_changes() {
        let mut copy = StoredCopy::default();
        let ctx = DotSet::new();
        copy.coordinate(
            &ctx,
            Incarnation(1),
            fresh(),
            NewWrite::value(b"plain".to_vec(), "text/plain", 1),
            ConflictRule::Siblings { max_siblings: 8 },
        )
        .expect("plain write");
        let before = copy.clone();
        let err = copy
            .apply_crdt(
                Incarnation(1),
                fresh(),
                COUNTER,
                &CrdtOp::Increment(1),
                None,
                2,
                LIMIT,
            )
            .expect_err("not a state");
        assert_eq!(err, CrdtWriteError::NotAState { expected: COUNTER });
        assert_eq!(err.code(), crate::ErrorCode::WrongBucketType);
        assert_eq!(copy, before);

        // A state of another type is not one either.
        let mut set = StoredCopy::default();
        set.apply_crdt(
            Incarnation(1),
            fresh(),
            CrdtType::Set,
            &CrdtOp::Add(vec!["x".into()]),
            None,
            1,
            LIMIT,
        )
        .expect("set");
        assert_eq!(
            state_of(&set.object, COUNTER),
            Err(CrdtWriteError::NotAState { expected: COUNTER })
        );
    }

    #[test]
    fn a_state_over_the_limit_is_refused_and_nothing_changes() {
        let mut copy = StoredCopy::default();
        let before = copy.clone();
        let err = copy
            .apply_crdt(
                Incarnation(1),
                fresh(),
                CrdtType::Set,
                &CrdtOp::Add(vec!["a".repeat(100)]),
                None,
                1,
                64,
            )
            .expect_err("too large");
        assert!(
            matches!(err, CrdtWriteError::StateTooLarge { max: 64, .. }),
            "{err:?}"
        );
        assert_eq!(err.code(), crate::ErrorCode::ValueTooLarge);
        assert_eq!(copy, before);
    }

    #[test]
    fn a_remove_the_copy_has_not_seen_is_context_not_seen_until_a_fresher_copy_merges() {
        // Goal: the retry the coordinator does (sync the replicas' copy in, apply again)
        // turns ContextNotSeen into a remove that takes effect.
        let inc = Incarnation(1);
        let t = CrdtType::Set;
        let (mut a, mut b) = (StoredCopy::default(), StoredCopy::default());
        b.apply_crdt(inc, fresh(), t, &CrdtOp::Add(vec!["x".into()]), None, 1, LIMIT)
            .expect("add on b");
        let observed = state_of(&b.object, t).expect("state").expect("some").context();
        let remove = CrdtOp::Remove(vec!["x".into()]);
        let before = a.clone();
        let err = a
            .apply_crdt(inc, fresh(), t, &remove, Some(&observed), 2, LIMIT)
            .expect_err("a has not seen the add");
        assert_eq!(err.code(), crate::ErrorCode::ContextNotSeen);
        assert_eq!(a, before);
        a.object.sync(&b.object, rule(t));
        let out = a
            .apply_crdt(inc, fresh(), t, &remove, Some(&observed), 3, LIMIT)
            .expect("remove after the merge");
        assert_eq!(out.value(), json!([]));
    }

    #[test]
    fn the_actor_continues_only_on_the_copy_that_holds_its_operations() {
        // Goal: a copy that lost its state (a new incarnation, or a forgotten copy) never
        // continues its old actor, so the counter entry of that actor is never restarted
        // below what other replicas hold (max-merge would lose increments).
        let mut copy = StoredCopy::default();
        copy.apply_crdt(
            Incarnation(1),
            fresh(),
            COUNTER,
            &CrdtOp::Increment(5),
            None,
            1,
            LIMIT,
        )
        .expect("first");
        let first = copy.minter.expect("minter").actor;
        copy.apply_crdt(
            Incarnation(1),
            fresh(),
            COUNTER,
            &CrdtOp::Increment(5),
            None,
            2,
            LIMIT,
        )
        .expect("second");
        assert_eq!(
            copy.minter.expect("minter").actor,
            first,
            "same incarnation continues"
        );
        let replica = copy.object.clone();
        let mut restarted = StoredCopy::replica(replica.clone());
        restarted.minter = copy.minter;
        restarted
            .apply_crdt(
                Incarnation(2),
                fresh(),
                COUNTER,
                &CrdtOp::Increment(1),
                None,
                3,
                LIMIT,
            )
            .expect("after a restart");
        assert_ne!(
            restarted.minter.expect("minter").actor,
            first,
            "a new incarnation draws anew"
        );
        let mut merged = replica;
        merged.sync(&restarted.object, rule(COUNTER));
        assert_eq!(
            state_of(&merged, COUNTER).expect("state").map(|c| c.value()),
            Some(json!(11))
        );
    }

    /// One step of a random history over three copies of one counter key.
    #[derive(Debug, Clone)]
    enum Step {
        Increment { copy: usize, by: i8 },
        Sync { from: usize, to: usize },
        Restart { copy: usize },
    }

    fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
        let step = prop_oneof![
            4 => (0..3usize, any::<i8>()).prop_map(|(copy, by)| Step::Increment { copy, by }),
            3 => (0..3usize, 0..3usize).prop_map(|(from, to)| Step::Sync { from, to }),
            1 => (0..3usize).prop_map(|copy| Step::Restart { copy }),
        ];
        proptest::collection::vec(step, 1..60)
    }

    proptest! {
        #[test]
        fn counter_increments_through_copies_and_syncs_sum_exactly(steps in arb_steps()) {
            // Goal: whatever the interleaving of operations, merges and restarts (a new
            // incarnation keeps its data but not its actor), once every copy has met
            // every other the value is exactly the sum of the acknowledged increments.
            let mut copies = vec![StoredCopy::default(); 3];
            let mut incarnations = [Incarnation(1); 3];
            let mut sum: i64 = 0;
            let mut dots: Vec<Dot> = Vec::new();
            for (i, step) in steps.iter().enumerate() {
                match *step {
                    Step::Increment { copy, by } => {
                        let out = copies[copy]
                            .apply_crdt(incarnations[copy], fresh(), COUNTER, &CrdtOp::Increment(by.into()), None, i as u64, LIMIT)
                            .expect("increment");
                        prop_assert!(!dots.contains(&out.put.dot), "dot {:?} minted twice", out.put.dot);
                        dots.push(out.put.dot);
                        sum += i64::from(by);
                    }
                    Step::Sync { from, to } => {
                        let other = copies[from].object.clone();
                        copies[to].object.sync(&other, rule(COUNTER));
                    }
                    Step::Restart { copy } => incarnations[copy].0 += 1,
                }
            }
            for to in 0..3 {
                for from in 0..3 {
                    let other = copies[from].object.clone();
                    copies[to].object.sync(&other, rule(COUNTER));
                }
            }
            for c in &copies {
                let value = state_of(&c.object, COUNTER).expect("state").map_or(json!(0), |s| s.value());
                prop_assert_eq!(value, json!(sum));
            }
        }
    }
}
