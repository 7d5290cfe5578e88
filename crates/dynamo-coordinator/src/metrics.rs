//! The coordinator's Prometheus metrics (`dynamo_coordinator_*`).

use dynamo_server::metrics::{InvariantViolations, LATENCY_BUCKETS, invariant};
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// Every metric the coordinator exports.
#[derive(Clone)]
pub struct CoordinatorMetrics {
    /// Client requests by operation and result code (`ok` or an error code).
    pub requests: IntCounterVec,
    /// Client request latency by operation.
    pub request_duration: HistogramVec,
    /// Requests that failed their quorum, by operation.
    pub quorum_failures: IntCounterVec,
    /// Writes answered `503` because their coordinate may have applied (not retried).
    pub indeterminate_writes: IntCounter,
    /// Writes that repeated a remembered `Idempotency-Key` and were answered as the
    /// first was.
    pub idempotent_replays: IntCounter,
    /// Replica slots served by a fallback (sloppy quorum), by operation.
    pub fallbacks: IntCounterVec,
    /// Live siblings in each successful GET's answer (1: no conflict).
    pub read_siblings: Histogram,
    /// Read repairs sent.
    pub read_repairs: IntCounter,
    /// Read repairs dropped because the queue was full.
    pub read_repairs_dropped: IntCounter,
    /// Replica operations a storage node refused as planned with an older ring
    /// (`stale_ring`): the ring changed and this coordinator had not yet heard.
    pub stale_ring_answers: IntCounter,
    /// Replica batches sent, and probes, by peer and result.
    pub replica_batches: IntCounterVec,
    /// Operations per replica batch sent.
    pub batch_ops: Histogram,
    /// Replica batch latency by peer.
    pub hop_duration: HistogramVec,
    /// Storage nodes currently skipped by the failure detector.
    pub nodes_down: IntGauge,
    /// The ring epoch of the cached state.
    pub ring_epoch: IntGauge,
    /// When the ring service last answered, in Unix seconds (0: never).
    pub ring_last_contact: IntGauge,
    /// Runtime checks of core invariants that failed.
    pub invariant_violations: InvariantViolations,
}

impl CoordinatorMetrics {
    /// Registers the metrics in `registry`.
    ///
    /// # Errors
    /// A [`prometheus::Error`] if a name is already registered there.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = CoordinatorMetrics {
            requests: IntCounterVec::new(
                Opts::new(
                    "dynamo_coordinator_requests_total",
                    "Client requests, by operation and result code",
                ),
                &["op", "code"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "dynamo_coordinator_request_duration_seconds",
                    "Client request latency, by operation",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["op"],
            )?,
            quorum_failures: IntCounterVec::new(
                Opts::new(
                    "dynamo_coordinator_quorum_failures_total",
                    "Requests that could not reach R or W",
                ),
                &["op"],
            )?,
            indeterminate_writes: IntCounter::new(
                "dynamo_coordinator_indeterminate_writes_total",
                "Writes answered 503 because the coordinating replica failed after the write may have applied (never retried elsewhere: at most once)",
            )?,
            idempotent_replays: IntCounter::new(
                "dynamo_coordinator_idempotent_replays_total",
                "Writes that repeated a remembered Idempotency-Key: answered as the first was, nothing new applied",
            )?,
            fallbacks: IntCounterVec::new(
                Opts::new(
                    "dynamo_coordinator_sloppy_fallbacks_total",
                    "Replica slots served by a fallback node (sloppy quorum)",
                ),
                &["op"],
            )?,
            read_siblings: Histogram::with_opts(
                HistogramOpts::new(
                    "dynamo_coordinator_read_siblings",
                    "Live siblings in the answer of each GET that found a value (1: no conflict)",
                )
                .buckets(vec![1.0, 2.0, 3.0, 4.0, 8.0, 16.0, 32.0, 64.0, 256.0]),
            )?,
            read_repairs: IntCounter::new(
                "dynamo_coordinator_read_repairs_total",
                "Read repairs sent to stale replicas",
            )?,
            read_repairs_dropped: IntCounter::new(
                "dynamo_coordinator_read_repairs_dropped_total",
                "Read repairs dropped because the repair queue was full",
            )?,
            stale_ring_answers: IntCounter::new(
                "dynamo_coordinator_stale_ring_answers_total",
                "Replica operations refused by a storage node as planned with an older ring",
            )?,
            replica_batches: IntCounterVec::new(
                Opts::new(
                    "dynamo_coordinator_replica_batches_total",
                    "Replica batches sent, by peer and result",
                ),
                &["peer", "result"],
            )?,
            batch_ops: Histogram::with_opts(
                HistogramOpts::new(
                    "dynamo_coordinator_replica_batch_ops",
                    "Operations per replica batch sent",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]),
            )?,
            hop_duration: HistogramVec::new(
                HistogramOpts::new(
                    "dynamo_coordinator_replica_batch_duration_seconds",
                    "Latency of one replica batch, by peer",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["peer"],
            )?,
            nodes_down: IntGauge::new(
                "dynamo_coordinator_nodes_down",
                "Storage nodes the failure detector currently skips",
            )?,
            ring_epoch: IntGauge::new(
                "dynamo_coordinator_ring_epoch",
                "Ring epoch of the cached cluster state",
            )?,
            ring_last_contact: IntGauge::new(
                "dynamo_coordinator_ring_last_contact_timestamp_seconds",
                "When the ring service last answered this coordinator (Unix seconds; 0: never): \
                 scoped tokens are refused once it is older than --max-ring-silence-ms",
            )?,
            invariant_violations: InvariantViolations::new(registry, &[invariant::RING_EPOCH_MONOTONIC])?,
        };
        // The series of every known operation exist from the start, so dashboards and
        // alerts see zeros rather than nothing before the first request or failure.
        for op in ["get", "put", "delete", "crdt", "list", "feed"] {
            m.requests.with_label_values(&[op, "ok"]);
            m.request_duration.with_label_values(&[op]);
        }
        for op in ["get", "put"] {
            m.quorum_failures.with_label_values(&[op]);
            m.fallbacks.with_label_values(&[op]);
        }
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.quorum_failures.clone()))?;
        registry.register(Box::new(m.indeterminate_writes.clone()))?;
        registry.register(Box::new(m.idempotent_replays.clone()))?;
        registry.register(Box::new(m.fallbacks.clone()))?;
        registry.register(Box::new(m.read_siblings.clone()))?;
        registry.register(Box::new(m.read_repairs.clone()))?;
        registry.register(Box::new(m.read_repairs_dropped.clone()))?;
        registry.register(Box::new(m.stale_ring_answers.clone()))?;
        registry.register(Box::new(m.replica_batches.clone()))?;
        registry.register(Box::new(m.batch_ops.clone()))?;
        registry.register(Box::new(m.hop_duration.clone()))?;
        registry.register(Box::new(m.nodes_down.clone()))?;
        registry.register(Box::new(m.ring_epoch.clone()))?;
        registry.register(Box::new(m.ring_last_contact.clone()))?;
        Ok(m)
    }
}
