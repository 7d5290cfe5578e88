//! `dynamo-coordinator`: the stateless request coordinator.
//!
//! It serves the public REST API of `../shared/API.md` (objects with their conditional
//! writes, batches, buckets, cluster, admin tokens, errors, auth, `/v1/openapi.json`),
//! routes each key by the cached ring, and runs Dynamo's quorum protocol against the
//! storage nodes: the write goes to the first reachable node of the preference list,
//! which mints the dot, then to the other N − 1;
//! reads ask N and answer on R; unreachable nodes are replaced by fallbacks holding hints;
//! stale replicas are repaired after reads.
//!
//! # Layout
//! - [`config`]: flags; [`state`]: the cached cluster state (ring, buckets, tokens),
//!   long-polled from the ring service; [`peers`]: one handle per storage node, with
//!   batching and failure detection; [`kv`]: the quorum data path and read repair;
//!   [`auth`]: tokens and the root token's reload; [`rate`]: per-token rate limits;
//!   [`api`]: the routes; [`openapi`]; [`metrics`].
//! - Start at [`run`], then [`kv`].
//!
//! # It is not
//! Stateful: it stores nothing. Many coordinators can run side by side.
//!
//! **Invariant:** a ring with an older epoch than the cached one is never installed.

pub mod api;
pub mod auth;
pub mod config;
pub mod kv;
pub mod metrics;
pub mod openapi;
pub mod peers;
pub mod rate;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use dynamo_core::signature::Role;
use dynamo_server::internal;
use dynamo_server::metrics::HttpMetrics;
use dynamo_server::serve::{self, Limits, Readiness};
use dynamo_server::worker::Workers;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

/// Why the coordinator could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// Metrics could not be registered.
    #[error("metrics registration failed")]
    Metrics(#[from] prometheus::Error),
    /// The HTTP client could not be built.
    #[error("http client set-up failed")]
    Client(#[from] reqwest::Error),
    /// The listener failed.
    #[error("listener failed")]
    Io(#[from] std::io::Error),
}

/// Runs a coordinator on `listener` until `shutdown`, then shuts down in order: not ready,
/// stop accepting, drain requests, finish replication tasks, stop workers.
///
/// # Errors
/// [`RunError`] for an invalid configuration or a failing listener.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), RunError> {
    config.validate()?;
    let root = config.load_root_tokens()?;
    let context_keys = Arc::new(config.load_context_keys()?);
    let config = Arc::new(config);
    let registry = Arc::new(Registry::new());
    let metrics = metrics::CoordinatorMetrics::new(&registry)?;
    let http_metrics = HttpMetrics::new(&registry, "coordinator")?;

    let member_keys = config.member.keys()?;
    let control_keys = config.control.keys()?;
    // One connection pool per process: keep-alive connections to every storage node and
    // the ring service, shared by the member client (the data plane) and the control
    // client (admin calls relayed to the ring service, after the admin token is checked).
    let http = config
        .serve
        .tls
        .http_client()?
        // Shorter than a batch's timeout, so a node that cannot be reached (a cut link
        // drops the SYN) fails as "never sent", which a coordinate may retry elsewhere,
        // rather than as a timeout, which it must not (at most once, `kv`).
        .connect_timeout(Duration::from_millis(config.replica_timeout_ms / 2).max(Duration::from_millis(1)))
        .pool_max_idle_per_host(64)
        .pool_idle_timeout(Duration::from_millis(dynamo_core::limits::CLIENT_POOL_IDLE_MS))
        .tcp_nodelay(true)
        .build()?;
    let signer = |keys, role| {
        internal::Signer::new(keys, role, "coordinator")
            .map_err(|e| config::ConfigError::new("member-key", e.to_string()))
    };
    let client = internal::client(http.clone(), signer(&member_keys, Role::Member)?);
    let control_client = internal::client(http, signer(&control_keys, Role::Control)?);

    let tracker = TaskTracker::new();
    let workers = Workers::new(&registry, "coordinator", CancellationToken::new())?;
    let cache = state::ClusterCache::new(config.ring_urls()?, client.clone(), metrics.clone());
    if let Err(e) = cache.refresh(Duration::from_secs(2)).await {
        tracing::warn!(error = %e.message, "ring service not reachable at start; will keep trying");
    }
    workers.spawn(
        cache
            .clone()
            .follower(Duration::from_millis(config.ring_poll_wait_ms)),
    );

    let peers = peers::Peers::new(
        client.clone(),
        peers::PeerSettings {
            timeout: Duration::from_millis(config.replica_timeout_ms),
            backoff: Duration::from_millis(config.node_backoff_ms),
            max_inflight: config.max_inflight_per_node,
        },
        metrics.clone(),
        tracker.clone(),
        workers.clone(),
    );
    workers.spawn(peers::RingLiveness::new(cache.clone(), peers.clone()));
    let (repair_tx, repair_rx) = mpsc::channel(config.read_repair_queue);
    let request_tasks = TaskTracker::new();
    let coord = Arc::new(kv::Coordinator {
        cache: cache.clone(),
        peers: peers.clone(),
        metrics: metrics.clone(),
        repairs: repair_tx,
        tracker: request_tasks.clone(),
        read_fanout: config.read_fanout(),
    });
    workers.spawn(kv::RepairSender::new(repair_rx, peers.clone(), metrics.clone()));

    let auth = Arc::new(auth::AuthState::new(
        &root,
        cache.clone(),
        rate::RateLimits::new(config.token_rate_limit_rps, config.root_rate_limit_rps),
        Duration::from_millis(config.max_ring_silence_ms),
    ));
    // A root token from the flag or the environment cannot change; one from a file is
    // read again, so the operator rotates it by editing the file.
    if config.root_token.0.is_empty()
        && let Some(path) = &config.root_token_file
    {
        workers.spawn(auth::RootTokenReload {
            path: path.clone(),
            auth: auth.clone(),
            every: Duration::from_millis(config.root_token_reload_ms),
        });
    }
    // Ready once the ring service has answered at least once: before that no token but
    // the root one can be checked and no key routed.
    let gate = cache.clone();
    // Past the silence bound it stays ready on purpose (docs/security.md: a balancer that
    // dropped every coordinator of a partitioned ring service would stop the data path
    // too) but says that scoped tokens are refused.
    let silent = cache.clone();
    let max_silence = Duration::from_millis(config.max_ring_silence_ms);
    let readiness = Readiness::new()
        .with_gate(move || gate.current().map(|_| ()))
        .with_note(move || {
            silent.silence().filter(|s| *s > max_silence).map(|s| {
                format!(
                    "no ring service replica has answered for {} s (more than --max-ring-silence-ms): scoped tokens are refused until one does; the root token and the data path still serve",
                    s.as_secs()
                )
            })
        });
    let app_state = api::AppState {
        member_client: client.clone(),
        coord: coord.clone(),
        cache,
        config: config.clone(),
        client: control_client,
        metrics,
        context_keys,
        marked: Arc::default(),
    };
    let app = serve::with_common_layers(
        api::routes(app_state, auth),
        serve::health_routes(readiness.clone(), registry),
        Limits {
            max_body_bytes: config.max_body_bytes,
            max_concurrent_requests: config.max_concurrent_requests,
        },
        http_metrics,
    );
    tracing::info!(listen = %listener.local_addr()?, ring = %config.ring_url, "coordinator starting");
    let served = serve::serve(listener, app, shutdown, readiness, config.serve.clone()).await;

    // Replication and repair tasks started by requests finish first (they may hold
    // minted dots), bounded by the replica timeout; then the workers stop.
    request_tasks.close();
    let _ = tokio::time::timeout(
        Duration::from_millis(config.replica_timeout_ms * 4),
        request_tasks.wait(),
    )
    .await;
    drop(coord);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        workers.shutdown().await;
        tracker.close();
        tracker.wait().await;
    })
    .await;
    tracing::info!("coordinator stopped");
    Ok(served?)
}
