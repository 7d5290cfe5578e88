//! `GET /v1/feed/{bucket}`: the change feed, over every storage node's change log.
//!
//! Each storage node logs every change of a copy it holds (`dynamo-storage`'s
//! `engine::feed`), so a write acknowledged by W replicas is in W logs. The cursor is a
//! position in each node's log, carried by the client (self-contained: any coordinator,
//! also after a restart, continues from it). A page asks every node for its entries
//! after its position, long-polling; a write is delivered once some node that logged it
//! answers, and the cursor advances only past what was delivered, so delivery is at
//! least once. Within a page, a key's changes are deduplicated (the same change from
//! several replicas) and put in causal order.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dynamo_core::wire::internal::{FeedEntry, FeedPos, MAX_FEED_PAGE, NodeFeed};
use dynamo_core::wire::public::{FeedChange, FeedPage as FeedAnswer, MAX_FEED_WAIT_MS};
use futures::StreamExt;
use serde::Serialize;

use super::*;

/// The default page size.
pub const DEFAULT_FEED_LIMIT: usize = 100;
/// Longest cursor token accepted (a position per node: far above any real cluster's).
pub const MAX_CURSOR_BYTES: usize = 16 * 1024;
/// How long the other nodes may still answer once one answered with changes.
const GATHER_GRACE: Duration = Duration::from_millis(50);
/// The time a node has to answer beyond the long poll's wait.
const NODE_SLACK: Duration = Duration::from_secs(2);

/// Query of a feed page.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct FeedParams {
    /// The previous page's `cursor`; absent: start from now (the page is empty, with a
    /// cursor to continue from).
    #[param(max_length = 16384, pattern = "^[A-Za-z0-9_-]*$")]
    pub cursor: Option<String>,
    /// Most changes in the page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
    /// Wait up to this many milliseconds for a change when there is none (default 0).
    #[param(minimum = 0, maximum = 30000)]
    pub wait_ms: Option<u64>,
}

/// The cursor, as its token carries it: the bucket and a position per node.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cursor {
    v: u8,
    b: String,
    n: BTreeMap<String, FeedPos>,
}

impl Cursor {
    fn encode(&self) -> String {
        // A map of strings to positions always serializes.
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).unwrap_or_default())
    }

    fn decode(token: &str, bucket: &BucketName) -> Result<Cursor, ApiError> {
        let bad = |why: &str| ApiError::new(ErrorCode::InvalidParameter, format!("cursor: {why}"));
        if token.len() > MAX_CURSOR_BYTES {
            return Err(bad("too long"));
        }
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| bad("not base64url"))?;
        let c: Cursor = serde_json::from_slice(&raw).map_err(|_| bad("not a cursor"))?;
        if c.v != 1 {
            return Err(bad("unknown version"));
        }
        if c.b != bucket.as_str() {
            return Err(bad("issued for another bucket"));
        }
        if c.n.keys().any(|id| NodeId::new(id.clone()).is_err()) {
            return Err(bad("not a cursor"));
        }
        Ok(c)
    }
}

/// `GET /v1/feed/{bucket}`.
#[utoipa::path(get, path = "/v1/feed/{bucket}", tag = "objects",
    params(("bucket" = String, Path, pattern = "^[a-z0-9._-]{1,63}$"), FeedParams),
    responses(
        (status = 200, description = "Changes after the cursor (none without one), and the cursor to continue from", body = FeedAnswer),
        (status = 400, description = "Bad bucket or query: a malformed cursor, one of another bucket, `limit` outside 1-1000, `wait_ms` over 30000 (`invalid_parameter`), a bad bucket (`invalid_bucket`), an unknown parameter (`invalid_request`)", body = ErrorBody),
        (status = 403, description = "The token lacks `read` on the bucket (`forbidden`)", body = ErrorBody),
        (status = 410, description = "The cursor is older than the feed's retention: start again without one (`cursor_expired`)", body = ErrorBody),
        (status = 503, description = "No storage node answered (`quorum_unavailable`); no ring yet (`ring_unavailable`)", body = ErrorBody)))]
pub async fn get_feed(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(bucket): Path<String>,
    Query(params): Query<FeedParams>,
) -> Result<Json<FeedAnswer>, ApiError> {
    let start = Instant::now();
    let r = feed(&state, &principal, bucket, params).await;
    observe(&state.metrics, "feed", start, &r);
    r.map(Json)
}

async fn feed(
    state: &AppState,
    principal: &Principal,
    bucket: String,
    params: FeedParams,
) -> Result<FeedAnswer, ApiError> {
    let bucket = bucket_name(bucket)?;
    principal.require(Permission::Read, Some(&bucket))?;
    let limit = page_limit(params.limit, DEFAULT_FEED_LIMIT, MAX_FEED_PAGE)?;
    let wait_ms = params.wait_ms.unwrap_or(0);
    if wait_ms > MAX_FEED_WAIT_MS {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            format!("wait_ms must be at most {MAX_FEED_WAIT_MS}, got {wait_ms}"),
        ));
    }
    let cursor = params
        .cursor
        .as_deref()
        .map(|t| Cursor::decode(t, &bucket))
        .transpose()?;
    let ring = state.cache.ring()?;
    let nodes = super::list::up_nodes(state, &ring);

    let Some(mut cursor) = cursor else {
        // From now: every node's head, nothing delivered.
        let heads = ask(state, &nodes, &bucket, &Cursor::default(), false, limit, 0).await?;
        if heads.is_empty() {
            return Err(no_node());
        }
        let cursor = Cursor {
            v: 1,
            b: bucket.to_string(),
            n: heads
                .into_iter()
                .map(|(id, f)| (id.to_string(), f.head))
                .collect(),
        };
        return Ok(FeedAnswer {
            changes: Vec::new(),
            cursor: cursor.encode(),
        });
    };

    let pages = ask(state, &nodes, &bucket, &cursor, true, limit, wait_ms).await?;
    if pages.is_empty() && !nodes.is_empty() {
        return Err(no_node());
    }
    let taken = take(&mut cursor, pages, limit);
    let changes = order(taken)
        .into_iter()
        .map(|e| FeedChange {
            context: KeyContexts::new(state, &bucket, &e.key).seal(&e.context),
            key: e.key,
            deleted: e.deleted,
        })
        .collect();
    Ok(FeedAnswer {
        changes,
        cursor: cursor.encode(),
    })
}

fn no_node() -> ApiError {
    ApiError::new(
        ErrorCode::QuorumUnavailable,
        "no storage node answered the feed: retry",
    )
}

/// Asks every node for its entries after its position in `cursor` (a node the cursor
/// does not know: from its oldest retained entry, when `read`; only its head
/// otherwise). Once one answers with entries, the others have [`GATHER_GRACE`] more.
///
/// # Errors
/// `410 cursor_expired` when a node purged entries after its position.
#[allow(clippy::too_many_arguments)]
async fn ask(
    state: &AppState,
    nodes: &[(NodeId, String)],
    bucket: &BucketName,
    cursor: &Cursor,
    read: bool,
    limit: usize,
    wait_ms: u64,
) -> Result<Vec<(NodeId, NodeFeed)>, ApiError> {
    let path = routes::storage::bucket_changes(bucket);
    let mut asks: futures::stream::FuturesUnordered<_> = nodes
        .iter()
        .map(|(id, address)| {
            let url = routes::url(address, &path);
            let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            if read {
                match cursor.n.get(id.as_str()) {
                    Some(pos) => query.push(("after", pos.to_string())),
                    None => query.push(("from_start", "true".to_owned())),
                }
                query.push(("wait_ms", wait_ms.to_string()));
            }
            async move {
                let r = state
                    .member_client
                    .get(url)
                    .query(&query)
                    .timeout(Duration::from_millis(wait_ms) + NODE_SLACK)
                    .send()
                    .await;
                // `Ok(None)`: no page from this node now (it keeps its position).
                let answer: Result<Option<NodeFeed>, ApiError> = match r {
                    Ok(r) if r.status() == StatusCode::GONE => Err(ring_error(r).await),
                    Ok(r) if r.status().is_success() => Ok(r.json::<NodeFeed>().await.ok()),
                    Ok(r) => {
                        tracing::debug!(node = %id, status = %r.status(), "no feed page");
                        Ok(None)
                    }
                    Err(e) => {
                        tracing::debug!(node = %id, error = %e.without_url(), "no feed page");
                        Ok(None)
                    }
                };
                (id.clone(), answer)
            }
        })
        .collect();
    let mut pages = Vec::new();
    let mut grace: Option<tokio::time::Instant> = None;
    loop {
        let next = match grace {
            Some(until) => match tokio::time::timeout_at(until, asks.next()).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => asks.next().await,
        };
        let Some((id, answer)) = next else { break };
        // A node that did not answer keeps its position; it is asked again next page.
        if let Some(page) = answer? {
            if !page.entries.is_empty() && grace.is_none() {
                grace = Some(tokio::time::Instant::now() + GATHER_GRACE);
            }
            pages.push((id, page));
        }
    }
    Ok(pages)
}

/// Takes at most `limit` entries from the nodes' pages, a node at a time in turn, and
/// advances each node's position in `cursor` past exactly what was taken (to its head
/// when all of its page was taken and the page was not full).
fn take(cursor: &mut Cursor, pages: Vec<(NodeId, NodeFeed)>, limit: usize) -> Vec<FeedEntry> {
    let mut queues: Vec<(NodeId, std::collections::VecDeque<FeedEntry>, FeedPos, bool)> = pages
        .into_iter()
        .map(|(id, p)| {
            let full = p.entries.len() >= limit;
            (id, p.entries.into(), p.head, full)
        })
        .collect();
    let mut taken = Vec::new();
    'fill: loop {
        let mut any = false;
        for (id, q, _, _) in &mut queues {
            if taken.len() == limit {
                break 'fill;
            }
            if let Some(e) = q.pop_front() {
                cursor.n.insert(id.to_string(), e.pos);
                taken.push(e);
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    for (id, q, head, full) in queues {
        if q.is_empty() && !full {
            // Everything this node had up to its head was delivered.
            let pos = cursor.n.entry(id.to_string()).or_default();
            *pos = (*pos).max(head);
        }
    }
    taken
}

/// Drops the repeats of a change (the same key and context, logged by several replicas)
/// and puts each key's changes in causal order (by the number of writes their contexts
/// hold: a context that includes another holds more), keys in the order they first
/// appear.
fn order(taken: Vec<FeedEntry>) -> Vec<FeedEntry> {
    let mut by_key: Vec<(String, Vec<FeedEntry>)> = Vec::new();
    for e in taken {
        match by_key.iter_mut().find(|(k, _)| *k == e.key) {
            Some((_, es)) => {
                if !es
                    .iter()
                    .any(|x| x.context == e.context && x.deleted == e.deleted)
                {
                    es.push(e);
                }
            }
            None => by_key.push((e.key.clone(), vec![e])),
        }
    }
    let size = |c: &DotSet| c.vector().map(|(_, n)| n).sum::<u64>() + c.cloud_len() as u64;
    let mut out = Vec::new();
    for (_, mut es) in by_key {
        es.sort_by_key(|e| size(&e.context));
        out.extend(es);
    }
    out
}
