//! Cluster metadata kept by the ring service and cached by every other service: the
//! ring, node liveness, bucket properties and hashed tokens.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::BucketProps;
use crate::ids::{BucketName, NodeId, PartitionId, RingEpoch, VolumeId};
use crate::ring::Ring;

/// Most tokens the cluster stores.
pub const MAX_TOKENS: usize = 10_000;
/// Most buckets with explicit properties.
pub const MAX_BUCKETS: usize = 100_000;

/// An admin-made join: a node and where its internal API answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    /// The node's id (its StatefulSet pod name, or the id on its volume).
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[a-z0-9._-]{1,63}$"))]
    pub node_id: NodeId,
    /// Its internal API address, `http://host:port`: an http(s) URL with a host and no
    /// path, at most 256 bytes (the ring service's rule).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 256))]
    pub address: String,
    /// Its failure domain, if known: 1-63 bytes of `[A-Za-z0-9._-]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9._-]{1,63}$"))]
    pub zone: Option<String>,
}

/// A liveness beat from a storage node (steers routing only; never a membership
/// change).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The node.
    pub node_id: NodeId,
    /// Where it answers now.
    pub address: String,
    /// Its data directory. Absent from nodes older than volume binding, whose beats are
    /// taken as before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeId>,
}

/// An admin-made replacement of a member by a new node, which takes exactly its
/// partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceRequest {
    /// The new node.
    pub new_node: NodeRegistration,
}

/// A node's state as the cluster sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Registered; its partitions are being handed to it.
    Joining,
    /// A member answering heartbeats.
    Up,
    /// A member whose heartbeats stopped (an outage, not a departure).
    Down,
    /// Being decommissioned; its data is being handed off.
    Leaving,
}

/// One node in the cluster view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeStatus {
    /// The node.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[a-z0-9._-]{1,63}$"))]
    pub node_id: NodeId,
    /// Its internal API address.
    pub address: String,
    /// Its failure domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    /// Its state.
    pub state: NodeState,
    /// Milliseconds since its last heartbeat, if it ever sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_ms_ago: Option<u64>,
    /// Its anti-entropy progress, as the node reported it when the view was made (a
    /// coordinator asks each node; absent when the node did not answer). Never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anti_entropy: Option<AntiEntropyStatus>,
    /// The data directory this member is bound to: the first that heartbeated under its
    /// id (or the one a replace in place refilled). Absent until then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, pattern = "^[0-9a-f]{16}$"))]
    pub volume: Option<VolumeId>,
    /// Another data directory that heartbeated under this member's id and was refused:
    /// the member's volume was lost. The node stays `down` until an admin (or the
    /// operator) replaces it in place, which refills this volume from the other replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, pattern = "^[0-9a-f]{16}$"))]
    pub volume_refused: Option<VolumeId>,
}

/// A storage node's anti-entropy progress.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AntiEntropyStatus {
    /// False when the node runs without anti-entropy (`--anti-entropy-interval-ms 0`).
    pub enabled: bool,
    /// Full passes completed since the node started.
    pub passes: u64,
    /// Partitions this node compares with a peer itself (the others' pairs are compared
    /// by the peer whose id sorts first); 0 before the first pass.
    #[serde(default)]
    pub compared_partitions: u32,
    /// When the last full pass ended (ms since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass_ms: Option<u64>,
    /// Of the partitions this node compares with a peer, the oldest last comparison in
    /// which every exchange succeeded (ms since the Unix epoch): how stale the least
    /// recently confirmed partition is. Absent until every such partition has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_partition_ms: Option<u64>,
    /// Keys merged here from peers, and pushed to peers, since the node started.
    pub keys_pulled: u64,
    /// See `keys_pulled`.
    pub keys_pushed: u64,
    /// Stored bytes moved both ways since the node started.
    pub bytes_moved: u64,
}

/// A partition being copied to a node that will hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Handoff {
    /// The partition.
    #[cfg_attr(feature = "openapi", schema(value_type = u32))]
    pub partition: PartitionId,
    /// The node it is copied from.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[a-z0-9._-]{1,63}$"))]
    pub from: NodeId,
    /// The node receiving it.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[a-z0-9._-]{1,63}$"))]
    pub to: NodeId,
    /// Objects copied so far.
    pub objects: u64,
    /// True once copied.
    pub done: bool,
    /// Stored bytes copied so far.
    #[serde(default)]
    pub bytes: u64,
    /// True when this source was down and left out: every receiver still copies from
    /// each other holder of the partition, so a write acknowledged by W ≥ 2 replicas
    /// arrives through another, and anti-entropy repairs the rest after the change.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
    /// The last failure of this copy while it retries: why a change is stuck.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Handoff {
    /// A copy of `partition` into `to` from `from`, not started.
    pub fn new(partition: PartitionId, from: NodeId, to: NodeId) -> Handoff {
        Handoff {
            partition,
            from,
            to,
            objects: 0,
            done: false,
            bytes: 0,
            skipped: false,
            error: None,
        }
    }
}

/// What kind of membership change runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ChangeKindName {
    /// A node joins.
    Join,
    /// A member leaves after its data is handed off.
    Decommission,
    /// A new node takes a member's place.
    Replace,
}

/// Where a membership change stands, as every follower of the ring service sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeSummary {
    /// The kind.
    pub kind: ChangeKindName,
    /// The node that joins, leaves or is replaced.
    #[cfg_attr(feature = "openapi", schema(value_type = String, pattern = "^[a-z0-9._-]{1,63}$"))]
    pub node: NodeId,
    /// The replacement, for a replace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, pattern = "^[a-z0-9._-]{1,63}$"))]
    pub replacement: Option<NodeId>,
    /// `copy` (before the new ring is published) or `catch_up` (after).
    pub phase: String,
    /// The ring epoch the change publishes.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: RingEpoch,
    /// Set when the change failed and waits for a retry or an abort: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<String>,
}

/// Partitions a node no longer holds after a change, to be deleted there: written when
/// the change finished (every new owner confirmed its copy), removed when the node says
/// it deleted them. A node that was down then deletes them when it returns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Release {
    /// The node that lets go.
    pub node: NodeId,
    /// The ring epoch under which it no longer holds them: the node deletes only once
    /// its own ring is at least this new.
    pub epoch: RingEpoch,
    /// The partitions.
    pub partitions: Vec<PartitionId>,
}

/// `POST /internal/v1/releases`: a node deleted the partitions of a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseDone {
    /// The node.
    pub node: NodeId,
    /// The epoch of the release it carried out.
    pub epoch: RingEpoch,
}

/// Progress of the membership change in progress, for `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeProgress {
    /// The change.
    pub change: ChangeSummary,
    /// Partition copies (a partition into one new holder) in this phase.
    pub partitions_total: u64,
    /// Of those, the ones copied from every source.
    pub partitions_done: u64,
    /// Objects copied in this phase.
    pub objects: u64,
    /// Stored bytes copied in this phase.
    pub bytes: u64,
    /// Why the change is stuck, when it is: its failure, else the first copy retrying
    /// after an error (which partition, which source, what error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<String>,
}

impl ChangeProgress {
    /// Sums a change's handoffs.
    pub fn of(change: &ChangeSummary, handoffs: &[Handoff]) -> ChangeProgress {
        let mut copies: BTreeMap<(PartitionId, &NodeId), bool> = BTreeMap::new();
        for h in handoffs {
            let done = copies.entry((h.partition, &h.to)).or_insert(true);
            *done &= h.done;
        }
        // A skipped source keeps its error for the record, but the copy moved on.
        let stuck = change.failed.clone().or_else(|| {
            handoffs.iter().filter(|h| !h.done).find_map(|h| {
                h.error
                    .as_ref()
                    .map(|e| format!("partition {} from {} into {}: {e}", h.partition.0, h.from, h.to))
            })
        });
        ChangeProgress {
            change: change.clone(),
            partitions_total: copies.len() as u64,
            partitions_done: copies.values().filter(|d| **d).count() as u64,
            objects: handoffs.iter().map(|h| h.objects).sum(),
            bytes: handoffs.iter().map(|h| h.bytes).sum(),
            stuck,
        }
    }
}

/// `GET /v1/cluster`: nodes, their state, the ring epoch, handoffs in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClusterView {
    /// The current ring epoch (0 before the first node joined).
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: RingEpoch,
    /// Every known node.
    pub nodes: Vec<NodeStatus>,
    /// Handoffs of the membership change in progress, if any.
    pub handoffs: Vec<Handoff>,
    /// The membership change in progress and how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeProgress>,
    /// The most replicas any key keeps ([`ClusterState::max_n`]: the ring's `n`, the
    /// default bucket's and every bucket's): the fewest storage nodes the cluster may
    /// shrink to. Absent from servers that predate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_n: Option<u8>,
    /// The ring service's replicas and which one leads, as its leader reported them when
    /// the view was made (absent when no replica answered in time, and from servers that
    /// predate ring groups). Never stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_group: Option<RingGroupStatus>,
}

/// The ring service's replicas (one Raft group), as its leader sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RingGroupStatus {
    /// The leading replica's id.
    pub leader: u64,
    /// The leader's term.
    pub term: u64,
    /// Index of the last entry the leader applied (its commit index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
    /// Every replica, by id.
    pub replicas: Vec<RingReplicaStatus>,
}

/// One ring replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RingReplicaStatus {
    /// Its id in the group.
    pub id: u64,
    /// Its base URL.
    pub url: String,
    /// True for the leader.
    pub leader: bool,
    /// True for a replica of the group's voting configuration; a replica named in the
    /// list but still being added (a learner catching up) is not one yet.
    #[serde(default)]
    pub voter: bool,
    /// The last log index the leader knows it holds (absent before the first append
    /// reached it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_index: Option<u64>,
    /// Entries it lacks behind the leader's log (0 for the leader itself).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

/// A bucket's stored record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketRecord {
    /// Its effective properties.
    pub props: BucketProps,
    /// True once a write reached it: `n` can no longer change.
    #[serde(default)]
    pub has_data: bool,
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Permission {
    /// Read objects and bucket properties.
    Read,
    /// Write and delete objects.
    Write,
    /// Bucket properties, tokens, membership.
    Admin,
}

/// Which buckets a token covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum BucketScope {
    /// Every bucket: `"*"`.
    All(AllBuckets),
    /// These buckets.
    Only(Vec<BucketName>),
}

/// The `"*"` of [`BucketScope::All`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AllBuckets {
    /// Every bucket.
    #[serde(rename = "*")]
    Star,
}

/// Most buckets a token may name (the ring service refuses more).
pub const MAX_TOKEN_BUCKETS: usize = 1000;

/// The schema of a [`BucketScope`] as it is on the wire: `"*"`, or 1 to
/// [`MAX_TOKEN_BUCKETS`] bucket names (written by hand: the derive cannot give the
/// names of an untagged variant their pattern).
#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for BucketScope {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
        let star = ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(["*"]))
            .description(Some("Every bucket"));
        let name = ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some(super::BUCKET_NAME_PATTERN));
        let list = ArrayBuilder::new()
            .items(name)
            .min_items(Some(1))
            .max_items(Some(MAX_TOKEN_BUCKETS))
            .description(Some("These buckets"));
        OneOfBuilder::new()
            .item(star)
            .item(list)
            .description(Some(
                "`\"*\"` for every bucket, or a list of 1 to 1000 bucket names",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for BucketScope {}

impl BucketScope {
    /// Returns true when the scope covers `bucket`.
    pub fn covers(&self, bucket: &BucketName) -> bool {
        match self {
            BucketScope::All(_) => true,
            BucketScope::Only(list) => list.contains(bucket),
        }
    }
}

/// A stored token: never the secret, only its SHA-256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// The token's public id (safe to show and log).
    pub id: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
    /// The buckets it covers.
    pub buckets: BucketScope,
    /// What it may do there.
    pub permissions: Vec<Permission>,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: u64,
    /// When it stops being accepted (ms since the Unix epoch); never without one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Requests per second it may make through each coordinator; without one, the
    /// coordinator's `--token-rate-limit-rps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_rps: Option<u32>,
}

/// Longest a state long poll may be held (`wait_ms` of the ring service's state route):
/// the ring service refuses longer, and followers never ask for more.
pub const MAX_STATE_WAIT_MS: u64 = 30_000;

/// Longest lifetime a token may be given: ten years, in seconds.
pub const MAX_TOKEN_TTL_S: u64 = 10 * 365 * 24 * 3600;
/// Largest per-token rate limit, in requests per second per coordinator.
pub const MAX_TOKEN_RATE_LIMIT_RPS: u32 = 1_000_000;

impl TokenRecord {
    /// Returns whether the token is past its expiry at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_ms.is_some_and(|e| now_ms >= e)
    }
}

/// Everything a coordinator caches, versioned: any change makes a larger `version`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Grows with every change of this document.
    pub version: u64,
    /// The ring, once a node has joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<Ring>,
    /// Every node and its state (liveness transitions bump `version`; heartbeats alone
    /// do not).
    pub nodes: Vec<NodeStatus>,
    /// Buckets with explicit properties (others have the defaults).
    pub buckets: BTreeMap<BucketName, BucketRecord>,
    /// Hashed tokens.
    pub tokens: Vec<TokenRecord>,
    /// The copies of the membership change in progress, if any.
    pub handoffs: Vec<Handoff>,
    /// The membership change in progress, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<ChangeSummary>,
    /// Partitions nodes must still delete after finished changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub releases: Vec<Release>,
}

impl ClusterState {
    /// The epoch of its ring; 0 without one, so a state without a ring never replaces
    /// one.
    pub fn ring_epoch(&self) -> RingEpoch {
        self.ring.as_ref().map_or(RingEpoch(0), Ring::epoch)
    }

    /// The most replicas any key keeps: the ring's `n`, the default bucket's and every
    /// bucket's. Membership changes hand off, and nodes hold, this many nodes of each
    /// preference list, so a bucket with an `n` above the ring's is fully handed off.
    pub fn max_n(&self) -> usize {
        let ring_n = self.ring.as_ref().map_or(1, Ring::n);
        let buckets = self.buckets.values().map(|b| b.props.n);
        usize::from(
            buckets
                .chain([ring_n, BucketProps::default().n])
                .max()
                .unwrap_or(1),
        )
    }

    /// True when `node` holds partition `p` under this state's ring: it is one of the
    /// first [`ClusterState::max_n`] nodes of the partition's preference list.
    pub fn holds(&self, node: &NodeId, p: PartitionId) -> bool {
        self.ring
            .as_ref()
            .is_some_and(|r| r.preference_list(p, self.max_n()).preference_list.contains(node))
    }

    /// True while a membership change runs (or its copies are listed): partitions are
    /// being copied to new holders, so no tombstone may be collected.
    pub fn change_in_progress(&self) -> bool {
        self.change.is_some() || self.handoffs.iter().any(|h| !h.done)
    }

    /// Returns the release pending for `node`, if any.
    pub fn release_for(&self, node: &NodeId) -> Option<&Release> {
        self.releases.iter().find(|r| r.node == *node)
    }
}

/// What a follower of the ring service did with a state it was offered ([`decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Stored and now current.
    Adopted,
    /// Identical to the current state; nothing to do.
    Unchanged,
    /// Refused: its ring is older than the cached one, or differs under the same epoch.
    Refused {
        /// The cached epoch.
        current: RingEpoch,
        /// The offered epoch.
        offered: RingEpoch,
    },
}

/// Decides whether `incoming` may replace `current`: the one rule of every follower of
/// the ring service, coordinators and storage nodes alike (invariant 5: a ring epoch
/// never goes backwards on any node; nor does the state's version under one ring, so a
/// lagging ring replica cannot undo a change another one served).
///
/// `floor` is the highest epoch ever adopted. A state without a ring counts as epoch 0,
/// so it never replaces a ring.
pub fn decide(floor: RingEpoch, current: Option<&ClusterState>, incoming: &ClusterState) -> Decision {
    let offered = incoming.ring_epoch();
    let current_ring = current.and_then(|c| c.ring.as_ref());
    let floor = floor.max(current.map_or(RingEpoch(0), ClusterState::ring_epoch));
    let refused = Decision::Refused {
        current: floor,
        offered,
    };
    if offered < floor {
        return refused;
    }
    // Every ring change makes a larger epoch: another ring under the cached epoch means
    // two rings claim one epoch, and adopting it would move the node backwards for one
    // of them.
    if offered == floor
        && let (Some(mine), Some(theirs)) = (current_ring, incoming.ring.as_ref())
        && mine != theirs
    {
        return refused;
    }
    if current == Some(incoming) {
        return Decision::Unchanged;
    }
    // An older version under the same ring comes from a ring replica that lags behind
    // the one this follower heard last (the group's versions only grow): keeping the newer
    // copy means a revoked token or a bucket change never comes back. Not a breach: a
    // lagging replica is normal.
    if let Some(c) = current
        && incoming.version < c.version
        && offered == floor
    {
        return Decision::Unchanged;
    }
    Decision::Adopted
}

/// `ring` view for `GET /v1/ring` with `?bucket=&key=`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyPlacement {
    /// The ring epoch.
    #[cfg_attr(feature = "openapi", schema(value_type = u64))]
    pub epoch: RingEpoch,
    /// The key's partition.
    #[cfg_attr(feature = "openapi", schema(value_type = u32))]
    pub partition: PartitionId,
    /// The N node ids, in order.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub preference_list: Vec<NodeId>,
    /// The sloppy-quorum fallbacks, in order.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub fallbacks: Vec<NodeId>,
}

#[cfg(test)]
mod tests {
    use crate::ring::{Member, Ring};
    use crate::{NodeId, Partitioning};

    use super::*;

    fn ring(nodes: usize) -> Ring {
        let members = (0..nodes)
            .map(|i| (NodeId::new(format!("n{i}")).expect("id"), Member::default()))
            .collect();
        Ring::new(Partitioning::with_count(16).expect("q"), 3, members).expect("ring")
    }

    fn nid(s: &str) -> NodeId {
        NodeId::new(s).expect("id")
    }

    // Goal: progress counts a partition copy done only when every source is done (or
    // skipped), sums objects and bytes, and is stuck only on a copy still retrying, not
    // on a skipped source's recorded error; a failed change says its reason.
    #[test]
    fn change_progress_counts_copies_and_names_what_is_stuck() {
        let summary = ChangeSummary {
            kind: ChangeKindName::Replace,
            node: nid("n1"),
            replacement: Some(nid("n9")),
            phase: "copy".into(),
            epoch: RingEpoch(4),
            failed: None,
        };
        let p = PartitionId(3);
        let mut skipped = Handoff::new(p, nid("n1"), nid("n9"));
        skipped.done = true;
        skipped.skipped = true;
        skipped.error = Some("skipped: n1 is down".into());
        let mut done = Handoff::new(p, nid("n2"), nid("n9"));
        done.done = true;
        done.objects = 5;
        done.bytes = 500;
        let mut retrying = Handoff::new(PartitionId(4), nid("n2"), nid("n9"));
        retrying.objects = 1;
        retrying.bytes = 100;
        let progress = ChangeProgress::of(&summary, &[skipped.clone(), done.clone()]);
        assert_eq!((progress.partitions_done, progress.partitions_total), (1, 1));
        assert_eq!(progress.stuck, None, "a skipped source is not a stuck copy");
        retrying.error = Some("receiver n9 did not answer".into());
        let progress = ChangeProgress::of(&summary, &[skipped, done, retrying]);
        assert_eq!((progress.partitions_done, progress.partitions_total), (1, 2));
        assert_eq!((progress.objects, progress.bytes), (6, 600));
        assert_eq!(
            progress.stuck.as_deref(),
            Some("partition 4 from n2 into n9: receiver n9 did not answer")
        );
        let failed = ChangeSummary {
            failed: Some("no holder of partition 4 could be reached".into()),
            ..summary
        };
        assert_eq!(
            ChangeProgress::of(&failed, &[]).stuck.as_deref(),
            Some("no holder of partition 4 could be reached")
        );
    }

    #[test]
    fn max_n_is_optional_in_the_cluster_view() {
        // Goal: a view from a server that predates `max_n` still parses (as `None`), and
        // a view without one writes no `max_n` key.
        let old = r#"{"epoch":3,"nodes":[],"handoffs":[]}"#;
        let v: ClusterView = serde_json::from_str(old).expect("an older view parses");
        assert_eq!(v.max_n, None);
        assert_eq!(serde_json::to_string(&v).expect("json"), old);
        let v = ClusterView { max_n: Some(5), ..v };
        let json = serde_json::to_value(&v).expect("json");
        assert_eq!(json["max_n"], 5);
    }

    fn state(version: u64, ring: Option<Ring>) -> ClusterState {
        ClusterState {
            version,
            ring,
            ..ClusterState::default()
        }
    }

    #[test]
    fn ring_epochs_only_grow() {
        let r1 = ring(3);
        let r2 = r1
            .with_member_added(NodeId::new("n9").expect("id"), Member::default())
            .expect("join");
        let s1 = state(1, Some(r1.clone()));
        let s2 = state(2, Some(r2.clone()));
        assert_eq!(decide(RingEpoch(0), None, &s1), Decision::Adopted);
        assert_eq!(decide(RingEpoch(1), Some(&s1), &s2), Decision::Adopted);
        assert_eq!(decide(RingEpoch(2), Some(&s2), &s2), Decision::Unchanged);
        // Older ring, even under a larger document version.
        assert_eq!(
            decide(RingEpoch(2), Some(&s2), &state(7, Some(r1.clone()))),
            Decision::Refused {
                current: RingEpoch(2),
                offered: RingEpoch(1)
            }
        );
        // No ring at all is epoch 0: never replaces a ring.
        assert!(matches!(
            decide(RingEpoch(2), Some(&s2), &state(8, None)),
            Decision::Refused { .. }
        ));
        // A floor from the volume holds even without a decodable document.
        assert!(matches!(
            decide(RingEpoch(2), None, &s1),
            Decision::Refused { .. }
        ));
        assert_eq!(decide(RingEpoch(2), None, &s2), Decision::Adopted);
        // Another ring under the same epoch is refused; the same ring with new bucket
        // properties is adopted.
        let other = ring(4);
        assert_eq!(other.epoch(), r1.epoch());
        assert!(matches!(
            decide(RingEpoch(1), Some(&s1), &state(3, Some(other))),
            Decision::Refused { .. }
        ));
        let mut s1b = state(4, Some(r1));
        s1b.buckets.insert(
            crate::BucketName::new("b").expect("bucket"),
            crate::wire::cluster::BucketRecord {
                props: crate::wire::BucketProps::default(),
                has_data: true,
            },
        );
        assert_eq!(decide(RingEpoch(1), Some(&s1), &s1b), Decision::Adopted);
        // An older version of the same ring (a lagging ring replica) is not taken: what
        // the newer one changed (a revoked token) does not come back.
        let mut older = s1b.clone();
        older.version = 3;
        older.buckets.clear();
        assert_eq!(decide(RingEpoch(1), Some(&s1b), &older), Decision::Unchanged);
        // A newer ring is taken whatever its version says.
        assert_eq!(
            decide(RingEpoch(1), Some(&s1b), &state(1, Some(r2))),
            Decision::Adopted
        );
    }
}
