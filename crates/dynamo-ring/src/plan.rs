//! Membership changes as data, and the handoff plan of a change: which node must receive
//! which partition from whom before the new ring can be published.
//!
//! Pure functions over core's [`Ring`]: no I/O, no clock, so every rule here is unit- and
//! property-tested without a socket.

use std::collections::{BTreeMap, BTreeSet};

use dynamo_core::ring::{Member, Ring, RingError};
use dynamo_core::wire::cluster::{Handoff, NodeRegistration};
use dynamo_core::{NodeId, PartitionId, Partitioning, RingEpoch};
use serde::{Deserialize, Serialize};

/// An admin-made membership change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChangeKind {
    /// A node joins (the first join creates the ring).
    Join {
        /// The newcomer as registered.
        node: NodeRegistration,
    },
    /// A member leaves after its data is handed off.
    Decommission {
        /// The leaver.
        node: NodeId,
    },
    /// A new node takes exactly the partitions of a member, which then leaves.
    Replace {
        /// The member being replaced.
        old: NodeId,
        /// The replacement as registered.
        new: NodeRegistration,
    },
}

impl ChangeKind {
    /// Returns the node that enters the ring, if any.
    pub fn joiner(&self) -> Option<&NodeRegistration> {
        match self {
            ChangeKind::Join { node } | ChangeKind::Replace { new: node, .. } => Some(node),
            ChangeKind::Decommission { .. } => None,
        }
    }

    /// Returns the member that leaves the ring, if any.
    pub fn leaver(&self) -> Option<&NodeId> {
        match self {
            ChangeKind::Decommission { node } | ChangeKind::Replace { old: node, .. } => Some(node),
            ChangeKind::Join { .. } => None,
        }
    }

    /// A short name for logs and metrics.
    pub fn name(&self) -> &'static str {
        match self {
            ChangeKind::Join { .. } => "join",
            ChangeKind::Decommission { .. } => "decommission",
            ChangeKind::Replace { .. } => "replace",
        }
    }
}

/// Where a change stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangePhase {
    /// Copying the plan's partitions while the current ring still routes.
    Copy,
    /// The new ring is published; one more round of the same pulls picks up the writes
    /// that reached the old replicas meanwhile.
    CatchUp,
}

/// Whether the change's worker is running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ChangeStatus {
    /// The handoff worker is (or will be, after a restart) driving it.
    Running,
    /// A pull exhausted its attempts; nothing more happens until an admin retries or
    /// (before the new ring is published) aborts it.
    Failed {
        /// What failed, for the operator.
        reason: String,
    },
}

/// The membership change in progress: persisted with the state, so a restart resumes it
/// from the plan (handoffs already done are not pulled again).
///
/// (Not `deny_unknown_fields`: serde cannot combine it with the flattened `status`.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChange {
    /// Identifies this change (the state version that started it); a worker acts only on
    /// the change it was started for.
    pub id: u64,
    /// What changes.
    pub kind: ChangeKind,
    /// Where it stands.
    pub phase: ChangePhase,
    /// Running or failed.
    #[serde(flatten)]
    pub status: ChangeStatus,
    /// The epoch the new ring was planned with (the current epoch + 1; 1 for the first
    /// join). The ring actually published is recomputed from the current ring, so member
    /// address updates made meanwhile are kept; its owners must equal the plan's.
    pub planned_epoch: RingEpoch,
    /// The owner of every partition in the planned ring, indexed by partition.
    pub planned_owners: Vec<NodeId>,
    /// Pull attempts that failed so far (all handoffs, this change).
    #[serde(default)]
    pub failed_attempts: u64,
}

/// Computes the ring a change leads to, from the current ring (`None` before the first
/// join). `member_of` gives the placement attributes of the joining node.
///
/// # Errors
/// [`RingError`] when the change does not apply (not a member, already a member, the last
/// member, no ring yet for a removal).
pub fn candidate_ring(
    current: Option<&Ring>,
    kind: &ChangeKind,
    member: Option<Member>,
    partitioning: Partitioning,
    n: u8,
) -> Result<Ring, RingError> {
    let member = member.unwrap_or_default();
    match (current, kind) {
        (None, ChangeKind::Join { node }) => {
            Ring::new(partitioning, n, BTreeMap::from([(node.node_id.clone(), member)]))
        }
        (Some(r), ChangeKind::Join { node }) => r.with_member_added(node.node_id.clone(), member),
        (Some(r), ChangeKind::Decommission { node }) => r.with_member_removed(node),
        (Some(r), ChangeKind::Replace { old, new }) => {
            r.with_member_replaced(old, new.node_id.clone(), member)
        }
        (None, ChangeKind::Decommission { node }) => Err(RingError::NotMember(node.clone())),
        (None, ChangeKind::Replace { old, .. }) => Err(RingError::NotMember(old.clone())),
    }
}

/// Returns the handoffs that must complete before `new` may replace `old`: for every
/// partition p, each node in `new`'s preference list of p (the ring's `n`) that is not in
/// `old`'s must receive p's data. Its source is the first node of `old`'s list for p that
/// is not in `unavailable` (leaving or down), else the first of that list (any holder).
///
/// Deterministic, ordered by partition then receiver. Empty when there is no old ring
/// (nothing can be stored yet).
pub fn plan(old: Option<&Ring>, new: &Ring, n: usize, unavailable: &BTreeSet<NodeId>) -> Vec<Handoff> {
    let Some(old) = old else {
        return Vec::new();
    };
    let q = new.partitioning().count();
    let mut out = Vec::new();
    for p in 0..q {
        let p = PartitionId(p);
        let before = old.preference_list(p, n).preference_list;
        let after = new.preference_list(p, n).preference_list;
        let mut receivers: Vec<&NodeId> = after.iter().filter(|n| !before.contains(n)).collect();
        receivers.sort();
        for to in receivers {
            let Some(from) = sources(&before, to, unavailable).into_iter().next() else {
                continue;
            };
            out.push(Handoff {
                partition: p,
                from,
                to: to.clone(),
                objects: 0,
                done: false,
            });
        }
    }
    out
}

/// Returns the holders of a partition in the order a receiver should try them as its
/// source: available holders first (in preference-list order), then the others; never
/// the receiver itself.
pub fn sources(holders: &[NodeId], to: &NodeId, unavailable: &BTreeSet<NodeId>) -> Vec<NodeId> {
    let (mut good, bad): (Vec<NodeId>, Vec<NodeId>) = holders
        .iter()
        .filter(|h| *h != to)
        .cloned()
        .partition(|h| !unavailable.contains(h));
    good.extend(bad);
    good
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(i: usize) -> NodeId {
        NodeId::new(format!("node-{i}")).expect("valid id")
    }

    fn reg(i: usize) -> NodeRegistration {
        NodeRegistration {
            node_id: id(i),
            address: format!("http://127.0.0.1:{}", 9000 + i),
            zone: None,
        }
    }

    fn ring(q: u64, s: usize) -> Ring {
        let members = (0..s).map(|i| (id(i), Member::default())).collect();
        Ring::new(Partitioning::with_count(q).expect("q"), 3, members).expect("ring")
    }

    /// The naive oracle: replica sets per partition, before and after.
    fn replica_sets(r: &Ring, n: usize) -> Vec<BTreeSet<NodeId>> {
        (0..r.partitioning().count())
            .map(|p| {
                r.preference_list(PartitionId(p), n)
                    .preference_list
                    .into_iter()
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_first_join_has_an_empty_plan_and_makes_epoch_one() {
        let q = Partitioning::with_count(16).expect("q");
        let kind = ChangeKind::Join { node: reg(0) };
        let r = candidate_ring(None, &kind, None, q, 3).expect("first ring");
        assert_eq!(r.epoch(), RingEpoch(1));
        assert!(plan(None, &r, 3, &BTreeSet::new()).is_empty());
        let bad = ChangeKind::Decommission { node: id(0) };
        assert!(candidate_ring(None, &bad, None, q, 3).is_err());
    }

    #[test]
    fn a_second_node_receives_every_partition_from_the_first() {
        let one = ring(8, 1);
        let two = one.with_member_added(id(1), Member::default()).expect("join");
        let p = plan(Some(&one), &two, 3, &BTreeSet::new());
        assert_eq!(p.len(), 8);
        assert!(p.iter().all(|h| h.from == id(0) && h.to == id(1)));
    }

    #[test]
    fn a_decommission_avoids_the_leaver_and_down_nodes_as_sources() {
        let r = ring(32, 5);
        let next = r.with_member_removed(&id(2)).expect("remove");
        let unavailable = BTreeSet::from([id(2), id(3)]);
        let p = plan(Some(&r), &next, 3, &unavailable);
        assert!(!p.is_empty());
        for h in &p {
            assert_ne!(h.to, id(2), "the leaver receives nothing");
            let holders = r.preference_list(h.partition, 3).preference_list;
            assert!(holders.contains(&h.from));
            // With 3 holders and 2 unavailable nodes, an available holder always exists.
            if holders.iter().any(|n| !unavailable.contains(n)) {
                assert!(!unavailable.contains(&h.from), "{h:?}");
            }
        }
    }

    #[test]
    fn a_replacement_of_a_down_node_copies_from_the_other_replicas() {
        let r = ring(32, 4);
        let next = r
            .with_member_replaced(&id(1), id(9), Member::default())
            .expect("replace");
        let p = plan(Some(&r), &next, 3, &BTreeSet::from([id(1)]));
        let expected: BTreeSet<PartitionId> = (0..32)
            .map(PartitionId)
            .filter(|&q| r.preference_list(q, 3).preference_list.contains(&id(1)))
            .collect();
        assert_eq!(p.iter().map(|h| h.partition).collect::<BTreeSet<_>>(), expected);
        assert!(p.iter().all(|h| h.to == id(9) && h.from != id(1)));
    }

    #[test]
    fn sources_put_unavailable_holders_last_and_skip_the_receiver() {
        let holders = vec![id(0), id(1), id(2)];
        assert_eq!(
            sources(&holders, &id(1), &BTreeSet::from([id(0)])),
            vec![id(2), id(0)]
        );
    }

    #[test]
    fn change_kinds_serialize_with_a_tag() {
        let k = ChangeKind::Decommission { node: id(1) };
        let json = serde_json::to_string(&k).expect("serialize");
        assert_eq!(json, r#"{"kind":"decommission","node":"node-1"}"#);
        assert_eq!(serde_json::from_str::<ChangeKind>(&json).expect("parse"), k);
    }

    proptest! {
        // The plan against a naive oracle: exactly the (partition, new replica) pairs of
        // the set difference, each once, each from a holder of the old ring.
        #[test]
        fn the_plan_covers_exactly_the_new_replicas(
            bits in 3u8..8, s in 1usize..8, op in 0u8..3, pick in 0usize..8, n in 1usize..5
        ) {
            let r = ring(1 << bits, s);
            let next = match op {
                0 => r.with_member_added(id(50), Member::default()).expect("join"),
                1 if s > 1 => r.with_member_removed(&id(pick % s)).expect("remove"),
                _ => r.with_member_replaced(&id(pick % s), id(60), Member::default()).expect("replace"),
            };
            let p = plan(Some(&r), &next, n, &BTreeSet::new());
            let (before, after) = (replica_sets(&r, n), replica_sets(&next, n));
            let mut expected = BTreeSet::new();
            for (q, (b, a)) in before.iter().zip(&after).enumerate() {
                for to in a.difference(b) {
                    expected.insert((q as u32, to.clone()));
                }
            }
            let got: Vec<(u32, NodeId)> = p.iter().map(|h| (h.partition.0, h.to.clone())).collect();
            let got_set: BTreeSet<(u32, NodeId)> = got.iter().cloned().collect();
            prop_assert_eq!(got.len(), got_set.len(), "each receiver once per partition");
            prop_assert_eq!(got_set, expected);
            for h in &p {
                prop_assert!(before[h.partition.0 as usize].contains(&h.from));
                prop_assert!(!h.done && h.objects == 0);
            }
        }
    }
}
