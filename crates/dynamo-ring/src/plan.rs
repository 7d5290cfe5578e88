//! Membership changes as data, and the handoff plan of a change: which node must receive
//! which partition from whom before the new ring can be published.
//!
//! Pure functions over core's [`Ring`]: no I/O, no clock, so every rule here is unit- and
//! property-tested without a socket.

use std::collections::{BTreeMap, BTreeSet};

use dynamo_core::ring::{Member, Ring, RingError};
use dynamo_core::wire::cluster::{ChangeKindName, ChangeSummary, Handoff, NodeRegistration, Release};
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
    /// A new node takes exactly the partitions of a member, which then leaves. With the
    /// member's own id as the new node's, a replace *in place*: the member's volume was
    /// lost, and the new (empty) volume that heartbeats under its id is refilled from the
    /// other holders of each of its partitions; no partition moves.
    Replace {
        /// The member being replaced.
        old: NodeId,
        /// The replacement as registered.
        new: NodeRegistration,
    },
}

impl ChangeKind {
    /// Returns the member a replace in place refills, if this is one.
    pub fn refills(&self) -> Option<&NodeId> {
        match self {
            ChangeKind::Replace { old, new } if new.node_id == *old => Some(old),
            _ => None,
        }
    }

    /// Returns the node that enters the ring (or, in place, is refilled), if any.
    pub fn joiner(&self) -> Option<&NodeRegistration> {
        match self {
            ChangeKind::Join { node } | ChangeKind::Replace { new: node, .. } => Some(node),
            ChangeKind::Decommission { .. } => None,
        }
    }

    /// Returns the member that leaves the ring, if any (none for a replace in place: the
    /// member stays, with a new volume).
    pub fn leaver(&self) -> Option<&NodeId> {
        if self.refills().is_some() {
            return None;
        }
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
    /// What the old holders let go once the change is confirmed (set when the new ring
    /// is published, moved to the state's releases when the change finishes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<Release>,
}

impl PendingChange {
    /// The change as followers see it.
    pub fn summary(&self) -> ChangeSummary {
        let (kind, node, replacement) = match &self.kind {
            ChangeKind::Join { node } => (ChangeKindName::Join, node.node_id.clone(), None),
            ChangeKind::Decommission { node } => (ChangeKindName::Decommission, node.clone(), None),
            ChangeKind::Replace { old, new } => {
                (ChangeKindName::Replace, old.clone(), Some(new.node_id.clone()))
            }
        };
        ChangeSummary {
            kind,
            node,
            replacement,
            phase: match self.phase {
                ChangePhase::Copy => "copy",
                ChangePhase::CatchUp => "catch_up",
            }
            .to_owned(),
            epoch: self.planned_epoch,
            failed: match &self.status {
                ChangeStatus::Running => None,
                ChangeStatus::Failed { reason } => Some(reason.clone()),
            },
        }
    }
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
        (Some(r), ChangeKind::Replace { old, new }) if new.node_id == *old => {
            r.with_member_refilled(old, member)
        }
        (Some(r), ChangeKind::Replace { old, new }) => {
            r.with_member_replaced(old, new.node_id.clone(), member)
        }
        (None, ChangeKind::Decommission { node }) => Err(RingError::NotMember(node.clone())),
        (None, ChangeKind::Replace { old, .. }) => Err(RingError::NotMember(old.clone())),
    }
}

/// Returns the handoffs that must complete before `new` may replace `old`: for every
/// partition p, each node among the first `n` of `new`'s preference list of p that is not
/// among `old`'s must receive p's data from *every* node of `old`'s list (the leaver
/// included): any of them may hold writes the others lack (a sloppy quorum acknowledges
/// W of N), so copying from one could drop an acknowledged write. Sources not in
/// `unavailable` come first, so the copies most likely to succeed run first.
///
/// Deterministic, ordered by partition, then receiver, then source. Empty when there is
/// no old ring (nothing can be stored yet).
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
            for from in sources(&before, to, unavailable) {
                out.push(Handoff::new(p, from, to.clone()));
            }
        }
    }
    out
}

/// Returns the handoffs of a replace in place of `node` (its volume lost): for every
/// partition whose first `n` holders include it, a copy into it from each of the others
/// (available ones first), as a join's receiver copies from every holder: any of them
/// may hold writes the others lack. Never from `node` itself, which holds nothing.
pub fn refill_plan(ring: &Ring, node: &NodeId, n: usize, unavailable: &BTreeSet<NodeId>) -> Vec<Handoff> {
    let mut out = Vec::new();
    for p in 0..ring.partitioning().count() {
        let p = PartitionId(p);
        let holders = ring.preference_list(p, n).preference_list;
        if !holders.contains(node) {
            continue;
        }
        for from in sources(&holders, node, unavailable) {
            out.push(Handoff::new(p, from, node.clone()));
        }
    }
    out
}

/// Returns the releases a change from `old` to `new` leads to: every node among the
/// first `n` of `old`'s preference list of a partition that is not among `new`'s lets the
/// partition go, once the change is confirmed.
pub fn releases(old: &Ring, new: &Ring, n: usize) -> Vec<Release> {
    let mut by_node: BTreeMap<NodeId, Vec<PartitionId>> = BTreeMap::new();
    for p in 0..new.partitioning().count() {
        let p = PartitionId(p);
        let after = new.preference_list(p, n).preference_list;
        for holder in old.preference_list(p, n).preference_list {
            if !after.contains(&holder) {
                by_node.entry(holder).or_default().push(p);
            }
        }
    }
    by_node
        .into_iter()
        .map(|(node, partitions)| Release {
            node,
            epoch: new.epoch(),
            partitions,
        })
        .collect()
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
    fn a_decommission_copies_from_every_holder_with_the_leaver_and_down_nodes_last() {
        let r = ring(32, 5);
        let next = r.with_member_removed(&id(2)).expect("remove");
        let unavailable = BTreeSet::from([id(2), id(3)]);
        let p = plan(Some(&r), &next, 3, &unavailable);
        assert!(!p.is_empty());
        for h in &p {
            assert_ne!(h.to, id(2), "the leaver receives nothing");
            let holders = r.preference_list(h.partition, 3).preference_list;
            let sources: Vec<&NodeId> = p
                .iter()
                .filter(|x| x.partition == h.partition && x.to == h.to)
                .map(|x| &x.from)
                .collect();
            // Every holder is a source (the leaver included: it may hold writes the
            // others lack), each once, the available ones first.
            let expected = sources_of(&holders, &h.to, &unavailable);
            assert_eq!(sources, expected.iter().collect::<Vec<_>>(), "{h:?}");
        }
    }

    fn sources_of(holders: &[NodeId], to: &NodeId, unavailable: &BTreeSet<NodeId>) -> Vec<NodeId> {
        let mut v: Vec<NodeId> = holders
            .iter()
            .filter(|n| *n != to && !unavailable.contains(n))
            .cloned()
            .collect();
        v.extend(
            holders
                .iter()
                .filter(|n| *n != to && unavailable.contains(n))
                .cloned(),
        );
        v
    }

    #[test]
    fn a_replacement_copies_each_partition_of_the_old_node_from_all_its_holders() {
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
        for q in &expected {
            let from: Vec<&NodeId> = p.iter().filter(|h| h.partition == *q).map(|h| &h.from).collect();
            assert_eq!(from.len(), 3, "three holders of partition {q}");
            assert_eq!(
                from.last(),
                Some(&&id(1)),
                "the replaced (down) node is tried last"
            );
        }
        assert!(p.iter().all(|h| h.to == id(9)));
    }

    #[test]
    fn a_refill_copies_each_partition_of_the_node_from_its_other_holders_and_moves_nothing() {
        let r = ring(32, 5);
        let kind = ChangeKind::Replace {
            old: id(2),
            new: reg(2),
        };
        assert_eq!(kind.refills(), Some(&id(2)));
        assert_eq!(kind.leaver(), None, "the member stays");
        let next = candidate_ring(Some(&r), &kind, None, r.partitioning(), 3).expect("refill");
        assert_eq!(next.owners(), r.owners(), "no partition moves");
        assert_eq!(
            next.epoch(),
            RingEpoch(r.epoch().0 + 1),
            "a new epoch all the same"
        );
        assert!(plan(Some(&r), &next, 3, &BTreeSet::new()).is_empty());
        assert!(releases(&r, &next, 3).is_empty(), "nobody lets anything go");

        let p = refill_plan(&r, &id(2), 3, &BTreeSet::from([id(3)]));
        let held: BTreeSet<PartitionId> = (0..32)
            .map(PartitionId)
            .filter(|&q| r.preference_list(q, 3).preference_list.contains(&id(2)))
            .collect();
        assert_eq!(p.iter().map(|h| h.partition).collect::<BTreeSet<_>>(), held);
        assert!(p.iter().all(|h| h.to == id(2) && h.from != id(2)));
        for q in &held {
            let from: Vec<&NodeId> = p.iter().filter(|h| h.partition == *q).map(|h| &h.from).collect();
            assert_eq!(from.len(), 2, "both other holders of partition {q}");
            if from.contains(&&id(3)) {
                assert_eq!(from.last(), Some(&&id(3)), "the unavailable holder is tried last");
            }
        }
    }

    #[test]
    fn releases_name_exactly_the_holders_that_lose_a_partition() {
        let r = ring(32, 4);
        let next = r.with_member_added(id(7), Member::default()).expect("join");
        let rel = releases(&r, &next, 3);
        let mut expected: BTreeMap<NodeId, Vec<PartitionId>> = BTreeMap::new();
        for q in (0..32).map(PartitionId) {
            let after = next.preference_list(q, 3).preference_list;
            for h in r.preference_list(q, 3).preference_list {
                if !after.contains(&h) {
                    expected.entry(h).or_default().push(q);
                }
            }
        }
        assert!(!expected.is_empty(), "a join takes partitions from someone");
        let got: BTreeMap<NodeId, Vec<PartitionId>> = rel
            .iter()
            .map(|x| (x.node.clone(), x.partitions.clone()))
            .collect();
        assert_eq!(got, expected);
        assert!(rel.iter().all(|x| x.epoch == next.epoch()));
        assert!(!got.contains_key(&id(7)), "the newcomer releases nothing");
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
        // the set difference, each copied from every old holder once.
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
                    for from in b {
                        expected.insert((q as u32, to.clone(), from.clone()));
                    }
                }
            }
            let got: Vec<(u32, NodeId, NodeId)> =
                p.iter().map(|h| (h.partition.0, h.to.clone(), h.from.clone())).collect();
            let got_set: BTreeSet<(u32, NodeId, NodeId)> = got.iter().cloned().collect();
            prop_assert_eq!(got.len(), got_set.len(), "each source once per receiver and partition");
            prop_assert_eq!(got_set, expected);
            for h in &p {
                prop_assert!(!h.done && h.objects == 0 && !h.skipped);
            }
        }
    }
}
