//! The cluster metadata as a state machine: every admin call, heartbeat transition and
//! handoff step is a method that checks its input against the current [`Cluster`] and
//! either changes it or refuses with a [`ClusterError`] leaving it untouched (mapped to
//! its HTTP answer at the edge, once).
//!
//! Pure: no I/O, no clock (liveness comes in as a function), so the rules are unit-tested
//! directly. The service (`service.rs`) applies a method to a copy, persists the
//! copy, and only then makes it current.
//!
//! By concept: [`validate`] (the input rules), `membership` (a change's life: begin,
//! progress, publish, finish, fail, retry, abort; heartbeats and liveness), `buckets`
//! and `tokens`; this file holds the state, its error and the consistency check.

use std::collections::BTreeSet;

use dynamo_core::ring::Member;
use dynamo_core::ring::RingError;
use dynamo_core::wire::InvalidProps;
use dynamo_core::wire::cluster::{
    BucketRecord, BucketScope, ChangeProgress, ClusterState, ClusterView, Handoff, Heartbeat, MAX_BUCKETS,
    MAX_TOKEN_TTL_S, MAX_TOKENS, NodeRegistration, NodeState, NodeStatus, Release, ReleaseDone, TokenRecord,
};
use dynamo_core::wire::{BucketProps, BucketPropsPatch};
use dynamo_core::{BucketName, ErrorCode, NodeId, Partitioning, RingEpoch, VolumeId};
use dynamo_server::ApiError;

use crate::plan::{
    ChangeKind, ChangePhase, ChangeStatus, PendingChange, candidate_ring, plan, refill_plan, releases,
};

mod buckets;
mod membership;
pub use membership::{Beat, volume_verdict};
#[cfg(test)]
mod tests;
mod tokens;
pub mod validate;

pub use validate::{
    MAX_ADDRESS_BYTES, MAX_TOKEN_BUCKETS, MAX_TOKEN_ID_BYTES, MAX_ZONE_BYTES, validate_address,
    validate_registration, validate_token,
};

/// What placement needs from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Q, fixed at cluster creation.
    pub partitioning: Partitioning,
    /// The N placement optimises for (handoffs cover the largest bucket `n` as well).
    pub n: u8,
    /// Old holders let go at the publish instead of after the catch-up (unsafe; the
    /// fault checker's negative control, `--unsafe-early-release`).
    pub early_release: bool,
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
    /// The bucket holds data, so whether it is a CRDT bucket, and of which type, stays.
    #[error("bucket {bucket} holds data: its conflict mode stays {was} (asked for {asked})")]
    BucketTypeImmutable {
        /// The bucket.
        bucket: BucketName,
        /// Its mode (with the CRDT type).
        was: String,
        /// The mode asked for.
        asked: String,
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
            ClusterError::BucketTypeImmutable { .. } => ErrorCode::BucketTypeImmutable,
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
                change: None,
                releases: Vec::new(),
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
            change: self
                .change
                .as_ref()
                .map(|c| ChangeProgress::of(&c.summary(), &self.state.handoffs)),
            max_n: Some(u8::try_from(self.state.max_n()).unwrap_or(u8::MAX)),
            ring_group: None,
        }
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
