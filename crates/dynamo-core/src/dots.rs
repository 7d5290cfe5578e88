//! Dots and sets of dots: the causal vocabulary shared by versions, contexts and CRDTs.
//!
//! A [`Dot`] names one write: the actor that minted it and that actor's counter. A
//! [`DotSet`] is a causal history: for each actor a contiguous prefix `1..=n` (the version
//! vector) plus the dots that arrived out of order (the "dot cloud" of Almeida et al.,
//! *Delta State Replicated Data Types*, §5). Contexts handed to clients are dot sets, so
//! a context can say "everything I read, plus my own write" without also claiming a
//! concurrent write it never saw, which a plain version vector cannot express.
//!
//! Invariant: a `DotSet` is always compact: every counter in the vector is ≥ 1, and every
//! cloud dot lies strictly past its actor's prefix + 1 (else it would have been folded in).
//! Compact sets compare equal exactly when they contain the same dots.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::ActorId;

/// One write: minted by `actor` as its `counter`-th write to a key (counters start at 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Dot {
    /// The storage-node incarnation that minted the write.
    pub actor: ActorId,
    /// The actor's sequence number for this key, from 1.
    pub counter: u64,
}

impl Dot {
    /// Builds a dot.
    pub const fn new(actor: ActorId, counter: u64) -> Self {
        Dot { actor, counter }
    }
}

/// A causal history: a version vector plus out-of-order dots, kept compact.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "DotSetRepr", into = "DotSetRepr")]
pub struct DotSet {
    vv: BTreeMap<ActorId, u64>,
    cloud: BTreeSet<Dot>,
}

/// The serialized shape of a [`DotSet`]: two sorted lists. Deserializing re-compacts, so a
/// peer can never plant a non-canonical set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DotSetRepr {
    /// `(actor, n)`: the actor's dots `1..=n` are all in the set.
    pub(crate) vv: Vec<(ActorId, u64)>,
    /// Dots beyond their actor's prefix.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) cloud: Vec<(ActorId, u64)>,
}

/// A dot with counter 0, which no actor ever mints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dot counters start at 1")]
pub struct ZeroCounter;

impl TryFrom<DotSetRepr> for DotSet {
    type Error = ZeroCounter;
    fn try_from(r: DotSetRepr) -> Result<Self, ZeroCounter> {
        let mut set = DotSet::new();
        for (actor, n) in r.vv {
            if n == 0 {
                return Err(ZeroCounter);
            }
            let e = set.vv.entry(actor).or_insert(0);
            *e = (*e).max(n);
        }
        for (actor, counter) in r.cloud {
            if counter == 0 {
                return Err(ZeroCounter);
            }
            set.cloud.insert(Dot::new(actor, counter));
        }
        set.compact();
        Ok(set)
    }
}

impl From<DotSet> for DotSetRepr {
    fn from(s: DotSet) -> DotSetRepr {
        DotSetRepr {
            vv: s.vv.into_iter().collect(),
            cloud: s.cloud.into_iter().map(|d| (d.actor, d.counter)).collect(),
        }
    }
}

impl DotSet {
    /// Returns the empty set (no writes seen).
    pub fn new() -> Self {
        DotSet::default()
    }

    /// Builds a set from a vector `(actor, n)` and out-of-order dots `(actor, counter)`,
    /// compacting them (a storage codec's decode).
    ///
    /// # Errors
    /// [`ZeroCounter`] when a counter is 0.
    pub fn from_parts(
        vv: impl IntoIterator<Item = (ActorId, u64)>,
        cloud: impl IntoIterator<Item = (ActorId, u64)>,
    ) -> Result<DotSet, ZeroCounter> {
        DotSet::try_from(DotSetRepr {
            vv: vv.into_iter().collect(),
            cloud: cloud.into_iter().collect(),
        })
    }

    /// Returns true when the set holds no dot.
    pub fn is_empty(&self) -> bool {
        self.vv.is_empty() && self.cloud.is_empty()
    }

    /// Returns true when `dot` is in the set.
    pub fn contains(&self, dot: &Dot) -> bool {
        self.vv.get(&dot.actor).is_some_and(|&n| dot.counter <= n) || self.cloud.contains(dot)
    }

    /// Adds one dot.
    pub fn insert(&mut self, dot: Dot) {
        if dot.counter == 0 || self.contains(&dot) {
            return;
        }
        self.cloud.insert(dot);
        self.compact();
    }

    /// Adds every dot of `other` (set union; commutative, associative, idempotent).
    pub fn union(&mut self, other: &DotSet) {
        for (&actor, &n) in &other.vv {
            let e = self.vv.entry(actor).or_insert(0);
            *e = (*e).max(n);
        }
        self.cloud.extend(other.cloud.iter().copied());
        self.compact();
    }

    /// Returns true when every dot of `other` is in `self`.
    pub fn covers(&self, other: &DotSet) -> bool {
        // A compact cloud never continues a prefix, so our prefix alone must reach `n`.
        other
            .vv
            .iter()
            .all(|(a, &n)| self.vv.get(a).is_some_and(|&m| m >= n))
            && other.cloud.iter().all(|d| self.contains(d))
    }

    /// Returns the largest counter of `actor` in the set (0 if none).
    pub fn max_counter(&self, actor: ActorId) -> u64 {
        let prefix = self.vv.get(&actor).copied().unwrap_or(0);
        let cloud = self
            .cloud
            .range(Dot::new(actor, 0)..=Dot::new(actor, u64::MAX))
            .next_back()
            .map_or(0, |d| d.counter);
        prefix.max(cloud)
    }

    /// Returns the number of actors with a vector entry.
    pub fn vector_len(&self) -> usize {
        self.vv.len()
    }

    /// Returns the number of out-of-order dots.
    pub fn cloud_len(&self) -> usize {
        self.cloud.len()
    }

    /// Iterates over the version vector `(actor, n)` in actor order.
    pub fn vector(&self) -> impl Iterator<Item = (ActorId, u64)> + '_ {
        self.vv.iter().map(|(&a, &n)| (a, n))
    }

    /// Iterates over the out-of-order dots in order.
    pub fn cloud(&self) -> impl Iterator<Item = Dot> + '_ {
        self.cloud.iter().copied()
    }

    /// Removes the vector entry of `actor` (and its cloud dots). Used only to bound a
    /// history (see [`crate::version::VersionedObject::put`]): forgetting dots can make a
    /// superseded sibling look new again, never make a live one disappear.
    pub fn forget_actor(&mut self, actor: ActorId) {
        self.vv.remove(&actor);
        self.cloud.retain(|d| d.actor != actor);
    }

    /// Drops out-of-order dots, smallest counters first, until at most `max` remain. As
    /// with [`DotSet::forget_actor`], a smaller set only ever claims less.
    pub fn truncate_cloud(&mut self, max: usize) {
        while self.cloud.len() > max {
            let Some(oldest) = self.cloud.iter().min_by_key(|d| (d.counter, d.actor)).copied() else {
                break;
            };
            self.cloud.remove(&oldest);
        }
    }

    /// Folds cloud dots that continue their actor's prefix into the vector and drops those
    /// the prefix already covers.
    fn compact(&mut self) {
        // The cloud is ordered by (actor, counter), so a run of consecutive dots folds in
        // one pass.
        let cloud = std::mem::take(&mut self.cloud);
        for dot in cloud {
            let n = self.vv.get(&dot.actor).copied().unwrap_or(0);
            if dot.counter <= n {
                continue;
            }
            if dot.counter == n + 1 {
                self.vv.insert(dot.actor, dot.counter);
            } else {
                self.cloud.insert(dot);
            }
        }
        debug_assert!(self.is_compact());
    }

    fn is_compact(&self) -> bool {
        self.vv.values().all(|&n| n > 0)
            && self
                .cloud
                .iter()
                .all(|d| d.counter > self.vv.get(&d.actor).copied().unwrap_or(0) + 1)
    }
}

impl FromIterator<Dot> for DotSet {
    fn from_iter<I: IntoIterator<Item = Dot>>(iter: I) -> Self {
        let mut s = DotSet::new();
        s.cloud.extend(iter.into_iter().filter(|d| d.counter > 0));
        s.compact();
        s
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_dot() -> impl Strategy<Value = Dot> {
        (0u64..4, 1u64..8).prop_map(|(a, c)| Dot::new(ActorId(a), c))
    }

    pub(crate) fn arb_dotset() -> impl Strategy<Value = DotSet> {
        proptest::collection::vec(arb_dot(), 0..12).prop_map(DotSet::from_iter)
    }

    fn naive(s: &DotSet) -> BTreeSet<Dot> {
        let mut out = BTreeSet::new();
        for (a, n) in s.vector() {
            for c in 1..=n {
                out.insert(Dot::new(a, c));
            }
        }
        out.extend(s.cloud());
        out
    }

    #[test]
    fn consecutive_dots_fold_into_the_vector() {
        let a = ActorId(1);
        let s: DotSet = [Dot::new(a, 3), Dot::new(a, 1), Dot::new(a, 2)]
            .into_iter()
            .collect();
        assert_eq!(s.vector().collect::<Vec<_>>(), vec![(a, 3)]);
        assert_eq!(s.cloud_len(), 0);
        let s: DotSet = [Dot::new(a, 1), Dot::new(a, 3)].into_iter().collect();
        assert_eq!(s.vector().collect::<Vec<_>>(), vec![(a, 1)]);
        assert_eq!(s.cloud().collect::<Vec<_>>(), vec![Dot::new(a, 3)]);
        assert!(!s.contains(&Dot::new(a, 2)));
        assert_eq!(s.max_counter(a), 3);
    }

    #[test]
    fn deserializing_recompacts_and_rejects_zero() {
        let s: DotSet = serde_json::from_str(r#"{"vv":[[1,2]],"cloud":[[1,3],[1,2]]}"#).expect("parse");
        assert_eq!(s.vector().collect::<Vec<_>>(), vec![(ActorId(1), 3)]);
        assert!(serde_json::from_str::<DotSet>(r#"{"vv":[[1,0]]}"#).is_err());
        assert!(serde_json::from_str::<DotSet>(r#"{"vv":[],"cloud":[[1,0]]}"#).is_err());
    }

    proptest! {
        #[test]
        fn union_is_set_union(a in arb_dotset(), b in arb_dotset()) {
            let mut u = a.clone();
            u.union(&b);
            let expect: BTreeSet<Dot> = naive(&a).union(&naive(&b)).copied().collect();
            prop_assert_eq!(naive(&u), expect);
            prop_assert!(u.covers(&a) && u.covers(&b));
        }

        #[test]
        fn union_laws(a in arb_dotset(), b in arb_dotset(), c in arb_dotset()) {
            let mut ab = a.clone(); ab.union(&b);
            let mut ba = b.clone(); ba.union(&a);
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.union(&c);
            let mut bc = b.clone(); bc.union(&c);
            let mut a_bc = a.clone(); a_bc.union(&bc);
            prop_assert_eq!(&ab_c, &a_bc);
            let mut aa = a.clone(); aa.union(&a);
            prop_assert_eq!(&aa, &a);
        }

        #[test]
        fn covers_matches_subset(a in arb_dotset(), b in arb_dotset()) {
            prop_assert_eq!(a.covers(&b), naive(&b).is_subset(&naive(&a)));
        }

        #[test]
        fn contains_matches_naive(a in arb_dotset(), d in arb_dot()) {
            prop_assert_eq!(a.contains(&d), naive(&a).contains(&d));
        }
    }
}
