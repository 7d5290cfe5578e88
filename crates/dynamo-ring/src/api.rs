//! The ring service's internal HTTP API (JSON). The route table is in the crate doc.
//!
//! Handlers parse and validate, then hand a closure to [`Service::mutate`]; a refusal
//! leaves the state untouched, and an accepted change is on disk before the answer.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use dynamo_core::signature::Role;
use dynamo_core::wire::BucketPropsPatch;
use dynamo_core::wire::cluster::{
    BucketRecord, ClusterView, Handoff, Heartbeat, KeyPlacement, NodeRegistration, NodeState, ReleaseDone,
    ReplaceRequest, RingGroupStatus, RingReplicaStatus, TokenRecord,
};
use dynamo_core::wire::routes::ring;
use dynamo_core::{BucketName, ErrorCode, NodeId, key_hash};
use dynamo_server::ApiError;
use dynamo_server::extract::{Json, Path, Query};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::cluster::{Beat, validate_address, validate_registration, volume_verdict};
use crate::plan::{ChangeKind, PendingChange};
use crate::service::Service;

pub use dynamo_core::wire::cluster::MAX_STATE_WAIT_MS as MAX_WAIT_MS;

type AppState = Arc<Service>;

/// Returns the role a route needs: membership changes, tokens, bucket properties and the
/// controls of a change need [`Role::Control`] (storage nodes hold no control key, so
/// none of them can do these); reading the state, heartbeats and `written` marks are the
/// data plane's.
pub(crate) fn policy(method: &Method, route: Option<&str>) -> Role {
    match (method, route.unwrap_or_default()) {
        (&Method::POST, ring::NODES)
        | (&Method::DELETE, ring::NODE)
        | (&Method::POST, ring::NODE_REPLACE)
        | (&Method::PUT, ring::BUCKET)
        | (&Method::POST, ring::TOKENS)
        | (&Method::DELETE, ring::TOKEN)
        | (&Method::POST, ring::CHANGE_RETRY)
        | (&Method::POST, ring::CHANGE_ABORT) => Role::Control,
        _ => Role::Member,
    }
}

/// Builds the internal API routes.
pub(crate) fn routes(svc: Arc<Service>) -> Router {
    Router::new()
        .route(ring::STATE, get(get_state))
        .route(ring::RING, get(get_ring))
        .route(ring::CLUSTER, get(get_cluster))
        .route(ring::RING_GROUP, get(get_ring_group))
        .route(ring::NODES, post(join))
        .route(ring::NODE, delete(decommission))
        .route(ring::NODE_REPLACE, post(replace))
        .route(ring::HEARTBEAT, post(heartbeat))
        .route(ring::BUCKET, get(get_bucket).put(put_bucket))
        .route(ring::BUCKET_WRITTEN, post(bucket_written))
        .route(ring::TOKENS, post(create_token))
        .route(ring::TOKEN, delete(delete_token))
        .route(ring::CHANGE, get(get_change))
        .route(ring::CHANGE_RETRY, post(retry_change))
        .route(ring::CHANGE_ABORT, post(abort_change))
        .route(ring::RELEASES, post(release_done))
        .layer(axum::middleware::from_fn_with_state(svc.clone(), to_leader))
        .with_state(svc)
}

/// Marks a request one replica forwarded to another, so it is forwarded at most once.
pub const FORWARDED_HEADER: &str = "x-dynamo-forwarded-by";
/// How long a forwarded request may take at the leader.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(30);

/// Serves a request here, or forwards it to the leader. Reads of the applied state
/// (every `GET` but the cluster view, whose heartbeat ages only the leader knows, and the
/// ring group's status, whose replication progress only it knows) are answered by any
/// replica; everything else changes the state or needs the leader's
/// liveness, so a follower forwards it as it came (the caller's signature included, which
/// the leader checks again) and answers what the leader answered. Runs after the
/// signature check: nothing unsigned is forwarded.
async fn to_leader(
    State(svc): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = req
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let local =
        req.method() == Method::GET && !matches!(route.as_deref(), Some(ring::CLUSTER | ring::RING_GROUP));
    if local || svc.is_leader() {
        return next.run(req).await;
    }
    let unavailable = |why: String| ApiError::new(ErrorCode::RingUnavailable, why).into_response();
    if req.headers().contains_key(FORWARDED_HEADER) {
        return unavailable(format!(
            "replica {} was forwarded a request but does not lead the ring group; retry shortly",
            svc.group.me
        ));
    }
    let Some((leader, url)) = svc.leader_url().await else {
        return unavailable("the ring group has no leader; retry shortly".into());
    };
    if leader == svc.group.me {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let bytes = match axum::body::to_bytes(body, svc.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return ApiError::new(
                ErrorCode::BodyTooLarge,
                "the body is larger than the request limit",
            )
            .into_response();
        }
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut out = svc
        .forward
        .request(parts.method.clone(), format!("{url}{path}"))
        .timeout(FORWARD_TIMEOUT)
        .header(FORWARDED_HEADER, svc.group.me.to_string())
        .body(bytes);
    for (k, v) in &parts.headers {
        if !matches!(
            *k,
            axum::http::header::HOST | axum::http::header::CONTENT_LENGTH | axum::http::header::CONNECTION
        ) {
            out = out.header(k, v);
        }
    }
    let resp = match out.send().await {
        Ok(r) => r,
        Err(e) => {
            return unavailable(format!(
                "the ring group's leader (replica {leader}) did not answer: {}",
                e.without_url()
            ));
        }
    };
    let status = resp.status();
    let content_type = resp.headers().get(axum::http::header::CONTENT_TYPE).cloned();
    let body = match resp.bytes().await {
        Ok(b) => b,
        Err(e) => {
            return unavailable(format!(
                "the ring group's leader (replica {leader}) broke off its answer: {}",
                e.without_url()
            ));
        }
    };
    let mut answer = (status, body).into_response();
    if let Some(ct) = content_type {
        answer.headers_mut().insert(axum::http::header::CONTENT_TYPE, ct);
    }
    answer
}

fn node_id(raw: String) -> Result<NodeId, ApiError> {
    NodeId::new(raw).map_err(ApiError::from)
}

fn bucket_name(raw: String) -> Result<BucketName, ApiError> {
    BucketName::new(raw).map_err(ApiError::from)
}

/// Query of `GET /internal/v1/state`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateQuery {
    /// Answer only with a version greater than this.
    after: Option<u64>,
    /// How long to wait for one, in ms (at most [`MAX_WAIT_MS`]; default 0).
    wait_ms: Option<u64>,
}

/// `GET /internal/v1/state`: the state at once if newer than `after`, else a long-poll
/// until a commit (200) or `wait_ms` (304, no body).
async fn get_state(State(svc): State<AppState>, Query(q): Query<StateQuery>) -> Result<Response, ApiError> {
    let wait_ms = q.wait_ms.unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("wait_ms is at most {MAX_WAIT_MS}"),
        ));
    }
    let deadline = Instant::now() + Duration::from_millis(wait_ms);
    let mut rx = svc.subscribe();
    loop {
        let current = rx.borrow_and_update().clone();
        if q.after.is_none_or(|after| current.state.version > after) {
            return Ok(Json(&current.state).into_response());
        }
        tokio::select! {
            () = svc.shutdown.cancelled() => {
                return Err(ApiError::new(ErrorCode::ShuttingDown, "the ring service is shutting down"));
            }
            () = tokio::time::sleep_until(deadline) => return Ok(StatusCode::NOT_MODIFIED.into_response()),
            changed = rx.changed() => if changed.is_err() {
                return Err(ApiError::new(ErrorCode::ShuttingDown, "the ring service is shutting down"));
            }
        }
    }
}

/// Query of `GET /internal/v1/ring`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RingQuery {
    bucket: Option<String>,
    key: Option<String>,
}

/// `GET /internal/v1/ring`: the ring, or with `?bucket=&key=` that key's placement (for
/// the bucket's `n`).
async fn get_ring(State(svc): State<AppState>, Query(q): Query<RingQuery>) -> Result<Response, ApiError> {
    let snap = svc.snapshot();
    let Some(ring) = &snap.state.ring else {
        return Err(ApiError::new(
            ErrorCode::RingUnavailable,
            "no ring yet: join a node first",
        ));
    };
    match (q.bucket, q.key) {
        (None, None) => Ok(Json(ring).into_response()),
        (Some(b), Some(k)) => {
            let b = bucket_name(b)?;
            dynamo_core::ids::validate_key(&k).map_err(ApiError::from)?;
            let n = usize::from(snap.bucket(&b).props.n);
            let pl = ring.preference_list_for(key_hash(b.as_str(), &k), n);
            Ok(Json(KeyPlacement {
                epoch: ring.epoch(),
                partition: pl.partition,
                preference_list: pl.preference_list,
                fallbacks: pl.fallbacks,
            })
            .into_response())
        }
        _ => Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "bucket and key go together",
        )),
    }
}

async fn get_cluster(State(svc): State<AppState>) -> Json<ClusterView> {
    Json(svc.view())
}

fn accepted(svc: &Service) -> (StatusCode, Json<ClusterView>) {
    (StatusCode::ACCEPTED, Json(svc.view()))
}

/// Starts a change; a newcomer gets a liveness grace period from now.
async fn begin(svc: &Arc<Service>, kind: ChangeKind) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    let settings = svc.settings;
    let liveness = svc.liveness.clone();
    svc.mutate(move |c| {
        let newcomer = kind.joiner().map(|r| r.node_id.clone());
        let name = kind.name();
        c.begin(kind, settings)?;
        if let Some(n) = newcomer {
            liveness.lock().grace(&n, Instant::now());
        }
        tracing::info!(kind = name, "membership change started");
        Ok(())
    })
    .await?;
    Ok(accepted(svc))
}

async fn join(
    State(svc): State<AppState>,
    Json(reg): Json<NodeRegistration>,
) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    validate_registration(&reg)?;
    begin(&svc, ChangeKind::Join { node: reg }).await
}

async fn decommission(
    State(svc): State<AppState>,
    Path(node): Path<String>,
) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    let node = node_id(node)?;
    begin(&svc, ChangeKind::Decommission { node }).await
}

async fn replace(
    State(svc): State<AppState>,
    Path(old): Path<String>,
    Json(req): Json<ReplaceRequest>,
) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    let old = node_id(old)?;
    validate_registration(&req.new_node)?;
    begin(
        &svc,
        ChangeKind::Replace {
            old,
            new: req.new_node,
        },
    )
    .await
}

/// `POST /internal/v1/heartbeat`: records the beat; commits only a transition (`down` →
/// `up`), an address change, or the member's volume (bound on its first beat, or refused:
/// `409 volume_mismatch`, committed once per new volume).
async fn heartbeat(State(svc): State<AppState>, Json(hb): Json<Heartbeat>) -> Result<StatusCode, ApiError> {
    validate_address(&hb.address)?;
    let snap = svc.snapshot();
    let Some(node) = snap.node(&hb.node_id) else {
        return Err(ApiError::new(
            ErrorCode::NodeNotFound,
            format!("node {} is not a member", hb.node_id),
        ));
    };
    let node_id = hb.node_id.clone();
    let refused = move || {
        ApiError::new(
            ErrorCode::VolumeMismatch,
            format!(
                "node {node_id} is bound to another volume: this one is new (its disk was lost or swapped), and serves only after a replace in place refills it"
            ),
        )
    };
    match volume_verdict(node, hb.volume) {
        Beat::Refused => {
            if node.volume_refused != hb.volume || node.state == NodeState::Up {
                let (id, volume) = (hb.node_id.clone(), hb.volume);
                if svc.mutate(move |c| c.heartbeat(&hb)).await? == Beat::Refused {
                    tracing::warn!(node_id = %id, volume = ?volume, "heartbeat from a new volume refused: the member's volume was lost; replace it in place");
                }
            }
            return Err(refused());
        }
        beat => {
            // Recorded before the commit, so a liveness tick racing with it already sees it.
            svc.liveness.lock().beat(&hb.node_id, Instant::now());
            let commit = beat == Beat::Binds || node.address != hb.address || node.state == NodeState::Down;
            // The state machine judges again on the current state, which may have moved.
            if commit && svc.mutate(move |c| c.heartbeat(&hb)).await? == Beat::Refused {
                return Err(refused());
            }
        }
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /internal/v1/ring-group`: the replicas, the leader and how far each follower
/// got, from the leader's consensus metrics (followers forward it there).
async fn get_ring_group(State(svc): State<AppState>) -> Result<Json<RingGroupStatus>, ApiError> {
    let m = svc.raft.metrics().borrow().clone();
    let Some(leader) = m.current_leader else {
        return Err(ApiError::new(
            ErrorCode::RingUnavailable,
            "the ring group has no leader",
        ));
    };
    let voters: std::collections::BTreeSet<_> = m.membership_config.membership().voter_ids().collect();
    let replicas = svc
        .group
        .replicas
        .iter()
        .map(|(id, url)| {
            let (matched_index, lag) = crate::raft::progress(&m, svc.group.me, *id);
            RingReplicaStatus {
                id: *id,
                url: url.clone(),
                leader: *id == leader,
                voter: voters.contains(id),
                matched_index,
                lag,
            }
        })
        .collect();
    Ok(Json(RingGroupStatus {
        leader,
        term: m.current_term,
        applied_index: m.last_applied.map(|l| l.index),
        replicas,
    }))
}

async fn get_bucket(
    State(svc): State<AppState>,
    Path(b): Path<String>,
) -> Result<Json<BucketRecord>, ApiError> {
    let b = bucket_name(b)?;
    Ok(Json(svc.snapshot().bucket(&b)))
}

async fn put_bucket(
    State(svc): State<AppState>,
    Path(b): Path<String>,
    Json(patch): Json<BucketPropsPatch>,
) -> Result<Json<BucketRecord>, ApiError> {
    let b = bucket_name(b)?;
    Ok(Json(svc.mutate(move |c| c.patch_bucket(&b, &patch)).await?))
}

async fn bucket_written(State(svc): State<AppState>, Path(b): Path<String>) -> Result<StatusCode, ApiError> {
    let b = bucket_name(b)?;
    svc.mutate(move |c| c.mark_written(&b)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_token(
    State(svc): State<AppState>,
    Json(t): Json<TokenRecord>,
) -> Result<(StatusCode, Json<TokenRecord>), ApiError> {
    crate::cluster::validate_token(&t)?;
    let stored = t.clone();
    svc.mutate(move |c| c.add_token(t)).await?;
    Ok((StatusCode::CREATED, Json(stored)))
}

async fn delete_token(State(svc): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    svc.mutate(move |c| c.remove_token(&id)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /internal/v1/change`: the membership change in progress, if any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeReport {
    /// The change, with its phase and status (`running` or `failed` with a reason).
    pub change: Option<PendingChange>,
    /// Its handoffs in the current round.
    pub handoffs: Vec<Handoff>,
}

async fn get_change(State(svc): State<AppState>) -> Json<ChangeReport> {
    let snap = svc.snapshot();
    Json(ChangeReport {
        change: snap.change.clone(),
        handoffs: snap.state.handoffs.clone(),
    })
}

async fn retry_change(State(svc): State<AppState>) -> Result<(StatusCode, Json<ClusterView>), ApiError> {
    svc.mutate(|c| c.retry().map(|_| ())).await?;
    Ok(accepted(&svc))
}

async fn abort_change(State(svc): State<AppState>) -> Result<Json<ClusterView>, ApiError> {
    let liveness = svc.liveness.clone();
    svc.mutate(move |c| c.abort(&|n| liveness.is_live_now(n))).await?;
    Ok(Json(svc.view()))
}

/// `POST /internal/v1/releases` (member): a storage node deleted the partitions its
/// release named.
async fn release_done(
    State(svc): State<AppState>,
    Json(done): Json<ReleaseDone>,
) -> Result<StatusCode, ApiError> {
    svc.mutate(move |c| c.release_done(&done)).await?;
    Ok(StatusCode::NO_CONTENT)
}
