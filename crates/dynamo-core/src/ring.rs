//! The ring: which node owns each of the Q partitions, at which epoch, and the preference
//! list of every key (Dynamo's partitioning strategy 3, §6.2).
//!
//! # Invariants
//! - every partition has exactly one owner, and every owner is a member;
//! - balance: each member owns ⌊Q/S⌋ or ⌈Q/S⌉ partitions (S = members);
//! - a join moves only partitions to the new node, as many as it ends up owning (about
//!   Q/S'); a removal moves only the leaver's partitions; a replacement moves exactly
//!   the replaced node's partitions to its replacement;
//! - every change produces a ring with a strictly larger epoch.
//!
//! Placement also tries to keep any `n` consecutive partitions on distinct nodes
//! (Riak's `target_n_val`), so a preference list is found within a short walk and the
//! replicas of neighbouring partitions land on different nodes. Zones, where members
//! declare them, spread preference lists over distinct zones where the membership allows.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::hash::{InvalidPartitionCount, KeyHash, Partitioning};
use crate::ids::{NodeId, PartitionId, RingEpoch};

/// A member's placement attributes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Member {
    /// The failure domain (rack, availability zone); `None` means "unknown, distinct".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Where the node's internal API answers (`http://host:port`), as the ring service
    /// registered it; StatefulSet pods keep a stable DNS name, so this rarely changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// Why a ring change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// A ring needs at least one member.
    #[error("a ring needs at least one member")]
    NoMembers,
    /// The node is already a member.
    #[error("node {0} is already a member")]
    AlreadyMember(NodeId),
    /// The node is not a member.
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    /// Removing the node would leave no member.
    #[error("cannot remove the last member {0}")]
    LastMember(NodeId),
    /// The partition count is invalid.
    #[error(transparent)]
    PartitionCount(#[from] InvalidPartitionCount),
    /// A serialized ring breaks an invariant.
    #[error("invalid ring: {0}")]
    Invalid(String),
}

impl RingError {
    /// Returns the wire error code.
    pub fn code(&self) -> crate::ErrorCode {
        use crate::ErrorCode;
        match self {
            RingError::AlreadyMember(_) | RingError::LastMember(_) => ErrorCode::MembershipConflict,
            RingError::NotMember(_) => ErrorCode::NodeNotFound,
            RingError::NoMembers | RingError::PartitionCount(_) | RingError::Invalid(_) => {
                ErrorCode::InvalidRequest
            }
        }
    }
}

/// One partition changing owner between two rings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The partition.
    pub partition: PartitionId,
    /// Its owner in the older ring.
    pub from: NodeId,
    /// Its owner in the newer ring.
    pub to: NodeId,
}

/// A key's replicas: the N nodes that should hold it, then the sloppy-quorum fallbacks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PreferenceList {
    /// The key's partition.
    pub partition: PartitionId,
    /// The first N distinct nodes clockwise (fewer if the ring has fewer members); the
    /// first is the natural coordinator.
    pub preference_list: Vec<NodeId>,
    /// Every other member, in the deterministic order a sloppy quorum tries them.
    pub fallbacks: Vec<NodeId>,
}

/// A versioned assignment of partitions to nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RingRepr", into = "RingRepr")]
pub struct Ring {
    epoch: RingEpoch,
    partitioning: Partitioning,
    n: u8,
    members: BTreeMap<NodeId, Member>,
    owners: Vec<NodeId>,
}

#[derive(Serialize, Deserialize)]
struct RingRepr {
    epoch: RingEpoch,
    partitions: u32,
    // Named `spread` in state files written before 0.1's first release.
    #[serde(alias = "spread")]
    n: u8,
    members: BTreeMap<NodeId, Member>,
    owners: Vec<NodeId>,
}

impl TryFrom<RingRepr> for Ring {
    type Error = RingError;
    fn try_from(r: RingRepr) -> Result<Ring, RingError> {
        let partitioning = Partitioning::with_count(u64::from(r.partitions))?;
        if r.members.is_empty() {
            return Err(RingError::NoMembers);
        }
        if r.owners.len() != partitioning.count() as usize {
            return Err(RingError::Invalid(format!(
                "{} owners for {} partitions",
                r.owners.len(),
                r.partitions
            )));
        }
        if let Some(stranger) = r.owners.iter().find(|o| !r.members.contains_key(*o)) {
            return Err(RingError::Invalid(format!("owner {stranger} is not a member")));
        }
        Ok(Ring {
            epoch: r.epoch,
            partitioning,
            n: r.n.max(1),
            members: r.members,
            owners: r.owners,
        })
    }
}

impl From<Ring> for RingRepr {
    fn from(r: Ring) -> RingRepr {
        RingRepr {
            epoch: r.epoch,
            partitions: r.partitioning.count(),
            n: r.n,
            members: r.members,
            owners: r.owners,
        }
    }
}

impl Ring {
    /// Builds the first ring (epoch 1) over `members`, balanced, with consecutive
    /// partitions on distinct nodes and, where zones are declared, alternating zones.
    ///
    /// `n` is the replication factor placement optimises for (the largest N buckets
    /// are expected to use).
    ///
    /// # Errors
    /// [`RingError::NoMembers`] for an empty membership.
    pub fn new(
        partitioning: Partitioning,
        n: u8,
        members: BTreeMap<NodeId, Member>,
    ) -> Result<Ring, RingError> {
        if members.is_empty() {
            return Err(RingError::NoMembers);
        }
        // Interleave zones: one node from each zone in turn, so round-robin placement
        // alternates zones around the ring.
        let mut by_zone: BTreeMap<Option<&str>, Vec<&NodeId>> = BTreeMap::new();
        for (id, m) in &members {
            by_zone.entry(m.zone.as_deref()).or_default().push(id);
        }
        let mut order = Vec::with_capacity(members.len());
        let mut columns: Vec<std::vec::IntoIter<&NodeId>> =
            by_zone.into_values().map(Vec::into_iter).collect();
        while order.len() < members.len() {
            for col in &mut columns {
                if let Some(id) = col.next() {
                    order.push(id.clone());
                }
            }
        }
        let owners = (0..partitioning.count() as usize)
            .map(|p| order[p % order.len()].clone())
            .collect();
        Ok(Ring {
            epoch: RingEpoch(1),
            partitioning,
            n: n.max(1),
            members,
            owners,
        })
    }

    /// Returns the replication factor placement optimises for.
    pub fn n(&self) -> u8 {
        self.n
    }

    /// Returns the epoch.
    pub fn epoch(&self) -> RingEpoch {
        self.epoch
    }

    /// Returns the partitioning (Q).
    pub fn partitioning(&self) -> Partitioning {
        self.partitioning
    }

    /// Returns the members and their placement attributes.
    pub fn members(&self) -> &BTreeMap<NodeId, Member> {
        &self.members
    }

    /// Returns the owner of every partition, indexed by partition id.
    pub fn owners(&self) -> &[NodeId] {
        &self.owners
    }

    /// Returns the owner of `p`, or `None` for a partition outside the ring.
    pub fn owner(&self, p: PartitionId) -> Option<&NodeId> {
        self.owners.get(p.0 as usize)
    }

    /// Returns the partitions `node` owns, in order.
    pub fn partitions_of(&self, node: &NodeId) -> Vec<PartitionId> {
        self.owners
            .iter()
            .enumerate()
            .filter(|(_, o)| *o == node)
            .map(|(p, _)| PartitionId(p as u32))
            .collect()
    }

    /// Returns a ring with `node` added (epoch + 1). The new node takes partitions from
    /// the most loaded members, one at a time, until the ring is balanced; nothing else
    /// moves.
    ///
    /// # Errors
    /// [`RingError::AlreadyMember`] if `node` is a member.
    pub fn with_member_added(&self, node: NodeId, member: Member) -> Result<Ring, RingError> {
        if self.members.contains_key(&node) {
            return Err(RingError::AlreadyMember(node));
        }
        let mut next = self.clone();
        next.epoch = RingEpoch(self.epoch.0 + 1);
        next.members.insert(node.clone(), member);
        let mut counts = next.counts();
        loop {
            let mine = counts.get(&node).copied().unwrap_or(0);
            // The donor: the most loaded other member (ties to the smallest id).
            let Some((donor, most)) = counts
                .iter()
                .filter(|(id, _)| **id != node)
                .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                .map(|(id, &c)| (id.clone(), c))
            else {
                break;
            };
            if most <= mine + 1 {
                break;
            }
            let candidates: Vec<usize> = (0..next.owners.len())
                .filter(|&p| next.owners[p] == donor)
                .collect();
            let p = next.best_partition_for(&node, &candidates);
            next.owners[p] = node.clone();
            *counts.entry(donor).or_insert(0) -= 1;
            *counts.entry(node.clone()).or_insert(0) += 1;
        }
        Ok(next)
    }

    /// Returns a ring without `node` (epoch + 1): each of its partitions goes to the least
    /// loaded remaining member; nothing else moves.
    ///
    /// # Errors
    /// [`RingError::NotMember`] or [`RingError::LastMember`].
    pub fn with_member_removed(&self, node: &NodeId) -> Result<Ring, RingError> {
        if !self.members.contains_key(node) {
            return Err(RingError::NotMember(node.clone()));
        }
        if self.members.len() == 1 {
            return Err(RingError::LastMember(node.clone()));
        }
        let mut next = self.clone();
        next.epoch = RingEpoch(self.epoch.0 + 1);
        next.members.remove(node);
        let mut counts = next.counts();
        counts.remove(node);
        for p in 0..next.owners.len() {
            if next.owners[p] != *node {
                continue;
            }
            let least = counts.values().copied().min().unwrap_or(0);
            // Among the least loaded, prefer one that keeps neighbours distinct.
            let takers: Vec<&NodeId> = counts
                .iter()
                .filter(|(_, c)| **c == least)
                .map(|(id, _)| id)
                .collect();
            let taker = takers
                .iter()
                .copied()
                .min_by_key(|id| (next.conflicts(id, p), (*id).clone()))
                .cloned()
                .ok_or_else(|| RingError::LastMember(node.clone()))?;
            next.owners[p] = taker.clone();
            *counts.entry(taker).or_insert(0) += 1;
        }
        Ok(next)
    }

    /// Returns a ring where `new` takes exactly the partitions of `old` (epoch + 1).
    ///
    /// # Errors
    /// [`RingError::NotMember`] for `old`, [`RingError::AlreadyMember`] for `new`.
    pub fn with_member_replaced(&self, old: &NodeId, new: NodeId, member: Member) -> Result<Ring, RingError> {
        if !self.members.contains_key(old) {
            return Err(RingError::NotMember(old.clone()));
        }
        if self.members.contains_key(&new) {
            return Err(RingError::AlreadyMember(new));
        }
        let mut next = self.clone();
        next.epoch = RingEpoch(self.epoch.0 + 1);
        next.members.remove(old);
        next.members.insert(new.clone(), member);
        for o in &mut next.owners {
            if o == old {
                *o = new.clone();
            }
        }
        Ok(next)
    }

    /// Returns a ring where `node`'s placement attributes (address, zone) are `member`;
    /// no partition moves. The epoch grows by one when anything changed, and stays when
    /// `member` is what the ring already had.
    ///
    /// # Errors
    /// [`RingError::NotMember`].
    pub fn with_member_updated(&self, node: &NodeId, member: Member) -> Result<Ring, RingError> {
        let Some(m) = self.members.get(node) else {
            return Err(RingError::NotMember(node.clone()));
        };
        let mut next = self.clone();
        if *m != member {
            next.epoch = RingEpoch(self.epoch.0 + 1);
            next.members.insert(node.clone(), member);
        }
        Ok(next)
    }

    /// Returns a ring where `node` (placed as `member`) keeps every partition it owns
    /// under a new epoch: the ring of a replace in place, which refills a member's lost
    /// volume. The epoch grows even though no partition moves, so the catch-up round of
    /// the refill can wait for every source to know it (as any change's does).
    ///
    /// # Errors
    /// [`RingError::NotMember`].
    pub fn with_member_refilled(&self, node: &NodeId, member: Member) -> Result<Ring, RingError> {
        if !self.members.contains_key(node) {
            return Err(RingError::NotMember(node.clone()));
        }
        let mut next = self.clone();
        next.epoch = RingEpoch(self.epoch.0 + 1);
        next.members.insert(node.clone(), member);
        Ok(next)
    }

    /// Returns the partitions whose owner differs between `self` and a newer ring.
    pub fn transfers_to(&self, newer: &Ring) -> Vec<Transfer> {
        self.owners
            .iter()
            .zip(&newer.owners)
            .enumerate()
            .filter(|(_, (a, b))| a != b)
            .map(|(p, (a, b))| Transfer {
                partition: PartitionId(p as u32),
                from: a.clone(),
                to: b.clone(),
            })
            .collect()
    }

    /// Returns the preference list of the key with hash `hash` for `n` replicas.
    pub fn preference_list_for(&self, hash: KeyHash, n: usize) -> PreferenceList {
        self.preference_list(self.partitioning.partition_of(hash), n)
    }

    /// Returns the preference list of partition `p` for `n` replicas: walking clockwise
    /// from `p`, the first `n` distinct nodes, preferring nodes of zones not yet used;
    /// then every other member in walk order (members owning nothing last, by id).
    pub fn preference_list(&self, p: PartitionId, n: usize) -> PreferenceList {
        let q = self.owners.len();
        let start = p.0 as usize % q;
        let mut walk: Vec<&NodeId> = Vec::with_capacity(self.members.len());
        let mut seen: BTreeSet<&NodeId> = BTreeSet::new();
        for i in 0..q {
            let o = &self.owners[(start + i) % q];
            if seen.insert(o) {
                walk.push(o);
                if walk.len() == self.members.len() {
                    break;
                }
            }
        }
        walk.extend(self.members.keys().filter(|id| !seen.contains(id)));

        let n = n.min(walk.len());
        let mut chosen = vec![false; walk.len()];
        let mut zones: BTreeSet<&str> = BTreeSet::new();
        let mut picked = 0;
        // First pass: distinct zones. A node without a zone never conflicts.
        for (i, id) in walk.iter().enumerate() {
            if picked == n {
                break;
            }
            let zone = self.members.get(*id).and_then(|m| m.zone.as_deref());
            if zone.is_none_or(|z| zones.insert(z)) {
                chosen[i] = true;
                picked += 1;
            }
        }
        // Second pass: fewer zones than replicas, so fill in walk order.
        for c in chosen.iter_mut() {
            if picked == n {
                break;
            }
            if !*c {
                *c = true;
                picked += 1;
            }
        }
        let (mut pref, mut fallbacks) = (Vec::with_capacity(n), Vec::new());
        for (id, c) in walk.into_iter().zip(chosen) {
            if c {
                pref.push(id.clone())
            } else {
                fallbacks.push(id.clone())
            }
        }
        PreferenceList {
            partition: p,
            preference_list: pref,
            fallbacks,
        }
    }

    fn counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts: BTreeMap<NodeId, usize> = self.members.keys().map(|id| (id.clone(), 0)).collect();
        for o in &self.owners {
            *counts.entry(o.clone()).or_insert(0) += 1;
        }
        counts
    }

    /// Counts how badly giving partition `p` to `node` breaks the spread of replicas: owners of the
    /// `n − 1` partitions on either side that are `node` itself (weighted high) or in
    /// its zone.
    fn conflicts(&self, node: &NodeId, p: usize) -> usize {
        let q = self.owners.len();
        let reach = (self.n as usize).saturating_sub(1).min(q / 2);
        let zone = self.members.get(node).and_then(|m| m.zone.as_deref());
        let mut score = 0;
        for d in 1..=reach {
            for neighbour in [&self.owners[(p + d) % q], &self.owners[(p + q - d) % q]] {
                if neighbour == node {
                    score += 1000;
                } else if zone.is_some()
                    && self.members.get(neighbour).and_then(|m| m.zone.as_deref()) == zone
                {
                    score += 1;
                }
            }
        }
        score
    }

    fn best_partition_for(&self, node: &NodeId, candidates: &[usize]) -> usize {
        candidates
            .iter()
            .copied()
            .min_by_key(|&p| (self.conflicts(node, p), p))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(i: usize) -> NodeId {
        NodeId::new(format!("node-{i}")).expect("valid id")
    }

    fn ring(q: u64, s: usize) -> Ring {
        let members = (0..s).map(|i| (id(i), Member::default())).collect();
        Ring::new(Partitioning::with_count(q).expect("q"), 3, members).expect("ring")
    }

    fn assert_balanced(r: &Ring) {
        let q = r.owners().len();
        let s = r.members().len();
        for (node, c) in r.counts() {
            assert!(
                c == q / s || c == q.div_ceil(s),
                "{node} owns {c} of {q} with {s} members"
            );
        }
    }

    #[test]
    fn a_new_ring_is_balanced_and_spread() {
        let r = ring(256, 5);
        assert_balanced(&r);
        assert_eq!(r.epoch(), RingEpoch(1));
        for p in 0..256u32 {
            let pl = r.preference_list(PartitionId(p), 3);
            assert_eq!(pl.preference_list.len(), 3);
            assert_eq!(pl.fallbacks.len(), 2);
            // Round-robin puts the N replicas on the next N partitions' owners.
            assert_eq!(pl.preference_list[0], r.owners()[p as usize]);
        }
    }

    #[test]
    fn preference_lists_prefer_distinct_zones() {
        let members: BTreeMap<NodeId, Member> = (0..6)
            .map(|i| {
                (
                    id(i),
                    Member {
                        zone: Some(format!("z{}", i / 2)),
                        address: None,
                    },
                )
            })
            .collect();
        let r = Ring::new(Partitioning::with_count(64).expect("q"), 3, members).expect("ring");
        let r = r
            .with_member_added(
                id(6),
                Member {
                    zone: Some("z0".into()),
                    address: None,
                },
            )
            .expect("join");
        for p in 0..64u32 {
            let pl = r.preference_list(PartitionId(p), 3);
            let zones: BTreeSet<_> = pl
                .preference_list
                .iter()
                .map(|n| r.members()[n].zone.clone())
                .collect();
            assert_eq!(zones.len(), 3, "partition {p}: {:?}", pl.preference_list);
        }
    }

    #[test]
    fn small_rings_give_short_lists_and_errors_are_typed() {
        let r = ring(8, 2);
        let pl = r.preference_list(PartitionId(3), 3);
        assert_eq!(pl.preference_list.len(), 2);
        assert!(pl.fallbacks.is_empty());
        assert_eq!(
            r.with_member_added(id(0), Member::default()),
            Err(RingError::AlreadyMember(id(0)))
        );
        assert_eq!(r.with_member_removed(&id(9)), Err(RingError::NotMember(id(9))));
        let one = ring(8, 1);
        assert_eq!(one.with_member_removed(&id(0)), Err(RingError::LastMember(id(0))));
        assert_eq!(RingError::NotMember(id(9)).code(), crate::ErrorCode::NodeNotFound);
    }

    #[test]
    fn serde_round_trip_and_validation() {
        let r = ring(16, 3);
        let json = serde_json::to_string(&r).expect("serialize");
        assert_eq!(serde_json::from_str::<Ring>(&json).expect("parse"), r);
        let bad = json.replacen("\"node-0\",", "\"node-9\",", 1);
        assert!(
            serde_json::from_str::<Ring>(&bad).is_err(),
            "owner outside membership"
        );
        let bad = json.replace("\"partitions\":16", "\"partitions\":15");
        assert!(serde_json::from_str::<Ring>(&bad).is_err());
        // State files written before the field was renamed still load.
        let old = json.replace("\"n\":", "\"spread\":");
        assert_ne!(old, json);
        assert_eq!(serde_json::from_str::<Ring>(&old).expect("old name"), r);
    }

    #[test]
    fn replacement_moves_exactly_the_replaced_nodes_partitions() {
        let r = ring(64, 4);
        let next = r
            .with_member_replaced(&id(1), id(9), Member::default())
            .expect("replace");
        let moved = r.transfers_to(&next);
        assert_eq!(moved.len(), r.partitions_of(&id(1)).len());
        assert!(moved.iter().all(|t| t.from == id(1) && t.to == id(9)));
        assert_eq!(next.epoch(), RingEpoch(2));
    }

    proptest! {
        #[test]
        fn joins_move_about_q_over_s_and_stay_balanced(bits in 3u8..11, s in 1usize..12, joins in 1usize..4) {
            let q = 1u64 << bits;
            let mut r = ring(q, s);
            for j in 0..joins {
                let newcomer = id(100 + j);
                let next = r.with_member_added(newcomer.clone(), Member::default()).expect("join");
                assert_balanced(&next);
                let moved = r.transfers_to(&next);
                let owned = next.partitions_of(&newcomer).len();
                // Every moved partition went to the newcomer, and no more moved than it owns.
                prop_assert!(moved.iter().all(|t| t.to == newcomer));
                prop_assert_eq!(moved.len(), owned);
                let s_new = next.members().len() as u64;
                prop_assert!(owned as u64 == q / s_new || owned as u64 == q.div_ceil(s_new));
                prop_assert!(next.epoch() > r.epoch());
                r = next;
            }
        }

        #[test]
        fn removals_move_only_the_leavers_partitions(bits in 3u8..11, s in 2usize..12, leaver in 0usize..12) {
            let q = 1u64 << bits;
            let r = ring(q, s);
            let gone = id(leaver % s);
            let next = r.with_member_removed(&gone).expect("remove");
            assert_balanced(&next);
            let moved = r.transfers_to(&next);
            prop_assert_eq!(moved.len(), r.partitions_of(&gone).len());
            prop_assert!(moved.iter().all(|t| t.from == gone));
            prop_assert!(next.partitions_of(&gone).is_empty());
        }

        #[test]
        fn preference_lists_are_n_distinct_nodes_then_every_other_member(
            bits in 3u8..9, s in 1usize..10, n in 1usize..6, p in 0u32..512, hash in any::<u64>()
        ) {
            let mut r = ring(1u64 << bits, s);
            r = r.with_member_added(id(50), Member::default()).expect("join");
            let p = PartitionId(p % r.partitioning().count());
            let pl = r.preference_list(p, n);
            let all: Vec<&NodeId> = pl.preference_list.iter().chain(&pl.fallbacks).collect();
            let distinct: BTreeSet<&NodeId> = all.iter().copied().collect();
            prop_assert_eq!(pl.preference_list.len(), n.min(s + 1));
            prop_assert_eq!(distinct.len(), all.len());
            prop_assert_eq!(all.len(), r.members().len());
            prop_assert_eq!(&pl, &r.preference_list(p, n), "deterministic");
            let by_key = r.preference_list_for(KeyHash(hash), n);
            prop_assert_eq!(by_key.partition, r.partitioning().partition_of(KeyHash(hash)));
        }
    }
}
