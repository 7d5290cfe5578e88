//! `GET /v1/kv/{bucket}?list`: a bucket's keys by prefix, in pages, in key byte order.
//!
//! A coverage query (Riak's idea): every storage node answers a page from its listing
//! index, with each key's versions (values left out); the coordinator merges the pages
//! key by key, as a read merges replicas, and keeps the keys with a live value. A key
//! written before the listing and not deleted is on W replicas, so it is found while one
//! of them answers; a key whose delete was acknowledged is found deleted while one of the
//! delete's replicas answers. A page is refused (`503`) when some partition has no
//! answering replica, rather than silently missing its keys.
//!
//! Paging: each node's page stops at a key of its own (its page is full); keys past the
//! smallest such stop are not known from every node yet, so the coordinator answers only
//! up to it, and the next page starts after the last key answered. Pages never overlap,
//! so a key is answered at most once.

use dynamo_core::version::ConflictRule;
use dynamo_core::wire::internal::{MAX_LIST_PAGE, NodeListing};
use dynamo_core::wire::public::KeyList;

use super::*;

/// The default page size.
pub const DEFAULT_LIST_LIMIT: usize = 100;

/// How many rounds of node pages one answer may take when the keys found are deleted
/// ones (each round asks every node again, after the last stop).
const MAX_LIST_ROUNDS: usize = 8;

/// How long a node has to answer its page.
const NODE_LIST_TIMEOUT: Duration = Duration::from_secs(2);

/// Query of a listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Present (its value is ignored): list the bucket's keys. Required.
    #[param(required = true)]
    pub list: Option<String>,
    /// Only keys that start with this (default: every key).
    #[param(max_length = 1024)]
    pub prefix: Option<String>,
    /// Only keys after this one (the previous page's `next`).
    #[param(max_length = 1024)]
    pub start_after: Option<String>,
    /// Most keys in the page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

/// `GET /v1/kv/{bucket}?list`.
#[utoipa::path(get, path = "/v1/kv/{bucket}", tag = "objects",
    params(("bucket" = String, Path, pattern = "^[a-z0-9._-]{1,63}$"), ListParams),
    responses(
        (status = 200, description = "A page of keys with a live value, in byte order", body = KeyList),
        (status = 400, description = "Bad bucket or query: `list` missing, `limit` outside 1-1000 (`invalid_parameter`), a prefix or start_after over 1024 bytes (`invalid_key`), a bad bucket (`invalid_bucket`), an unknown parameter (`invalid_request`)", body = ErrorBody),
        (status = 403, description = "The token lacks `read` on the bucket (`forbidden`)", body = ErrorBody),
        (status = 503, description = "No replica of some partition answered: the page could miss keys (`quorum_unavailable`); no ring yet (`ring_unavailable`)", body = ErrorBody)))]
pub async fn list_keys(
    State(state): State<Arc<AppState>>,
    Extension(principal): Extension<Principal>,
    Path(bucket): Path<String>,
    Query(params): Query<ListParams>,
) -> Result<Json<KeyList>, ApiError> {
    let start = Instant::now();
    let r = list(&state, &principal, bucket, params).await;
    observe(&state.metrics, "list", start, &r);
    r.map(Json)
}

async fn list(
    state: &AppState,
    principal: &Principal,
    bucket: String,
    params: ListParams,
) -> Result<KeyList, ApiError> {
    let bucket = bucket_name(bucket)?;
    principal.require(Permission::Read, Some(&bucket))?;
    if params.list.is_none() {
        return Err(ApiError::new(
            ErrorCode::InvalidParameter,
            "add ?list to list the bucket's keys",
        ));
    }
    let limit = page_limit(params.limit, DEFAULT_LIST_LIMIT, MAX_LIST_PAGE)?;
    let prefix = params.prefix.unwrap_or_default();
    for k in std::iter::once(&prefix).chain(params.start_after.as_ref()) {
        if k.len() > dynamo_core::limits::MAX_KEY_BYTES {
            return Err(ApiError::new(
                ErrorCode::InvalidKey,
                "prefix and start_after are at most 1024 bytes",
            ));
        }
    }
    let ring = state.cache.ring()?;
    let (props, _) = state.cache.bucket(&bucket, &state.config.default_props());
    // The coverage check decides whether the nodes believed up suffice.
    let nodes = up_nodes(state, &ring);

    let mut keys: Vec<String> = Vec::new();
    let mut after = params.start_after;
    for _ in 0..MAX_LIST_ROUNDS {
        let want = limit - keys.len();
        let pages = ask_nodes(state, &nodes, &bucket, &prefix, after.as_deref(), want).await;
        check_coverage(&ring, usize::from(props.n), &pages)?;
        let (live, stop) = merge_pages(pages.into_values(), want);
        keys.extend(live);
        match stop {
            // Every node reached the end of the range: this is the last page.
            None => return Ok(KeyList { keys, next: None }),
            Some(stop) if keys.len() == limit => {
                return Ok(KeyList {
                    next: keys.last().cloned().or(Some(stop)),
                    keys,
                });
            }
            // Deleted keys filled the nodes' pages: look further.
            Some(stop) => after = Some(stop),
        }
    }
    let next = keys.last().cloned().max(after);
    Ok(KeyList { keys, next })
}

/// The members the failure detector believes up, with their addresses: the nodes a
/// coverage query asks (a hung one would hold the page for its whole timeout).
pub(crate) fn up_nodes(state: &AppState, ring: &dynamo_core::ring::Ring) -> Vec<(NodeId, String)> {
    ring.members()
        .iter()
        .filter(|(id, _)| state.coord.is_up(ring, id))
        .filter_map(|(id, m)| m.address.clone().map(|a| (id.clone(), a)))
        .collect()
}

/// Asks every node for its page; the answers of those that answered, by node.
async fn ask_nodes(
    state: &AppState,
    nodes: &[(NodeId, String)],
    bucket: &BucketName,
    prefix: &str,
    after: Option<&str>,
    limit: usize,
) -> std::collections::BTreeMap<NodeId, NodeListing> {
    let path = routes::storage::bucket_keys(bucket);
    let asks = nodes.iter().map(|(id, address)| {
        let url = routes::url(address, &path);
        let mut query: Vec<(&str, String)> =
            vec![("prefix", prefix.to_owned()), ("limit", limit.to_string())];
        if let Some(a) = after {
            query.push(("start_after", a.to_owned()));
        }
        async move {
            let r = state
                .member_client
                .get(url)
                .query(&query)
                .timeout(NODE_LIST_TIMEOUT)
                .send()
                .await;
            let page = match r {
                Ok(r) => r.error_for_status().ok()?.json::<NodeListing>().await.ok()?,
                Err(e) => {
                    tracing::debug!(node = %id, error = %e.without_url(), "no listing page");
                    return None;
                }
            };
            Some((id.clone(), page))
        }
    });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Refuses a page when some partition has no replica among the nodes that answered: its
/// keys could be missing.
fn check_coverage(
    ring: &dynamo_core::ring::Ring,
    n: usize,
    pages: &std::collections::BTreeMap<NodeId, NodeListing>,
) -> Result<(), ApiError> {
    let owners = ring.owners();
    for (p, owner) in owners.iter().enumerate() {
        // The owner is the first replica: when it answered, the partition is covered
        // without walking the ring.
        if pages.contains_key(owner) {
            continue;
        }
        let pl = ring.preference_list(PartitionId(p as u32), n);
        if !pl.preference_list.iter().any(|id| pages.contains_key(id)) {
            return Err(ApiError::new(
                ErrorCode::QuorumUnavailable,
                format!("no replica of partition {p} answered: the listing could miss keys; retry"),
            ));
        }
    }
    Ok(())
}

/// Merges the nodes' pages: each key's versions as a read merges replicas, keeping the
/// keys with a live value, in byte order, at most `want`, and only up to the smallest
/// key a node stopped at. Returns them and where to resume (`None` when every node
/// reached the end of the range and every key fitted).
fn merge_pages(pages: impl Iterator<Item = NodeListing>, want: usize) -> (Vec<String>, Option<String>) {
    let mut stop: Option<String> = None;
    let mut merged: std::collections::BTreeMap<String, VersionedObject> = std::collections::BTreeMap::new();
    for page in pages {
        if let Some(s) = page.stopped_at {
            stop = Some(match stop {
                Some(cur) if cur <= s => cur,
                _ => s,
            });
        }
        for k in page.keys {
            match merged.get_mut(&k.key) {
                // A pure union of the replicas' versions, as a read does.
                Some(o) => o.sync(
                    &k.object,
                    ConflictRule::Siblings {
                        max_siblings: u32::MAX,
                    },
                ),
                None => {
                    merged.insert(k.key, k.object);
                }
            }
        }
    }
    let mut live = Vec::new();
    for (key, obj) in merged {
        if stop.as_ref().is_some_and(|s| &key > s) {
            break;
        }
        if obj.is_deleted() {
            continue;
        }
        if live.len() == want {
            // More live keys than fit: resume after the last one answered.
            let last = live.last().cloned();
            return (live, last);
        }
        live.push(key);
    }
    (live, stop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_core::version::{NewWrite, StoredCopy};
    use dynamo_core::wire::internal::ListedKey;
    use dynamo_core::{ActorId, Incarnation};

    fn live() -> VersionedObject {
        let mut c = StoredCopy::default();
        c.coordinate(
            &DotSet::new(),
            Incarnation(1),
            [ActorId(7)],
            NewWrite::value(Vec::new(), "", 1),
            ConflictRule::Siblings { max_siblings: 8 },
        )
        .expect("write");
        c.object
    }

    fn deleted(of: &VersionedObject) -> VersionedObject {
        let mut c = StoredCopy::replica(of.clone());
        c.coordinate(
            of.context(),
            Incarnation(1),
            [ActorId(8)],
            NewWrite::tombstone(2),
            ConflictRule::Siblings { max_siblings: 8 },
        )
        .expect("delete");
        c.object
    }

    fn page(keys: &[(&str, VersionedObject)], stopped_at: Option<&str>) -> NodeListing {
        NodeListing {
            keys: keys
                .iter()
                .map(|(k, o)| ListedKey {
                    key: (*k).to_owned(),
                    object: o.clone(),
                })
                .collect(),
            stopped_at: stopped_at.map(str::to_owned),
        }
    }

    #[test]
    fn merged_pages_keep_live_keys_once_in_order_up_to_the_smallest_stop() {
        // Goal: a key on two nodes is answered once; a key one replica still shows live
        // but another shows deleted is left out; nothing past a node's stop is answered.
        let a = live();
        let a_deleted = deleted(&a);
        let pages = vec![
            page(&[("a", a.clone()), ("b", a.clone()), ("d", a.clone())], Some("d")),
            page(&[("a", a.clone()), ("b", a_deleted), ("c", a.clone())], Some("c")),
        ];
        let (keys, stop) = merge_pages(pages.into_iter(), 10);
        assert_eq!(keys, vec!["a".to_owned(), "c".to_owned()]);
        assert_eq!(stop.as_deref(), Some("c"), "d is past node 2's stop");
    }

    #[test]
    fn merged_pages_stop_at_want_and_resume_after_the_last_answered() {
        let a = live();
        let pages = vec![page(
            &[("a", a.clone()), ("b", a.clone()), ("c", a.clone())],
            None,
        )];
        let (keys, stop) = merge_pages(pages.into_iter(), 2);
        assert_eq!(keys, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(stop.as_deref(), Some("b"), "resume after the last key answered");
        let pages = vec![page(&[("a", a.clone())], None), page(&[], None)];
        assert_eq!(merge_pages(pages.into_iter(), 2), (vec!["a".to_owned()], None));
    }
}
