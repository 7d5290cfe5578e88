//! `dynamo-ring`: the membership and ring service.
//!
//! It owns the cluster metadata, all of it in one versioned document (core's
//! [`ClusterState`](dynamo_core::wire::cluster::ClusterState)) that coordinators and
//! storage nodes cache and long-poll:
//! - **membership**, explicit and admin-made (join, decommission, replace): as in Dynamo,
//!   an outage is not a departure;
//! - **liveness** from heartbeats, tracked separately: it flips members between `up` and
//!   `down` to steer routing and never changes the ring;
//! - **the ring** (core's [`Ring`](dynamo_core::ring::Ring)) and its epoch;
//! - **bucket properties** (with `n` frozen once a bucket holds data) and **hashed
//!   tokens** (the coordinator makes the secret and sends only its SHA-256);
//! - **the handoff** a membership change needs before its new ring may be published.
//!
//! # Layout
//! Start at [`run`]. Then:
//! - [`cluster`]: the state machine. Every call is a method that changes the state or
//!   refuses, pure and unit-tested; [`plan`]: membership changes as data and the handoff
//!   plan (which node pulls which partition from whom), property-tested against a naive
//!   oracle.
//! - `service`: the writer lock, persist-then-publish, the `watch` long-pollers wait on;
//!   [`store`]: `state.json`, replaced atomically.
//! - `handoff`: the worker that drives a change (copy, publish, catch-up, finish);
//!   [`liveness`]: heartbeats and the ticker.
//! - `api`: the routes below; [`config`], [`metrics`], [`error`].
//!
//! # Internal API (JSON; errors are `{"error": {"code", "message", "request_id"}}`)
//!
//! | route | success | errors |
//! |---|---|---|
//! | `GET /internal/v1/state?after=V&wait_ms=T` | `200` ClusterState at once if its version > V (or no `after`); else waits up to T ms (≤ 30000, default 0) for a commit: `200`, or `304` with no body | `400 invalid_parameter`, `503 shutting_down` |
//! | `GET /internal/v1/ring` | `200` Ring; with `?bucket=&key=`, `200` KeyPlacement for the bucket's `n` | `503 ring_unavailable` before the first join, `400 invalid_bucket`/`invalid_key`/`invalid_parameter` |
//! | `GET /internal/v1/cluster` | `200` ClusterView (epoch, nodes joining/up/down/leaving with ms since the last heartbeat, handoffs) | |
//! | `POST /internal/v1/nodes` (NodeRegistration) | `202` ClusterView; the join completes in the background | `409 membership_conflict` (already a member, address in use, a change in progress), `400 invalid_request`/`invalid_json` |
//! | `DELETE /internal/v1/nodes/{node}` | `202` ClusterView; decommission after handing off its data | `404 node_not_found`, `409 membership_conflict` (last member, a change in progress) |
//! | `POST /internal/v1/nodes/{node}/replace` (ReplaceRequest) | `202` ClusterView; the new node takes exactly the old one's partitions (with `{node}`'s own id: the refill in place of its lost volume) | `404 node_not_found`, `409 membership_conflict` |
//! | `POST /internal/v1/heartbeat` (Heartbeat) | `204`; the first volume binds the member | `404 node_not_found`, `400 invalid_request`, `409 volume_mismatch` (another volume than the bound one) |
//! | `GET /internal/v1/buckets/{bucket}` | `200` BucketRecord (defaults if none stored) | `400 invalid_bucket` |
//! | `PUT /internal/v1/buckets/{bucket}` (BucketPropsPatch) | `200` BucketRecord | `422 invalid_bucket_properties`, `409 bucket_n_immutable`, `429 rate_limited` |
//! | `POST /internal/v1/buckets/{bucket}/written` | `204` (idempotent) | `400 invalid_bucket`, `429 rate_limited` |
//! | `POST /internal/v1/tokens` (TokenRecord) | `201` TokenRecord | `400 invalid_request` (malformed, duplicate id or hash), `429 rate_limited` (over `MAX_TOKENS`) |
//! | `DELETE /internal/v1/tokens/{id}` | `204` | `404 token_not_found` |
//! | `GET /internal/v1/change` | `200` `{"change": PendingChange or null, "handoffs": [...]}` | |
//! | `POST /internal/v1/change/retry` | `202` ClusterView; a failed change runs again (done handoffs are kept) | `409 membership_conflict` (none, or not failed) |
//! | `POST /internal/v1/change/abort` | `200` ClusterView; the change is undone (ring untouched) | `409 membership_conflict` (none, or its ring is already published) |
//! | `/healthz`, `/readyz`, `/metrics` | liveness, readiness, Prometheus | |
//!
//! Every input is validated (node ids, http(s) addresses, bucket names, properties,
//! tokens, body size); a refused request changes nothing. A change that cannot be
//! persisted is answered `500 storage_error` and changes nothing.
//!
//! # Invariants
//! - **Persist before answer:** every change is in `state.json` (temp file, fsync,
//!   rename, fsync of the directory) before anyone sees it.
//! - **Versions only grow** (ARCHITECTURE §4 invariant 5): the state version grows by one
//!   per commit, the ring epoch never decreases and any ring change increases it, across
//!   restarts too. A breach is refused and counted in
//!   `dynamo_invariant_violations_total{invariant}`.
//! - **One membership change at a time**, and its ring is published only after every
//!   receiver has pulled its partitions: no partition gains a replica that has not copied
//!   it, and a leaver leaves only after the catch-up round.
//! - **Liveness never changes membership or the ring.**
//!
//! # It is not
//! A data path (it never sees objects: storage nodes pull partitions from each other), a
//! consensus group (one instance owns the state; run it as a single replica with a
//! persistent volume), or an authenticator (coordinators check tokens against the hashes
//! they cache).

pub mod cluster;
pub mod config;
pub mod error;
pub mod liveness;
pub mod metrics;
pub mod plan;
pub mod raft;
pub mod store;

mod api;
mod handoff;
mod service;

use std::sync::Arc;

use dynamo_core::signature::Role;
use dynamo_server::internal;
use dynamo_server::metrics::HttpMetrics;
use dynamo_server::serve::{self, Limits, Readiness};
use dynamo_server::worker::Workers;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use api::{ChangeReport, MAX_WAIT_MS};
pub use config::Config;
pub use error::RingServiceError;

use crate::cluster::Cluster;
use crate::liveness::{Liveness, SharedLiveness};
use crate::service::Service;

/// Rewrites tower-http's plain-text `413` (sent when `Content-Length` alone exceeds the
/// body limit, before any extractor runs) into the JSON `body_too_large` error, so every
/// refusal carries a code. This belongs in `dynamo-server`'s common layers; it is a no-op
/// once they do it.
async fn json_body_too_large(resp: axum::response::Response) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let is_json = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE && !is_json {
        return dynamo_server::ApiError::new(
            dynamo_core::ErrorCode::BodyTooLarge,
            "request body is larger than this endpoint accepts",
        )
        .into_response();
    }
    resp
}

/// Refuses a stored state made with another partition count than the configured one.
fn same_partitions(cluster: &Cluster, config: &Config) -> Result<(), RingServiceError> {
    match &cluster.state.ring {
        Some(ring) if u64::from(ring.partitioning().count()) != config.partitions => {
            Err(RingServiceError::PartitionMismatch {
                stored: ring.partitioning().count(),
                configured: config.partitions,
            })
        }
        _ => Ok(()),
    }
}

/// Runs the ring service on `listener` until `shutdown` is cancelled: loads the state
/// from `config.data_dir` (or starts empty), resumes a membership change left in
/// progress, serves, then shuts down in order: not ready, stop accepting, drain
/// requests, stop the handoff worker and the liveness ticker, return.
///
/// # Errors
/// [`RingServiceError`]: an invalid config, an unusable data directory, a stored state
/// that is corrupt or was made with another partition count, a listener failure.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), RingServiceError> {
    config.validate()?;
    let registry = Arc::new(Registry::new());
    let setup = |e: prometheus::Error| RingServiceError::Setup(e.to_string());
    let metrics = metrics::RingMetrics::new(&registry).map_err(setup)?;
    let http_metrics = HttpMetrics::new(&registry, "ring").map_err(setup)?;

    let group = config.group()?;
    let dir = config.data_dir.clone();
    let (legacy, db) = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).map_err(|source| RingServiceError::DataDir {
            path: dir.clone(),
            source,
        })?;
        let legacy = store::load(&dir).map_err(RingServiceError::from)?;
        let db = fjall::Database::builder(dir.join(raft::DB_DIR))
            .open()
            .map_err(|e| RingServiceError::Raft(format!("cannot open the raft store: {e}")))?;
        Ok::<_, RingServiceError>((legacy, db))
    })
    .await??;
    if let Some(legacy) = &legacy {
        same_partitions(legacy, &config)?;
    }
    let (published, _) = tokio::sync::watch::channel(Arc::new(Cluster::empty()));
    let log = raft::log::LogStore::open(&db).map_err(|e| RingServiceError::Raft(e.to_string()))?;
    let pristine = log
        .is_pristine()
        .map_err(|e| RingServiceError::Raft(e.to_string()))?;
    let state_machine = raft::sm::StateMachine::open(&db, published.clone(), metrics.clone())
        .map_err(RingServiceError::Raft)?;

    let member_keys = config.member.keys()?;
    let control_keys = config.control.keys()?;
    let signer = internal::Signer::new(&member_keys, Role::Member, "ring")
        .map_err(|e| RingServiceError::Setup(e.to_string()))?;
    let http = config
        .serve
        .tls
        .http_client()?
        .connect_timeout(config.handoff_timeout().min(std::time::Duration::from_secs(5)))
        .pool_max_idle_per_host(4)
        .pool_idle_timeout(std::time::Duration::from_millis(
            dynamo_core::limits::CLIENT_POOL_IDLE_MS,
        ))
        .build()
        .map_err(|e| RingServiceError::Setup(e.to_string()))?;
    let forward = http.clone();
    let control_signer = internal::Signer::new(&control_keys, Role::Control, "ring")
        .map_err(|e| RingServiceError::Setup(e.to_string()))?;
    let control_client = internal::client(http.clone(), control_signer);
    let client = internal::client(http, signer);
    let raft_config =
        raft::raft_config("dynamo-ring", config.election_timeout()).map_err(RingServiceError::Raft)?;
    let raft = raft::Raft::new(
        group.me,
        raft_config,
        raft::net::Network {
            client: control_client,
            group: group.canonical(),
        },
        log,
        state_machine,
    )
    .await
    .map_err(|e| RingServiceError::Raft(e.to_string()))?;
    if pristine && group.initializer() {
        match raft.initialize(group.nodes()).await {
            Ok(()) => tracing::info!(replicas = group.replicas.len(), "ring group initialized"),
            Err(e) => tracing::info!(error = %e, "ring group already initialized"),
        }
    }
    let applied = published.borrow().clone();
    same_partitions(&applied, &config)?;
    // Grace periods are given when this replica takes office as leader
    // (`Service::take_office`), not here: only the leader judges liveness.
    let liveness = SharedLiveness::new(Liveness::new(config.heartbeat_timeout()));
    tracing::info!(
        replica = group.me,
        replicas = group.replicas.len(),
        version = applied.state.version,
        epoch = applied.epoch().0,
        nodes = applied.state.nodes.len(),
        change = applied.change.as_ref().map(|c| c.kind.name()),
        listen = %listener.local_addr()?,
        "ring service starting"
    );
    let door = internal::Door::new(
        &config.member,
        member_keys,
        Some(control_keys),
        api::policy,
        config.max_body_bytes,
    );
    let limits = Limits {
        max_body_bytes: config.max_body_bytes,
        max_concurrent_requests: config.max_concurrent_requests,
    };
    let serve_args = config.serve.clone();
    let workers = Workers::new(&registry, "ring", shutdown.child_token()).map_err(setup)?;
    let single = group.replicas.len() == 1;
    let svc = Service::new(
        Arc::new(config),
        published,
        raft,
        group,
        forward,
        liveness,
        metrics,
        client,
        workers.clone(),
    );
    workers.spawn(liveness::LivenessTicker { svc: svc.clone() });
    workers.spawn(raft::Leadership::new(svc.clone()));
    workers.spawn(raft::grow::Grow::new(svc.clone()));
    if let Some(file) = legacy {
        raft::migrate(&svc, file).await?;
    }
    // A group of one elects itself: wait for that before answering ready, so a restart
    // of a single ring service takes writes as soon as it is ready. A larger group needs
    // the others' answers, which only serving can get.
    if single {
        svc.leader_url().await;
    }

    let readiness = Readiness::new();
    let raft_door = internal::Door::new(
        &svc.config.member,
        svc.config.member.keys()?,
        Some(svc.config.control.keys()?),
        |_, _| Role::Control,
        raft::MAX_RPC_BODY_BYTES,
    );
    let raft_routes = internal::guard(raft::net::routes(svc.raft.clone(), svc.group.clone()), raft_door)
        .layer(axum::extract::DefaultBodyLimit::max(raft::MAX_RPC_BODY_BYTES));
    let app = serve::with_common_layers(
        internal::guard(api::routes(svc.clone()), door).merge(raft_routes),
        serve::health_routes(readiness.clone(), registry),
        limits,
        http_metrics,
    )
    .layer(axum::middleware::map_response(json_body_too_large));
    let served = serve::serve(listener, app, shutdown, readiness, serve_args).await;

    workers.shutdown().await;
    svc.tasks.close();
    svc.tasks.wait().await;
    if let Err(e) = svc.raft.shutdown().await {
        tracing::warn!(error = %e, "the ring group's consensus did not stop cleanly");
    }
    tracing::info!("ring service stopped");
    served.map_err(RingServiceError::from)
}
