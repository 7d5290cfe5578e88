//! `/v1/cluster` and `/v1/ring`: the cluster view, the ring and key placement, joins,
//! decommissions and replacements, and the retry or abort of a failed change.

use super::*;
use dynamo_core::wire::cluster::{
    AntiEntropyStatus, ChangeKindName, ChangeProgress, ReplaceRequest, RingGroupStatus,
};

fn view(s: &ClusterState) -> ClusterView {
    ClusterView {
        epoch: s.ring.as_ref().map_or(RingEpoch(0), |r| r.epoch()),
        nodes: s.nodes.clone(),
        handoffs: s.handoffs.clone(),
        change: s.change.as_ref().map(|c| ChangeProgress::of(c, &s.handoffs)),
        // `max_n` is at most a `u8` (every `n` it compares is one).
        max_n: Some(u8::try_from(s.max_n()).unwrap_or(u8::MAX)),
        ring_group: None,
    }
}

/// How long the cluster view waits for a node's progress; a node that does not answer in
/// time is shown without it.
const NODE_STATUS_TIMEOUT: Duration = Duration::from_secs(1);

/// What the cluster view reads of a storage node's `GET /internal/v1/node`.
#[derive(Deserialize)]
struct NodeProgress {
    #[serde(default)]
    anti_entropy: Option<AntiEntropyStatus>,
}

/// Asks every node, at once, for its anti-entropy progress (bounded by
/// [`NODE_STATUS_TIMEOUT`]); fills what answered.
async fn with_progress(
    client: &dynamo_server::internal::InternalClient,
    mut view: ClusterView,
) -> ClusterView {
    let asks = view.nodes.iter().map(|n| {
        let url = routes::url(&n.address, routes::storage::NODE);
        async move {
            let r = client.get(url).timeout(NODE_STATUS_TIMEOUT).send().await.ok()?;
            let p: NodeProgress = r.error_for_status().ok()?.json().await.ok()?;
            p.anti_entropy
        }
    });
    let answers = futures::future::join_all(asks).await;
    for (n, a) in view.nodes.iter_mut().zip(answers) {
        n.anti_entropy = a;
    }
    view
}

/// `GET /v1/cluster` (cluster-wide admin: it shows internal addresses): served from the
/// cached state, so it answers while the ring service is away; each node's anti-entropy
/// progress is asked of the node itself.
#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    responses((status = 200, description = "Nodes, their state, the ring epoch, handoffs in progress", body = ClusterView),
        (status = 403, description = "The token lacks cluster-wide `admin`", body = ErrorBody)))]
pub async fn get_cluster(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<ClusterView>, ApiError> {
    principal.require(Permission::Admin, None)?;
    let s = state.cache.current()?;
    let (mut view, group) = tokio::join!(with_progress(&state.member_client, view(&s)), ring_group(&state));
    view.ring_group = group;
    Ok(Json(view))
}

/// The ring service's replicas and leader, asked of any replica (it forwards to the
/// leader) within [`NODE_STATUS_TIMEOUT`]; `None` when none answered.
async fn ring_group(state: &AppState) -> Option<RingGroupStatus> {
    let client = &state.member_client;
    state
        .cache
        .ring_urls()
        .call(
            |base| async move {
                let r = client
                    .get(routes::url(base, routes::ring::RING_GROUP))
                    .timeout(NODE_STATUS_TIMEOUT)
                    .send()
                    .await
                    .map_err(|_| ())?;
                r.error_for_status()
                    .map_err(|_| ())?
                    .json::<RingGroupStatus>()
                    .await
                    .map_err(|_| ())
            },
            // A read: any other replica may answer it.
            |_| true,
        )
        .await
        .ok()
}

/// Query of `GET /v1/ring`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct RingQuery {
    /// With `key`: show that key's placement.
    #[param(pattern = "^[a-z0-9._-]{1,63}$")]
    pub bucket: Option<String>,
    /// With `bucket`: show that key's placement.
    #[param(min_length = 1, max_length = 1024)]
    pub key: Option<String>,
}

/// `GET /v1/ring` (cluster-wide admin), or a key's placement with `?bucket=&key=` (read
/// on the bucket).
#[utoipa::path(get, path = "/v1/ring", tag = "cluster", params(RingQuery),
    responses((status = 200, description = "The ring (`RingView`), or with `bucket` and `key` the key's partition, preference list and fallbacks (`KeyPlacement`)", body = crate::openapi::RingAnswer),
        (status = 400, description = "Only one of `bucket` and `key`, an unknown or malformed parameter (`invalid_parameter`), a bad bucket or key (`invalid_bucket`, `invalid_key`)", body = ErrorBody),
        (status = 403, description = "The token lacks cluster-wide `admin` (the ring), or `read` on the bucket (a key's placement)", body = ErrorBody),
        (status = 503, description = "No node has joined the cluster yet (`ring_unavailable`)", body = ErrorBody)))]
pub async fn get_ring(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<RingQuery>,
) -> Result<Response, ApiError> {
    match (&q.bucket, &q.key) {
        (Some(b), Some(_)) => principal.require(Permission::Read, Some(&bucket_name(b.clone())?))?,
        _ => principal.require(Permission::Admin, None)?,
    }
    let s = state.cache.current()?;
    let ring = s
        .ring
        .as_ref()
        .ok_or_else(|| ApiError::new(ErrorCode::RingUnavailable, "no node has joined the cluster yet"))?;
    match (q.bucket, q.key) {
        (None, None) => Ok(Json(RingView {
            epoch: ring.epoch(),
            partitions: ring.partitioning().count(),
            owners: ring.owners().to_vec(),
        })
        .into_response()),
        (Some(b), Some(k)) => {
            let bucket = bucket_name(b)?;
            validate_key(&k).map_err(ApiError::from)?;
            let (props, _) = state.cache.bucket(&bucket, &state.config.default_props());
            let pl = ring.preference_list_for(key_hash(bucket.as_str(), &k), usize::from(props.n));
            Ok(Json(KeyPlacement {
                epoch: ring.epoch(),
                partition: PartitionId(pl.partition.0),
                preference_list: pl.preference_list,
                fallbacks: pl.fallbacks,
            })
            .into_response())
        }
        _ => Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "give both bucket and key, or neither",
        )),
    }
}

/// `POST /v1/cluster/nodes` (admin): join a node; the ring changes once its data is in.
#[utoipa::path(post, path = "/v1/cluster/nodes", tag = "cluster", request_body = NodeRegistration,
    responses((status = 202, description = "Accepted: handoff to the new node runs, then the ring changes; the body is the cluster view", body = ClusterView),
        (status = 400, description = "A body that is not the schema, a bad node id (`invalid_json`), or a bad address or zone (`invalid_request`)", body = ErrorBody),
        (status = 403, description = "The token lacks cluster-wide `admin`", body = ErrorBody),
        (status = 409, description = "Already a member, or another change is in progress (`membership_conflict`)", body = ErrorBody),
        (status = 413, description = "The body is larger than the request limit (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 503, description = "The ring service did not answer (`ring_unavailable`)", body = ErrorBody)))]
pub async fn join_node(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Json(reg): Json<dynamo_core::wire::cluster::NodeRegistration>,
) -> Result<Response, ApiError> {
    let outcome = async {
        principal.require(Permission::Admin, None)?;
        relay(&state, routes::ring::NODES, |url| {
            state.client.post(url).json(&reg)
        })
        .await
    }
    .await;
    audit_relayed(&principal, "node.join", reg.node_id.as_str(), &outcome);
    outcome
}

/// `DELETE /v1/cluster/nodes/{node}` (admin): decommission; its data is handed off first.
#[utoipa::path(delete, path = "/v1/cluster/nodes/{node}", tag = "cluster",
    params(("node" = String, Path, pattern = "^[a-z0-9._-]{1,63}$", description = "The member to decommission")),
    responses((status = 202, description = "Accepted: the node's data is handed off, then it leaves the ring; the body is the cluster view", body = ClusterView),
        (status = 400, description = "Bad node id (`invalid_node_id`, `invalid_request`)", body = ErrorBody),
        (status = 403, description = "The token lacks cluster-wide `admin`", body = ErrorBody),
        (status = 404, description = "Not a member (`node_not_found`)", body = ErrorBody),
        (status = 409, description = "The last member, too few would be left for a bucket's `n`, or another change is in progress (`membership_conflict`)", body = ErrorBody),
        (status = 503, description = "The ring service did not answer (`ring_unavailable`)", body = ErrorBody)))]
pub async fn decommission_node(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    let outcome = async {
        principal.require(Permission::Admin, None)?;
        let node = NodeId::new(node.clone()).map_err(|e| ApiError::new(e.code(), e.to_string()))?;
        relay(&state, &routes::ring::node(&node), |url| state.client.delete(url)).await
    }
    .await;
    audit_relayed(&principal, "node.decommission", &node, &outcome);
    outcome
}

/// `POST /v1/cluster/nodes/{node}/replace` (admin): a new node takes over exactly the
/// partitions of `{node}`, filled from the surviving replicas; the ring changes once its
/// data is in. The body is the new node's registration, as for a join; the ring service
/// validates its address and zone, and refuses a new node that is already a member. With
/// `{node}`'s own id, a replace in place: the member's lost volume is refilled into the new
/// one its pod came back with.
#[utoipa::path(post, path = "/v1/cluster/nodes/{node}/replace", tag = "cluster",
    params(("node" = String, Path, pattern = "^[a-z0-9._-]{1,63}$", description = "The member to replace")),
    request_body(content = NodeRegistration, description = "The new node"),
    responses((status = 202, description = "Accepted: handoff to the new node runs, then the ring changes; the body is the cluster view", body = ClusterView),
        (status = 400, description = "Bad node id (`invalid_node_id`, `invalid_json`), address or zone (`invalid_request`)", body = ErrorBody),
        (status = 403, description = "The token lacks cluster-wide `admin`", body = ErrorBody),
        (status = 404, description = "`{node}` is not a member (`node_not_found`)", body = ErrorBody),
        (status = 409, description = "The new node is already a member or its address is taken, or another change is in progress; in place: the member presents no new volume, or the zone differs (`membership_conflict`)", body = ErrorBody),
        (status = 413, description = "The body is larger than the request limit (`body_too_large`)", body = ErrorBody),
        (status = 415, description = "The body is not `application/json` (`unsupported_media_type`)", body = ErrorBody),
        (status = 503, description = "The ring service did not answer (`ring_unavailable`)", body = ErrorBody)))]
pub async fn replace_node(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(node): Path<String>,
    Json(new_node): Json<NodeRegistration>,
) -> Result<Response, ApiError> {
    let object = format!("{node}->{}", new_node.node_id);
    let outcome = async {
        principal.require(Permission::Admin, None)?;
        let old = NodeId::new(node.clone()).map_err(|e| ApiError::new(e.code(), e.to_string()))?;
        let body = ReplaceRequest { new_node };
        relay(&state, &routes::ring::node_replace(&old), |url| {
            state.client.post(url).json(&body)
        })
        .await
    }
    .await;
    audit_relayed(&principal, "node.replace", &object, &outcome);
    outcome
}

/// Names the change in progress for the audit line, as this coordinator last saw it
/// (`replace node-1->node-3`), or `none`. The ring service acts on its own state, which
/// may be newer; the line records what the operator was looking at.
fn change_object(state: &AppState) -> String {
    let Ok(s) = state.cache.current() else {
        return "none".into();
    };
    match &s.change {
        Some(c) => {
            let kind = match c.kind {
                ChangeKindName::Join => "join",
                ChangeKindName::Decommission => "decommission",
                ChangeKindName::Replace => "replace",
            };
            match &c.replacement {
                Some(new) => format!("{kind} {}->{new}", c.node),
                None => format!("{kind} {}", c.node),
            }
        }
        None => "none".into(),
    }
}

/// `POST /v1/cluster/change/retry` (admin): runs a failed membership change again; the
/// copies already done are kept. The ring service decides whether there is one to retry.
#[utoipa::path(post, path = "/v1/cluster/change/retry", tag = "cluster",
    responses((status = 202, description = "Accepted: the change runs again; the body is the cluster view", body = ClusterView),
        (status = 403, description = "The token lacks cluster-wide `admin`", body = ErrorBody),
        (status = 409, description = "`membership_conflict`: no change is in progress, or it has not failed", body = ErrorBody),
        (status = 503, description = "The ring service did not answer (`ring_unavailable`)", body = ErrorBody)))]
pub async fn retry_change(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    relay_change(&state, &principal, routes::ring::CHANGE_RETRY, "change.retry").await
}

/// Relays a retry or an abort of the membership change in progress to the ring service
/// (`route`), audited as `action` with the change as this coordinator last saw it.
async fn relay_change(
    state: &Arc<AppState>,
    principal: &Principal,
    route: &str,
    action: &'static str,
) -> Result<Response, ApiError> {
    let object = change_object(state);
    let outcome = async {
        principal.require(Permission::Admin, None)?;
        relay(state, route, |url| state.client.post(url)).await
    }
    .await;
    audit_relayed(principal, action, &object, &outcome);
    outcome
}

/// `POST /v1/cluster/change/abort` (admin): undoes the membership change in progress
/// while its new ring is not yet published: the newcomer is forgotten, the leaver is a
/// member again, the ring is untouched. After the publish the ring service refuses (the
/// change can then only go forward, by a retry).
#[utoipa::path(post, path = "/v1/cluster/change/abort", tag = "cluster",
    responses((status = 200, description = "Aborted: the body is the cluster view, without the change", body = ClusterView),
        (status = 403, description = "The token lacks cluster-wide `admin`", body = ErrorBody),
        (status = 409, description = "`membership_conflict`: no change is in progress, or its new ring is already published", body = ErrorBody),
        (status = 503, description = "The ring service did not answer (`ring_unavailable`)", body = ErrorBody)))]
pub async fn abort_change(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    relay_change(&state, &principal, routes::ring::CHANGE_ABORT, "change.abort").await
}
