//! The quorum rounds of one client request, sans I/O: a [`WriteRound`] and a
//! [`ReadRound`] take the replies of storage nodes, the liveness view and the time, and
//! return what to do next ([`WriteAction`], [`ReadAction`]): send, answer, repair. They
//! never send, wait or read a clock, so the coordinator is a loop that carries actions to
//! the network and replies back, and the simulator drives the very same rounds over a
//! simulated one (riak_kv's `get_core`/`put_core`, quinn-proto's connection).
//!
//! **Write** (Dynamo §4.5): the first reachable owner of the preference list (a fallback
//! only when no owner is up: a fallback would mint on a hint) coordinates the write:
//! mints the dot and stores it. The stored object then goes to the other N − 1 slots;
//! the client is answered once W replicas stored it. A slot whose node is down, or fails
//! during the request, is served by the next unused fallback (§4.6).
//!
//! **At most once** (ARCHITECTURE.md §4, invariant 6): a coordinate is retried on the
//! next slot only when it provably did not apply ([`CoordinateReply::NotApplied`]). One
//! that may have applied ([`CoordinateReply::Unknown`]) may have minted a dot, so the
//! client is answered [`WriteAnswer::Indeterminate`] instead of a second version of its
//! write. Replicates are merges of the minted object and are retried freely.
//!
//! **Read**: every slot is asked ([`ReadFanout::All`]), or the first R slots with the
//! others held back until one of those fails or a hedge delay passes without the quorum
//! ([`ReadFanout::First`]); the answer is the merge of the first R replies either way. A
//! fallback's "not found" is no vote: it holds hints, not the key, so an existing key
//! never reads as missing because fallbacks answered first. Once every slot asked has
//! answered or failed, each owner whose copy differs from the merge of all replies gets
//! the merge (read repair); fallbacks are left alone, their hints reach the owners on
//! their own.
//!
//! Each round answers exactly once: the first of quorum reached, quorum impossible, or
//! the deadline passed; the replies after it still count for durability (a write keeps
//! replicating) and repair (a read still repairs).

use std::collections::VecDeque;

use crate::error::ErrorCode;
use crate::ids::NodeId;
use crate::quorum::{QuorumCount, QuorumState, Slot, SlotPlan};
use crate::ring::PreferenceList;
use crate::version::{ConflictRule, VersionedObject};

/// What a coordinate-put call came back with, as far as the round cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoordinateReply {
    /// The node stored the write (or replayed one it remembered under the same
    /// idempotency key).
    Stored,
    /// The node refused the write as the client's fault (a 4xx): nobody else is asked.
    Refused {
        /// The node's error code.
        code: ErrorCode,
        /// The node's message.
        message: String,
    },
    /// The node provably did not apply it: skipped as down, never connected, the batch
    /// refused whole, or an error answer (its deadline passed, storage failed first).
    NotApplied,
    /// The call failed after the write may have reached the node (a timeout, a broken
    /// connection): it may have minted a dot.
    Unknown,
}

/// What a replicate call came back with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicateReply {
    /// The node stored the object.
    Stored,
    /// Anything else: the slot is tried on a fallback.
    Failed,
}

/// Why a round answered that it could not reach its quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortfall {
    /// Too few replicas are left that could still answer.
    NotEnoughReplicas,
    /// The request's deadline passed first.
    DeadlinePassed,
}

/// What a write round answers the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAnswer {
    /// W replicas stored the write.
    Stored {
        /// Replicas that had stored it when the answer was given.
        acks: usize,
    },
    /// The coordinating node refused the write.
    Refused {
        /// The node's error code.
        code: ErrorCode,
        /// The node's message.
        message: String,
    },
    /// The coordinating replica may or may not have applied the write.
    Indeterminate,
    /// Fewer than W replicas stored it.
    Unavailable {
        /// W.
        needed: usize,
        /// Replicas that stored it.
        acks: usize,
        /// Why the round gave up.
        why: Shortfall,
    },
}

/// What a write round asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteAction {
    /// Send the client's write to `slot.target` to mint and store (a hint for
    /// `slot.owner` when they differ); the node must not apply it after `deadline_ms`.
    Coordinate {
        /// The slot.
        slot: Slot,
        /// Wall-clock ms after which the node refuses the coordinate.
        deadline_ms: u64,
    },
    /// Send the coordinated object to `slot.target`.
    Replicate(Slot),
    /// Answer the client (once per round).
    Answer(WriteAnswer),
}

#[derive(Debug)]
enum WritePhase {
    /// One coordinate is in flight; `rest` are the slots after it.
    Coordinating {
        current: Slot,
        rest: VecDeque<Slot>,
    },
    /// The write is minted; `inflight` replicates are out.
    Replicating {
        quorum: QuorumCount,
        inflight: usize,
    },
    Done,
}

/// The quorum round of one client write.
#[derive(Debug)]
pub struct WriteRound {
    plan: SlotPlan,
    w: usize,
    deadline_ms: u64,
    hop_timeout_ms: u64,
    phase: WritePhase,
    answered: bool,
    actions: VecDeque<WriteAction>,
}

impl WriteRound {
    /// Starts a write of quorum `w` over `pl` at `now_ms`, to be answered by
    /// `deadline_ms`; one coordinate attempt is bounded by `hop_timeout_ms`.
    pub fn new(
        pl: &PreferenceList,
        w: usize,
        now_ms: u64,
        deadline_ms: u64,
        hop_timeout_ms: u64,
        is_up: impl Fn(&NodeId) -> bool,
    ) -> WriteRound {
        let plan = SlotPlan::new(pl, is_up);
        let mut rest: VecDeque<Slot> = plan.slots.clone().into();
        // An owner coordinates when one is up: a fallback would mint on a hint.
        if let Some(i) = rest.iter().position(|s| !s.is_hinted())
            && let Some(owner) = rest.remove(i)
        {
            rest.push_front(owner);
        }
        let mut round = WriteRound {
            plan,
            w,
            deadline_ms,
            hop_timeout_ms,
            phase: WritePhase::Done,
            answered: false,
            actions: VecDeque::new(),
        };
        round.coordinate_next(rest, now_ms);
        round
    }

    /// Returns the next action, if any.
    pub fn poll_action(&mut self) -> Option<WriteAction> {
        self.actions.pop_front()
    }

    /// Returns true once the round answered and nothing it sent is outstanding.
    pub fn is_finished(&self) -> bool {
        matches!(self.phase, WritePhase::Done) && self.actions.is_empty()
    }

    /// Returns the time the round wants [`WriteRound::on_tick`] called at, if it has
    /// not answered yet.
    pub fn next_timeout_ms(&self) -> Option<u64> {
        (!self.answered).then_some(self.deadline_ms)
    }

    /// Records the reply to the outstanding coordinate.
    pub fn on_coordinate(&mut self, reply: CoordinateReply, now_ms: u64, is_up: impl Fn(&NodeId) -> bool) {
        let WritePhase::Coordinating { current, mut rest } =
            std::mem::replace(&mut self.phase, WritePhase::Done)
        else {
            debug_assert!(false, "a coordinate reply with none outstanding");
            return;
        };
        match reply {
            CoordinateReply::Stored => {
                let mut quorum = QuorumCount::new(self.w, 1 + rest.len());
                if quorum.success() == QuorumState::Reached {
                    self.answer(WriteAnswer::Stored { acks: 1 });
                }
                let inflight = rest.len();
                self.actions.extend(rest.into_iter().map(WriteAction::Replicate));
                self.phase = WritePhase::Replicating { quorum, inflight };
                self.finish_replicating_if_idle();
            }
            CoordinateReply::Refused { code, message } => self.answer(WriteAnswer::Refused { code, message }),
            CoordinateReply::Unknown => self.answer(WriteAnswer::Indeterminate),
            CoordinateReply::NotApplied => {
                if let Some(f) = self.plan.take_fallback(is_up) {
                    rest.push_front(Slot {
                        owner: current.owner,
                        target: f,
                    });
                }
                self.coordinate_next(rest, now_ms);
            }
        }
    }

    /// Records the reply of the replicate sent to `slot`.
    pub fn on_replicate(&mut self, slot: Slot, reply: ReplicateReply, is_up: impl Fn(&NodeId) -> bool) {
        let WritePhase::Replicating { quorum, inflight } = &mut self.phase else {
            debug_assert!(false, "a replicate reply with none outstanding");
            return;
        };
        *inflight -= 1;
        let state = match reply {
            ReplicateReply::Stored => quorum.success(),
            ReplicateReply::Failed => {
                if let Some(f) = self.plan.take_fallback(is_up) {
                    quorum.expect_one_more();
                    *inflight += 1;
                    self.actions.push_back(WriteAction::Replicate(Slot {
                        owner: slot.owner,
                        target: f,
                    }));
                }
                quorum.failure()
            }
        };
        let acks = quorum.successes();
        match state {
            QuorumState::Reached => self.answer(WriteAnswer::Stored { acks }),
            QuorumState::Failed => self.answer(self.unavailable(acks, Shortfall::NotEnoughReplicas)),
            QuorumState::Pending => {}
        }
        self.finish_replicating_if_idle();
    }

    /// Tells the round the time: past its deadline, an unanswered round answers
    /// [`WriteAnswer::Unavailable`] (a coordinate or replicates still out continue).
    pub fn on_tick(&mut self, now_ms: u64) {
        if now_ms >= self.deadline_ms {
            let acks = match &self.phase {
                WritePhase::Replicating { quorum, .. } => quorum.successes(),
                _ => 0,
            };
            self.answer(self.unavailable(acks, Shortfall::DeadlinePassed));
        }
    }

    fn coordinate_next(&mut self, mut rest: VecDeque<Slot>, now_ms: u64) {
        // Past the deadline nobody waits for this write any more, and the node would
        // refuse the coordinate anyway.
        match rest.pop_front() {
            Some(current) if !self.answered => {
                let deadline_ms = self.deadline_ms.min(now_ms.saturating_add(self.hop_timeout_ms));
                self.actions.push_back(WriteAction::Coordinate {
                    slot: current.clone(),
                    deadline_ms,
                });
                self.phase = WritePhase::Coordinating { current, rest };
            }
            _ => self.answer(self.unavailable(0, Shortfall::NotEnoughReplicas)),
        }
    }

    fn finish_replicating_if_idle(&mut self) {
        if let WritePhase::Replicating { quorum, inflight: 0 } = &self.phase {
            let acks = quorum.successes();
            self.answer(self.unavailable(acks, Shortfall::NotEnoughReplicas));
            self.phase = WritePhase::Done;
        }
    }

    fn unavailable(&self, acks: usize, why: Shortfall) -> WriteAnswer {
        WriteAnswer::Unavailable {
            needed: self.w,
            acks,
            why,
        }
    }

    fn answer(&mut self, a: WriteAnswer) {
        if !std::mem::replace(&mut self.answered, true) {
            self.actions.push_back(WriteAction::Answer(a));
        }
    }
}

/// What a get call came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadReply {
    /// The node's copy (`None`: it holds no copy of the key).
    Found(Option<VersionedObject>),
    /// The call failed.
    Failed,
}

/// What a read round answers the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadAnswer {
    /// The merge of R replies; `None` when none of them knows the key.
    Found(Option<VersionedObject>),
    /// Fewer than R replicas answered.
    Unavailable {
        /// R.
        needed: usize,
        /// Replicas that answered.
        got: usize,
        /// Why the round gave up.
        why: Shortfall,
    },
}

/// What a read round asks its driver to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadAction {
    /// Ask `slot.target` for its copy.
    Get(Slot),
    /// Answer the client (once per round).
    Answer(ReadAnswer),
    /// Send `object` to `target` as a replicate (read repair). Comes last, after every
    /// slot answered or failed.
    Repair {
        /// The owner whose copy was stale or missing.
        target: NodeId,
        /// The merge of every reply.
        object: VersionedObject,
    },
}

/// The quorum round of one client read.
#[derive(Debug)]
pub struct ReadRound {
    plan: SlotPlan,
    r: usize,
    conflict: ConflictRule,
    deadline_ms: u64,
    quorum: QuorumCount,
    replies: Vec<(Slot, Option<VersionedObject>)>,
    inflight: usize,
    answered: bool,
    actions: VecDeque<ReadAction>,
    /// Slots not asked yet ([`ReadFanout::First`]): asked one per failure, or all at
    /// `hedge_at`.
    held: VecDeque<Slot>,
    hedge_at: Option<u64>,
}

/// How many replicas a read asks at first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadFanout {
    /// Every slot at once (Dynamo's): the first R replies answer, the others repair.
    All,
    /// The first R slots; another one for each that fails, and all the rest once
    /// `hedge_ms` passed without the quorum (a slow replica costs at most the hedge).
    /// Half the read traffic of `All` at N = 3, R = 1 and a third fewer at R = 2; read
    /// repair sees only the replies it got, so replicas the read did not ask are left to
    /// anti-entropy.
    First {
        /// How long to wait for the first R before asking the rest.
        hedge_ms: u64,
    },
}

impl ReadRound {
    /// Starts a read of quorum `r` over `pl` that asks every slot, to be answered by
    /// `deadline_ms`; replies merge with the bucket's `conflict` rule.
    pub fn new(
        pl: &PreferenceList,
        r: usize,
        conflict: ConflictRule,
        deadline_ms: u64,
        is_up: impl Fn(&NodeId) -> bool,
    ) -> ReadRound {
        ReadRound::with_fanout(pl, r, conflict, 0, deadline_ms, ReadFanout::All, is_up)
    }

    /// As [`ReadRound::new`], asking the slots as `fanout` says; `now_ms` starts the
    /// hedge delay.
    pub fn with_fanout(
        pl: &PreferenceList,
        r: usize,
        conflict: ConflictRule,
        now_ms: u64,
        deadline_ms: u64,
        fanout: ReadFanout,
        is_up: impl Fn(&NodeId) -> bool,
    ) -> ReadRound {
        let plan = SlotPlan::new(pl, is_up);
        let first = match fanout {
            ReadFanout::All => plan.slots.len(),
            ReadFanout::First { .. } => r.min(plan.slots.len()),
        };
        let held: VecDeque<Slot> = plan.slots[first..].iter().cloned().collect();
        let hedge_at = match fanout {
            ReadFanout::First { hedge_ms } if !held.is_empty() => Some(now_ms.saturating_add(hedge_ms)),
            _ => None,
        };
        let mut round = ReadRound {
            // Held slots count as expected replies: each is asked before the quorum
            // could be missed for want of it.
            quorum: QuorumCount::new(r, plan.slots.len()),
            inflight: first,
            actions: plan.slots[..first].iter().cloned().map(ReadAction::Get).collect(),
            plan,
            r,
            conflict,
            deadline_ms,
            replies: Vec::new(),
            answered: false,
            held,
            hedge_at,
        };
        if round.quorum.state() == QuorumState::Failed {
            round.answer_unavailable(Shortfall::NotEnoughReplicas);
        }
        round
    }

    /// Returns the next action, if any.
    pub fn poll_action(&mut self) -> Option<ReadAction> {
        self.actions.pop_front()
    }

    /// Returns true once the round answered, every slot replied, and the repairs are out.
    pub fn is_finished(&self) -> bool {
        self.inflight == 0 && self.actions.is_empty()
    }

    /// Returns the time the round wants [`ReadRound::on_tick`] called at, if it has not
    /// answered yet: the hedge, else the deadline.
    pub fn next_timeout_ms(&self) -> Option<u64> {
        (!self.answered).then(|| {
            self.hedge_at
                .map_or(self.deadline_ms, |h| h.min(self.deadline_ms))
        })
    }

    /// Asks a held slot, if one is left.
    fn ask_held(&mut self) -> bool {
        match self.held.pop_front() {
            Some(slot) => {
                self.inflight += 1;
                self.actions.push_back(ReadAction::Get(slot));
                true
            }
            None => false,
        }
    }

    /// Records the reply of the get sent to `slot`.
    pub fn on_reply(&mut self, slot: Slot, reply: ReadReply, is_up: impl Fn(&NodeId) -> bool) {
        debug_assert!(self.inflight > 0, "a read reply with none outstanding");
        self.inflight = self.inflight.saturating_sub(1);
        let state = match reply {
            // No vote, and no other fallback is asked in its place: see the module doc.
            ReadReply::Found(None) if slot.is_hinted() => {
                self.ask_held();
                self.quorum.failure()
            }
            ReadReply::Found(object) => {
                self.replies.push((slot, object));
                self.quorum.success()
            }
            ReadReply::Failed => {
                if self.ask_held() {
                    // A held slot takes its place (it was already counted as expected).
                } else if let Some(f) = self.plan.take_fallback(is_up) {
                    self.quorum.expect_one_more();
                    self.inflight += 1;
                    self.actions.push_back(ReadAction::Get(Slot {
                        owner: slot.owner,
                        target: f,
                    }));
                }
                self.quorum.failure()
            }
        };
        match state {
            QuorumState::Reached if !self.answered => {
                self.answered = true;
                let merged = merge(self.replies.iter().map(|(_, o)| o), self.conflict);
                self.actions
                    .push_back(ReadAction::Answer(ReadAnswer::Found(merged)));
            }
            QuorumState::Failed => self.answer_unavailable(Shortfall::NotEnoughReplicas),
            _ => {}
        }
        if self.inflight == 0 {
            self.answer_unavailable(Shortfall::NotEnoughReplicas);
            let repairs = repair_plan(&self.replies, self.conflict);
            self.actions.extend(
                repairs
                    .into_iter()
                    .map(|(target, object)| ReadAction::Repair { target, object }),
            );
        }
    }

    /// Tells the round the time: past its deadline, an unanswered round answers
    /// [`ReadAnswer::Unavailable`] (the gets still out continue, for repair).
    pub fn on_tick(&mut self, now_ms: u64) {
        if !self.answered && self.hedge_at.is_some_and(|h| now_ms >= h) {
            self.hedge_at = None;
            while self.ask_held() {}
        }
        if now_ms >= self.deadline_ms {
            self.answer_unavailable(Shortfall::DeadlinePassed);
        }
    }

    fn answer_unavailable(&mut self, why: Shortfall) {
        if !std::mem::replace(&mut self.answered, true) {
            self.actions
                .push_back(ReadAction::Answer(ReadAnswer::Unavailable {
                    needed: self.r,
                    got: self.quorum.successes(),
                    why,
                }));
        }
    }
}

/// Merges replica copies with the bucket's conflict rule; `None` when none knows the key.
pub fn merge<'a>(
    copies: impl Iterator<Item = &'a Option<VersionedObject>>,
    conflict: ConflictRule,
) -> Option<VersionedObject> {
    let mut out: Option<VersionedObject> = None;
    for c in copies.flatten() {
        match &mut out {
            Some(o) => o.sync(c, conflict),
            None => {
                // Synced into an empty object rather than cloned: under last-writer-wins
                // a single copy is reduced to its latest sibling like any merge.
                let mut first = VersionedObject::new();
                first.sync(c, conflict);
                out = Some(first);
            }
        }
    }
    out
}

/// Returns the read repairs for a round's replies: the merge of every reply, for each
/// owner whose copy differs from it (missing included). Fallbacks get none, and nothing
/// is repaired when no reply knows the key.
pub fn repair_plan(
    replies: &[(Slot, Option<VersionedObject>)],
    conflict: ConflictRule,
) -> Vec<(NodeId, VersionedObject)> {
    let Some(merged) = merge(replies.iter().map(|(_, o)| o), conflict) else {
        return Vec::new();
    };
    let digest = merged.digest();
    replies
        .iter()
        .filter(|(slot, obj)| !slot.is_hinted() && obj.as_ref().is_none_or(|o| o.digest() != digest))
        .map(|(slot, _)| (slot.target.clone(), merged.clone()))
        .collect()
}

#[cfg(test)]
mod tests;
