//! Property tests of the merge laws, for every CRDT type.
//!
//! Method: a random history of steps over three replicas, each its own actor (as storage
//! nodes are): apply a random op at a replica, with the context some replica holds as the
//! client's observed context, or merge one replica into another. The replicas' final
//! states feed the laws: merge is commutative, associative, idempotent and an upper bound,
//! and merging all replicas in any order gives the same state. Each type also checks its
//! merged value against a naive oracle over the ops that were accepted. A refused op must
//! leave its replica unchanged, and every state must survive a JSON round trip.

use std::collections::BTreeMap;

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use serde_json::json;

use super::{Assignment, Crdt, CrdtOp, CrdtType};
use crate::dots::{Dot, DotSet};
use crate::ids::ActorId;

const REPLICAS: usize = 3;

fn actor(replica: usize) -> ActorId {
    ActorId(replica as u64 + 1)
}

#[derive(Debug, Clone)]
enum Step {
    Apply {
        at: usize,
        op: CrdtOp,
        observed_from: usize,
        now_ms: u64,
    },
    Merge {
        from: usize,
        to: usize,
    },
}

/// An op a replica accepted, with what the oracles need.
#[derive(Debug)]
struct Accepted {
    at: usize,
    op: CrdtOp,
    observed: DotSet,
    now_ms: u64,
    /// The replica's context right after the op.
    context_after: DotSet,
}

fn run(kind: CrdtType, steps: &[Step]) -> Result<(Vec<Crdt>, Vec<Accepted>), TestCaseError> {
    let mut replicas = vec![Crdt::new(kind); REPLICAS];
    let mut accepted = Vec::new();
    for step in steps {
        match step {
            Step::Apply {
                at,
                op,
                observed_from,
                now_ms,
            } => {
                let observed = replicas[*observed_from].context();
                let before = replicas[*at].clone();
                match replicas[*at].apply(op, actor(*at), Some(&observed), *now_ms) {
                    Ok(()) => accepted.push(Accepted {
                        at: *at,
                        op: op.clone(),
                        observed,
                        now_ms: *now_ms,
                        context_after: replicas[*at].context(),
                    }),
                    Err(_) => prop_assert_eq!(&replicas[*at], &before, "a refused op changed state"),
                }
            }
            Step::Merge { from, to } => {
                let from = replicas[*from].clone();
                replicas[*to]
                    .merge(&from)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
        }
    }
    Ok((replicas, accepted))
}

fn merged(a: &Crdt, b: &Crdt) -> Result<Crdt, TestCaseError> {
    let mut out = a.clone();
    out.merge(b).map_err(|e| TestCaseError::fail(e.to_string()))?;
    Ok(out)
}

/// Checks the laws on three states and returns the merge of all three.
fn check_laws(states: &[Crdt]) -> Result<Crdt, TestCaseError> {
    let [a, b, c] = states else {
        return Err(TestCaseError::fail("three replicas expected"));
    };
    for s in states {
        let json = serde_json::to_string(s).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: Crdt =
            serde_json::from_str(&json).map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
        prop_assert_eq!(&back, s, "JSON round trip");
        prop_assert_eq!(&merged(s, s)?, s, "idempotent");
    }
    prop_assert_eq!(merged(a, b)?, merged(b, a)?, "commutative");
    prop_assert_eq!(
        merged(&merged(a, b)?, c)?,
        merged(a, &merged(b, c)?)?,
        "associative"
    );
    let ab = merged(a, b)?;
    prop_assert_eq!(&merged(&ab, a)?, &ab, "upper bound of a");
    prop_assert_eq!(&merged(&ab, b)?, &ab, "upper bound of b");
    let all = merged(&ab, c)?;
    for order in [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]] {
        let mut m = states[order[0]].clone();
        for &i in &order[1..] {
            m = merged(&m, &states[i])?;
        }
        prop_assert_eq!(&m, &all, "merge order changed the state");
        prop_assert_eq!(m.value(), all.value());
    }
    Ok(all)
}

fn arb_steps(op: BoxedStrategy<CrdtOp>) -> impl Strategy<Value = Vec<Step>> {
    let step = prop_oneof![
        3 => (0..REPLICAS, op, 0..REPLICAS, 0u64..4).prop_map(|(at, op, observed_from, now_ms)| {
            Step::Apply { at, op, observed_from, now_ms }
        }),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Merge { from, to }),
    ];
    vec(step, 0..40)
}

fn arb_element() -> impl Strategy<Value = String> {
    prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(String::from)
}

fn arb_counter_op() -> BoxedStrategy<CrdtOp> {
    (-100i64..100).prop_map(CrdtOp::Increment).boxed()
}

fn arb_set_op() -> BoxedStrategy<CrdtOp> {
    prop_oneof![
        vec(arb_element(), 0..3).prop_map(CrdtOp::Add),
        vec(arb_element(), 1..3).prop_map(CrdtOp::Remove),
    ]
    .boxed()
}

fn arb_register_op() -> BoxedStrategy<CrdtOp> {
    (0u8..4).prop_map(|n| CrdtOp::Assign(json!(n))).boxed()
}

/// A map op nesting at most `levels` maps below the one it applies to.
fn arb_map_op(levels: u32) -> BoxedStrategy<CrdtOp> {
    let name = || prop::sample::select(vec!["a", "b"]).prop_map(String::from);
    let leaf = prop_oneof![
        (-5i64..5).prop_map(CrdtOp::Increment),
        vec(arb_element(), 0..3).prop_map(CrdtOp::Add),
        vec(arb_element(), 1..2).prop_map(CrdtOp::Remove),
        (0u8..3).prop_map(|n| CrdtOp::Assign(json!(n))),
    ];
    let field_op = if levels > 0 {
        prop_oneof![3 => leaf, 1 => arb_map_op(levels - 1)].boxed()
    } else {
        leaf.boxed()
    };
    prop_oneof![
        3 => btree_map(name(), field_op, 1..3).prop_map(CrdtOp::Update),
        1 => vec(name(), 1..3).prop_map(CrdtOp::RemoveFields),
    ]
    .boxed()
}

/// The naive OR-set oracle: each accepted add gave its elements one dot; the dot is gone
/// when an accepted remove of the element observed it, or a later add of the element was
/// minted by a replica that had seen it. An element is present while one of its dots is
/// not gone.
fn set_oracle(accepted: &[Accepted]) -> Vec<String> {
    let mut adds: Vec<(String, Dot, &DotSet)> = Vec::new();
    for a in accepted {
        if let CrdtOp::Add(elements) = &a.op {
            let me = actor(a.at);
            let dot = Dot::new(me, a.context_after.max_counter(me));
            for e in elements {
                adds.push((e.clone(), dot, &a.context_after));
            }
        }
    }
    let removed = |e: &str, d: &Dot| {
        accepted.iter().any(|a| match &a.op {
            CrdtOp::Remove(elements) => elements.iter().any(|x| x == e) && a.observed.contains(d),
            _ => false,
        })
    };
    let superseded = |e: &str, d: &Dot| {
        adds.iter()
            .any(|(x, d2, ctx)| x == e && d2 != d && ctx.contains(d))
    };
    let mut present: Vec<String> = adds
        .iter()
        .filter(|(e, d, _)| !removed(e, d) && !superseded(e, d))
        .map(|(e, _, _)| e.clone())
        .collect();
    present.sort();
    present.dedup();
    present
}

proptest! {
    #[test]
    fn crdt_counter_merge_laws_and_sum(steps in arb_steps(arb_counter_op())) {
        let (replicas, accepted) = run(CrdtType::Counter, &steps)?;
        let all = check_laws(&replicas)?;
        let sum: i64 = accepted
            .iter()
            .map(|a| match a.op { CrdtOp::Increment(n) => n, _ => 0 })
            .sum();
        prop_assert_eq!(all.value(), json!(sum), "value = sum of all increments");
    }

    #[test]
    fn crdt_set_merge_laws_and_add_wins_oracle(steps in arb_steps(arb_set_op())) {
        let (replicas, accepted) = run(CrdtType::Set, &steps)?;
        let all = check_laws(&replicas)?;
        prop_assert_eq!(all.value(), json!(set_oracle(&accepted)));
    }

    #[test]
    fn crdt_register_merge_laws_and_highest_wins(steps in arb_steps(arb_register_op())) {
        let (replicas, accepted) = run(CrdtType::Register, &steps)?;
        let all = check_laws(&replicas)?;
        let winner = accepted
            .iter()
            .filter_map(|a| match &a.op {
                CrdtOp::Assign(value) => Some(Assignment {
                    timestamp_ms: a.now_ms,
                    actor: actor(a.at),
                    value: value.clone(),
                }),
                _ => None,
            })
            .max_by(|x, y| x.lww_cmp(y));
        let expect = winner.map_or(serde_json::Value::Null, |w| w.value);
        prop_assert_eq!(all.value(), expect, "the highest (timestamp, actor, hash) wins");
    }

    #[test]
    fn crdt_map_merge_laws(steps in arb_steps(arb_map_op(2))) {
        let (replicas, _) = run(CrdtType::Map, &steps)?;
        check_laws(&replicas)?;
    }

    #[test]
    fn crdt_map_counter_fields_sum_without_removes(
        steps in arb_steps(
            btree_map(
                prop::sample::select(vec!["a", "b"]).prop_map(String::from),
                (-5i64..5).prop_map(CrdtOp::Increment),
                1..3,
            )
            .prop_map(CrdtOp::Update)
            .boxed(),
        )
    ) {
        // Without removes, a counter field reads like a standalone counter.
        let (replicas, accepted) = run(CrdtType::Map, &steps)?;
        let all = check_laws(&replicas)?;
        let mut sums: BTreeMap<String, i64> = BTreeMap::new();
        for a in &accepted {
            if let CrdtOp::Update(fields) = &a.op {
                for (name, op) in fields {
                    if let CrdtOp::Increment(n) = op {
                        *sums.entry(name.clone()).or_default() += n;
                    }
                }
            }
        }
        prop_assert_eq!(all.value(), json!(sums));
    }
}
