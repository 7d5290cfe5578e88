//! A membership change's life (begin, progress, publish, finish, fail, retry, abort),
//! and the heartbeats and liveness transitions of the members.

use super::*;

impl Cluster {
    fn ensure_no_change(&self) -> Result<(), ClusterError> {
        match &self.change {
            None => Ok(()),
            Some(c) => Err(conflict(format!(
                "a membership change ({}) is in progress; wait for it, or retry or abort it if it failed",
                c.kind.name()
            ))),
        }
    }

    fn ensure_new_node(&self, r: &NodeRegistration) -> Result<(), ClusterError> {
        validate_registration(r)?;
        if self.node(&r.node_id).is_some() {
            return Err(conflict(format!("node {} is already a member", r.node_id)));
        }
        if let Some(other) = self.state.nodes.iter().find(|n| n.address == r.address) {
            return Err(conflict(format!(
                "address {} is already used by node {}",
                r.address, other.node_id
            )));
        }
        Ok(())
    }

    /// Starts a membership change: computes the new ring and the handoff plan, records
    /// the newcomer as `joining` and the leaver as `leaving`. The ring itself changes
    /// only in [`Cluster::publish`], after the plan's pulls.
    ///
    /// # Errors
    /// `membership_conflict` (a change in progress, already a member, the last member),
    /// `node_not_found`, `invalid_request` (a bad address or zone).
    pub fn begin(&mut self, kind: ChangeKind, settings: Settings) -> Result<(), ClusterError> {
        self.ensure_no_change()?;
        match &kind {
            ChangeKind::Join { node } => self.ensure_new_node(node)?,
            ChangeKind::Decommission { node } => {
                if self.node(node).is_none() {
                    return Err(node_not_found(node));
                }
            }
            ChangeKind::Replace { old, new } if new.node_id == *old => self.ensure_refillable(new)?,
            ChangeKind::Replace { old, new } => {
                if self.node(old).is_none() {
                    return Err(node_not_found(old));
                }
                self.ensure_new_node(new)?;
            }
        }
        let member = kind.joiner().map(|r| Member {
            zone: r.zone.clone(),
            address: Some(r.address.clone()),
        });
        let current = self.state.ring.as_ref();
        let next = candidate_ring(current, &kind, member, settings.partitioning, settings.n)?;
        let n = self.state.max_n();
        let mut unavailable: BTreeSet<NodeId> = self
            .state
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Down)
            .map(|n| n.node_id.clone())
            .collect();
        unavailable.extend(kind.leaver().cloned());
        let handoffs = match (kind.refills(), current) {
            (Some(node), Some(ring)) => refill_plan(ring, node, n, &unavailable),
            _ => plan(current, &next, n, &unavailable),
        };
        // A node that has not yet deleted a partition it let go would merge a fresh copy
        // into its stale one, and bring back deletes collected meanwhile.
        if let Some(h) = handoffs.iter().find(|h| {
            self.state
                .release_for(&h.to)
                .is_some_and(|r| r.partitions.contains(&h.partition))
        }) {
            return Err(conflict(format!(
                "node {} has not yet released partition {} from an earlier change; start it (or wait until it has deleted its old copy) first",
                h.to, h.partition.0
            )));
        }
        self.state.handoffs = handoffs;
        if let Some(node) = kind.refills()
            && let Some(n) = self.node_mut(node)
        {
            // From now on the new volume is the member's: its heartbeats are taken, and
            // it serves again once the copy phase ends (the storage node's volume gate).
            n.volume = n.volume_refused.take();
            n.state = NodeState::Joining;
        } else if let Some(r) = kind.joiner() {
            self.state.nodes.push(NodeStatus {
                node_id: r.node_id.clone(),
                address: r.address.clone(),
                zone: r.zone.clone(),
                state: NodeState::Joining,
                last_heartbeat_ms_ago: None,
                anti_entropy: None,
                volume: None,
                volume_refused: None,
            });
            self.state.nodes.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        }
        if let Some(leaver) = kind.leaver()
            && let Some(n) = self.node_mut(leaver)
        {
            n.state = NodeState::Leaving;
        }
        self.change = Some(PendingChange {
            // The commit of this very change bumps the version by one.
            id: self.state.version + 1,
            kind,
            phase: ChangePhase::Copy,
            status: ChangeStatus::Running,
            planned_epoch: next.epoch(),
            planned_owners: next.owners().to_vec(),
            failed_attempts: 0,
            releases: Vec::new(),
        });
        Ok(())
    }

    /// A replace in place refills a member whose volume was lost: one that a new volume
    /// heartbeated for and was refused, at an address no other node uses, in its zone.
    fn ensure_refillable(&self, r: &NodeRegistration) -> Result<(), ClusterError> {
        validate_registration(r)?;
        let Some(n) = self.node(&r.node_id) else {
            return Err(node_not_found(&r.node_id));
        };
        if n.volume_refused.is_none() {
            return Err(conflict(format!(
                "node {} presents no new volume: a replace in place refills a member whose volume was lost (to replace a healthy node, give the new node another id)",
                r.node_id
            )));
        }
        if n.zone != r.zone {
            return Err(conflict(format!(
                "a replace in place keeps node {}'s zone ({}); moving a node to another zone is a replace by a new node",
                r.node_id,
                n.zone.as_deref().unwrap_or("none")
            )));
        }
        if let Some(other) = self
            .state
            .nodes
            .iter()
            .find(|o| o.address == r.address && o.node_id != r.node_id)
        {
            return Err(conflict(format!(
                "address {} is already used by node {}",
                r.address, other.node_id
            )));
        }
        Ok(())
    }

    fn running_change(&self, id: u64, phase: ChangePhase) -> Result<&PendingChange, ClusterError> {
        match &self.change {
            Some(c) if c.id == id && c.phase == phase && c.status == ChangeStatus::Running => Ok(c),
            _ => Err(conflict(format!(
                "membership change {id} is no longer running in phase {phase:?}"
            ))),
        }
    }

    /// Records pull progress of the running change: each update names its handoff by
    /// partition, receiver and source, and carries the objects and bytes copied, whether
    /// it is done (or skipped) and its last error.
    ///
    /// # Errors
    /// `membership_conflict` when the change is no longer the one running in `phase`.
    pub fn record_progress(
        &mut self,
        id: u64,
        phase: ChangePhase,
        updates: &[Handoff],
        failed_attempts: u64,
    ) -> Result<(), ClusterError> {
        self.running_change(id, phase)?;
        for u in updates {
            if let Some(h) = self
                .state
                .handoffs
                .iter_mut()
                .find(|h| h.partition == u.partition && h.to == u.to && h.from == u.from)
            {
                h.objects = u.objects;
                h.bytes = u.bytes;
                h.done = u.done;
                h.skipped = u.skipped;
                h.error = u.error.clone();
            }
        }
        if let Some(c) = &mut self.change {
            c.failed_attempts = failed_attempts;
        }
        Ok(())
    }

    /// Publishes the change's new ring (every copy done): it is recomputed from the
    /// current ring, so address updates made during the copy are kept, and must place
    /// partitions exactly as planned. The handoffs restart for the catch-up round.
    ///
    /// # Errors
    /// `membership_conflict` when the change is not running in the copy phase or a
    /// handoff is not done; `internal` when the recomputed ring differs from the plan.
    pub fn publish(&mut self, id: u64, settings: Settings) -> Result<RingEpoch, ClusterError> {
        let change = self.running_change(id, ChangePhase::Copy)?.clone();
        if let Some(h) = self.state.handoffs.iter().find(|h| !h.done) {
            return Err(conflict(format!(
                "partition {} is not yet copied to {}",
                h.partition, h.to
            )));
        }
        let member = change
            .kind
            .joiner()
            .and_then(|r| self.node(&r.node_id))
            .map(|n| Member {
                zone: n.zone.clone(),
                address: Some(n.address.clone()),
            });
        let next = candidate_ring(
            self.state.ring.as_ref(),
            &change.kind,
            member,
            settings.partitioning,
            settings.n,
        )?;
        if next.owners() != change.planned_owners.as_slice() {
            return Err(ClusterError::Internal(
                "the new ring places partitions differently from its handoff plan".into(),
            ));
        }
        let epoch = next.epoch();
        let mut releases = match &self.state.ring {
            Some(old) => releases(old, &next, self.state.max_n()),
            None => Vec::new(),
        };
        self.state.ring = Some(next);
        for h in &mut self.state.handoffs {
            *h = Handoff::new(h.partition, h.from.clone(), h.to.clone());
        }
        if settings.early_release {
            self.add_releases(std::mem::take(&mut releases));
        }
        if let Some(c) = &mut self.change {
            c.phase = ChangePhase::CatchUp;
            c.releases = releases;
        }
        Ok(epoch)
    }

    /// Completes the change after the catch-up round: the leaver leaves `nodes`, the
    /// newcomer becomes `up` or `down` by liveness, the handoffs are cleared.
    ///
    /// # Errors
    /// `membership_conflict` when the change is not running in the catch-up phase or a
    /// handoff is not done.
    pub fn finish(&mut self, id: u64, live: &dyn Fn(&NodeId) -> bool) -> Result<(), ClusterError> {
        let change = self.running_change(id, ChangePhase::CatchUp)?.clone();
        if let Some(h) = self.state.handoffs.iter().find(|h| !h.done) {
            return Err(conflict(format!(
                "partition {} is not yet caught up on {}",
                h.partition, h.to
            )));
        }
        if let Some(leaver) = change.kind.leaver() {
            self.state.nodes.retain(|n| n.node_id != *leaver);
        }
        if let Some(r) = change.kind.joiner() {
            self.set_state_by_liveness(&r.node_id, live);
        }
        // Every new holder confirmed its copy: the old ones may let go now.
        self.add_releases(change.releases);
        self.state.handoffs.clear();
        self.change = None;
        Ok(())
    }

    /// Adds releases to the state's, one entry per node (a node with one pending gets
    /// the union, under the newer epoch).
    fn add_releases(&mut self, releases: Vec<Release>) {
        for r in releases {
            match self.state.releases.iter_mut().find(|e| e.node == r.node) {
                Some(e) => {
                    e.epoch = e.epoch.max(r.epoch);
                    e.partitions.extend(r.partitions);
                    e.partitions.sort();
                    e.partitions.dedup();
                }
                None => self.state.releases.push(r),
            }
        }
    }

    /// Records that `done.node` deleted what its release asked, under `done.epoch`: the
    /// release goes unless it grew since (a newer epoch), which the node then carries out
    /// on its next look.
    ///
    /// # Errors
    /// None today; a release unknown or newer than the acknowledgement is left as is.
    pub fn release_done(&mut self, done: &ReleaseDone) -> Result<(), ClusterError> {
        self.state
            .releases
            .retain(|r| !(r.node == done.node && r.epoch <= done.epoch));
        Ok(())
    }

    /// Marks the running change failed; it waits for a retry or an abort.
    pub fn fail(&mut self, id: u64, reason: String, failed_attempts: u64) {
        if let Some(c) = &mut self.change
            && c.id == id
        {
            c.status = ChangeStatus::Failed { reason };
            c.failed_attempts = failed_attempts;
        }
    }

    /// Sets a failed change running again (its done handoffs are not repeated).
    /// Returns its id.
    ///
    /// # Errors
    /// `membership_conflict` when no change has failed.
    pub fn retry(&mut self) -> Result<u64, ClusterError> {
        match &mut self.change {
            Some(c) if c.status != ChangeStatus::Running => {
                c.status = ChangeStatus::Running;
                Ok(c.id)
            }
            Some(_) => Err(conflict("the membership change is running; nothing to retry")),
            None => Err(conflict("no membership change is in progress")),
        }
    }

    /// Abandons the change before its ring is published: the newcomer is forgotten, the
    /// leaver is a member again (`up` or `down` by liveness), the ring is untouched.
    /// Data already copied to the newcomer stays there, unused.
    ///
    /// # Errors
    /// `membership_conflict` when no change is in progress or its ring is already
    /// published (it can then only go forward).
    pub fn abort(&mut self, live: &dyn Fn(&NodeId) -> bool) -> Result<(), ClusterError> {
        let Some(change) = self.change.clone() else {
            return Err(conflict("no membership change is in progress"));
        };
        if change.phase != ChangePhase::Copy {
            return Err(conflict(
                "the new ring is already published; the change can only be retried",
            ));
        }
        if let Some(node) = change.kind.refills() {
            // Not refilled: the new volume is refused again, and the member is down
            // until a replace in place runs to its end.
            if let Some(n) = self.node_mut(node) {
                n.volume_refused = n.volume.take();
                n.state = NodeState::Down;
            }
        } else if let Some(r) = change.kind.joiner() {
            self.state.nodes.retain(|n| n.node_id != r.node_id);
        }
        if let Some(leaver) = change.kind.leaver() {
            self.set_state_by_liveness(leaver, live);
        }
        self.state.handoffs.clear();
        self.change = None;
        Ok(())
    }

    /// Applies a heartbeat: a `down` member comes back `up`, and a changed address is
    /// recorded (and, for a ring member, put in the ring with a new epoch). Joining and
    /// leaving nodes keep their state. The first volume that beats binds the member; a
    /// beat from another is refused ([`Beat::Refused`], recorded as `volume_refused`, the
    /// member `down`), which nothing but a replace in place undoes.
    ///
    /// # Errors
    /// `node_not_found`, `invalid_request` (bad address).
    pub fn heartbeat(&mut self, hb: &Heartbeat) -> Result<Beat, ClusterError> {
        validate_address(&hb.address)?;
        let Some(n) = self.node_mut(&hb.node_id) else {
            return Err(node_not_found(&hb.node_id));
        };
        let verdict = volume_verdict(n, hb.volume);
        match verdict {
            Beat::Refused => {
                n.volume_refused = hb.volume;
                if n.state == NodeState::Up {
                    n.state = NodeState::Down;
                }
                return Ok(Beat::Refused);
            }
            Beat::Binds => n.volume = hb.volume,
            Beat::Taken => {}
        }
        if n.state == NodeState::Down {
            n.state = NodeState::Up;
        }
        if n.address != hb.address {
            n.address = hb.address.clone();
            let member = Member {
                zone: n.zone.clone(),
                address: Some(hb.address.clone()),
            };
            if let Some(ring) = &self.state.ring
                && ring.members().contains_key(&hb.node_id)
            {
                self.state.ring = Some(ring.with_member_updated(&hb.node_id, member)?);
            }
        }
        Ok(verdict)
    }

    /// Re-evaluates liveness: each `up`/`down` node takes the state `live` gives it.
    /// Returns the transitions made.
    pub fn apply_liveness(&mut self, live: &dyn Fn(&NodeId) -> bool) -> Vec<(NodeId, NodeState)> {
        let mut changed = Vec::new();
        for n in &mut self.state.nodes {
            if !matches!(n.state, NodeState::Up | NodeState::Down) {
                continue;
            }
            // Beats of the lost volume may still be within the timeout.
            let now = if live(&n.node_id) && n.volume_refused.is_none() {
                NodeState::Up
            } else {
                NodeState::Down
            };
            if now != n.state {
                n.state = now;
                changed.push((n.node_id.clone(), now));
            }
        }
        changed
    }

    /// Makes a known node `up` or `down`, as `live` says.
    fn set_state_by_liveness(&mut self, id: &NodeId, live: &dyn Fn(&NodeId) -> bool) {
        let state = if live(id) { NodeState::Up } else { NodeState::Down };
        if let Some(n) = self.node_mut(id) {
            n.state = if n.volume_refused.is_some() {
                NodeState::Down
            } else {
                state
            };
        }
    }
}

/// What a heartbeat's volume means for the member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The member's own volume (or a node too old to say): taken.
    Taken,
    /// The first volume to beat for the member: taken, and the member is bound to it.
    Binds,
    /// Another volume than the member's: refused.
    Refused,
}

/// Judges a heartbeat's volume against the member's record (pure; the API checks it on
/// its snapshot before committing, the state machine again on the current state).
pub fn volume_verdict(n: &NodeStatus, volume: Option<VolumeId>) -> Beat {
    match (volume, n.volume) {
        (None, _) => Beat::Taken,
        (Some(v), Some(bound)) if v == bound => Beat::Taken,
        (Some(_), None) if n.volume_refused.is_none() => Beat::Binds,
        _ => Beat::Refused,
    }
}
