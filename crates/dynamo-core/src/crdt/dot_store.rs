//! Dot stores: the building blocks of the causal CRDTs (the OR-set, the map and the types
//! embedded in a map), after Almeida, Shoker and Baquero, *Delta State Replicated Data
//! Types* (2018), §7.
//!
//! A causal CRDT's state is a pair (store, context). The store holds the dots of the
//! writes that are still live; the context (a [`DotSet`]) holds every dot the replica has
//! ever seen. A dot in the context but not in the store was removed, or overwritten by a
//! write that saw it. Joining two states keeps a dot that both stores hold, or that one
//! store holds and the other context has never seen; any other dot was dropped by a side
//! that saw it. Contexts unite. The fields of a map (and their fields, down the nesting)
//! are stores that share the one context of the top-level map.
//!
//! Invariant: every dot of a store is in the context it is paired with. Every operation
//! keeps it (a dot is minted into the context before it enters a store) and deserializing
//! a top-level state checks it.

use std::collections::{BTreeMap, BTreeSet};

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::dots::{Dot, DotSet};
use crate::ids::ActorId;

/// A store of dots that joins under causal contexts.
pub(crate) trait DotStore: Default {
    /// Returns true when the store holds no dot: a value never written, or removed.
    fn is_bottom(&self) -> bool;

    /// Joins `other` (paired with `other_ctx`) into `self` (paired with `ctx`): keeps a
    /// dot both hold, or one holds and the other's context lacks. The caller unites the
    /// contexts afterwards. Commutative, associative and idempotent on valid pairs.
    fn join(&mut self, ctx: &DotSet, other: &Self, other_ctx: &DotSet);

    /// Drops every dot that `observed` contains: a reset-remove of what a client saw.
    fn remove_dots(&mut self, observed: &DotSet);

    /// Returns true when some dot of the store satisfies `pred`.
    fn any_dot(&self, pred: &mut dyn FnMut(Dot) -> bool) -> bool;
}

/// Returns true when every dot of `store` is in `ctx` (the dot-store invariant).
pub(crate) fn within_context(store: &impl DotStore, ctx: &DotSet) -> bool {
    !store.any_dot(&mut |d| !ctx.contains(&d))
}

/// Returns true when `store` holds at least one dot that `observed` contains.
pub(crate) fn has_observed_dot(store: &impl DotStore, observed: &DotSet) -> bool {
    store.any_dot(&mut |d| observed.contains(&d))
}

/// Mints the next dot of `actor` into `ctx` and returns it.
///
/// The counter is one past the largest the context holds for the actor, so the dot is
/// fresh as long as `actor` is the replica holding `ctx` (an actor only mints on its own
/// state, which has seen all its earlier dots: the same rule as a DVV put).
pub(crate) fn mint(ctx: &mut DotSet, actor: ActorId) -> Dot {
    // 2^64 writes by one actor to one key cannot happen; saturating keeps this total.
    let dot = Dot::new(actor, ctx.max_counter(actor).saturating_add(1));
    ctx.insert(dot);
    dot
}

/// A set of dots: the store of one set element, or a field's presence.
///
/// Serialized as a list of `[actor, counter]` pairs, sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Dots(pub(crate) BTreeSet<Dot>);

impl Dots {
    /// Returns the store holding just `dot`.
    pub(crate) fn single(dot: Dot) -> Self {
        Dots(BTreeSet::from([dot]))
    }
}

impl DotStore for Dots {
    fn is_bottom(&self) -> bool {
        self.0.is_empty()
    }

    fn join(&mut self, ctx: &DotSet, other: &Self, other_ctx: &DotSet) {
        self.0.retain(|d| other.0.contains(d) || !other_ctx.contains(d));
        for d in &other.0 {
            if !ctx.contains(d) {
                self.0.insert(*d);
            }
        }
    }

    fn remove_dots(&mut self, observed: &DotSet) {
        self.0.retain(|d| !observed.contains(d));
    }

    fn any_dot(&self, pred: &mut dyn FnMut(Dot) -> bool) -> bool {
        self.0.iter().any(|&d| pred(d))
    }
}

impl Serialize for Dots {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|d| (d.actor, d.counter)))
    }
}

impl<'de> Deserialize<'de> for Dots {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(ActorId, u64)>::deserialize(d)?;
        let mut dots = BTreeSet::new();
        for (actor, counter) in pairs {
            if counter == 0 {
                return Err(D::Error::custom("dot counters start at 1"));
            }
            dots.insert(Dot::new(actor, counter));
        }
        Ok(Dots(dots))
    }
}

/// A value that joins by taking an upper bound (a join semilattice).
pub(crate) trait Lattice: Clone {
    /// Joins `other` into `self`.
    fn join_value(&mut self, other: &Self);
}

/// A map from dots to lattice values (the paper's DotFun): a counter's per-actor entries,
/// a register's concurrent assignments.
///
/// Serialized as a list of `[actor, counter, value]`, sorted by dot.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DotFun<V>(pub(crate) BTreeMap<Dot, V>);

impl<V> Default for DotFun<V> {
    fn default() -> Self {
        DotFun(BTreeMap::new())
    }
}

impl<V: Lattice> DotStore for DotFun<V> {
    fn is_bottom(&self) -> bool {
        self.0.is_empty()
    }

    fn join(&mut self, ctx: &DotSet, other: &Self, other_ctx: &DotSet) {
        self.0
            .retain(|d, _| other.0.contains_key(d) || !other_ctx.contains(d));
        for (d, v) in &other.0 {
            match self.0.get_mut(d) {
                // One dot names one write, so both values are the same in any reachable
                // state; joining them keeps the law even for states that are not.
                Some(mine) => mine.join_value(v),
                None if !ctx.contains(d) => {
                    self.0.insert(*d, v.clone());
                }
                None => {}
            }
        }
    }

    fn remove_dots(&mut self, observed: &DotSet) {
        self.0.retain(|d, _| !observed.contains(d));
    }

    fn any_dot(&self, pred: &mut dyn FnMut(Dot) -> bool) -> bool {
        self.0.keys().any(|&d| pred(d))
    }
}

impl<V: Serialize> Serialize for DotFun<V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|(d, v)| (d.actor, d.counter, v)))
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for DotFun<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let entries = Vec::<(ActorId, u64, V)>::deserialize(d)?;
        let mut out = BTreeMap::new();
        for (actor, counter, v) in entries {
            if counter == 0 {
                return Err(D::Error::custom("dot counters start at 1"));
            }
            if out.insert(Dot::new(actor, counter), v).is_some() {
                return Err(D::Error::custom("duplicate dot"));
            }
        }
        Ok(DotFun(out))
    }
}

/// A map from names to dot stores (the paper's DotMap): set elements to their dots, map
/// fields to their stores. A name whose store becomes bottom is dropped, so a name is
/// present exactly when its store holds a dot.
///
/// Serialized as a JSON object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct DotMap<S>(pub(crate) BTreeMap<String, S>);

impl<S> Default for DotMap<S> {
    fn default() -> Self {
        DotMap(BTreeMap::new())
    }
}

impl<S> DotMap<S> {
    /// Returns true when no name is present (used by serde's `skip_serializing_if`).
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<S: DotStore + Clone> DotStore for DotMap<S> {
    fn is_bottom(&self) -> bool {
        self.0.is_empty()
    }

    fn join(&mut self, ctx: &DotSet, other: &Self, other_ctx: &DotSet) {
        let bottom = S::default();
        for (name, mine) in self.0.iter_mut() {
            mine.join(ctx, other.0.get(name).unwrap_or(&bottom), other_ctx);
        }
        for (name, theirs) in &other.0 {
            if !self.0.contains_key(name) {
                let mut s = S::default();
                s.join(ctx, theirs, other_ctx);
                if !s.is_bottom() {
                    self.0.insert(name.clone(), s);
                }
            }
        }
        self.0.retain(|_, s| !s.is_bottom());
    }

    fn remove_dots(&mut self, observed: &DotSet) {
        for s in self.0.values_mut() {
            s.remove_dots(observed);
        }
        self.0.retain(|_, s| !s.is_bottom());
    }

    fn any_dot(&self, pred: &mut dyn FnMut(Dot) -> bool) -> bool {
        self.0.values().any(|s| s.any_dot(pred))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: u64, c: u64) -> Dot {
        Dot::new(ActorId(a), c)
    }

    fn ctx(dots: &[Dot]) -> DotSet {
        dots.iter().copied().collect()
    }

    #[test]
    fn crdt_dots_join_keeps_unseen_and_drops_removed() {
        // Goal: the three cases of the dot-store join. Method: hand-built pairs.
        let mut a = Dots(BTreeSet::from([dot(1, 1), dot(1, 2)]));
        let a_ctx = ctx(&[dot(1, 1), dot(1, 2)]);
        // b saw (1,1) and removed it, saw nothing of (1,2), and holds its own (2,1).
        let b = Dots(BTreeSet::from([dot(2, 1)]));
        let b_ctx = ctx(&[dot(1, 1), dot(2, 1)]);
        a.join(&a_ctx, &b, &b_ctx);
        assert_eq!(a.0, BTreeSet::from([dot(1, 2), dot(2, 1)]));
    }

    #[test]
    fn crdt_dot_lists_reject_zero_counters_and_duplicates() {
        assert!(serde_json::from_str::<Dots>("[[1,0]]").is_err());
        assert!(serde_json::from_str::<DotFun<u8>>("[[1,1,0],[1,1,1]]").is_err());
        assert!(serde_json::from_str::<DotFun<u8>>("[[1,0,0]]").is_err());
        let d: Dots = serde_json::from_str("[[2,1],[1,3]]").expect("parse");
        assert_eq!(serde_json::to_string(&d).expect("serialize"), "[[1,3],[2,1]]");
    }
}
