use std::collections::BTreeSet;

use proptest::prelude::*;

use super::*;
use crate::dots::DotSet;
use crate::ids::ActorId;
use crate::quorum::tests::{id, pl};
use crate::version::NewWrite;

const SIB: ConflictRule = ConflictRule::Siblings { max_siblings: 16 };

fn up(_: &NodeId) -> bool {
    true
}

fn object(values: &[(&str, u64)]) -> VersionedObject {
    let mut o = VersionedObject::new();
    for (v, actor) in values {
        o.put(
            &DotSet::new(),
            ActorId(*actor),
            NewWrite::value(v.as_bytes().to_vec(), "text/plain", 1),
            SIB,
        )
        .expect("put");
    }
    o
}

fn drain_write(round: &mut WriteRound) -> Vec<WriteAction> {
    std::iter::from_fn(|| round.poll_action()).collect()
}

fn drain_read(round: &mut ReadRound) -> Vec<ReadAction> {
    std::iter::from_fn(|| round.poll_action()).collect()
}

fn slot(owner: &str, target: &str) -> Slot {
    Slot {
        owner: id(owner),
        target: id(target),
    }
}

#[test]
fn a_write_is_coordinated_by_an_owner_and_answered_at_w() {
    let mut round = WriteRound::new(&pl(), 2, 0, 1_000, 100, up);
    assert_eq!(
        drain_write(&mut round),
        vec![WriteAction::Coordinate {
            slot: slot("a", "a"),
            deadline_ms: 100
        }]
    );
    round.on_coordinate(CoordinateReply::Stored, 5, up);
    assert_eq!(
        drain_write(&mut round),
        vec![
            WriteAction::Replicate(slot("b", "b")),
            WriteAction::Replicate(slot("c", "c"))
        ]
    );
    round.on_replicate(slot("c", "c"), ReplicateReply::Stored, up);
    assert_eq!(
        drain_write(&mut round),
        vec![WriteAction::Answer(WriteAnswer::Stored { acks: 2 })]
    );
    assert!(!round.is_finished(), "b's replicate is still out");
    round.on_replicate(slot("b", "b"), ReplicateReply::Stored, up);
    assert!(drain_write(&mut round).is_empty(), "answered once");
    assert!(round.is_finished());
}

#[test]
fn a_fallback_coordinates_only_when_no_owner_is_up() {
    let only_b_and_d = |n: &NodeId| matches!(n.as_str(), "b" | "d");
    let mut round = WriteRound::new(&pl(), 1, 0, 1_000, 100, only_b_and_d);
    // a's slot goes to d (a fallback), but b, an owner, coordinates.
    assert_eq!(
        drain_write(&mut round),
        vec![WriteAction::Coordinate {
            slot: slot("b", "b"),
            deadline_ms: 100
        }]
    );
    let only_d = |n: &NodeId| n.as_str() == "d";
    let mut round = WriteRound::new(&pl(), 1, 0, 1_000, 100, only_d);
    assert_eq!(
        drain_write(&mut round),
        vec![WriteAction::Coordinate {
            slot: slot("a", "d"),
            deadline_ms: 100
        }]
    );
}

#[test]
fn a_coordinate_that_did_not_apply_moves_on_and_one_that_may_have_applied_does_not() {
    let mut round = WriteRound::new(&pl(), 2, 0, 1_000, 100, up);
    drain_write(&mut round);
    round.on_coordinate(CoordinateReply::NotApplied, 40, up);
    // a's slot is now served by d; b is tried first (it comes next), with a fresh
    // per-attempt deadline.
    assert_eq!(
        drain_write(&mut round),
        vec![WriteAction::Coordinate {
            slot: slot("a", "d"),
            deadline_ms: 140
        }]
    );
    round.on_coordinate(CoordinateReply::Unknown, 140, up);
    assert_eq!(
        drain_write(&mut round),
        vec![WriteAction::Answer(WriteAnswer::Indeterminate)]
    );
    assert!(round.is_finished(), "nothing is retried after an unknown outcome");
}

#[test]
fn a_refused_write_is_answered_with_the_nodes_error_and_goes_nowhere_else() {
    let mut round = WriteRound::new(&pl(), 2, 0, 1_000, 100, up);
    drain_write(&mut round);
    let refused = CoordinateReply::Refused {
        code: ErrorCode::TooManySiblings,
        message: "17 siblings".into(),
    };
    round.on_coordinate(refused, 1, up);
    assert_eq!(
        drain_write(&mut round),
        vec![WriteAction::Answer(WriteAnswer::Refused {
            code: ErrorCode::TooManySiblings,
            message: "17 siblings".into()
        })]
    );
    assert!(round.is_finished());
}

#[test]
fn a_failed_replica_is_replaced_by_a_fallback_and_the_round_fails_when_none_is_left() {
    let not_e = |n: &NodeId| n.as_str() != "e";
    let mut round = WriteRound::new(&pl(), 3, 0, 1_000, 100, not_e);
    drain_write(&mut round);
    round.on_coordinate(CoordinateReply::Stored, 1, not_e);
    drain_write(&mut round);
    round.on_replicate(slot("b", "b"), ReplicateReply::Failed, not_e);
    assert_eq!(
        drain_write(&mut round),
        vec![WriteAction::Replicate(slot("b", "d"))]
    );
    round.on_replicate(slot("b", "d"), ReplicateReply::Failed, not_e);
    // e is down: 1 stored, c outstanding, W = 3 cannot be reached.
    assert_eq!(
        drain_write(&mut round),
        vec![WriteAction::Answer(WriteAnswer::Unavailable {
            needed: 3,
            acks: 1,
            why: Shortfall::NotEnoughReplicas
        })]
    );
    assert!(!round.is_finished());
    round.on_replicate(slot("c", "c"), ReplicateReply::Stored, not_e);
    assert!(round.is_finished());
}

#[test]
fn a_write_past_its_deadline_answers_unavailable_and_keeps_replicating() {
    let mut round = WriteRound::new(&pl(), 3, 0, 1_000, 100, up);
    drain_write(&mut round);
    round.on_coordinate(CoordinateReply::Stored, 1, up);
    drain_write(&mut round);
    assert_eq!(round.next_timeout_ms(), Some(1_000));
    round.on_tick(999);
    assert!(drain_write(&mut round).is_empty());
    round.on_tick(1_000);
    assert_eq!(
        drain_write(&mut round),
        vec![WriteAction::Answer(WriteAnswer::Unavailable {
            needed: 3,
            acks: 1,
            why: Shortfall::DeadlinePassed
        })]
    );
    assert_eq!(round.next_timeout_ms(), None);
    round.on_replicate(slot("b", "b"), ReplicateReply::Stored, up);
    round.on_replicate(slot("c", "c"), ReplicateReply::Stored, up);
    assert!(drain_write(&mut round).is_empty(), "answered once");
    assert!(round.is_finished());
}

#[test]
fn a_write_with_no_reachable_node_is_unavailable_at_once() {
    let mut round = WriteRound::new(&pl(), 1, 0, 1_000, 100, |_| false);
    assert_eq!(
        drain_write(&mut round),
        vec![WriteAction::Answer(WriteAnswer::Unavailable {
            needed: 1,
            acks: 0,
            why: Shortfall::NotEnoughReplicas
        })]
    );
    assert!(round.is_finished());
}

#[test]
fn a_read_answers_the_merge_of_r_replies_then_repairs_stale_owners() {
    let old = object(&[("old", 1)]);
    let mut new = old.clone();
    new.put(
        old.context(),
        ActorId(2),
        NewWrite::value(b"new".to_vec(), "text/plain", 2),
        SIB,
    )
    .expect("put");
    let mut round = ReadRound::new(&pl(), 2, SIB, 1_000, up);
    assert_eq!(
        drain_read(&mut round),
        vec![
            ReadAction::Get(slot("a", "a")),
            ReadAction::Get(slot("b", "b")),
            ReadAction::Get(slot("c", "c"))
        ]
    );
    round.on_reply(slot("b", "b"), ReadReply::Found(Some(new.clone())), up);
    round.on_reply(slot("a", "a"), ReadReply::Found(Some(old.clone())), up);
    assert_eq!(
        drain_read(&mut round),
        vec![ReadAction::Answer(ReadAnswer::Found(Some(new.clone())))]
    );
    round.on_reply(slot("c", "c"), ReadReply::Found(None), up);
    let actions = drain_read(&mut round);
    assert_eq!(
        actions,
        vec![
            ReadAction::Repair {
                target: id("a"),
                object: new.clone()
            },
            ReadAction::Repair {
                target: id("c"),
                object: new
            }
        ]
    );
    assert!(round.is_finished());
}

#[test]
fn a_fallbacks_not_found_is_no_vote_and_gets_no_repair() {
    let a_down = |n: &NodeId| n.as_str() != "a";
    let stored = object(&[("v", 1)]);
    let mut round = ReadRound::new(&pl(), 2, SIB, 1_000, a_down);
    assert_eq!(drain_read(&mut round)[0], ReadAction::Get(slot("a", "d")));
    round.on_reply(slot("a", "d"), ReadReply::Found(None), a_down);
    round.on_reply(slot("b", "b"), ReadReply::Found(Some(stored.clone())), a_down);
    assert!(drain_read(&mut round).is_empty(), "one vote is not R = 2");
    round.on_reply(slot("c", "c"), ReadReply::Found(None), a_down);
    // c's "not found" is an owner's vote: R reached with the stored value, and c is
    // repaired; d, the fallback, is not.
    assert_eq!(
        drain_read(&mut round),
        vec![
            ReadAction::Answer(ReadAnswer::Found(Some(stored.clone()))),
            ReadAction::Repair {
                target: id("c"),
                object: stored
            }
        ]
    );
}

#[test]
fn a_failed_get_is_asked_of_a_fallback() {
    let mut round = ReadRound::new(&pl(), 3, SIB, 1_000, up);
    drain_read(&mut round);
    round.on_reply(slot("a", "a"), ReadReply::Failed, up);
    assert_eq!(drain_read(&mut round), vec![ReadAction::Get(slot("a", "d"))]);
    round.on_tick(1_000);
    assert_eq!(
        drain_read(&mut round),
        vec![ReadAction::Answer(ReadAnswer::Unavailable {
            needed: 3,
            got: 0,
            why: Shortfall::DeadlinePassed
        })]
    );
    assert!(!round.is_finished(), "the gets still out are awaited, for repair");
}

const FIRST: ReadFanout = ReadFanout::First { hedge_ms: 50 };

// Goal: an R-first read asks only R slots, answers from them without asking the rest,
// and repairs among the replies it got.
#[test]
fn an_r_first_read_answers_from_r_replies_without_asking_the_rest() {
    let old = object(&[("old", 1)]);
    let new = object(&[("new", 2)]);
    let mut round = ReadRound::with_fanout(&pl(), 2, SIB, 0, 1_000, FIRST, up);
    assert_eq!(
        drain_read(&mut round),
        vec![ReadAction::Get(slot("a", "a")), ReadAction::Get(slot("b", "b"))]
    );
    assert_eq!(
        round.next_timeout_ms(),
        Some(50),
        "the hedge comes before the deadline"
    );
    round.on_reply(slot("a", "a"), ReadReply::Found(Some(old.clone())), up);
    round.on_reply(slot("b", "b"), ReadReply::Found(Some(new.clone())), up);
    let merged = merge([Some(old), Some(new)].iter(), SIB).expect("merged");
    let actions = drain_read(&mut round);
    assert_eq!(
        actions[0],
        ReadAction::Answer(ReadAnswer::Found(Some(merged.clone())))
    );
    let repaired: BTreeSet<NodeId> = actions[1..]
        .iter()
        .map(|a| match a {
            ReadAction::Repair { target, object } => {
                assert_eq!(object, &merged);
                target.clone()
            }
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(repaired, BTreeSet::from([id("a"), id("b")]));
    assert!(round.is_finished(), "c was never asked");
    assert_eq!(round.next_timeout_ms(), None);
}

// Goal: the held slots are asked when the hedge delay passes without the quorum, and
// one held slot takes the place of a slot that failed (before any fallback).
#[test]
fn an_r_first_read_hedges_after_the_delay_and_replaces_a_failed_slot() {
    let mut round = ReadRound::with_fanout(&pl(), 2, SIB, 0, 1_000, FIRST, up);
    drain_read(&mut round);
    round.on_tick(49);
    assert!(drain_read(&mut round).is_empty(), "not before the hedge");
    round.on_tick(50);
    assert_eq!(drain_read(&mut round), vec![ReadAction::Get(slot("c", "c"))]);
    assert_eq!(round.next_timeout_ms(), Some(1_000));

    let mut round = ReadRound::with_fanout(&pl(), 2, SIB, 0, 1_000, FIRST, up);
    drain_read(&mut round);
    round.on_reply(slot("a", "a"), ReadReply::Failed, up);
    assert_eq!(
        drain_read(&mut round),
        vec![ReadAction::Get(slot("c", "c"))],
        "the held owner, not a fallback"
    );
    round.on_reply(slot("c", "c"), ReadReply::Failed, up);
    assert_eq!(
        drain_read(&mut round),
        vec![ReadAction::Get(slot("c", "d"))],
        "then a fallback, for the slot that failed"
    );
}

#[test]
fn repair_plan_skips_matching_copies_fallbacks_and_unknown_keys() {
    let v = object(&[("v", 1)]);
    let replies = vec![(slot("a", "a"), None), (slot("b", "d"), None)];
    assert!(repair_plan(&replies, SIB).is_empty(), "nobody knows the key");
    let replies = vec![
        (slot("a", "a"), Some(v.clone())),
        (slot("b", "d"), None),
        (slot("c", "c"), Some(v.clone())),
    ];
    assert!(repair_plan(&replies, SIB).is_empty());
    let w = object(&[("w", 2)]);
    let replies = vec![
        (slot("a", "a"), Some(v.clone())),
        (slot("c", "c"), Some(w.clone())),
    ];
    let mut both = v.clone();
    both.sync(&w, SIB);
    assert_eq!(
        repair_plan(&replies, SIB),
        vec![(id("a"), both.clone()), (id("c"), both)],
        "concurrent copies both get the merge"
    );
}

#[test]
fn merge_keeps_concurrent_siblings_and_drops_superseded_ones() {
    let a = object(&[("a", 1)]);
    let b = object(&[("b", 2)]);
    let mut a2 = a.clone();
    a2.put(
        a.context(),
        ActorId(1),
        NewWrite::value(b"a2".to_vec(), "text/plain", 3),
        SIB,
    )
    .expect("put");
    let merged = merge([Some(a), None, Some(b.clone()), Some(a2)].iter(), SIB).expect("known");
    let values: Vec<&[u8]> = merged.siblings().iter().map(|s| s.value.as_slice()).collect();
    assert_eq!(values, vec![b"a2".as_slice(), b"b".as_slice()]);
    assert_eq!(merge([None, None].iter(), SIB), None);
    let lww = merge([Some(b)].iter(), ConflictRule::LastWriterWins).expect("known");
    assert_eq!(lww.siblings().len(), 1);
}

// ---- properties: any order of replies, failures and deadlines ----

/// One scripted step: which outstanding call replies, with what, and whether the clock
/// passes the deadline first.
#[derive(Debug, Clone)]
struct Step {
    pick: usize,
    outcome: u8,
    tick: bool,
    flip_up: Option<u8>,
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    prop::collection::vec(
        (
            any::<usize>(),
            0u8..8,
            prop::bool::weighted(0.05),
            prop::option::weighted(0.1, 0u8..5),
        )
            .prop_map(|(pick, outcome, tick, flip_up)| Step {
                pick,
                outcome,
                tick,
                flip_up,
            }),
        0..40,
    )
}

const NODES: [&str; 5] = ["a", "b", "c", "d", "e"];

proptest! {
    /// Goal: a write round answers exactly once, its answer is right by the quorum
    /// rules, it never has two coordinates out nor retries one that may have applied,
    /// and no node serves two slots.
    #[test]
    fn a_write_round_answers_once_and_rightly(
        w in 1usize..=3,
        initially_up in prop::collection::vec(any::<bool>(), 5),
        steps in arb_steps(),
    ) {
        let mut live: Vec<bool> = initially_up;
        let is_up = |live: &Vec<bool>| {
            let live = live.clone();
            move |n: &NodeId| NODES.iter().position(|x| *x == n.as_str()).is_some_and(|i| live[i])
        };
        let mut round = WriteRound::new(&pl(), w, 0, 1_000, 100, is_up(&live));
        let mut coordinate_out: Option<Slot> = None;
        let mut replicates_out: Vec<Slot> = Vec::new();
        let mut targets = BTreeSet::new();
        let mut answers = Vec::new();
        let mut stored = 0usize;
        let mut minted = false;
        let mut unknown = false;
        let mut refused = false;
        let mut deadline_passed = false;
        let mut now = 0;
        let mut steps = steps.into_iter();
        for _ in 0..200 {
            for a in std::iter::from_fn(|| round.poll_action()) {
                match a {
                    WriteAction::Coordinate { slot, deadline_ms } => {
                        prop_assert!(coordinate_out.is_none(), "two coordinates out");
                        prop_assert!(!unknown && !minted, "a coordinate after one that may have applied");
                        prop_assert!(deadline_ms <= 1_000);
                        prop_assert!(targets.insert(slot.target.clone()), "{} serves two slots", slot.target);
                        coordinate_out = Some(slot);
                    }
                    WriteAction::Replicate(slot) => {
                        prop_assert!(minted, "a replicate before the write was minted");
                        prop_assert!(targets.insert(slot.target.clone()), "{} serves two slots", slot.target);
                        replicates_out.push(slot);
                    }
                    WriteAction::Answer(ans) => {
                        let outstanding = usize::from(coordinate_out.is_some()) + replicates_out.len();
                        match &ans {
                            WriteAnswer::Stored { acks } => {
                                prop_assert!(*acks >= w && stored >= w, "stored with {stored} of {w}");
                            }
                            WriteAnswer::Refused { .. } => prop_assert!(refused),
                            WriteAnswer::Indeterminate => prop_assert!(unknown),
                            WriteAnswer::Unavailable { acks, why, .. } => {
                                prop_assert_eq!(*acks, stored);
                                prop_assert!(stored < w);
                                match why {
                                    Shortfall::DeadlinePassed => prop_assert!(deadline_passed),
                                    Shortfall::NotEnoughReplicas => prop_assert!(
                                        stored + outstanding < w || (!minted && coordinate_out.is_none()),
                                        "gave up with {stored} stored and {outstanding} out of {w}"
                                    ),
                                }
                            }
                        }
                        answers.push(ans);
                    }
                }
            }
            if round.is_finished() {
                break;
            }
            let step = steps.next().unwrap_or(Step { pick: 0, outcome: 0, tick: true, flip_up: None });
            if let Some(i) = step.flip_up {
                live[usize::from(i)] = !live[usize::from(i)];
            }
            if step.tick && !deadline_passed {
                now = 1_000;
                deadline_passed = true;
                round.on_tick(now);
                continue;
            }
            if let Some(slot) = coordinate_out.take() {
                let reply = match step.outcome {
                    0..=3 => CoordinateReply::Stored,
                    4 | 5 => CoordinateReply::NotApplied,
                    6 => CoordinateReply::Unknown,
                    _ => CoordinateReply::Refused { code: ErrorCode::TooManySiblings, message: String::new() },
                };
                match reply {
                    CoordinateReply::Stored => { minted = true; stored += 1; }
                    CoordinateReply::Unknown => unknown = true,
                    CoordinateReply::Refused { .. } => refused = true,
                    CoordinateReply::NotApplied => {}
                }
                let _ = slot;
                round.on_coordinate(reply, now, is_up(&live));
            } else if !replicates_out.is_empty() {
                let slot = replicates_out.remove(step.pick % replicates_out.len());
                let reply = if step.outcome < 5 { ReplicateReply::Stored } else { ReplicateReply::Failed };
                if reply == ReplicateReply::Stored { stored += 1; }
                round.on_replicate(slot, reply, is_up(&live));
            } else {
                prop_assert!(false, "the round waits with nothing outstanding");
            }
        }
        prop_assert!(round.is_finished(), "the round did not finish");
        prop_assert_eq!(answers.len(), 1, "answers: {:?}", answers);
    }

    /// Goal: a read round answers exactly once, with the merge of the replies it counted
    /// when it reached R, never counts a fallback's "not found", and repairs only owners,
    /// only after every reply.
    #[test]
    fn a_read_round_answers_once_and_rightly(
        r in 1usize..=3,
        initially_up in prop::collection::vec(any::<bool>(), 5),
        steps in arb_steps(),
        r_first in any::<bool>(),
    ) {
        let copies = [None, Some(object(&[("x", 1)])), Some(object(&[("y", 2)]))];
        let live = initially_up;
        let is_up = |n: &NodeId| NODES.iter().position(|x| *x == n.as_str()).is_some_and(|i| live[i]);
        let fanout = if r_first { ReadFanout::First { hedge_ms: 500 } } else { ReadFanout::All };
        let mut round = ReadRound::with_fanout(&pl(), r, SIB, 0, 1_000, fanout, is_up);
        let mut out: Vec<Slot> = Vec::new();
        let mut votes: Vec<Option<VersionedObject>> = Vec::new();
        let mut answers = Vec::new();
        let mut hedged = !r_first;
        let mut deadline_passed = false;
        let mut steps = steps.into_iter();
        for _ in 0..200 {
            for a in std::iter::from_fn(|| round.poll_action()) {
                match a {
                    ReadAction::Get(slot) => out.push(slot),
                    ReadAction::Answer(ans) => {
                        match &ans {
                            ReadAnswer::Found(v) => {
                                prop_assert!(votes.len() >= r);
                                prop_assert_eq!(v, &merge(votes.iter(), SIB));
                            }
                            ReadAnswer::Unavailable { got, why, .. } => {
                                prop_assert_eq!(*got, votes.len());
                                prop_assert!(votes.len() < r);
                                if *why == Shortfall::DeadlinePassed {
                                    prop_assert!(deadline_passed);
                                } else {
                                    prop_assert!(votes.len() + out.len() < r);
                                }
                            }
                        }
                        answers.push(ans);
                    }
                    ReadAction::Repair { target, .. } => {
                        prop_assert!(out.is_empty(), "a repair before every reply");
                        prop_assert!(pl().preference_list.contains(&target), "repair of a fallback");
                    }
                }
            }
            if round.is_finished() {
                break;
            }
            let step = steps.next().unwrap_or(Step { pick: 0, outcome: 0, tick: true, flip_up: None });
            if step.tick && !hedged {
                hedged = true;
                round.on_tick(500);
                continue;
            }
            if step.tick && !deadline_passed {
                deadline_passed = true;
                round.on_tick(1_000);
                continue;
            }
            prop_assert!(!out.is_empty(), "the round waits with nothing outstanding");
            let slot = out.remove(step.pick % out.len());
            let reply = match step.outcome {
                0..=5 => ReadReply::Found(copies[usize::from(step.outcome) % 3].clone()),
                _ => ReadReply::Failed,
            };
            if let ReadReply::Found(o) = &reply
                && (o.is_some() || !slot.is_hinted())
            {
                votes.push(o.clone());
            }
            round.on_reply(slot, reply, is_up);
        }
        prop_assert!(round.is_finished(), "the round did not finish");
        prop_assert_eq!(answers.len(), 1, "answers: {:?}", answers);
    }
}
