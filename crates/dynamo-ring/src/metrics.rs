//! The ring service's Prometheus metrics (`dynamo_ring_*`, and the shared
//! `dynamo_invariant_violations_total`).

use dynamo_server::metrics::{InvariantViolations, invariant};
use prometheus::{IntCounterVec, IntGauge, Opts, Registry};

use crate::cluster::Cluster;

/// Every metric the ring service exports (besides the HTTP ones of `dynamo-server`).
#[derive(Clone)]
pub struct RingMetrics {
    /// The current ring epoch (0 before the first join).
    pub epoch: IntGauge,
    /// Members of the current ring.
    pub members: IntGauge,
    /// The version of the cluster-state document.
    pub state_version: IntGauge,
    /// Handoffs of the change in progress not yet done in its current round.
    pub handoffs_pending: IntGauge,
    /// Partition pull requests sent, by result (`ok`, `retry`, `failed`, `skipped`: the
    /// source was down and other holders covered the copy).
    pub pulls: IntCounterVec,
    /// Runtime checks of a core invariant that failed, by invariant.
    pub invariant_violations: InvariantViolations,
    /// The ring group's current term.
    pub raft_term: IntGauge,
    /// The id of the replica this one knows as leader (-1: none known).
    pub raft_leader: IntGauge,
    /// 1 while this replica leads the group.
    pub raft_is_leader: IntGauge,
    /// Index of the last entry in this replica's log (-1: none).
    pub raft_last_log_index: IntGauge,
    /// Index of the last entry applied to this replica's state (-1: none); on the leader,
    /// entries are applied once committed, so this is its commit index.
    pub raft_applied_index: IntGauge,
    /// On the leader: entries each follower lacks behind the leader's last log index.
    pub raft_replication_lag: prometheus::IntGaugeVec,
    /// Voters of the group's configuration as this replica knows it (fewer than
    /// `--replicas` names while the group grows).
    pub raft_voters: IntGauge,
    /// Index of the last entry this replica's latest snapshot covers (-1: none).
    pub raft_snapshot_index: IntGauge,
    /// Index of the last entry purged from this replica's log (-1: none): a replica that
    /// lacks entries up to here can only catch up from a snapshot.
    pub raft_purged_index: IntGauge,
}

impl RingMetrics {
    /// Registers the metrics in `registry`.
    ///
    /// # Errors
    /// A [`prometheus::Error`] if a name is already registered there.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = RingMetrics {
            epoch: IntGauge::new(
                "dynamo_ring_epoch",
                "The current ring epoch (0 before the first join)",
            )?,
            members: IntGauge::new("dynamo_ring_members", "Members of the current ring")?,
            state_version: IntGauge::new(
                "dynamo_ring_state_version",
                "Version of the cluster-state document; grows with every change",
            )?,
            handoffs_pending: IntGauge::new(
                "dynamo_ring_handoffs_pending",
                "Partition handoffs of the membership change in progress not yet done in this round",
            )?,
            pulls: IntCounterVec::new(
                Opts::new(
                    "dynamo_ring_handoff_pulls_total",
                    "Partition pull requests sent to receiving nodes, by result",
                ),
                &["result"],
            )?,
            invariant_violations: InvariantViolations::new(
                registry,
                &[
                    invariant::RING_EPOCH_MONOTONIC,
                    invariant::RING_NEVER_DISAPPEARS,
                    invariant::RING_CHANGE_BUMPS_EPOCH,
                    invariant::PLAN_MATCHES_PUBLISHED_RING,
                ],
            )?,
            raft_term: IntGauge::new("dynamo_ring_raft_term", "The ring group's current term")?,
            raft_leader: IntGauge::new(
                "dynamo_ring_raft_leader",
                "The replica id this replica knows as the ring group's leader (-1: none)",
            )?,
            raft_is_leader: IntGauge::new(
                "dynamo_ring_raft_is_leader",
                "1 while this replica leads the ring group",
            )?,
            raft_last_log_index: IntGauge::new(
                "dynamo_ring_raft_last_log_index",
                "Index of the last entry in this replica's log (-1: none)",
            )?,
            raft_applied_index: IntGauge::new(
                "dynamo_ring_raft_applied_index",
                "Index of the last entry applied to this replica's state (-1: none)",
            )?,
            raft_replication_lag: prometheus::IntGaugeVec::new(
                Opts::new(
                    "dynamo_ring_raft_replication_lag",
                    "On the leader: log entries each follower lacks",
                ),
                &["replica"],
            )?,
            raft_voters: IntGauge::new(
                "dynamo_ring_raft_voters",
                "Voting replicas of the ring group's configuration as this replica knows it",
            )?,
            raft_snapshot_index: IntGauge::new(
                "dynamo_ring_raft_snapshot_index",
                "Index of the last entry this replica's latest snapshot covers (-1: none)",
            )?,
            raft_purged_index: IntGauge::new(
                "dynamo_ring_raft_purged_index",
                "Index of the last entry purged from this replica's log (-1: none)",
            )?,
        };
        // Every result's series exists from the start, so a dashboard shows 0 rather
        // than nothing.
        for result in ["ok", "retry", "failed", "skipped"] {
            m.pulls.with_label_values(&[result]);
        }
        registry.register(Box::new(m.epoch.clone()))?;
        registry.register(Box::new(m.members.clone()))?;
        registry.register(Box::new(m.state_version.clone()))?;
        registry.register(Box::new(m.handoffs_pending.clone()))?;
        registry.register(Box::new(m.pulls.clone()))?;
        registry.register(Box::new(m.raft_term.clone()))?;
        registry.register(Box::new(m.raft_leader.clone()))?;
        registry.register(Box::new(m.raft_is_leader.clone()))?;
        registry.register(Box::new(m.raft_last_log_index.clone()))?;
        registry.register(Box::new(m.raft_applied_index.clone()))?;
        registry.register(Box::new(m.raft_replication_lag.clone()))?;
        registry.register(Box::new(m.raft_voters.clone()))?;
        registry.register(Box::new(m.raft_snapshot_index.clone()))?;
        registry.register(Box::new(m.raft_purged_index.clone()))?;
        Ok(m)
    }

    /// Sets the gauges from the current state.
    pub fn observe(&self, c: &Cluster) {
        self.epoch.set(c.epoch().0 as i64);
        self.members
            .set(c.state.ring.as_ref().map_or(0, |r| r.members().len()) as i64);
        self.state_version.set(c.state.version as i64);
        self.handoffs_pending
            .set(c.state.handoffs.iter().filter(|h| !h.done).count() as i64);
    }
}
