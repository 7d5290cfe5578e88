//! `dynamo-storage`: the storage-node service.
//!
//! One node = one fjall database on its own volume, served over the internal HTTP/JSON
//! API of [`api`]. It stores each key's version set (dotted version vectors from
//! `dynamo-core`), coordinates writes as the actor minting dots, merges replicas'
//! copies, keeps hints for unreachable owners and delivers them ([`hints`]), keeps a
//! Merkle tree per partition current on every write, and serves partition scans for
//! anti-entropy and handoff. With `--ring-url` it follows the ring service (heartbeats,
//! the cached cluster state, [`cluster`]), it compares its partitions with their other
//! replicas and exchanges what differs ([`antientropy`]), it collects tombstones once
//! every replica holds them ([`gc`]), and it deletes partitions a membership change moved
//! away once their new holders confirmed ([`release`]).
//!
//! # Layout
//! - [`config`]: flags and validation; [`engine`]: fjall, the on-disk layout ([`codec`]),
//!   replica operations, Merkle maintenance; [`syncer`]: group commit;
//!   [`api`]: the routes; [`hints`]: delivery; [`handoff`]: pulling a partition from
//!   another node; [`cluster`]: the cached ring and the `heartbeat` and `cluster-state`
//!   workers; [`antientropy`]: the `anti-entropy` worker; [`gc`]: the `tombstone-gc`
//!   worker; [`release`]: the `release` worker; [`peer`]: replica batches to other nodes;
//!   [`metrics`]: `dynamo_storage_*`.
//! - Start at [`run`].
//!
//! # It is not
//! A router or a quorum: it never talks to clients and never decides who else should
//! hold a key. Coordinators do that, using the ring. The node reads the ring for its own
//! background work (anti-entropy, tombstone GC, hint delivery, releases) and to fence
//! replica operations planned with an older ring on partitions it no longer holds
//! ([`api`]).
//!
//! **Invariant:** an acknowledged write is on disk as [`engine::Durability`] promises
//! before the answer leaves: `sync` waits for the group fsync, `buffered` for the OS.
//!
//! **Invariant:** the ring epoch the node holds never goes backwards, across restarts
//! included ([`cluster`]); a tombstone is collected only where every other replica of
//! its preference list holds or collected exactly the same set ([`gc`]).
//!
//! **Invariant:** once the node knows ring epoch e, no operation planned with an older
//! ring and without a hint is applied to a partition it does not hold under e; a
//! catch-up copy with `min_epoch` e starts only after every batch admitted under an
//! older epoch was applied ([`cluster::ClusterCache::drained`]).

pub mod antientropy;
pub mod api;
pub mod cluster;
pub mod codec;
pub mod config;
pub mod engine;
pub mod error;
pub mod gc;
pub mod handoff;
pub mod hints;
pub mod metrics;
pub mod peer;
pub mod release;
pub mod syncer;
pub mod volume;

use std::sync::Arc;
use std::time::Duration;

use dynamo_core::signature::Role;
use dynamo_server::follow::Follower;
use dynamo_server::internal;
use dynamo_server::metrics::HttpMetrics;
use dynamo_server::serve::{self, Limits, Readiness};
use dynamo_server::worker::{Next, Worker, Workers};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;
pub use engine::{Durability, Engine};
pub use error::StorageError;

/// Runs a storage node on `listener` until `shutdown` is cancelled, then shuts down in
/// order: not ready, stop accepting, drain requests, stop workers, persist, return.
///
/// # Errors
/// [`StorageError`] when the engine cannot open or the listener fails.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), StorageError> {
    let registry = Arc::new(Registry::new());
    let metrics =
        metrics::StorageMetrics::new(&registry).map_err(|e| std::io::Error::other(e.to_string()))?;
    let http_metrics =
        HttpMetrics::new(&registry, "storage").map_err(|e| std::io::Error::other(e.to_string()))?;

    let partitioning = config.partitioning();
    let node_id = config.effective_node_id();
    let dir = config.data_dir.clone();
    let durability = config.durability;
    let m = metrics.clone();
    let engine = Arc::new(
        tokio::task::spawn_blocking(move || Engine::open(&dir, partitioning, durability, node_id, m))
            .await??,
    );
    tracing::info!(
        node_id = %engine.identity().node_id,
        incarnation = %engine.identity().incarnation,
        durability = ?durability,
        listen = %listener.local_addr()?,
        "storage node starting"
    );

    let m = metrics.clone();
    let e = engine.clone();
    let follows_ring = config.ring_url.is_some();
    let cluster = Arc::new(
        tokio::task::spawn_blocking(move || cluster::ClusterCache::load(&e, m, follows_ring)).await??,
    );
    let advertise = config.advertise_address_for(listener.local_addr()?);

    let syncer = match durability {
        Durability::Sync => Some(syncer::Syncer::start(engine.clone(), metrics.clone())?),
        Durability::Buffered => None,
    };

    let workers = Workers::new(&registry, "storage", CancellationToken::new())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let member_keys = config.member.keys()?;
    let signer = internal::Signer::new(
        &member_keys,
        Role::Member,
        format!("storage/{}", engine.identity().node_id),
    )
    .map_err(|e| dynamo_server::config::ConfigError::new("node-id", e.to_string()))?;
    let http = config
        .serve
        .tls
        .http_client()?
        .timeout(Duration::from_millis(config.peer_timeout_ms))
        .connect_timeout(Duration::from_millis(config.peer_timeout_ms))
        .pool_max_idle_per_host(4)
        .pool_idle_timeout(Duration::from_millis(dynamo_core::limits::CLIENT_POOL_IDLE_MS))
        .build()
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let client = internal::client(http, signer);
    // Storage nodes hold no control keys: nothing they serve changes membership.
    let door = internal::Door::new(
        &config.member,
        member_keys,
        None,
        internal::members_only,
        config.max_body_bytes,
    );
    workers.spawn(hints::HintDelivery {
        engine: engine.clone(),
        cluster: cluster.clone(),
        client: client.clone(),
        interval: Duration::from_millis(config.hint_interval_ms),
    });
    workers.spawn(BackgroundPersist {
        engine: engine.clone(),
        every: Duration::from_millis(config.background_fsync_ms),
    });
    if let Some(urls) = config.ring_urls()? {
        let ring = cluster::RingService {
            urls,
            timeout: Duration::from_millis(config.ring_timeout_ms),
        };
        tracing::info!(ring_url = %ring.urls, advertise = %advertise, "following the ring service");
        workers.spawn(cluster::HeartbeatSender {
            client: client.clone(),
            cache: cluster.clone(),
            ring: ring.clone(),
            beat: dynamo_core::wire::cluster::Heartbeat {
                node_id: engine.identity().node_id.clone(),
                address: advertise,
                volume: Some(engine.identity().volume),
            },
            interval: Duration::from_millis(config.heartbeat_interval_ms),
            metrics: metrics.clone(),
            refused_logged: false,
        });
        let sink = cluster::StateSink {
            engine: engine.clone(),
            cache: cluster.clone(),
        };
        workers.spawn(release::Releaser {
            engine: engine.clone(),
            cluster: cluster.clone(),
            client: client.clone(),
            ring: ring.urls.clone(),
        });
        workers.spawn(Follower::new(client.clone(), ring.urls, ring.timeout, sink));
    }
    let ae_progress = Arc::new(antientropy::AeProgress::new(
        engine.partitioning().count(),
        config.anti_entropy_interval_ms > 0,
    ));
    if config.anti_entropy_interval_ms > 0 {
        workers.spawn(antientropy::AntiEntropy {
            engine: engine.clone(),
            cluster: cluster.clone(),
            client: client.clone(),
            settings: antientropy::AeSettings {
                interval: Duration::from_millis(config.anti_entropy_interval_ms),
                tranquility: config.anti_entropy_tranquility,
                max_bytes_per_sec: config.anti_entropy_max_bytes_per_sec,
            },
            progress: ae_progress.clone(),
        });
    }
    workers.spawn(gc::TombstoneGc {
        engine: engine.clone(),
        cluster: cluster.clone(),
        client: client.clone(),
        settings: gc::GcSettings {
            grace: Duration::from_millis(config.tombstone_grace_ms),
            interval: Duration::from_millis(config.gc_interval_ms),
            idempotency_window: Duration::from_millis(config.idempotency_window_ms),
            feed_retention: Duration::from_millis(config.feed_retention_ms),
        },
    });

    let readiness = Readiness::new();
    let app = serve::with_common_layers(
        internal::guard(
            api::routes(api::AppState {
                engine: engine.clone(),
                syncer,
                client,
                shutdown: shutdown.clone(),
                cluster,
                idempotency_window_ms: config.idempotency_window_ms,
                anti_entropy: ae_progress,
            }),
            door,
        ),
        serve::health_routes(readiness.clone(), registry),
        Limits {
            max_body_bytes: config.max_body_bytes,
            max_concurrent_requests: config.max_concurrent_requests,
        },
        http_metrics,
    );
    let served = serve::serve(listener, app, shutdown, readiness, config.serve.clone()).await;

    workers.shutdown().await;
    let e = engine.clone();
    tokio::task::spawn_blocking(move || e.close_clean()).await??;
    tracing::info!("storage node stopped");
    served.map_err(StorageError::from)
}

/// The `background-persist` worker: flushes the journal to disk periodically (the
/// background fsync of buffered mode, and the disk-space metric in both).
struct BackgroundPersist {
    engine: Arc<Engine>,
    every: Duration,
}

impl Worker for BackgroundPersist {
    type Error = StorageError;

    fn name(&self) -> &'static str {
        "background-persist"
    }

    async fn work(&mut self, _stop: &CancellationToken) -> Result<Next, StorageError> {
        let e = self.engine.clone();
        let persisted = tokio::task::spawn_blocking(move || e.persist())
            .await
            .map_err(StorageError::from)
            .and_then(|r| r);
        // Every failure at error level, not only a run's first: buffered writes are at
        // risk until one succeeds.
        if let Err(e) = &persisted {
            tracing::error!(error = ?e, "background fsync failed");
        }
        persisted.map(|()| Next::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.every).await;
    }
}
