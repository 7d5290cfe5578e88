//! The storage node's Prometheus metrics (`dynamo_storage_*`).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use dynamo_server::metrics::LATENCY_BUCKETS;

/// Every metric the storage node exports.
#[derive(Clone)]
pub struct StorageMetrics {
    /// Replica operations by op and result code (`ok` or an error code).
    pub ops: IntCounterVec,
    /// Replica operation latency inside the engine, by op.
    pub op_duration: HistogramVec,
    /// Operations per replica batch request.
    pub batch_ops: Histogram,
    /// Keys stored (objects, not hints), counted at start and on every insert.
    pub keys: IntGauge,
    /// Disk space used by the engine, sampled.
    pub disk_bytes: IntGauge,
    /// Hints waiting for delivery.
    pub hints_pending: IntGauge,
    /// Hints delivered and deleted.
    pub hints_delivered: IntCounter,
    /// Hint deliveries that failed (the owner is still away).
    pub hint_delivery_failures: IntCounter,
    /// Merkle rebuilds run.
    pub merkle_rebuilds: IntCounter,
    /// Duration of the last start-up Merkle rebuild.
    pub merkle_rebuild_seconds: prometheus::Gauge,
    /// fsyncs done by the group-commit syncer.
    pub fsyncs: IntCounter,
    /// Writes covered by each fsync (group-commit batch size).
    pub fsync_batch: Histogram,
    /// Tombstones collected by GC.
    pub tombstones_collected: IntCounter,
}

impl StorageMetrics {
    /// Registers the metrics in `registry`.
    ///
    /// # Errors
    /// A [`prometheus::Error`] if a name is already registered there.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = StorageMetrics {
            ops: IntCounterVec::new(
                Opts::new(
                    "dynamo_storage_ops_total",
                    "Replica operations, by op and result code",
                ),
                &["op", "code"],
            )?,
            op_duration: HistogramVec::new(
                HistogramOpts::new(
                    "dynamo_storage_op_duration_seconds",
                    "Time to apply one replica operation in the engine, by op",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["op"],
            )?,
            batch_ops: Histogram::with_opts(
                HistogramOpts::new("dynamo_storage_batch_ops", "Operations per replica batch request")
                    .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )?,
            keys: IntGauge::new("dynamo_storage_keys", "Keys stored on this node (hints excluded)")?,
            disk_bytes: IntGauge::new("dynamo_storage_disk_bytes", "Disk space used by the engine")?,
            hints_pending: IntGauge::new("dynamo_storage_hints_pending", "Hints waiting for delivery")?,
            hints_delivered: IntCounter::new(
                "dynamo_storage_hints_delivered_total",
                "Hints delivered to their owner and deleted",
            )?,
            hint_delivery_failures: IntCounter::new(
                "dynamo_storage_hint_delivery_failures_total",
                "Hint delivery attempts that failed",
            )?,
            merkle_rebuilds: IntCounter::new(
                "dynamo_storage_merkle_rebuilds_total",
                "Merkle tree rebuilds from a scan of the data",
            )?,
            merkle_rebuild_seconds: prometheus::Gauge::new(
                "dynamo_storage_merkle_rebuild_seconds",
                "Duration of the last full Merkle rebuild",
            )?,
            fsyncs: IntCounter::new(
                "dynamo_storage_fsyncs_total",
                "Journal fsyncs by the group-commit syncer",
            )?,
            fsync_batch: Histogram::with_opts(
                HistogramOpts::new(
                    "dynamo_storage_fsync_batch_writes",
                    "Writes made durable by one fsync",
                )
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            )?,
            tombstones_collected: IntCounter::new(
                "dynamo_storage_tombstones_collected_total",
                "Tombstones removed by GC after every replica held them",
            )?,
        };
        registry.register(Box::new(m.ops.clone()))?;
        registry.register(Box::new(m.op_duration.clone()))?;
        registry.register(Box::new(m.batch_ops.clone()))?;
        registry.register(Box::new(m.keys.clone()))?;
        registry.register(Box::new(m.disk_bytes.clone()))?;
        registry.register(Box::new(m.hints_pending.clone()))?;
        registry.register(Box::new(m.hints_delivered.clone()))?;
        registry.register(Box::new(m.hint_delivery_failures.clone()))?;
        registry.register(Box::new(m.merkle_rebuilds.clone()))?;
        registry.register(Box::new(m.merkle_rebuild_seconds.clone()))?;
        registry.register(Box::new(m.fsyncs.clone()))?;
        registry.register(Box::new(m.fsync_batch.clone()))?;
        registry.register(Box::new(m.tombstones_collected.clone()))?;
        Ok(m)
    }
}
