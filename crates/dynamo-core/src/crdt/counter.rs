//! The PN-counter, standalone and embedded in a map.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::dot_store::{DotFun, Lattice};
use crate::dots::Dot;
use crate::ids::ActorId;

/// A counter that goes up and down: per actor, the total of its increments and the total
/// of its decrements, each a grow-only `u64` merged by maximum.
///
/// The value is the sum of all increments minus the sum of all decrements, computed
/// exactly and then saturated into `i64` (a counter past `i64::MAX` reads `i64::MAX`).
/// One actor's totals saturate at `u64::MAX`: increments past that are lost, which takes
/// at least two increments of `i64::MAX` by one actor.
///
/// Contract: `actor` in [`PnCounter::apply`] is the replica holding this state (a storage
/// node incarnation). Two diverged copies applying under one actor would each claim the
/// same totals, and the merge (a maximum) would keep only one of them.
///
/// Serialized as `{"inc": [[actor, n], …], "dec": [[actor, n], …]}`, sorted by actor,
/// zero totals left out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "PnCounterRepr", into = "PnCounterRepr")]
pub struct PnCounter {
    inc: BTreeMap<ActorId, u64>,
    dec: BTreeMap<ActorId, u64>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PnCounterRepr {
    #[serde(default)]
    inc: Vec<(ActorId, u64)>,
    #[serde(default)]
    dec: Vec<(ActorId, u64)>,
}

impl From<PnCounterRepr> for PnCounter {
    fn from(r: PnCounterRepr) -> Self {
        // A repeated actor is read as the join of its entries; zeros are dropped, so the
        // in-memory form is canonical and equal states compare equal.
        fn totals(pairs: Vec<(ActorId, u64)>) -> BTreeMap<ActorId, u64> {
            let mut out = BTreeMap::new();
            for (actor, n) in pairs.into_iter().filter(|&(_, n)| n > 0) {
                let e = out.entry(actor).or_insert(0);
                *e = n.max(*e);
            }
            out
        }
        PnCounter {
            inc: totals(r.inc),
            dec: totals(r.dec),
        }
    }
}

impl From<PnCounter> for PnCounterRepr {
    fn from(c: PnCounter) -> Self {
        PnCounterRepr {
            inc: c.inc.into_iter().collect(),
            dec: c.dec.into_iter().collect(),
        }
    }
}

impl PnCounter {
    /// Returns a counter at zero.
    pub fn new() -> Self {
        PnCounter::default()
    }

    /// Adds `increment` (negative: a decrement) on behalf of `actor`, the replica holding
    /// this state. Never fails; see the type's doc for saturation.
    pub fn apply(&mut self, increment: i64, actor: ActorId) {
        let totals = if increment >= 0 {
            &mut self.inc
        } else {
            &mut self.dec
        };
        if increment != 0 {
            let e = totals.entry(actor).or_insert(0);
            *e = e.saturating_add(increment.unsigned_abs());
        }
    }

    /// Returns the counter's value, saturated into `i64`.
    pub fn value(&self) -> i64 {
        let up: i128 = self.inc.values().map(|&n| i128::from(n)).sum();
        let down: i128 = self.dec.values().map(|&n| i128::from(n)).sum();
        saturate(up - down)
    }

    /// Merges `other` into `self`: per actor, the larger of each total.
    pub fn merge(&mut self, other: &PnCounter) {
        for (totals, theirs) in [(&mut self.inc, &other.inc), (&mut self.dec, &other.dec)] {
            for (&actor, &n) in theirs {
                let e = totals.entry(actor).or_insert(0);
                *e = n.max(*e);
            }
        }
    }
}

/// Clamps an exact total into `i64`.
fn saturate(total: i128) -> i64 {
    i64::try_from(total).unwrap_or(if total < 0 { i64::MIN } else { i64::MAX })
}

/// One actor's totals as of one of its writes, inside a map's counter field.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u64, u64)", into = "(u64, u64)")]
pub(crate) struct PnPair {
    inc: u64,
    dec: u64,
}

impl From<(u64, u64)> for PnPair {
    fn from((inc, dec): (u64, u64)) -> Self {
        PnPair { inc, dec }
    }
}

impl From<PnPair> for (u64, u64) {
    fn from(p: PnPair) -> Self {
        (p.inc, p.dec)
    }
}

impl Lattice for PnPair {
    fn join_value(&mut self, other: &Self) {
        self.inc = self.inc.max(other.inc);
        self.dec = self.dec.max(other.dec);
    }
}

/// A counter embedded in a map field: each actor's totals tagged with the dot of that
/// actor's latest update (Riak's `riak_dt_emcntr`).
///
/// Tagging with dots is what lets a field removal reset the counter: removing the field
/// drops the entries whose dots the remover observed, and an entry written concurrently
/// (unobserved) survives. An actor's entry is cumulative, so an increment by an actor
/// concurrent with the removal keeps that actor's observed total too; other actors'
/// observed totals are gone. Per-op dots would reset exactly, but grow without bound.
///
/// Serialized as `[[actor, counter, [inc, dec]], …]`.
pub(crate) type CounterStore = DotFun<PnPair>;

/// Applies `increment` under the freshly minted `dot`: the actor's latest totals plus
/// the increment move to the new dot, replacing the actor's older entries (all in the
/// context, so replacing them is an overwrite every replica will agree on).
pub(crate) fn counter_apply(store: &mut CounterStore, increment: i64, dot: Dot) {
    let mut totals = latest_entries(store)
        .find(|(d, _)| d.actor == dot.actor)
        .map(|(_, p)| p)
        .unwrap_or_default();
    if increment >= 0 {
        totals.inc = totals.inc.saturating_add(increment.unsigned_abs());
    } else {
        totals.dec = totals.dec.saturating_add(increment.unsigned_abs());
    }
    store.0.retain(|d, _| d.actor != dot.actor);
    store.0.insert(dot, totals);
}

/// Returns an embedded counter's value, saturated into `i64`.
pub(crate) fn counter_value(store: &CounterStore) -> i64 {
    saturate(
        latest_entries(store)
            .map(|(_, p)| i128::from(p.inc) - i128::from(p.dec))
            .sum(),
    )
}

/// Yields each actor's entry with the largest counter. A reachable state holds one entry
/// per actor; a merged state with two (concurrent entries of one actor cannot be minted)
/// would read the newer.
fn latest_entries(store: &CounterStore) -> impl Iterator<Item = (Dot, PnPair)> + '_ {
    // Dots order by (actor, counter), so an actor's last entry is its newest.
    let mut it = store.0.iter().peekable();
    std::iter::from_fn(move || {
        loop {
            let (&d, &p) = it.next()?;
            match it.peek() {
                Some((next, _)) if next.actor == d.actor => continue,
                _ => return Some((d, p)),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crdt_counter_sums_increments_and_decrements() {
        let mut c = PnCounter::new();
        c.apply(5, ActorId(1));
        c.apply(-3, ActorId(2));
        c.apply(0, ActorId(3));
        assert_eq!(c.value(), 2);
        let mut d = PnCounter::new();
        d.apply(10, ActorId(3));
        c.merge(&d);
        assert_eq!(c.value(), 12);
    }

    #[test]
    fn crdt_counter_saturates_into_i64() {
        // Goal: document saturation. Method: push the value past i64 both ways, and one
        // actor's total past u64.
        let mut c = PnCounter::new();
        c.apply(i64::MAX, ActorId(1));
        c.apply(i64::MAX, ActorId(2));
        assert_eq!(c.value(), i64::MAX, "2^64 - 2 reads i64::MAX");
        for actor in 3..7 {
            c.apply(i64::MIN, ActorId(actor));
        }
        assert_eq!(c.value(), i64::MIN, "2^64 - 2 - 2^65 reads i64::MIN");
        let mut z = PnCounter::new();
        z.apply(i64::MIN, ActorId(1));
        assert_eq!(z.value(), i64::MIN);
        // One actor's decrements saturate at u64::MAX: the third is partly lost.
        let mut one = PnCounter::new();
        for _ in 0..3 {
            one.apply(i64::MIN, ActorId(1));
        }
        one.apply(i64::MAX, ActorId(2));
        one.apply(i64::MAX, ActorId(3));
        assert_eq!(one.value(), -1, "(2^64 - 2) - (2^64 - 1)");
    }

    #[test]
    fn crdt_counter_golden_json() {
        let mut c = PnCounter::new();
        c.apply(5, ActorId(1));
        c.apply(2, ActorId(2));
        c.apply(-3, ActorId(2));
        let json = serde_json::to_string(&c).expect("serialize");
        assert_eq!(json, r#"{"inc":[[1,5],[2,2]],"dec":[[2,3]]}"#);
        let back: PnCounter = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, c);
        assert_eq!(
            serde_json::to_string(&PnCounter::new()).expect("serialize"),
            r#"{"inc":[],"dec":[]}"#
        );
        // Zeros and repeats are canonicalized; unknown fields are refused.
        let odd: PnCounter = serde_json::from_str(r#"{"inc":[[1,2],[1,5],[3,0]]}"#).expect("parse");
        assert_eq!(
            serde_json::to_string(&odd).expect("serialize"),
            r#"{"inc":[[1,5]],"dec":[]}"#
        );
        assert!(serde_json::from_str::<PnCounter>(r#"{"inc":[],"neg":[]}"#).is_err());
    }

    #[test]
    fn crdt_embedded_counter_keeps_one_entry_per_actor() {
        let a = ActorId(1);
        let mut s = CounterStore::default();
        counter_apply(&mut s, 4, Dot::new(a, 1));
        counter_apply(&mut s, -1, Dot::new(a, 2));
        counter_apply(&mut s, 7, Dot::new(ActorId(2), 1));
        assert_eq!(s.0.len(), 2);
        assert_eq!(counter_value(&s), 10);
        assert_eq!(
            serde_json::to_string(&s).expect("serialize"),
            "[[1,2,[4,1]],[2,1,[7,0]]]"
        );
    }
}
