//! The storage node's Prometheus metrics (`dynamo_storage_*`).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use dynamo_server::metrics::{InvariantViolations, LATENCY_BUCKETS, invariant};

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
    /// Starts after a stop that was not clean (each took a new actor id).
    pub unclean_restarts: IntCounter,
    /// fsyncs done by the group-commit syncer.
    pub fsyncs: IntCounter,
    /// Writes covered by each fsync (group-commit batch size).
    pub fsync_batch: Histogram,
    /// Time of each group-commit fsync: every acknowledged write in `sync` mode waits
    /// for one, so its tail is the write path's floor.
    pub fsync_duration: Histogram,
    /// Tombstones collected by GC.
    pub tombstones_collected: IntCounter,
    /// Tombstones past their grace that GC left because a replica lacks them or did not
    /// answer (each check counts; the same tombstone counts again next round).
    pub tombstones_blocked: IntCounter,
    /// Copies of a collected key that arrived later and were already superseded by the
    /// collected tombstones (a late hint, a replicate or read repair in flight): dropped.
    pub superseded_after_gc: IntCounter,
    /// Coordinated writes answered from an idempotency record: repeats that applied
    /// nothing.
    pub idempotent_replays: IntCounter,
    /// Tombstone GC rounds completed (a round walks every object once).
    pub gc_rounds: IntCounter,
    /// The ring epoch of the node's cached cluster state (0 before it learned one).
    pub ring_epoch: IntGauge,
    /// Heartbeats sent to the ring service, by result (`ok`, `not_member`,
    /// `volume_refused`, `error`).
    pub heartbeats: IntCounterVec,
    /// 1 while the node's volume takes no part in the data path (new and not yet bound
    /// to its member by the ring service, refused, or being refilled), else 0.
    pub volume_unconfirmed: IntGauge,
    /// Anti-entropy exchanges (one partition with one peer), by result: `in_sync` (the
    /// roots matched), `repaired` (keys moved), `differed` (leaves differed but no key
    /// needed moving: keys of buckets the pair does not both replicate), `failed`.
    pub ae_exchanges: IntCounterVec,
    /// Keys anti-entropy moved, by direction (`pulled` into this node, `pushed` to a
    /// peer).
    pub ae_keys: IntCounterVec,
    /// Stored bytes anti-entropy moved, by direction.
    pub ae_bytes: IntCounterVec,
    /// Requests anti-entropy sent to peers (tree nodes, digests, reads and pushes).
    pub ae_round_trips: IntCounter,
    /// Full anti-entropy passes (every partition this node replicates, with every peer
    /// it initiates with) completed.
    pub ae_passes: IntCounter,
    /// When the last full pass ended (Unix seconds); 0 before the first.
    pub ae_last_pass: IntGauge,
    /// How long the last full pass took, pauses included.
    pub ae_pass_seconds: prometheus::Gauge,
    /// Objects deleted because a membership change moved their partition away.
    pub released_objects: IntCounter,
    /// Runtime checks of core invariants that failed, by invariant
    /// (`ring_epoch_monotonic`: the ring service offered an older ring, or another ring
    /// under the same epoch, and the node refused it).
    pub invariant_violations: InvariantViolations,
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
            unclean_restarts: IntCounter::new(
                "dynamo_storage_unclean_restarts_total",
                "Starts after a stop that was not clean; each took a new actor id",
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
            fsync_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "dynamo_storage_fsync_duration_seconds",
                    "Time of one group-commit fsync",
                )
                .buckets(prometheus::exponential_buckets(0.000_1, 2.0, 14)?),
            )?,
            tombstones_collected: IntCounter::new(
                "dynamo_storage_tombstones_collected_total",
                "Tombstones removed by GC after every replica held them",
            )?,
            tombstones_blocked: IntCounter::new(
                "dynamo_storage_tombstones_blocked_total",
                "Tombstones past their grace left in place because a replica lacked them or did not answer",
            )?,
            superseded_after_gc: IntCounter::new(
                "dynamo_storage_superseded_after_gc_total",
                "Copies of a collected key that arrived later, already superseded by the collected tombstones, and were dropped",
            )?,
            idempotent_replays: IntCounter::new(
                "dynamo_storage_idempotent_replays_total",
                "Coordinated writes that repeated a remembered Idempotency-Key and applied nothing",
            )?,
            gc_rounds: IntCounter::new(
                "dynamo_storage_gc_rounds_total",
                "Tombstone GC rounds completed over all of the node's objects",
            )?,
            ring_epoch: IntGauge::new(
                "dynamo_storage_ring_epoch",
                "Ring epoch of the node's cached cluster state (0 before it learned one)",
            )?,
            heartbeats: IntCounterVec::new(
                Opts::new(
                    "dynamo_storage_heartbeats_total",
                    "Heartbeats sent to the ring service, by result",
                ),
                &["result"],
            )?,
            volume_unconfirmed: IntGauge::new(
                "dynamo_storage_volume_unconfirmed",
                "1 while the node's volume takes no part in the data path (not bound to its member, refused, or being refilled)",
            )?,
            ae_exchanges: IntCounterVec::new(
                Opts::new(
                    "dynamo_storage_anti_entropy_exchanges_total",
                    "Anti-entropy exchanges (a partition with a peer), by result",
                ),
                &["result"],
            )?,
            ae_keys: IntCounterVec::new(
                Opts::new(
                    "dynamo_storage_anti_entropy_keys_total",
                    "Keys moved by anti-entropy, by direction (pulled, pushed)",
                ),
                &["direction"],
            )?,
            ae_bytes: IntCounterVec::new(
                Opts::new(
                    "dynamo_storage_anti_entropy_bytes_total",
                    "Stored bytes moved by anti-entropy, by direction (pulled, pushed)",
                ),
                &["direction"],
            )?,
            ae_round_trips: IntCounter::new(
                "dynamo_storage_anti_entropy_round_trips_total",
                "Requests sent to peers by anti-entropy",
            )?,
            ae_passes: IntCounter::new(
                "dynamo_storage_anti_entropy_passes_total",
                "Full anti-entropy passes completed",
            )?,
            ae_last_pass: IntGauge::new(
                "dynamo_storage_anti_entropy_last_pass_timestamp_seconds",
                "When the last full anti-entropy pass ended (Unix seconds; 0 before the first)",
            )?,
            ae_pass_seconds: prometheus::Gauge::new(
                "dynamo_storage_anti_entropy_pass_seconds",
                "Duration of the last full anti-entropy pass, pauses included",
            )?,
            released_objects: IntCounter::new(
                "dynamo_storage_released_objects_total",
                "Objects deleted because a membership change moved their partition away",
            )?,
            invariant_violations: InvariantViolations::new(registry, &[invariant::RING_EPOCH_MONOTONIC])?,
        };
        // Every series exists from the start, so a dashboard shows 0 rather than nothing.
        for result in ["in_sync", "repaired", "differed", "failed"] {
            m.ae_exchanges.with_label_values(&[result]);
        }
        for op in ["coordinate_put", "replicate", "get", "tombstone_status"] {
            m.ops.with_label_values(&[op, "ok"]);
            m.op_duration.with_label_values(&[op]);
        }
        for result in ["ok", "not_member", "volume_refused", "error"] {
            m.heartbeats.with_label_values(&[result]);
        }
        for direction in ["pulled", "pushed"] {
            m.ae_keys.with_label_values(&[direction]);
            m.ae_bytes.with_label_values(&[direction]);
        }
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
        registry.register(Box::new(m.unclean_restarts.clone()))?;
        registry.register(Box::new(m.fsyncs.clone()))?;
        registry.register(Box::new(m.fsync_batch.clone()))?;
        registry.register(Box::new(m.fsync_duration.clone()))?;
        registry.register(Box::new(m.tombstones_collected.clone()))?;
        registry.register(Box::new(m.tombstones_blocked.clone()))?;
        registry.register(Box::new(m.superseded_after_gc.clone()))?;
        registry.register(Box::new(m.idempotent_replays.clone()))?;
        registry.register(Box::new(m.gc_rounds.clone()))?;
        registry.register(Box::new(m.ring_epoch.clone()))?;
        registry.register(Box::new(m.heartbeats.clone()))?;
        registry.register(Box::new(m.volume_unconfirmed.clone()))?;
        registry.register(Box::new(m.ae_exchanges.clone()))?;
        registry.register(Box::new(m.ae_keys.clone()))?;
        registry.register(Box::new(m.ae_bytes.clone()))?;
        registry.register(Box::new(m.ae_round_trips.clone()))?;
        registry.register(Box::new(m.ae_passes.clone()))?;
        registry.register(Box::new(m.ae_last_pass.clone()))?;
        registry.register(Box::new(m.ae_pass_seconds.clone()))?;
        registry.register(Box::new(m.released_objects.clone()))?;
        Ok(m)
    }
}
