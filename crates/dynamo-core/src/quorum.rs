//! Quorum bookkeeping: which node serves each replica slot of a request (sloppy quorum)
//! and whether enough replies arrived. Pure decisions; the coordinator does the messaging
//! (Riak's `get_core`/`put_core` split).
//!
//! A request for a key has N slots, one per node of its preference list. A slot whose
//! owner is reachable is served by the owner; a slot whose owner is not is served by the
//! next reachable fallback not yet used, which stores the write as a hint naming the owner
//! (Dynamo §4.6). A slot with no reachable node left stays empty.

use std::collections::BTreeSet;

use crate::ids::NodeId;
use crate::ring::PreferenceList;

/// One replica slot of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The preference-list node that should hold the key.
    pub owner: NodeId,
    /// The node serving the slot now: the owner, or a fallback.
    pub target: NodeId,
}

impl Slot {
    /// Returns true when a fallback serves the slot (its write is a hint for the owner).
    pub fn is_hinted(&self) -> bool {
        self.owner != self.target
    }
}

/// The slots of one request, and the fallbacks still unused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotPlan {
    /// Slots with a serving node, in preference-list order.
    pub slots: Vec<Slot>,
    /// Owners whose slot found no reachable node.
    pub unserved: Vec<NodeId>,
    used: BTreeSet<NodeId>,
    fallbacks: Vec<NodeId>,
}

impl SlotPlan {
    /// Plans the slots of `pl` given which nodes look reachable.
    pub fn new(pl: &PreferenceList, is_up: impl Fn(&NodeId) -> bool) -> SlotPlan {
        let mut plan = SlotPlan {
            slots: Vec::with_capacity(pl.preference_list.len()),
            unserved: Vec::new(),
            used: pl.preference_list.iter().cloned().collect(),
            fallbacks: pl.fallbacks.clone(),
        };
        for owner in &pl.preference_list {
            if is_up(owner) {
                plan.slots.push(Slot {
                    owner: owner.clone(),
                    target: owner.clone(),
                });
            } else if let Some(f) = plan.take_fallback(&is_up) {
                plan.slots.push(Slot {
                    owner: owner.clone(),
                    target: f,
                });
            } else {
                plan.unserved.push(owner.clone());
            }
        }
        plan
    }

    /// Takes the next reachable fallback not used by this request yet (used when a
    /// slot's node fails mid-request).
    pub fn take_fallback(&mut self, is_up: impl Fn(&NodeId) -> bool) -> Option<NodeId> {
        let pos = self
            .fallbacks
            .iter()
            .position(|f| !self.used.contains(f) && is_up(f))?;
        let f = self.fallbacks.remove(pos);
        self.used.insert(f.clone());
        Some(f)
    }
}

/// Counts replies against a quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumCount {
    needed: usize,
    ok: usize,
    failed: usize,
    total: usize,
}

/// What a request should do after a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumState {
    /// Keep waiting.
    Pending,
    /// Enough successes: answer the client.
    Reached,
    /// Too many failures: the quorum can no longer be reached.
    Failed,
}

impl QuorumCount {
    /// Counts towards `needed` successes out of `total` replies expected.
    pub fn new(needed: usize, total: usize) -> Self {
        QuorumCount {
            needed,
            ok: 0,
            failed: 0,
            total,
        }
    }

    /// Records a success.
    pub fn success(&mut self) -> QuorumState {
        self.ok += 1;
        self.state()
    }

    /// Records a failure.
    pub fn failure(&mut self) -> QuorumState {
        self.failed += 1;
        self.state()
    }

    /// Records that one more reply is expected (a retry on a fallback).
    pub fn expect_one_more(&mut self) {
        self.total += 1;
    }

    /// Returns the current decision.
    pub fn state(&self) -> QuorumState {
        if self.ok >= self.needed {
            QuorumState::Reached
        } else if self.total.saturating_sub(self.failed) < self.needed {
            QuorumState::Failed
        } else {
            QuorumState::Pending
        }
    }

    /// Returns the successes so far.
    pub fn successes(&self) -> usize {
        self.ok
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ids::PartitionId;

    pub(crate) fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("id")
    }

    /// Owners a, b, c; fallbacks d, e.
    pub(crate) fn pl() -> PreferenceList {
        PreferenceList {
            partition: PartitionId(0),
            preference_list: vec![id("a"), id("b"), id("c")],
            fallbacks: vec![id("d"), id("e")],
        }
    }

    #[test]
    fn reachable_owners_serve_themselves() {
        let plan = SlotPlan::new(&pl(), |_| true);
        assert!(plan.slots.iter().all(|s| !s.is_hinted()));
        assert_eq!(plan.slots.len(), 3);
    }

    #[test]
    fn an_unreachable_owner_is_replaced_by_the_next_fallback() {
        let plan = SlotPlan::new(&pl(), |n| n.as_str() != "b");
        assert_eq!(
            plan.slots[1],
            Slot {
                owner: id("b"),
                target: id("d")
            }
        );
        assert!(plan.slots[1].is_hinted());
        let plan = SlotPlan::new(&pl(), |n| !matches!(n.as_str(), "b" | "d"));
        assert_eq!(plan.slots[1].target, id("e"));
        let mut plan = SlotPlan::new(&pl(), |n| !matches!(n.as_str(), "a" | "b" | "c" | "d"));
        assert_eq!(plan.slots.len(), 1);
        assert_eq!(plan.unserved, vec![id("b"), id("c")]);
        // d was down, so never used; once it answers it can serve; e is taken already.
        assert_eq!(plan.take_fallback(|_| true), Some(id("d")));
        assert_eq!(plan.take_fallback(|_| true), None, "no fallback is used twice");
    }

    #[test]
    fn quorum_counts() {
        let mut q = QuorumCount::new(2, 3);
        assert_eq!(q.success(), QuorumState::Pending);
        assert_eq!(q.failure(), QuorumState::Pending);
        assert_eq!(q.success(), QuorumState::Reached);
        let mut q = QuorumCount::new(2, 3);
        assert_eq!(q.failure(), QuorumState::Pending);
        assert_eq!(q.failure(), QuorumState::Failed);
        q.expect_one_more();
        assert_eq!(q.state(), QuorumState::Pending);
    }
}
