//! `/v1/cluster` and `/v1/ring`: the cluster view, the ring and key placement, joins and
//! decommissions.

use super::*;
use dynamo_core::wire::cluster::AntiEntropyStatus;

fn view(s: &ClusterState) -> ClusterView {
    ClusterView {
        epoch: s.ring.as_ref().map_or(RingEpoch(0), |r| r.epoch()),
        nodes: s.nodes.clone(),
        handoffs: s.handoffs.clone(),
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
    responses((status = 200, description = "Nodes, their state, the ring epoch, handoffs in progress"),
        (status = 403, description = "The token lacks cluster-wide admin", body = ErrorBody)))]
pub async fn get_cluster(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<ClusterView>, ApiError> {
    principal.require(Permission::Admin, None)?;
    let s = state.cache.current()?;
    Ok(Json(with_progress(&state.member_client, view(&s)).await))
}

/// Query of `GET /v1/ring`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RingQuery {
    /// With `key`: show that key's placement.
    pub bucket: Option<String>,
    /// With `bucket`: show that key's placement.
    pub key: Option<String>,
}

/// `GET /v1/ring` (cluster-wide admin), or a key's placement with `?bucket=&key=` (read
/// on the bucket).
#[utoipa::path(get, path = "/v1/ring", tag = "cluster", params(RingQuery),
    responses((status = 200, description = "The ring, or the key's partition, preference list and fallbacks"),
        (status = 403, description = "The token lacks the permission", body = ErrorBody)))]
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
    responses((status = 202, description = "Accepted: handoff to the new node runs, then the ring changes"),
        (status = 409, description = "Already a member, or another change is in progress", body = ErrorBody)))]
pub async fn join_node(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Json(reg): Json<dynamo_core::wire::cluster::NodeRegistration>,
) -> Result<Response, ApiError> {
    let outcome = async {
        principal.require(Permission::Admin, None)?;
        let url = routes::url(state.cache.ring_url(), routes::ring::NODES);
        relay(&state, state.client.post(url).json(&reg)).await
    }
    .await;
    audit_relayed(&principal, "node.join", reg.node_id.as_str(), &outcome);
    outcome
}

/// `DELETE /v1/cluster/nodes/{node}` (admin): decommission; its data is handed off first.
#[utoipa::path(delete, path = "/v1/cluster/nodes/{node}", tag = "cluster", params(("node" = String, Path)),
    responses((status = 202, description = "Accepted: the node's data is handed off, then it leaves the ring"),
        (status = 404, description = "Not a member", body = ErrorBody)))]
pub async fn decommission_node(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(node): Path<String>,
) -> Result<Response, ApiError> {
    let outcome = async {
        principal.require(Permission::Admin, None)?;
        let node = NodeId::new(node.clone()).map_err(|e| ApiError::new(e.code(), e.to_string()))?;
        let url = routes::url(state.cache.ring_url(), &routes::ring::node(&node));
        relay(&state, state.client.delete(url)).await
    }
    .await;
    audit_relayed(&principal, "node.decommission", &node, &outcome);
    outcome
}
