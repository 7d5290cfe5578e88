//! The cluster metadata as a state machine: every admin call, heartbeat transition and
//! handoff step is a method that checks its input against the current [`Cluster`] and
//! either changes it or refuses with a [`ClusterError`] leaving it untouched (mapped to
//! its HTTP answer at the edge, once).
//!
//! Pure: no I/O, no clock (liveness comes in as a function), so the rules are unit-tested
//! directly. The service (`service.rs`) applies a method to a copy, persists the
//! copy, and only then makes it current.

use std::collections::BTreeSet;

use dynamo_core::ring::Member;
use dynamo_core::ring::RingError;
use dynamo_core::wire::InvalidProps;
use dynamo_core::wire::cluster::{
    BucketRecord, BucketScope, ClusterState, ClusterView, Handoff, Heartbeat, MAX_BUCKETS, MAX_TOKENS,
    NodeRegistration, NodeState, NodeStatus, TokenRecord,
};
use dynamo_core::wire::{BucketProps, BucketPropsPatch};
use dynamo_core::{BucketName, ErrorCode, NodeId, Partitioning, RingEpoch};
use dynamo_server::ApiError;

use crate::plan::{ChangeKind, ChangePhase, ChangeStatus, PendingChange, candidate_ring, plan};

/// Longest node address accepted, in bytes.
pub const MAX_ADDRESS_BYTES: usize = 256;
/// Longest zone name, in bytes.
pub const MAX_ZONE_BYTES: usize = 63;
/// Longest token id, in bytes.
pub const MAX_TOKEN_ID_BYTES: usize = 64;
/// Most buckets one token may name.
pub const MAX_TOKEN_BUCKETS: usize = 1000;

/// What placement needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Q, fixed at cluster creation.
    pub partitioning: Partitioning,
    /// The N placement and handoff plan for.
    pub spread: u8,
}

/// The whole cluster metadata: the published document and the change in progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// What every service caches (`GET /internal/v1/state`).
    pub state: ClusterState,
    /// The membership change in progress, with its plan's bookkeeping.
    pub change: Option<PendingChange>,
}

/// Why the cluster refused a call; the state is left untouched.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    /// Another change runs, the node is already a member or leaving, or the change is in
    /// a phase that does not allow the call.
    #[error("{0}")]
    Conflict(String),
    /// The call breaks a rule of its own (an address, a zone, a token record).
    #[error("{0}")]
    Invalid(String),
    /// The node is not a member.
    #[error("node {0} is not a member")]
    NotMember(NodeId),
    /// The ring refused the change.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The bucket properties are not valid.
    #[error(transparent)]
    Props(#[from] InvalidProps),
    /// The bucket holds data, so its `n` stays.
    #[error("bucket {bucket} holds data: n stays {n} (asked for {asked})")]
    BucketNImmutable {
        /// The bucket.
        bucket: BucketName,
        /// Its `n`.
        n: u8,
        /// The `n` asked for.
        asked: u8,
    },
    /// The cluster already stores as many of these as it may.
    #[error("the cluster already stores {max} {what}; delete some first")]
    Full {
        /// What: `buckets` or `tokens`.
        what: &'static str,
        /// The bound.
        max: usize,
    },
    /// No token has this id.
    #[error("no such token")]
    TokenNotFound,
    /// A bug: the state machine broke its own rule.
    #[error("{0}")]
    Internal(String),
}

impl ClusterError {
    /// Returns the wire error code.
    pub fn code(&self) -> ErrorCode {
        match self {
            ClusterError::Conflict(_) => ErrorCode::MembershipConflict,
            ClusterError::Invalid(_) => ErrorCode::InvalidRequest,
            ClusterError::NotMember(_) => ErrorCode::NodeNotFound,
            ClusterError::Ring(e) => e.code(),
            ClusterError::Props(e) => e.code(),
            ClusterError::BucketNImmutable { .. } => ErrorCode::BucketNImmutable,
            ClusterError::Full { .. } => ErrorCode::RateLimited,
            ClusterError::TokenNotFound => ErrorCode::TokenNotFound,
            ClusterError::Internal(_) => ErrorCode::Internal,
        }
    }
}

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        ApiError::new(e.code(), e.to_string())
    }
}

fn conflict(message: impl Into<String>) -> ClusterError {
    ClusterError::Conflict(message.into())
}

fn invalid(message: impl Into<String>) -> ClusterError {
    ClusterError::Invalid(message.into())
}

fn node_not_found(node: &NodeId) -> ClusterError {
    ClusterError::NotMember(node.clone())
}

/// Checks a node address: an absolute `http` or `https` URL with a host and nothing after
/// it but an optional `/` (paths are appended to it), at most [`MAX_ADDRESS_BYTES`].
///
/// # Errors
/// `invalid_request` naming the rule.
pub fn validate_address(address: &str) -> Result<(), ClusterError> {
    if address.len() > MAX_ADDRESS_BYTES {
        return Err(invalid(format!(
            "address is longer than {MAX_ADDRESS_BYTES} bytes"
        )));
    }
    let url = reqwest::Url::parse(address).map_err(|e| invalid(format!("address is not a URL: {e}")))?;
    let ok = matches!(url.scheme(), "http" | "https")
        && url.host_str().is_some_and(|h| !h.is_empty())
        && url.username().is_empty()
        && url.password().is_none()
        && url.query().is_none()
        && url.fragment().is_none()
        && url.path() == "/"
        && !address.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        return Err(invalid(
            "address must be an http(s) URL with a host and no path, e.g. http://10.0.0.1:7100",
        ));
    }
    Ok(())
}

fn validate_zone(zone: &Option<String>) -> Result<(), ClusterError> {
    if let Some(z) = zone
        && (z.is_empty()
            || z.len() > MAX_ZONE_BYTES
            || !z
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')))
    {
        return Err(invalid(format!(
            "zone must be 1-{MAX_ZONE_BYTES} bytes of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

/// Checks a registration's address and zone (the id is a [`NodeId`], valid by type).
///
/// # Errors
/// `invalid_request`.
pub fn validate_registration(r: &NodeRegistration) -> Result<(), ClusterError> {
    validate_address(&r.address)?;
    validate_zone(&r.zone)
}

/// Checks a token record: an id of 1–64 bytes of `[A-Za-z0-9._-]`, a SHA-256 as 64
/// lowercase hex digits, at least one permission, and 1–1000 named buckets (or `"*"`).
///
/// # Errors
/// `invalid_request` naming the rule.
pub fn validate_token(t: &TokenRecord) -> Result<(), ClusterError> {
    if t.id.is_empty()
        || t.id.len() > MAX_TOKEN_ID_BYTES
        || !t
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid(format!(
            "token id must be 1-{MAX_TOKEN_ID_BYTES} bytes of [A-Za-z0-9._-]"
        )));
    }
    if t.sha256.len() != 64
        || !t
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid("sha256 must be 64 lowercase hex digits"));
    }
    if t.permissions.is_empty() {
        return Err(invalid("a token needs at least one permission"));
    }
    if let BucketScope::Only(list) = &t.buckets
        && (list.is_empty() || list.len() > MAX_TOKEN_BUCKETS)
    {
        return Err(invalid(format!(
            "a token names 1-{MAX_TOKEN_BUCKETS} buckets, or \"*\""
        )));
    }
    Ok(())
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster::empty()
    }
}

impl Cluster {
    /// Returns the state of a cluster nobody has joined yet (version 0).
    pub fn empty() -> Cluster {
        Cluster {
            state: ClusterState {
                version: 0,
                ring: None,
                nodes: Vec::new(),
                buckets: Default::default(),
                tokens: Vec::new(),
                handoffs: Vec::new(),
            },
            change: None,
        }
    }

    /// Returns the current ring epoch (0 before the first join).
    pub fn epoch(&self) -> RingEpoch {
        self.state.ring.as_ref().map_or(RingEpoch(0), |r| r.epoch())
    }

    /// Returns the node's status, if it is known.
    pub fn node(&self, id: &NodeId) -> Option<&NodeStatus> {
        self.state.nodes.iter().find(|n| n.node_id == *id)
    }

    fn node_mut(&mut self, id: &NodeId) -> Option<&mut NodeStatus> {
        self.state.nodes.iter_mut().find(|n| n.node_id == *id)
    }

    /// Builds `GET /internal/v1/cluster`; `ms_ago` gives the time since a node's last
    /// heartbeat.
    pub fn view(&self, ms_ago: impl Fn(&NodeId) -> Option<u64>) -> ClusterView {
        ClusterView {
            epoch: self.epoch(),
            nodes: self
                .state
                .nodes
                .iter()
                .map(|n| NodeStatus {
                    last_heartbeat_ms_ago: ms_ago(&n.node_id),
                    ..n.clone()
                })
                .collect(),
            handoffs: self.state.handoffs.clone(),
        }
    }

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
        let next = candidate_ring(current, &kind, member, settings.partitioning, settings.spread)?;
        let mut unavailable: BTreeSet<NodeId> = self
            .state
            .nodes
            .iter()
            .filter(|n| n.state == NodeState::Down)
            .map(|n| n.node_id.clone())
            .collect();
        unavailable.extend(kind.leaver().cloned());
        self.state.handoffs = plan(current, &next, usize::from(settings.spread), &unavailable);
        if let Some(r) = kind.joiner() {
            self.state.nodes.push(NodeStatus {
                node_id: r.node_id.clone(),
                address: r.address.clone(),
                zone: r.zone.clone(),
                state: NodeState::Joining,
                last_heartbeat_ms_ago: None,
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
        });
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
    /// partition and receiver and carries the source used, the objects copied and
    /// whether it is done.
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
                .find(|h| h.partition == u.partition && h.to == u.to)
            {
                h.from = u.from.clone();
                h.objects = u.objects;
                h.done = u.done;
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
            settings.spread,
        )?;
        if next.owners() != change.planned_owners.as_slice() {
            return Err(ClusterError::Internal(
                "the new ring places partitions differently from its handoff plan".into(),
            ));
        }
        let epoch = next.epoch();
        self.state.ring = Some(next);
        for h in &mut self.state.handoffs {
            h.done = false;
        }
        if let Some(c) = &mut self.change {
            c.phase = ChangePhase::CatchUp;
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
        if let Some(r) = change.kind.joiner()
            && let Some(n) = self.node_mut(&r.node_id)
        {
            n.state = if live(&r.node_id) {
                NodeState::Up
            } else {
                NodeState::Down
            };
        }
        self.state.handoffs.clear();
        self.change = None;
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
        if let Some(r) = change.kind.joiner() {
            self.state.nodes.retain(|n| n.node_id != r.node_id);
        }
        if let Some(leaver) = change.kind.leaver()
            && let Some(n) = self.node_mut(leaver)
        {
            n.state = if live(leaver) {
                NodeState::Up
            } else {
                NodeState::Down
            };
        }
        self.state.handoffs.clear();
        self.change = None;
        Ok(())
    }

    /// Applies a heartbeat: a `down` member comes back `up`, and a changed address is
    /// recorded (and, for a ring member, put in the ring with a new epoch). Joining and
    /// leaving nodes keep their state.
    ///
    /// # Errors
    /// `node_not_found`, `invalid_request` (bad address).
    pub fn heartbeat(&mut self, hb: &Heartbeat) -> Result<(), ClusterError> {
        validate_address(&hb.address)?;
        let Some(n) = self.node_mut(&hb.node_id) else {
            return Err(node_not_found(&hb.node_id));
        };
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
        Ok(())
    }

    /// Re-evaluates liveness: each `up`/`down` node takes the state `live` gives it.
    /// Returns the transitions made.
    pub fn apply_liveness(&mut self, live: &dyn Fn(&NodeId) -> bool) -> Vec<(NodeId, NodeState)> {
        let mut changed = Vec::new();
        for n in &mut self.state.nodes {
            if !matches!(n.state, NodeState::Up | NodeState::Down) {
                continue;
            }
            let now = if live(&n.node_id) {
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

    /// Returns a bucket's record (the defaults when none is stored).
    pub fn bucket(&self, b: &BucketName) -> BucketRecord {
        self.state
            .buckets
            .get(b)
            .cloned()
            .unwrap_or_else(|| BucketRecord {
                props: BucketProps::default(),
                has_data: false,
            })
    }

    fn ensure_bucket_room(&self, b: &BucketName) -> Result<(), ClusterError> {
        if !self.state.buckets.contains_key(b) && self.state.buckets.len() >= MAX_BUCKETS {
            return Err(ClusterError::Full {
                what: "bucket property records",
                max: MAX_BUCKETS,
            });
        }
        Ok(())
    }

    /// Applies a properties patch and returns the new record.
    ///
    /// # Errors
    /// `invalid_bucket_properties` (core's rules), `bucket_n_immutable` (changing `n` of a
    /// bucket that holds data), `rate_limited` (too many buckets).
    pub fn patch_bucket(
        &mut self,
        b: &BucketName,
        patch: &BucketPropsPatch,
    ) -> Result<BucketRecord, ClusterError> {
        let current = self.bucket(b);
        let props = current.props.apply(patch)?;
        if current.has_data && props.n != current.props.n {
            return Err(ClusterError::BucketNImmutable {
                bucket: b.clone(),
                n: current.props.n,
                asked: props.n,
            });
        }
        self.ensure_bucket_room(b)?;
        let record = BucketRecord {
            props,
            has_data: current.has_data,
        };
        self.state.buckets.insert(b.clone(), record.clone());
        Ok(record)
    }

    /// Records that a bucket holds data (its `n` is frozen from now on). Idempotent.
    ///
    /// # Errors
    /// `rate_limited` (too many buckets).
    pub fn mark_written(&mut self, b: &BucketName) -> Result<(), ClusterError> {
        if self.state.buckets.get(b).is_some_and(|r| r.has_data) {
            return Ok(());
        }
        self.ensure_bucket_room(b)?;
        let mut record = self.bucket(b);
        record.has_data = true;
        self.state.buckets.insert(b.clone(), record);
        Ok(())
    }

    /// Stores a hashed token.
    ///
    /// # Errors
    /// `invalid_request` (malformed, or the id or hash already exists), `rate_limited`
    /// (over [`MAX_TOKENS`]).
    pub fn add_token(&mut self, t: TokenRecord) -> Result<(), ClusterError> {
        validate_token(&t)?;
        if self.state.tokens.iter().any(|x| x.id == t.id) {
            return Err(invalid(format!("token {} already exists", t.id)));
        }
        if self.state.tokens.iter().any(|x| x.sha256 == t.sha256) {
            return Err(invalid("a token with this secret already exists"));
        }
        if self.state.tokens.len() >= MAX_TOKENS {
            return Err(ClusterError::Full {
                what: "tokens",
                max: MAX_TOKENS,
            });
        }
        self.state.tokens.push(t);
        Ok(())
    }

    /// Deletes a token.
    ///
    /// # Errors
    /// `token_not_found`.
    pub fn remove_token(&mut self, id: &str) -> Result<(), ClusterError> {
        let before = self.state.tokens.len();
        self.state.tokens.retain(|t| t.id != id);
        if self.state.tokens.len() == before {
            return Err(ClusterError::TokenNotFound);
        }
        Ok(())
    }

    /// Checks a loaded state for internal consistency (the ring itself is checked by
    /// core when it is parsed).
    ///
    /// # Errors
    /// A message naming the first inconsistency.
    pub fn check_consistent(&self) -> Result<(), String> {
        let mut seen = BTreeSet::new();
        for n in &self.state.nodes {
            if !seen.insert(&n.node_id) {
                return Err(format!("node {} is listed twice", n.node_id));
            }
        }
        if let Some(ring) = &self.state.ring {
            for m in ring.members().keys() {
                if !seen.contains(m) {
                    return Err(format!("ring member {m} is not among the nodes"));
                }
            }
        }
        let ring_has = |id: &NodeId| {
            self.state
                .ring
                .as_ref()
                .is_some_and(|r| r.members().contains_key(id))
        };
        let joiner = self
            .change
            .as_ref()
            .and_then(|c| c.kind.joiner())
            .map(|r| &r.node_id);
        for n in &self.state.nodes {
            if !ring_has(&n.node_id) && Some(&n.node_id) != joiner {
                return Err(format!("node {} is neither a ring member nor joining", n.node_id));
            }
        }
        if self.change.is_none() && !self.state.handoffs.is_empty() {
            return Err("handoffs are listed but no change is in progress".into());
        }
        if let Some(c) = &self.change {
            let q = self.state.ring.as_ref().map(|r| r.owners().len());
            if q.is_some_and(|q| q != c.planned_owners.len()) {
                return Err("the planned ring has another partition count".into());
            }
            if c.id > self.state.version {
                return Err(format!(
                    "change {} is newer than the state version {}",
                    c.id, self.state.version
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::wire::cluster::Permission;

    fn settings() -> Settings {
        Settings {
            partitioning: Partitioning::with_count(16).expect("q"),
            spread: 3,
        }
    }

    fn id(s: &str) -> NodeId {
        NodeId::new(s).expect("id")
    }

    fn reg(s: &str, port: u16) -> NodeRegistration {
        NodeRegistration {
            node_id: id(s),
            address: format!("http://127.0.0.1:{port}"),
            zone: None,
        }
    }

    /// Drives a change to completion, as the worker would with all pulls succeeding.
    fn complete(c: &mut Cluster) {
        c.state.version += 1;
        let change = c.change.clone().expect("a change");
        let done: Vec<Handoff> = c
            .state
            .handoffs
            .iter()
            .map(|h| Handoff {
                done: true,
                ..h.clone()
            })
            .collect();
        c.record_progress(change.id, ChangePhase::Copy, &done, 0)
            .expect("progress");
        c.publish(change.id, settings()).expect("publish");
        c.record_progress(change.id, ChangePhase::CatchUp, &done, 0)
            .expect("progress");
        c.finish(change.id, &|_| true).expect("finish");
    }

    fn joined(names: &[&str]) -> Cluster {
        let mut c = Cluster::empty();
        for (i, n) in names.iter().enumerate() {
            c.begin(
                ChangeKind::Join {
                    node: reg(n, 7100 + i as u16),
                },
                settings(),
            )
            .expect("join");
            complete(&mut c);
        }
        c
    }

    #[test]
    fn joins_make_epochs_one_by_one_and_conflicts_are_refused() {
        let mut c = joined(&["a", "b", "c"]);
        assert_eq!(c.epoch(), RingEpoch(3));
        assert!(c.state.nodes.iter().all(|n| n.state == NodeState::Up));
        let before = c.clone();
        let e = c
            .begin(ChangeKind::Join { node: reg("a", 9999) }, settings())
            .expect_err("dup");
        assert_eq!(e.code(), ErrorCode::MembershipConflict);
        let e = c
            .begin(ChangeKind::Join { node: reg("d", 7100) }, settings())
            .expect_err("same address");
        assert_eq!(e.code(), ErrorCode::MembershipConflict);
        let e = c
            .begin(ChangeKind::Decommission { node: id("zz") }, settings())
            .expect_err("unknown");
        assert_eq!(e.code(), ErrorCode::NodeNotFound);
        assert_eq!(c, before, "refusals change nothing");

        c.begin(ChangeKind::Join { node: reg("d", 7200) }, settings())
            .expect("join d");
        assert_eq!(c.node(&id("d")).map(|n| n.state), Some(NodeState::Joining));
        assert_eq!(c.epoch(), RingEpoch(3), "the ring changes only at publish");
        let e = c
            .begin(ChangeKind::Decommission { node: id("a") }, settings())
            .expect_err("busy");
        assert_eq!(e.code(), ErrorCode::MembershipConflict);
    }

    #[test]
    fn the_last_member_cannot_leave() {
        let mut c = joined(&["a"]);
        let e = c
            .begin(ChangeKind::Decommission { node: id("a") }, settings())
            .expect_err("last");
        assert_eq!(e.code(), ErrorCode::MembershipConflict);
        assert!(c.change.is_none());
    }

    #[test]
    fn abort_restores_membership_only_before_publish() {
        let mut c = joined(&["a", "b"]);
        let before = c.clone();
        c.begin(ChangeKind::Decommission { node: id("b") }, settings())
            .expect("decommission");
        assert_eq!(c.node(&id("b")).map(|n| n.state), Some(NodeState::Leaving));
        c.abort(&|_| true).expect("abort");
        assert_eq!(c, before);

        c.begin(ChangeKind::Join { node: reg("x", 7300) }, settings())
            .expect("join");
        c.state.version += 1;
        let change = c.change.clone().expect("change");
        let done: Vec<Handoff> = c
            .state
            .handoffs
            .iter()
            .map(|h| Handoff {
                done: true,
                ..h.clone()
            })
            .collect();
        c.record_progress(change.id, ChangePhase::Copy, &done, 0)
            .expect("progress");
        c.publish(change.id, settings()).expect("publish");
        assert_eq!(
            c.abort(&|_| true).expect_err("published").code(),
            ErrorCode::MembershipConflict
        );
    }

    #[test]
    fn publish_needs_every_copy_and_keeps_address_updates() {
        let mut c = joined(&["a"]);
        c.begin(ChangeKind::Join { node: reg("b", 7301) }, settings())
            .expect("join");
        c.state.version += 1;
        let change = c.change.clone().expect("change");
        assert_eq!(c.state.handoffs.len(), 16);
        assert_eq!(
            c.publish(change.id, settings())
                .expect_err("copies missing")
                .code(),
            ErrorCode::MembershipConflict
        );
        c.heartbeat(&Heartbeat {
            node_id: id("a"),
            address: "http://127.0.0.1:8888".into(),
        })
        .expect("heartbeat");
        assert_eq!(c.epoch(), RingEpoch(2), "an address update is a new ring");
        let done: Vec<Handoff> = c
            .state
            .handoffs
            .iter()
            .map(|h| Handoff {
                done: true,
                ..h.clone()
            })
            .collect();
        c.record_progress(change.id, ChangePhase::Copy, &done, 0)
            .expect("progress");
        let epoch = c.publish(change.id, settings()).expect("publish");
        assert_eq!(epoch, RingEpoch(3));
        let ring = c.state.ring.as_ref().expect("ring");
        assert_eq!(
            ring.members()[&id("a")].address.as_deref(),
            Some("http://127.0.0.1:8888")
        );
        assert!(
            c.state.handoffs.iter().all(|h| !h.done),
            "catch-up round restarts"
        );
    }

    #[test]
    fn liveness_transitions_never_touch_the_ring() {
        let mut c = joined(&["a", "b"]);
        let ring = c.state.ring.clone();
        let t = c.apply_liveness(&|n| n.as_str() != "b");
        assert_eq!(t, vec![(id("b"), NodeState::Down)]);
        assert!(c.apply_liveness(&|n| n.as_str() != "b").is_empty(), "no repeat");
        assert_eq!(c.state.ring, ring);
        c.heartbeat(&Heartbeat {
            node_id: id("b"),
            address: "http://127.0.0.1:7101".into(),
        })
        .expect("heartbeat");
        assert_eq!(c.node(&id("b")).map(|n| n.state), Some(NodeState::Up));
        assert_eq!(c.state.ring, ring, "same address, same ring");
    }

    #[test]
    fn buckets_validate_and_freeze_n_once_written() {
        let mut c = Cluster::empty();
        let b = BucketName::new("photos").expect("bucket");
        assert_eq!(c.bucket(&b).props, BucketProps::default());
        let bad = BucketPropsPatch {
            r: Some(9),
            ..Default::default()
        };
        assert_eq!(
            c.patch_bucket(&b, &bad).expect_err("r > n").code(),
            ErrorCode::InvalidBucketProperties
        );
        let n5 = BucketPropsPatch {
            n: Some(5),
            ..Default::default()
        };
        assert_eq!(c.patch_bucket(&b, &n5).expect("n=5").props.n, 5);
        c.mark_written(&b).expect("written");
        let n3 = BucketPropsPatch {
            n: Some(3),
            ..Default::default()
        };
        assert_eq!(
            c.patch_bucket(&b, &n3).expect_err("frozen").code(),
            ErrorCode::BucketNImmutable
        );
        assert!(c.patch_bucket(&b, &n5).is_ok(), "the same n is fine");
    }

    #[test]
    fn tokens_are_validated_and_unique() {
        let mut c = Cluster::empty();
        let t = TokenRecord {
            id: "tok1".into(),
            sha256: "a".repeat(64),
            buckets: BucketScope::Only(vec![BucketName::new("b").expect("bucket")]),
            permissions: vec![Permission::Read],
            created_ms: 1,
        };
        c.add_token(t.clone()).expect("add");
        assert_eq!(
            c.add_token(t.clone()).expect_err("dup").code(),
            ErrorCode::InvalidRequest
        );
        let upper = TokenRecord {
            id: "tok2".into(),
            sha256: "A".repeat(64),
            ..t.clone()
        };
        assert!(c.add_token(upper).is_err());
        let none = TokenRecord {
            id: "tok3".into(),
            sha256: "b".repeat(64),
            permissions: vec![],
            ..t
        };
        assert!(c.add_token(none).is_err());
        assert_eq!(
            c.remove_token("nope").expect_err("missing").code(),
            ErrorCode::TokenNotFound
        );
        c.remove_token("tok1").expect("remove");
        assert!(c.state.tokens.is_empty());
    }

    #[test]
    fn addresses_must_be_bare_http_urls() {
        for ok in [
            "http://127.0.0.1:7100",
            "https://node-0.dynamo.svc:7100/",
            "http://[::1]:1",
        ] {
            assert!(validate_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1:7100",
            "ftp://x",
            "http://x/path",
            "http://x?q=1",
            "http://u:p@x",
            "http://",
            "http://x #",
        ] {
            assert!(validate_address(bad).is_err(), "{bad}");
        }
        assert!(validate_address(&format!("http://{}", "a".repeat(300))).is_err());
    }
}
