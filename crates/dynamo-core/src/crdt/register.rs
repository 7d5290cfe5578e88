//! The last-writer-wins register, standalone and embedded in a map.

use std::cmp::Ordering;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use super::dot_store::{DotFun, Lattice};
use crate::dots::Dot;
use crate::ids::ActorId;

/// One write to a register: the value, the caller-supplied time and the writing actor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Assignment {
    /// When the write was accepted, in ms since the Unix epoch (the service's clock).
    pub timestamp_ms: u64,
    /// The replica that accepted the write.
    pub actor: ActorId,
    /// The value written (any JSON; its size is the service's business).
    pub value: Value,
}

impl Assignment {
    /// Orders two writes for last-writer-wins: by timestamp, then actor, then a hash of
    /// the value's canonical JSON, then that JSON itself. The order is total on distinct
    /// values, so a merge picks the same winner whatever the order of delivery, even for
    /// two writes in the same millisecond by the same actor.
    pub fn lww_cmp(&self, other: &Assignment) -> Ordering {
        self.timestamp_ms
            .cmp(&other.timestamp_ms)
            .then(self.actor.cmp(&other.actor))
            .then_with(|| {
                // Only reached on a (timestamp, actor) tie, so the canonical form is rarely
                // built.
                let (a, b) = (canonical_json(&self.value), canonical_json(&other.value));
                xxh3_64(a.as_bytes())
                    .cmp(&xxh3_64(b.as_bytes()))
                    .then_with(|| a.cmp(&b))
            })
    }
}

impl Lattice for Assignment {
    fn join_value(&mut self, other: &Self) {
        if other.lww_cmp(self) == Ordering::Greater {
            *self = other.clone();
        }
    }
}

/// Writes `v` as JSON with object keys sorted, whatever serde_json's map order (the
/// `preserve_order` feature, which another crate could switch on, keeps insertion order),
/// so equal values hash equal.
fn canonical_json(v: &Value) -> String {
    fn write(v: &Value, out: &mut String) {
        match v {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                out.push('{');
                for (i, k) in keys.into_iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    // A JSON string's Display is its escaped literal.
                    let _ = write!(out, "{}", Value::String(k.clone()));
                    out.push(':');
                    if let Some(item) = map.get(k) {
                        write(item, out);
                    }
                }
                out.push('}');
            }
            Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write(item, out);
                }
                out.push(']');
            }
            scalar => {
                let _ = write!(out, "{scalar}");
            }
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// A register holding the write that is last by [`Assignment::lww_cmp`], or nothing.
///
/// Timestamps come from the caller (the coordinating service's clock), so a write from a
/// node whose clock runs behind can lose to an earlier one: that is the price of LWW, and
/// why the store defaults to siblings. A merge never looks at causality: the largest
/// `(timestamp_ms, actor, value hash)` wins, whatever the order.
///
/// Serialized as `null` or `{"timestamp_ms": …, "actor": …, "value": …}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LwwRegister {
    current: Option<Assignment>,
}

impl LwwRegister {
    /// Returns an empty register.
    pub fn new() -> Self {
        LwwRegister::default()
    }

    /// Writes `value` at `timestamp_ms` on behalf of `actor`. The write takes effect only
    /// if it is last by [`Assignment::lww_cmp`]; otherwise it is lost, as if it had been
    /// merged in from a replica.
    pub fn assign(&mut self, value: Value, timestamp_ms: u64, actor: ActorId) {
        self.join_assignment(&Assignment {
            timestamp_ms,
            actor,
            value,
        });
    }

    /// Returns the current value, if any write was made.
    pub fn value(&self) -> Option<&Value> {
        self.current.as_ref().map(|a| &a.value)
    }

    /// Returns the winning write, if any.
    pub fn assignment(&self) -> Option<&Assignment> {
        self.current.as_ref()
    }

    /// Merges `other` into `self`: the later write by [`Assignment::lww_cmp`] wins.
    pub fn merge(&mut self, other: &LwwRegister) {
        if let Some(theirs) = &other.current {
            self.join_assignment(theirs);
        }
    }

    fn join_assignment(&mut self, theirs: &Assignment) {
        match &mut self.current {
            Some(mine) => mine.join_value(theirs),
            None => self.current = Some(theirs.clone()),
        }
    }
}

/// A register embedded in a map field: the assignments not yet overwritten, each tagged
/// with the dot of the update that wrote it.
///
/// An assignment replaces the entries its replica holds and carries forward the LWW
/// winner among them and the new write, so without removals the field reads exactly like
/// a standalone [`LwwRegister`] fed every write. The dots let a field removal drop the
/// entries the remover observed; a concurrent assignment survives, carrying what its
/// replica had seen.
///
/// Serialized as `[[actor, counter, {"timestamp_ms": …, "actor": …, "value": …}], …]`.
pub(crate) type RegisterStore = DotFun<Assignment>;

/// Assigns `value` under the freshly minted `dot` (see [`RegisterStore`]).
pub(crate) fn register_assign(store: &mut RegisterStore, value: Value, now_ms: u64, dot: Dot) {
    let mut winner = Assignment {
        timestamp_ms: now_ms,
        actor: dot.actor,
        value,
    };
    for a in store.0.values() {
        winner.join_value(a);
    }
    store.0.clear();
    store.0.insert(dot, winner);
}

/// Returns the LWW winner among an embedded register's entries.
pub(crate) fn register_value(store: &RegisterStore) -> Option<&Assignment> {
    store.0.values().max_by(|a, b| a.lww_cmp(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn reg(value: Value, ts: u64, actor: u64) -> LwwRegister {
        let mut r = LwwRegister::new();
        r.assign(value, ts, ActorId(actor));
        r
    }

    #[test]
    fn crdt_register_highest_timestamp_wins_in_any_order() {
        let writes = [
            reg(json!("a"), 10, 3),
            reg(json!("b"), 30, 1),
            reg(json!("c"), 20, 2),
        ];
        for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [2, 0, 1]] {
            let mut r = LwwRegister::new();
            for i in order {
                r.merge(&writes[i]);
            }
            assert_eq!(r.value(), Some(&json!("b")));
        }
        // A write older than the current one is lost.
        let mut r = reg(json!("new"), 100, 1);
        r.assign(json!("old"), 99, ActorId(9));
        assert_eq!(r.value(), Some(&json!("new")));
    }

    #[test]
    fn crdt_register_ties_break_by_actor_then_value() {
        // Goal: equal timestamps still merge commutatively. Method: both orders.
        let a = reg(json!(1), 5, 1);
        let b = reg(json!(2), 5, 2);
        let (mut ab, mut ba) = (a.clone(), b.clone());
        ab.merge(&b);
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.value(), Some(&json!(2)), "higher actor wins a timestamp tie");
        // Same timestamp and actor: the value hash decides, the same way both ways.
        let x = reg(json!({"k": "x"}), 5, 1);
        let y = reg(json!({"k": "y"}), 5, 1);
        let (mut xy, mut yx) = (x.clone(), y.clone());
        xy.merge(&y);
        yx.merge(&x);
        assert_eq!(xy, yx);
    }

    #[test]
    fn crdt_register_canonical_json_sorts_keys() {
        assert_eq!(
            canonical_json(&json!({"b": [1, {"d": null, "c": "\"q\""}], "a": true})),
            r#"{"a":true,"b":[1,{"c":"\"q\"","d":null}]}"#
        );
    }

    #[test]
    fn crdt_register_golden_json() {
        let r = reg(json!({"name": "ann"}), 1_700_000_000_000, 3);
        let json = serde_json::to_string(&r).expect("serialize");
        assert_eq!(
            json,
            r#"{"timestamp_ms":1700000000000,"actor":3,"value":{"name":"ann"}}"#
        );
        assert_eq!(serde_json::from_str::<LwwRegister>(&json).expect("parse"), r);
        assert_eq!(
            serde_json::to_string(&LwwRegister::new()).expect("serialize"),
            "null"
        );
        assert_eq!(
            serde_json::from_str::<LwwRegister>("null").expect("parse"),
            LwwRegister::new()
        );
        assert!(
            serde_json::from_str::<LwwRegister>(r#"{"timestamp_ms":1,"actor":1}"#).is_err(),
            "value is required"
        );
        assert!(
            serde_json::from_str::<LwwRegister>(r#"{"timestamp_ms":1,"actor":1,"value":2,"extra":0}"#)
                .is_err()
        );
    }

    #[test]
    fn crdt_embedded_register_carries_the_winner_forward() {
        let mut s = RegisterStore::default();
        register_assign(&mut s, json!("late"), 100, Dot::new(ActorId(1), 1));
        // A causally later write with a clock behind loses, as in a standalone register.
        register_assign(&mut s, json!("skewed"), 50, Dot::new(ActorId(2), 1));
        assert_eq!(s.0.len(), 1);
        assert_eq!(register_value(&s).map(|a| &a.value), Some(&json!("late")));
    }
}
