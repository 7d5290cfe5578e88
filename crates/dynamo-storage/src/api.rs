//! The node's internal HTTP API (node-to-node, JSON; not the public contract).
//!
//! | route | what |
//! |---|---|
//! | `POST /internal/v1/replicas` | a batch of replica operations (coordinate-put, coordinate-crdt, replay, replicate, get, tombstone-status) |
//! | `GET /internal/v1/node` | identity, durability, partition count, anti-entropy progress |
//! | `GET /internal/v1/cluster-state` | the node's cached view of the cluster (ring epoch and state), read-only |
//! | `GET /internal/v1/merkle/{partition}` | the partition's Merkle summary (root) |
//! | `POST /internal/v1/merkle/{partition}/children` | children of the given tree nodes |
//! | `GET /internal/v1/partitions/{partition}/digests` | a page of the partition's key digests in a hash range, resumable (anti-entropy compares these before moving values) |
//! | `GET /internal/v1/partitions/{partition}/objects` | a page of the partition's objects in a hash range, resumable from a cursor (leaf reads and handoff streaming) |
//! | `POST /internal/v1/partitions/{partition}/pull` | pull the partition from another node and merge it here (handoff, receiving side) |
//! | `GET /internal/v1/buckets/{bucket}/keys` | a page of a bucket's keys from the listing index, with their versions (values left out) |
//! | `GET /internal/v1/buckets/{bucket}/changes` | a page of a bucket's change log after a position, long-polling up to `wait_ms` when there is none |
//!
//! A batch is validated whole before anything runs: one bad operation refuses the batch
//! with a 4xx and nothing changes. Failures while applying (e.g. `too_many_siblings`) are
//! per operation.

use dynamo_server::internal::InternalClient;
use std::sync::Arc;
use std::time::Instant;

use dynamo_server::clock::now_ms;

use axum::Router;
use axum::extract::State;
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dynamo_core::ErrorCode;
use dynamo_core::ids::validate_key;
use dynamo_core::limits::{MAX_SIBLINGS_LIMIT, MAX_VALUE_BYTES};
use dynamo_core::merkle::{MerkleSummary, TreeNode};
use dynamo_core::version::{ConflictRule, NewWrite, VersionedObject};
use dynamo_core::wire::cluster::ClusterState;
use dynamo_core::wire::internal::{
    FeedPos, HintFor, ListedKey, MAX_BATCH_OPS, MAX_FEED_PAGE, MAX_LIST_PAGE, NodeFeed, NodeListing,
    ReplicaBatch, ReplicaBatchResult, ReplicaOp, ReplicaResult,
};
use dynamo_core::wire::internal::{PullProgress, PullRequest};
use dynamo_core::wire::routes::storage;
use dynamo_core::{BucketName, PartitionId};
use dynamo_server::ApiError;
use dynamo_server::extract::{Json, Path, Query, page_limit};
use serde::{Deserialize, Serialize};

use crate::cluster::{ClusterCache, NodeClusterView};
use crate::engine::{Claim, Engine, KeyRef};
use crate::error::StorageError;
use crate::syncer::Syncer;

/// Longest `Content-Type` stored with a value.
pub const MAX_CONTENT_TYPE_BYTES: usize = 255;
/// Most siblings a replicated object may carry. Above the write-time bound because
/// merges never refuse, yet bounded so a peer cannot make a node hold an unbounded set.
pub const MAX_REPLICATED_SIBLINGS: usize = 4 * MAX_SIBLINGS_LIMIT as usize;
/// Largest page of a partition scan.
pub const MAX_SCAN_PAGE: usize = 1000;
/// Largest page of a digest scan (about 100 bytes per key).
pub const MAX_DIGEST_PAGE: usize = 4096;
/// Most tree nodes asked for in one children request.
pub const MAX_MERKLE_NODES: usize = 4096;

/// Shared state of the handlers.
#[derive(Clone)]
pub struct AppState {
    /// The engine.
    pub engine: Arc<Engine>,
    /// The group-commit syncer (`sync` durability only).
    pub syncer: Option<Syncer>,
    /// The client for node-to-node calls.
    pub client: InternalClient,
    /// Cancelled at shutdown; long pulls stop at their next page.
    pub shutdown: tokio_util::sync::CancellationToken,
    /// The node's cached view of the cluster.
    pub cluster: Arc<ClusterCache>,
    /// How long idempotency records answer repeats (`--idempotency-window-ms`).
    pub idempotency_window_ms: u64,
    /// What anti-entropy has done, for `GET /internal/v1/node`.
    pub anti_entropy: Arc<crate::antientropy::AeProgress>,
}

/// Builds the internal API routes.
pub fn routes(state: AppState) -> Router {
    Router::new()
        .route(storage::REPLICAS, post(replicas))
        .route(storage::NODE, get(node))
        .route(storage::CLUSTER_STATE, get(cluster_state))
        .route(storage::MERKLE, get(merkle_summary))
        .route(storage::MERKLE_CHILDREN, post(merkle_children))
        .route(storage::PARTITION_OBJECTS, get(partition_objects))
        .route(storage::PARTITION_DIGESTS, get(partition_digests))
        .route(storage::PARTITION_PULL, post(partition_pull))
        .route(storage::BUCKET_KEYS, get(bucket_keys))
        .route(storage::BUCKET_CHANGES, get(bucket_changes))
        .with_state(state)
}

fn invalid(code: ErrorCode, message: impl Into<String>) -> ApiError {
    ApiError::new(code, message)
}

/// `503 volume_unconfirmed` while the node's volume gate is closed ([`crate::volume`]).
fn refuse_unconfirmed(state: &AppState) -> Result<(), ApiError> {
    match state.cluster.volume_refusal() {
        Some(why) => Err(ApiError::new(ErrorCode::VolumeUnconfirmed, why)),
        None => Ok(()),
    }
}

fn check_key(key: &str) -> Result<(), ApiError> {
    validate_key(key).map_err(ApiError::from)
}

fn check_hint(h: &Option<HintFor>) -> Result<(), ApiError> {
    if let Some(h) = h
        && !(h.address.starts_with("http://") || h.address.starts_with("https://"))
    {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            "hint address must be an http(s) URL",
        ));
    }
    Ok(())
}

fn check_object(obj: &VersionedObject) -> Result<(), ApiError> {
    if obj.siblings().len() > MAX_REPLICATED_SIBLINGS {
        return Err(invalid(
            ErrorCode::TooManySiblings,
            format!(
                "object has {} siblings; the limit is {MAX_REPLICATED_SIBLINGS}",
                obj.siblings().len()
            ),
        ));
    }
    for s in obj.siblings() {
        if s.value.len() > MAX_VALUE_BYTES {
            return Err(invalid(
                ErrorCode::ValueTooLarge,
                format!("value is {} bytes; the limit is {MAX_VALUE_BYTES}", s.value.len()),
            ));
        }
        if s.content_type.len() > MAX_CONTENT_TYPE_BYTES {
            return Err(invalid(ErrorCode::InvalidRequest, "content type is too long"));
        }
    }
    Ok(())
}

/// Checks a whole batch before anything runs.
fn validate(batch: &ReplicaBatch) -> Result<(), ApiError> {
    if batch.ops.is_empty() || batch.ops.len() > MAX_BATCH_OPS {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            format!(
                "a batch holds 1 to {MAX_BATCH_OPS} operations, got {}",
                batch.ops.len()
            ),
        ));
    }
    for op in &batch.ops {
        match op {
            ReplicaOp::CoordinatePut {
                key,
                value,
                content_type,
                hint,
                tombstone,
                conflict,
                ..
            } => {
                check_key(key)?;
                check_hint(hint)?;
                // A CRDT key holds only states its operations wrote: a plain value
                // there would make every later operation and read fail.
                if matches!(conflict, ConflictRule::Crdt { .. }) {
                    return Err(invalid(
                        ErrorCode::WrongBucketType,
                        "a CRDT bucket's keys change only through CRDT operations",
                    ));
                }
                if value.len() > MAX_VALUE_BYTES {
                    return Err(invalid(
                        ErrorCode::ValueTooLarge,
                        format!("value is {} bytes; the limit is {MAX_VALUE_BYTES}", value.len()),
                    ));
                }
                if *tombstone && !value.is_empty() {
                    return Err(invalid(ErrorCode::InvalidRequest, "a delete carries no value"));
                }
                if content_type.len() > MAX_CONTENT_TYPE_BYTES {
                    return Err(invalid(ErrorCode::InvalidRequest, "content type is too long"));
                }
            }
            ReplicaOp::Replicate {
                key, object, hint, ..
            } => {
                check_key(key)?;
                check_hint(hint)?;
                check_object(object)?;
            }
            ReplicaOp::Replay { key, hint, .. } => {
                check_key(key)?;
                check_hint(hint)?;
            }
            ReplicaOp::CoordinateCrdt {
                key,
                crdt_type,
                operation,
                merge,
                hint,
                ..
            } => {
                check_key(key)?;
                check_hint(hint)?;
                if operation.kind() != *crdt_type {
                    return Err(invalid(
                        ErrorCode::InvalidCrdtOperation,
                        format!("a {} operation does not apply to a {crdt_type}", operation.name()),
                    ));
                }
                if let Some(m) = merge {
                    check_object(m)?;
                }
            }
            ReplicaOp::Get { key, .. } | ReplicaOp::TombstoneStatus { key, .. } => check_key(key)?,
        }
    }
    Ok(())
}

fn op_name(op: &ReplicaOp) -> &'static str {
    match op {
        ReplicaOp::CoordinatePut { .. } => "coordinate_put",
        ReplicaOp::CoordinateCrdt { .. } => "coordinate_crdt",
        ReplicaOp::Replay { .. } => "replay",
        ReplicaOp::Replicate { .. } => "replicate",
        ReplicaOp::Get { .. } => "get",
        ReplicaOp::TombstoneStatus { .. } => "tombstone_status",
    }
}

/// At most once: past its deadline the coordinator has answered the client (an
/// indeterminate 503), and applying a coordinated write now would bring it back after
/// the client moved on (a hung node resumed, a request stuck in a cut link). Replicate
/// needs no deadline: merging a copy late is harmless.
fn before_deadline(deadline_ms: Option<u64>, now: u64) -> Result<(), StorageError> {
    match deadline_ms {
        Some(deadline) if now > deadline => Err(StorageError::DeadlineExceeded {
            late_ms: now - deadline,
        }),
        _ => Ok(()),
    }
}

/// The answer to a coordinated write (or a replay of one), which waits for the group
/// commit like any write: a replay's first attempt may still be unsynced (its answer
/// never reached the coordinator).
fn coordinated(c: crate::engine::Coordinated) -> (ReplicaResult, bool) {
    (
        ReplicaResult::Put {
            object: c.object,
            dot: c.outcome.dot,
            context: c.outcome.context,
            idempotency: c.record,
            replayed: c.replayed,
        },
        true,
    )
}

/// Applies one operation (blocking). Returns the result and whether it wrote.
fn apply(
    engine: &Engine,
    op: ReplicaOp,
    now: u64,
    window_ms: u64,
) -> Result<(ReplicaResult, bool), StorageError> {
    match op {
        ReplicaOp::CoordinatePut {
            bucket,
            key,
            context,
            value,
            content_type,
            tombstone,
            conflict,
            hint,
            deadline_ms,
            idempotency,
        } => {
            before_deadline(deadline_ms, now)?;
            let k = KeyRef {
                bucket: bucket.as_str(),
                key: &key,
            };
            let write = if tombstone {
                NewWrite::tombstone(now)
            } else {
                NewWrite {
                    value,
                    content_type,
                    now_ms: now,
                    tombstone: false,
                }
            };
            let claim = idempotency.map(|claim| Claim {
                claim,
                window_ms,
                now_ms: now,
            });
            let c = engine.coordinate_idempotent(&k, &context, write, conflict, hint.as_ref(), claim)?;
            Ok(coordinated(c))
        }
        ReplicaOp::CoordinateCrdt {
            bucket,
            key,
            crdt_type,
            operation,
            observed,
            merge,
            hint,
            deadline_ms,
            idempotency,
        } => {
            before_deadline(deadline_ms, now)?;
            let k = KeyRef {
                bucket: bucket.as_str(),
                key: &key,
            };
            let claim = idempotency.map(|claim| Claim {
                claim,
                window_ms,
                now_ms: now,
            });
            let c = engine.coordinate_crdt(
                &k,
                crdt_type,
                &operation,
                observed.as_ref(),
                merge.as_ref(),
                now,
                hint.as_ref(),
                claim,
            )?;
            Ok(coordinated(c))
        }
        ReplicaOp::Replay {
            bucket,
            key,
            hint,
            idempotency,
        } => {
            let k = KeyRef {
                bucket: bucket.as_str(),
                key: &key,
            };
            let claim = Claim {
                claim: idempotency,
                window_ms,
                now_ms: now,
            };
            match engine.replay(&k, hint.as_ref(), claim)? {
                // `replay` marks the answer replayed.
                Some(c) => Ok(coordinated(c)),
                None => Ok((
                    ReplicaResult::Error {
                        code: ErrorCode::PreconditionFailed,
                        message: "the precondition does not hold, and this node remembers no write with this Idempotency-Key".into(),
                    },
                    false,
                )),
            }
        }
        ReplicaOp::Replicate {
            bucket,
            key,
            object,
            conflict,
            hint,
            idempotency,
        } => {
            let k = KeyRef {
                bucket: bucket.as_str(),
                key: &key,
            };
            engine.replicate_with_record(&k, &object, conflict, hint.as_ref(), idempotency.as_ref())?;
            Ok((ReplicaResult::Replicated, true))
        }
        ReplicaOp::Get { bucket, key } => {
            let k = KeyRef {
                bucket: bucket.as_str(),
                key: &key,
            };
            Ok((
                ReplicaResult::Got {
                    object: engine.get(&k)?,
                },
                false,
            ))
        }
        ReplicaOp::TombstoneStatus { bucket, key, digest } => {
            let k = KeyRef {
                bucket: bucket.as_str(),
                key: &key,
            };
            let status = engine.tombstone_status(&k, digest)?;
            Ok((
                ReplicaResult::TombstoneStatus {
                    holds: status.holds,
                    collected: status.collected,
                },
                false,
            ))
        }
    }
}

/// Applies a validated batch in order. Returns the results, whether anything was
/// written, and whether the engine failed fatally.
fn apply_batch(
    engine: &Engine,
    ops: Vec<ReplicaOp>,
    now: u64,
    window_ms: u64,
) -> (Vec<ReplicaResult>, bool, bool) {
    let mut results = Vec::with_capacity(ops.len());
    let mut wrote = false;
    let mut fatal = false;
    for op in ops {
        let name = op_name(&op);
        let start = Instant::now();
        let r = apply(engine, op, now, window_ms);
        let m = engine.metrics();
        m.op_duration
            .with_label_values(&[name])
            .observe(start.elapsed().as_secs_f64());
        match r {
            Ok((res, w)) => {
                m.ops.with_label_values(&[name, "ok"]).inc();
                wrote |= w;
                results.push(res);
            }
            Err(e) => {
                fatal |= e.is_fatal();
                let api = ApiError::from(e);
                m.ops.with_label_values(&[name, api.code.as_str()]).inc();
                results.push(ReplicaResult::Error {
                    code: api.code,
                    message: api.message,
                });
            }
        }
    }
    (results, wrote, fatal)
}

/// Fences a batch planned with ring `planned` (module docs of `cluster`): where the node
/// knows a newer ring, an operation without a hint on a partition the node no longer
/// holds is answered `stale_ring` and not applied. And while the node knows of a
/// membership change in progress, it approves no tombstone collection (a
/// `tombstone_status` answers neither `holds` nor `collected`): a new holder may have
/// copied the value the tombstone deletes, and would keep it if the tombstone went before
/// the catch-up. Returns the operations to apply, and per operation of the batch its
/// answer when it is not applied (`None`: applied, in order).
fn fence(
    engine: &Engine,
    admission: &crate::cluster::Admission<'_>,
    planned: Option<dynamo_core::RingEpoch>,
    ops: Vec<ReplicaOp>,
) -> (Vec<ReplicaOp>, Vec<Option<ReplicaResult>>) {
    let state = admission.state.as_deref();
    let changing = state.is_some_and(ClusterState::change_in_progress);
    // The ring to fence by: only a batch planned with an older one is fenced.
    let fencing = match (state, planned) {
        (Some(s), Some(planned)) if planned < admission.epoch() => s.ring.as_ref().map(|r| (s, r, planned)),
        _ => None,
    };
    let mut keep = Vec::with_capacity(ops.len());
    let answers = ops
        .into_iter()
        .map(|op| {
            let answer = if changing && matches!(op, ReplicaOp::TombstoneStatus { .. }) {
                Some(ReplicaResult::TombstoneStatus {
                    holds: false,
                    collected: false,
                })
            } else {
                fencing.and_then(|(cluster, ring, planned)| {
                    stale(engine, cluster, ring, planned, admission.epoch(), &op)
                })
            };
            if answer.is_none() {
                keep.push(op);
            }
            answer
        })
        .collect();
    (keep, answers)
}

/// The `stale_ring` answer for `op`, planned with ring `planned` on a node at `epoch`
/// whose state is `cluster`, when the node no longer holds its partition and it carries
/// no hint; `None` when it is to be applied.
fn stale(
    engine: &Engine,
    cluster: &ClusterState,
    ring: &dynamo_core::ring::Ring,
    planned: dynamo_core::RingEpoch,
    epoch: dynamo_core::RingEpoch,
    op: &ReplicaOp,
) -> Option<ReplicaResult> {
    let (bucket, key, hinted) = match op {
        ReplicaOp::CoordinatePut {
            bucket, key, hint, ..
        }
        | ReplicaOp::CoordinateCrdt {
            bucket, key, hint, ..
        }
        | ReplicaOp::Replay {
            bucket, key, hint, ..
        }
        | ReplicaOp::Replicate {
            bucket, key, hint, ..
        } => (bucket, key, hint.is_some()),
        ReplicaOp::Get { bucket, key } | ReplicaOp::TombstoneStatus { bucket, key, .. } => {
            (bucket, key, false)
        }
    };
    let p = ring
        .partitioning()
        .partition_of(dynamo_core::key_hash(bucket.as_str(), key));
    if hinted || cluster.holds(&engine.identity().node_id, p) {
        return None;
    }
    engine
        .metrics()
        .ops
        .with_label_values(&[op_name(op), ErrorCode::StaleRing.as_str()])
        .inc();
    Some(ReplicaResult::Error {
        code: ErrorCode::StaleRing,
        message: format!(
            "planned with ring epoch {} but this node is at {} and no longer holds partition {}",
            planned.0, epoch, p.0
        ),
    })
}

async fn replicas(
    State(state): State<AppState>,
    Json(batch): Json<ReplicaBatch>,
) -> Result<Json<ReplicaBatchResult>, ApiError> {
    validate(&batch)?;
    let engine = &state.engine;
    engine.metrics().batch_ops.observe(batch.ops.len() as f64);
    // Answered per operation, as a fenced one is: each is provably not applied, so a
    // coordinator moves on to the next replica or a fallback at once.
    if let Some(why) = state.cluster.volume_refusal() {
        let results = batch
            .ops
            .iter()
            .map(|_| ReplicaResult::Error {
                code: ErrorCode::VolumeUnconfirmed,
                message: why.clone(),
            })
            .collect();
        return Ok(Json(ReplicaBatchResult { results }));
    }
    let admission = state.cluster.admit();
    let (ops, mut fenced) = fence(engine, &admission, batch.ring_epoch, batch.ops);
    let now = now_ms();
    // The batch is applied inline, on the async worker, with no await inside: it cannot be
    // cancelled half-way (a dot once minted is stored, STYLE §6), and it skips the
    // hand-off to a blocking thread, which cost this node more CPU in context switches
    // than the fjall calls themselves (docs/benchmarks.md, profile). Each operation is a
    // point read or a one-key batch to the journal (no fsync: that is the syncer's), and
    // a batch is at most `MAX_BATCH_OPS` of them, so the worker is held only briefly.
    let (applied, wrote, fatal) = apply_batch(engine, ops, now, state.idempotency_window_ms);
    drop(admission);
    let mut applied = applied.into_iter();
    let results = fenced
        .iter_mut()
        .map(|r| r.take().or_else(|| applied.next()))
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, "a replica result went missing"))?;
    if fatal {
        // fjall poisons itself after a failed journal write: nothing more can be trusted
        // to disk. Stop, and let the restart recover from the journal (STYLE §4).
        tracing::error!("storage engine poisoned; exiting");
        std::process::exit(70);
    }
    if wrote && let Some(syncer) = &state.syncer {
        syncer.barrier().await.map_err(ApiError::from)?;
    }
    Ok(Json(ReplicaBatchResult { results }))
}

#[derive(Serialize)]
struct NodeInfo {
    node_id: String,
    incarnation: String,
    durability: crate::engine::Durability,
    partitions: u32,
    anti_entropy: dynamo_core::wire::cluster::AntiEntropyStatus,
    volume: dynamo_core::VolumeId,
    /// Why the volume gate is closed, if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    volume_refusal: Option<String>,
}

async fn node(State(state): State<AppState>) -> Json<NodeInfo> {
    let e = &state.engine;
    Json(NodeInfo {
        node_id: e.identity().node_id.to_string(),
        incarnation: e.identity().incarnation.to_string(),
        durability: e.durability(),
        partitions: e.partitioning().count(),
        anti_entropy: state.anti_entropy.status(),
        volume: e.identity().volume,
        volume_refusal: state.cluster.volume_refusal(),
    })
}

async fn cluster_state(State(state): State<AppState>) -> Json<NodeClusterView> {
    Json(state.cluster.view())
}

fn partition(engine: &Engine, p: u32) -> Result<PartitionId, ApiError> {
    if p >= engine.partitioning().count() {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            format!(
                "partition {p} is not below the partition count {}",
                engine.partitioning().count()
            ),
        ));
    }
    Ok(PartitionId(p))
}

/// Query of `GET /internal/v1/merkle/{partition}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MerkleQuery {
    /// The ring epoch the asker compares under. A node with a newer ring refuses
    /// (`stale_ring`): an exchange planned with an old ring could push this partition's
    /// keys from a node that has let them go (or is about to), and bring back deletes
    /// collected since.
    epoch: Option<u64>,
}

async fn merkle_summary(
    State(state): State<AppState>,
    Path(p): Path<u32>,
    Query(q): Query<MerkleQuery>,
) -> Result<Json<MerkleSummary>, ApiError> {
    let p = partition(&state.engine, p)?;
    let have = state.cluster.ring_epoch();
    if let Some(asked) = q.epoch
        && asked < have.0
    {
        return Err(invalid(
            ErrorCode::StaleRing,
            format!("compared under ring epoch {asked}; this node is at {have}"),
        ));
    }
    state
        .engine
        .with_merkle(p, |t| t.summary())
        .map(Json)
        .ok_or_else(|| invalid(ErrorCode::InvalidRequest, "no such partition"))
}

/// Body of a children request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChildrenRequest {
    /// The tree nodes whose children are asked, at most [`MAX_MERKLE_NODES`].
    pub nodes: Vec<TreeNode>,
}

/// Answer to a [`ChildrenRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ChildrenResponse {
    /// Child values of each asked node, in the order asked.
    pub children: Vec<Vec<u128>>,
}

async fn merkle_children(
    State(state): State<AppState>,
    Path(p): Path<u32>,
    Json(req): Json<ChildrenRequest>,
) -> Result<Json<ChildrenResponse>, ApiError> {
    let p = partition(&state.engine, p)?;
    if req.nodes.len() > MAX_MERKLE_NODES {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            format!("at most {MAX_MERKLE_NODES} nodes per request"),
        ));
    }
    let children = state
        .engine
        .with_merkle(p, |t| {
            req.nodes
                .iter()
                .map(|n| t.children(n.level, n.index).map(<[u128]>::to_vec))
                .collect::<Result<Vec<Vec<u128>>, _>>()
        })
        .ok_or_else(|| invalid(ErrorCode::InvalidRequest, "no such partition"))?
        .map_err(|e| invalid(e.code(), e.to_string()))?;
    Ok(Json(ChildrenResponse { children }))
}

/// Query of a partition scan.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanQuery {
    /// First key hash (inclusive); default the partition's first.
    start: Option<u64>,
    /// Last key hash (inclusive); default the partition's last.
    end: Option<u64>,
    /// Resume after this cursor (from a previous page).
    after: Option<String>,
    /// Page size (default and maximum [`MAX_SCAN_PAGE`]).
    limit: Option<usize>,
    /// Answer only once this node fences ring epochs older than this (a catch-up copy:
    /// see `ClusterCache::drained`); `503 ring_behind` if it does not within
    /// [`DRAIN_TIMEOUT`]. Objects and digest scans alike.
    min_epoch: Option<u64>,
}

/// How long an object scan with `min_epoch` waits for the node to know that ring and
/// finish what it admitted under older ones (the ring service's long-poll brings a new
/// ring in milliseconds; the handoff retries after this).
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// One object of a scan page.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScannedObject {
    /// The bucket.
    pub bucket: BucketName,
    /// The key.
    pub key: String,
    /// Its versions.
    pub object: VersionedObject,
}

/// A page of a partition scan.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScanPage {
    /// The objects, in storage order.
    pub objects: Vec<ScannedObject>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// A scan's range, checked: the partition, its hash bounds, the cursor and the page size.
struct ScanRange {
    p: PartitionId,
    start: u64,
    end: u64,
    after: Option<Vec<u8>>,
    limit: usize,
}

fn scan_range(engine: &Engine, p: u32, q: ScanQuery, max_page: usize) -> Result<ScanRange, ApiError> {
    let p = partition(engine, p)?;
    let parts = engine.partitioning();
    let (lo, hi) = (parts.start_of(p), parts.end_of(p));
    let start = q.start.unwrap_or(lo);
    let end = q.end.unwrap_or(hi);
    if start < lo || end > hi || start > end {
        return Err(invalid(
            ErrorCode::InvalidParameter,
            "the hash range must lie inside the partition",
        ));
    }
    let limit = page_limit(q.limit, max_page, max_page)?;
    let after = match q.after {
        Some(c) => Some(
            URL_SAFE_NO_PAD
                .decode(c)
                .map_err(|_| invalid(ErrorCode::InvalidParameter, "after is not a cursor"))?,
        ),
        None => None,
    };
    Ok(ScanRange {
        p,
        start,
        end,
        after,
        limit,
    })
}

/// [`scan_range`] of a scan that asked for `min_epoch` (a catch-up copy): answered only
/// once this node fences older rings (`ClusterCache::drained`), else `ring_behind`.
async fn fenced_range(
    state: &AppState,
    p: u32,
    q: ScanQuery,
    max_page: usize,
) -> Result<ScanRange, ApiError> {
    if let Some(min) = q.min_epoch {
        state
            .cluster
            .drained(dynamo_core::RingEpoch(min), DRAIN_TIMEOUT)
            .await
            .map_err(|e| ApiError::new(ErrorCode::RingBehind, e.to_string()))?;
    }
    scan_range(&state.engine, p, q, max_page)
}

fn bucket_of(k: &crate::codec::ObjectKey) -> Result<BucketName, ApiError> {
    BucketName::new(k.bucket.clone()).map_err(ApiError::from)
}

async fn partition_objects(
    State(state): State<AppState>,
    Path(p): Path<u32>,
    Query(q): Query<ScanQuery>,
) -> Result<Json<ScanPage>, ApiError> {
    let r = fenced_range(&state, p, q, MAX_SCAN_PAGE).await?;
    let engine = state.engine.clone();
    let (objects, next) =
        tokio::task::spawn_blocking(move || engine.scan(r.p, r.start, r.end, r.after.as_deref(), r.limit))
            .await
            .map_err(|e| ApiError::from(StorageError::from(e)))?
            .map_err(ApiError::from)?;
    let objects = objects
        .into_iter()
        .map(|(k, object)| {
            Ok(ScannedObject {
                bucket: bucket_of(&k)?,
                key: k.key,
                object,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(ScanPage {
        objects,
        next: next.map(|n| URL_SAFE_NO_PAD.encode(n)),
    }))
}

/// One key of a digest page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScannedDigest {
    /// The bucket.
    pub bucket: BucketName,
    /// The key.
    pub key: String,
    /// The digest of its whole version set.
    pub digest: u128,
}

/// A page of a digest scan.
#[derive(Debug, Serialize, Deserialize)]
pub struct DigestPage {
    /// The keys, in storage order.
    pub keys: Vec<ScannedDigest>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

async fn partition_digests(
    State(state): State<AppState>,
    Path(p): Path<u32>,
    Query(q): Query<ScanQuery>,
) -> Result<Json<DigestPage>, ApiError> {
    let r = fenced_range(&state, p, q, MAX_DIGEST_PAGE).await?;
    let engine = state.engine.clone();
    let (keys, next) = tokio::task::spawn_blocking(move || {
        engine.scan_digests(r.p, r.start, r.end, r.after.as_deref(), r.limit)
    })
    .await
    .map_err(|e| ApiError::from(StorageError::from(e)))?
    .map_err(ApiError::from)?;
    let keys = keys
        .into_iter()
        .map(|(k, digest)| {
            Ok(ScannedDigest {
                bucket: bucket_of(&k)?,
                key: k.key,
                digest,
            })
        })
        .collect::<Result<Vec<_>, ApiError>>()?;
    Ok(Json(DigestPage {
        keys,
        next: next.map(|n| URL_SAFE_NO_PAD.encode(n)),
    }))
}

/// Default time one pull call copies before answering with a cursor: well under the ring
/// service's per-request timeout, so a large partition is copied over several calls.
pub const DEFAULT_PULL_BUDGET_MS: u64 = 20_000;
/// Longest budget a pull call may ask for.
pub const MAX_PULL_BUDGET_MS: u64 = 50_000;

async fn partition_pull(
    State(state): State<AppState>,
    Path(p): Path<u32>,
    Json(req): Json<PullRequest>,
) -> Result<Json<PullProgress>, ApiError> {
    let p = partition(&state.engine, p)?;
    if !(req.source.starts_with("http://") || req.source.starts_with("https://")) {
        return Err(invalid(
            ErrorCode::InvalidRequest,
            "source must be an http(s) URL",
        ));
    }
    let budget = std::time::Duration::from_millis(
        req.budget_ms
            .unwrap_or(DEFAULT_PULL_BUDGET_MS)
            .clamp(1, MAX_PULL_BUDGET_MS),
    );
    // The pull runs in its own task: a caller that hangs up does not leave a page half
    // merged, and the progress so far stays on disk either way.
    let task = tokio::spawn(async move {
        crate::handoff::pull_partition(&state.engine, &state.client, p, req, budget, &state.shutdown).await
    });
    match task.await {
        Ok(Ok(progress)) => Ok(Json(progress)),
        Ok(Err(crate::handoff::PullError::Source(e))) => Err(invalid(
            ErrorCode::SourceUnavailable,
            format!("source did not answer: {e}"),
        )),
        Ok(Err(crate::handoff::PullError::Storage(e))) => Err(ApiError::from(e)),
        Err(e) => Err(ApiError::from(StorageError::from(e))),
    }
}

/// Query of a listing page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    #[serde(default)]
    prefix: String,
    start_after: Option<String>,
    limit: Option<usize>,
}

/// Most index entries one listing page looks at: keys whose copies are gone are skipped,
/// and this bounds the work of a page over many of them.
const MAX_LIST_SCAN: usize = 4 * MAX_LIST_PAGE;

async fn bucket_keys(
    State(state): State<AppState>,
    Path(bucket): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<NodeListing>, ApiError> {
    refuse_unconfirmed(&state)?;
    let bucket = BucketName::new(bucket).map_err(ApiError::from)?;
    let limit = page_limit(q.limit, MAX_LIST_PAGE, MAX_LIST_PAGE)?;
    for k in std::iter::once(&q.prefix).chain(q.start_after.as_ref()) {
        if k.len() > dynamo_core::limits::MAX_KEY_BYTES {
            return Err(invalid(
                ErrorCode::InvalidKey,
                "prefix and start_after are keys: at most 1024 bytes",
            ));
        }
    }
    let engine = state.engine.clone();
    let page = tokio::task::spawn_blocking(move || {
        engine.list_page(
            bucket.as_str(),
            &q.prefix,
            q.start_after.as_deref(),
            limit,
            MAX_LIST_SCAN,
        )
    })
    .await
    .map_err(StorageError::from)??;
    Ok(Json(NodeListing {
        keys: page
            .entries
            .into_iter()
            .map(|(key, object)| ListedKey { key, object })
            .collect(),
        stopped_at: page.stopped_at,
    }))
}

/// Query of a change-log page.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChangesQuery {
    /// Entries after this position (`run.seq`); absent: only the head is answered, unless
    /// `from_start`.
    after: Option<FeedPos>,
    /// Without `after`: every retained entry, from the oldest (a reader that never saw
    /// this node).
    #[serde(default)]
    from_start: bool,
    limit: Option<usize>,
    /// Wait up to this long for an entry when there is none yet.
    #[serde(default)]
    wait_ms: u64,
}

use dynamo_core::wire::public::MAX_FEED_WAIT_MS;

async fn bucket_changes(
    State(state): State<AppState>,
    Path(bucket): Path<String>,
    Query(q): Query<ChangesQuery>,
) -> Result<Json<NodeFeed>, ApiError> {
    refuse_unconfirmed(&state)?;
    let bucket = BucketName::new(bucket).map_err(ApiError::from)?;
    let limit = page_limit(q.limit, MAX_FEED_PAGE, MAX_FEED_PAGE)?;
    if q.wait_ms > MAX_FEED_WAIT_MS {
        return Err(invalid(
            ErrorCode::InvalidParameter,
            format!("wait_ms must be at most {MAX_FEED_WAIT_MS}"),
        ));
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_millis(q.wait_ms);
    // Subscribed before each read, so a commit between the read and the wait wakes it.
    let mut signal = state.engine.feed_signal();
    loop {
        signal.borrow_and_update();
        let engine = state.engine.clone();
        let b = bucket.clone();
        let (after, from_start) = (q.after, q.from_start);
        let page = tokio::task::spawn_blocking(move || {
            if after.is_none() && !from_start {
                // "From now": only where now is.
                return Ok((Vec::new(), engine.feed_head()));
            }
            engine
                .feed_page(b.as_str(), after, limit)
                .map(|p| (p.entries, p.head))
        })
        .await
        .map_err(StorageError::from)??;
        let (entries, head) = page;
        let waiting = after.is_some() || from_start;
        if !entries.is_empty() || !waiting || tokio::time::Instant::now() >= deadline {
            return Ok(Json(NodeFeed { entries, head }));
        }
        tokio::select! {
            changed = signal.changed() => {
                if changed.is_err() {
                    return Ok(Json(NodeFeed { entries, head }));
                }
            }
            () = tokio::time::sleep_until(deadline) => {}
            () = state.shutdown.cancelled() => return Ok(Json(NodeFeed { entries, head })),
        }
    }
}
