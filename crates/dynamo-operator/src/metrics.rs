//! The operator's metrics, served on `/metrics` from its own [`Registry`].

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Reconcile counts, errors and durations, membership changes begun, storage pods
/// updated, leadership.
#[derive(Clone)]
pub struct Metrics {
    /// `dynamo_operator_reconciles_total`.
    pub reconciles: IntCounterVec,
    /// `dynamo_operator_reconcile_errors_total{error}`.
    pub errors: IntCounterVec,
    /// `dynamo_operator_reconcile_duration_seconds`.
    pub duration: Histogram,
    /// `dynamo_operator_membership_changes_total{kind}`.
    pub changes: IntCounterVec,
    /// `dynamo_operator_storage_pod_updates_total`.
    pub updates: IntCounter,
    /// `dynamo_operator_leader`.
    pub leader: IntGauge,
}

impl Metrics {
    /// Registers the metrics in `registry`.
    ///
    /// # Errors
    /// A [`prometheus::Error`] if a name is already registered there.
    pub fn new(registry: &Registry) -> Result<Metrics, prometheus::Error> {
        let reconciles = IntCounterVec::new(
            Opts::new(
                "dynamo_operator_reconciles_total",
                "Reconciles of DynamoClusters, by result (ok, error, not_leader)",
            ),
            &["result"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "dynamo_operator_reconcile_errors_total",
                "Failed reconciles, by error",
            ),
            &["error"],
        )?;
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "dynamo_operator_reconcile_duration_seconds",
                "Time one reconcile took",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]),
        )?;
        let changes = IntCounterVec::new(
            Opts::new(
                "dynamo_operator_membership_changes_total",
                "Membership changes the operator began, by kind (join, decommission, retry) and result (ok, error)",
            ),
            &["kind", "result"],
        )?;
        let updates = IntCounter::new(
            "dynamo_operator_storage_pod_updates_total",
            "Storage pods the operator released to a new pod template (one rolling-update step each)",
        )?;
        let leader = IntGauge::new(
            "dynamo_operator_leader",
            "1 while this replica holds the leader Lease",
        )?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(changes.clone()))?;
        registry.register(Box::new(updates.clone()))?;
        registry.register(Box::new(leader.clone()))?;
        Ok(Metrics {
            reconciles,
            errors,
            duration,
            changes,
            updates,
            leader,
        })
    }
}
