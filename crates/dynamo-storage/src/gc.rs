//! Tombstone GC: a delete leaves a tombstone (a sibling flagged as deleted) so that the
//! deletion wins over the older value on every replica; once every replica holds it, it
//! can go.
//!
//! # Rule
//! The `tombstone-gc` worker collects a key's version set only when
//! 1. all its siblings are tombstones, and the newest is older than the grace
//!    (`--tombstone-grace-ms`);
//! 2. every *other* node of the key's preference list (from the cached ring, with the
//!    bucket's `n`) answers, for this key, "I hold exactly this version set" (same
//!    digest, and no hint for the key) or "I already collected exactly this set";
//! 3. no membership change is in progress, as this node knows the cluster state (checked
//!    at the start of the round and again before each page's removals) nor as each peer
//!    knows it (a peer that knows of one approves nothing): a new holder may have copied
//!    the value a tombstone deletes, and would keep it if the tombstone went before the
//!    catch-up copy;
//! 4. at the moment of removal the stored digest is still the one checked, and this node
//!    holds no hint for the key.
//!
//! A replica that lacks the tombstone (answers neither), answers something else, or does
//! not answer blocks the collection: the old value it may hold could otherwise come back
//! through read repair or anti-entropy. Without a cached ring, or with a ring of another
//! partition count, GC does nothing.
//!
//! Each collection is recorded in the `gc` keyspace (same batch as the removal) and kept
//! for [`RETENTION_FACTOR`] × max(grace, interval), so peers that check later can still
//! collect their copies; the same worker purges older records.
//!
//! # Shape
//! One round per `--gc-interval-ms`: the node's objects are read in pages of [`GC_PAGE`]
//! objects or [`GC_PAGE_BYTES`];
//! for each page the status questions go out as one replica batch per peer (concurrently),
//! then the approved tombstones are removed. After each page the worker sleeps
//! [`TRANQUILITY`] times what the page took, so GC yields to foreground traffic (Garage's
//! tranquilizer, Dynamo's admission control).

use dynamo_server::internal::InternalClient;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use dynamo_server::clock::now_ms;

use dynamo_core::backoff::Backoff;
use dynamo_core::version::VersionedObject;
use dynamo_core::wire::BucketProps;
use dynamo_core::wire::internal::{MAX_BATCH_OPS, ReplicaOp, ReplicaResult};
use dynamo_core::{BucketName, NodeId, RingEpoch};
use dynamo_server::worker::{Next, Tranquilizer, Worker};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterCache;
use crate::codec::ObjectKey;
use crate::engine::{Engine, KeyRef};
use crate::error::StorageError;
use crate::peer::BatchError;

/// Objects read per page; at most this many questions go to one peer in one batch.
pub const GC_PAGE: usize = MAX_BATCH_OPS;
/// Stored bytes read per page at most (values up to 1 MiB would otherwise make a page of
/// [`GC_PAGE`] objects up to 256 MiB).
pub const GC_PAGE_BYTES: usize = 8 << 20;
/// GC records read per purge page.
pub const PURGE_PAGE: usize = 1024;
/// Sleep after a page, as a multiple of the time it took.
pub const TRANQUILITY: u32 = 2;
/// GC records are kept for this many times the longer of the grace and the interval.
pub const RETENTION_FACTOR: u32 = 10;

/// The GC settings.
#[derive(Debug, Clone, Copy)]
pub struct GcSettings {
    /// How old the newest tombstone of a set must be before it may be collected.
    pub grace: Duration,
    /// Pause between rounds.
    pub interval: Duration,
    /// How long idempotency records answer repeats; older ones are purged with the GC
    /// records.
    pub idempotency_window: Duration,
    /// How long change-log entries are kept; older ones are purged with the GC records.
    pub feed_retention: Duration,
}

impl GcSettings {
    /// How long a GC record is kept.
    pub fn retention(&self) -> Duration {
        self.grace.max(self.interval).saturating_mul(RETENTION_FACTOR)
    }
}

/// Why a GC round stopped early.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    /// The local engine failed.
    #[error("local storage failed")]
    Storage(#[from] StorageError),
}

impl From<tokio::task::JoinError> for GcError {
    fn from(e: tokio::task::JoinError) -> GcError {
        GcError::Storage(StorageError::from(e))
    }
}

/// What one round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RoundStats {
    /// Objects read.
    pub scanned: u64,
    /// Tombstone sets past their grace that were checked with the peers.
    pub checked: u64,
    /// Of those, collected here.
    pub collected: u64,
    /// Of those, left because a replica lacked them or did not answer.
    pub blocked: u64,
    /// GC records and idempotency records purged.
    pub purged: u64,
}

/// Returns true when `obj` is a set of tombstones whose newest is older than `grace_ms`
/// at `now_ms`. An object without siblings has no age and is left alone.
pub fn is_collectable(obj: &VersionedObject, now_ms: u64, grace_ms: u64) -> bool {
    let Some(newest) = obj.siblings().iter().map(|s| s.last_modified_ms).max() else {
        return false;
    };
    obj.is_deleted() && newest.saturating_add(grace_ms) <= now_ms
}

/// The `tombstone-gc` worker: one [`round`] per interval.
pub struct TombstoneGc {
    /// The node's engine.
    pub engine: Arc<Engine>,
    /// The cluster state the round plans with.
    pub cluster: Arc<ClusterCache>,
    /// The client for the peers.
    pub client: InternalClient,
    /// Grace, interval and idempotency window.
    pub settings: GcSettings,
}

impl Worker for TombstoneGc {
    type Error = GcError;

    fn name(&self) -> &'static str {
        "tombstone-gc"
    }

    async fn work(&mut self, stop: &CancellationToken) -> Result<Next, GcError> {
        match round(&self.engine, &self.cluster, &self.client, self.settings, stop).await? {
            Some(s) if s.collected > 0 || s.blocked > 0 => {
                tracing::info!(
                    scanned = s.scanned,
                    collected = s.collected,
                    blocked = s.blocked,
                    purged = s.purged,
                    "tombstone gc round"
                );
            }
            Some(s) => tracing::debug!(scanned = s.scanned, purged = s.purged, "tombstone gc round"),
            None => {}
        }
        Ok(Next::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.settings.interval).await;
    }

    fn retry(&self) -> Backoff {
        // A failed round is retried no sooner than a round would come anyway.
        Backoff::new(self.settings.interval, self.settings.interval.saturating_mul(8))
    }
}

/// One tombstone set under consideration.
struct Candidate {
    bucket: BucketName,
    key: ObjectKey,
    digest: u128,
    /// The other nodes of the preference list, each of which must approve.
    peers: Vec<NodeId>,
    approvals: usize,
}

/// Runs one round: purge old GC records, then walk every object. Returns `None` when
/// the round was skipped (no usable ring, a membership change in progress, or shutdown).
///
/// # Errors
/// [`GcError`] when the local engine fails; what was collected stays collected.
pub async fn round(
    engine: &Arc<Engine>,
    cluster: &ClusterCache,
    client: &InternalClient,
    settings: GcSettings,
    stop: &CancellationToken,
) -> Result<Option<RoundStats>, GcError> {
    let mut stats = RoundStats {
        purged: purge(engine, settings, stop).await?,
        ..RoundStats::default()
    };
    let Some(state) = cluster.current() else {
        tracing::debug!("tombstone gc: no ring known yet");
        return Ok(None);
    };
    let Some(ring) = state.ring.as_ref() else {
        tracing::debug!("tombstone gc: no ring known yet");
        return Ok(None);
    };
    if ring.partitioning() != engine.partitioning() {
        return Ok(None);
    }
    if state.change_in_progress() {
        tracing::debug!("tombstone gc: membership change in progress; paused");
        return Ok(None);
    }
    let addresses = crate::peer::addresses(&state);
    let me = engine.identity().node_id.clone();
    let default_n = BucketProps::default().n;
    let grace_ms = settings.grace.as_millis() as u64;

    let mut cursor: Option<Vec<u8>> = None;
    loop {
        if stop.is_cancelled() {
            return Ok(None);
        }
        let pace = Tranquilizer::start(TRANQUILITY);
        let e = engine.clone();
        let after = cursor.take();
        let (page, next) =
            tokio::task::spawn_blocking(move || e.objects_page(after.as_deref(), GC_PAGE, GC_PAGE_BYTES))
                .await??;
        stats.scanned += page.len() as u64;
        let now = now_ms();
        let mut candidates: Vec<Candidate> = page
            .into_iter()
            .filter(|(_, obj)| is_collectable(obj, now, grace_ms))
            .filter_map(|(key, obj)| {
                // Stored buckets were validated on the way in; one that no longer parses
                // is left for an operator.
                let bucket = BucketName::new(key.bucket.clone()).ok()?;
                let n = state.buckets.get(&bucket).map_or(default_n, |b| b.props.n);
                let peers = ring
                    .preference_list_for(key.hash, usize::from(n))
                    .preference_list
                    .into_iter()
                    .filter(|id| *id != me)
                    .collect();
                Some(Candidate {
                    bucket,
                    key,
                    digest: obj.digest(),
                    peers,
                    approvals: 0,
                })
            })
            .collect();
        stats.checked += candidates.len() as u64;

        ask_peers(&mut candidates, &addresses, state.ring_epoch(), client, stop).await;
        if stop.is_cancelled() {
            return Ok(None);
        }
        // The peers were asked under `state`; a change that began meanwhile stops the
        // round before anything goes.
        if cluster
            .current()
            .is_none_or(|now| now.change_in_progress() || now.ring_epoch() != state.ring_epoch())
        {
            tracing::debug!("tombstone gc: the cluster changed during the round; paused");
            return Ok(None);
        }
        let (approved, blocked): (Vec<Candidate>, Vec<Candidate>) =
            candidates.into_iter().partition(|c| c.approvals == c.peers.len());
        stats.blocked += blocked.len() as u64;
        engine.metrics().tombstones_blocked.inc_by(blocked.len() as u64);
        if !approved.is_empty() {
            let e = engine.clone();
            let collected = tokio::task::spawn_blocking(move || -> Result<u64, StorageError> {
                let mut n = 0;
                for c in &approved {
                    let k = KeyRef {
                        bucket: c.bucket.as_str(),
                        key: &c.key.key,
                    };
                    if e.collect_tombstone(&k, c.digest, now_ms())? {
                        e.metrics().tombstones_collected.inc();
                        n += 1;
                    }
                }
                Ok(n)
            })
            .await??;
            stats.collected += collected;
        }

        match next {
            Some(n) => cursor = Some(n),
            None => break,
        }
        if !pace.rest(stop).await {
            return Ok(None);
        }
    }
    engine.metrics().gc_rounds.inc();
    Ok(Some(stats))
}

/// Asks every peer about the candidates it must approve: one replica batch per peer, all
/// peers at once. A candidate's `approvals` counts the peers that hold or collected
/// exactly its set. A peer without a known address, that fails, or that answers anything
/// else approves nothing.
async fn ask_peers(
    candidates: &mut [Candidate],
    addresses: &BTreeMap<NodeId, String>,
    epoch: RingEpoch,
    client: &InternalClient,
    stop: &CancellationToken,
) {
    let mut per_peer: BTreeMap<&NodeId, Vec<usize>> = BTreeMap::new();
    for (i, c) in candidates.iter().enumerate() {
        for p in &c.peers {
            per_peer.entry(p).or_default().push(i);
        }
    }
    // Owned by this call and awaited (or aborted on drop) before it returns.
    let mut asks = JoinSet::new();
    for (peer, idxs) in per_peer {
        let Some(address) = addresses.get(peer) else {
            tracing::debug!(peer = %peer, "tombstone gc: no address for peer");
            continue;
        };
        // Invariant: one page never holds more candidates than a batch may carry.
        debug_assert!(idxs.len() <= MAX_BATCH_OPS);
        let ops = idxs
            .iter()
            .map(|&i| ReplicaOp::TombstoneStatus {
                bucket: candidates[i].bucket.clone(),
                key: candidates[i].key.key.clone(),
                digest: candidates[i].digest,
            })
            .collect::<Vec<_>>();
        let client = client.clone();
        let address = address.clone();
        let peer = peer.clone();
        asks.spawn(async move {
            let reply = crate::peer::replica_batch(&client, &address, epoch, ops).await;
            (peer, idxs, reply)
        });
    }
    loop {
        let joined = tokio::select! {
            () = stop.cancelled() => return,
            j = asks.join_next() => j,
        };
        let Some(joined) = joined else { return };
        let Ok((peer, idxs, reply)) = joined else {
            continue;
        };
        match reply {
            Ok(results) => {
                for (i, res) in idxs.into_iter().zip(results) {
                    if let ReplicaResult::TombstoneStatus { holds, collected } = res
                        && (holds || collected)
                    {
                        candidates[i].approvals += 1;
                    }
                }
            }
            Err(BatchError::Mismatch { answered, asked }) => tracing::warn!(
                peer = %peer,
                answered,
                asked,
                "tombstone gc: peer answered a wrong number of results"
            ),
            Err(e) => tracing::debug!(peer = %peer, error = %e, "tombstone gc: peer did not answer"),
        }
    }
}

/// Purges GC records older than the retention, page by page, yielding between pages.
async fn purge(engine: &Arc<Engine>, settings: GcSettings, stop: &CancellationToken) -> Result<u64, GcError> {
    let now = now_ms();
    let gc_before = now.saturating_sub(settings.retention().as_millis() as u64);
    let idem_before = now.saturating_sub(settings.idempotency_window.as_millis() as u64);
    let mut purged = purge_pages(engine, stop, move |e, after| {
        e.purge_gc_records(gc_before, after, PURGE_PAGE)
    })
    .await?;
    purged += purge_pages(engine, stop, move |e, after| {
        e.purge_idempotency_records(idem_before, after, PURGE_PAGE)
    })
    .await?;
    let feed_before = now.saturating_sub(settings.feed_retention.as_millis() as u64);
    purged += purge_pages(engine, stop, move |e, after| {
        e.purge_feed(feed_before, after, PURGE_PAGE)
    })
    .await?;
    Ok(purged)
}

/// Runs one purge over its keyspace page by page, yielding between pages.
async fn purge_pages(
    engine: &Arc<Engine>,
    stop: &CancellationToken,
    page: impl Fn(&Engine, Option<&[u8]>) -> Result<(usize, Option<Vec<u8>>), StorageError>
    + Copy
    + Send
    + 'static,
) -> Result<u64, GcError> {
    let mut cursor: Option<Vec<u8>> = None;
    let mut purged = 0u64;
    loop {
        let pace = Tranquilizer::start(TRANQUILITY);
        let e = engine.clone();
        let after = cursor.take();
        let (n, next) = tokio::task::spawn_blocking(move || page(&e, after.as_deref())).await??;
        purged += n as u64;
        match next {
            Some(n) => cursor = Some(n),
            None => return Ok(purged),
        }
        if !pace.rest(stop).await {
            return Ok(purged);
        }
    }
}

#[cfg(test)]
mod tests {
    use dynamo_core::version::{ConflictRule, NewWrite};
    use dynamo_core::{ActorId, DotSet, Partitioning};

    use super::*;
    use crate::engine::Durability;
    use crate::metrics::StorageMetrics;

    const SIB: ConflictRule = ConflictRule::Siblings { max_siblings: 8 };

    #[test]
    fn only_old_all_tombstone_sets_are_collectable() {
        let mut o = VersionedObject::new();
        assert!(!is_collectable(&o, 10_000, 100), "no siblings, no age");
        o.put(
            &DotSet::new(),
            ActorId(1),
            NewWrite::value(b"v".to_vec(), "t", 1_000),
            SIB,
        )
        .expect("put");
        let ctx = o.context().clone();
        assert!(!is_collectable(&o, 10_000, 100), "a live value");
        o.put(&ctx, ActorId(1), NewWrite::tombstone(2_000), SIB)
            .expect("delete");
        assert!(is_collectable(&o, 2_100, 100));
        assert!(!is_collectable(&o, 2_099, 100), "inside the grace");
        // A concurrent live write next to the tombstone keeps the key.
        let mut c = o.clone();
        c.put(
            &DotSet::new(),
            ActorId(2),
            NewWrite::value(b"w".to_vec(), "t", 1_500),
            SIB,
        )
        .expect("put");
        assert!(!is_collectable(&c, 100_000, 100));
        // The newest tombstone sets the age.
        let mut t = o.clone();
        t.put(&DotSet::new(), ActorId(2), NewWrite::tombstone(5_000), SIB)
            .expect("delete");
        assert!(!is_collectable(&t, 5_050, 100));
        assert!(is_collectable(&t, 5_100, 100));
        assert!(!is_collectable(&t, u64::MAX - 1, u64::MAX), "no overflow");
    }

    // Goal: the engine's side of GC: the status answer, collection with its record in
    // one batch (Merkle back to empty), and the purge of old records.
    #[test]
    fn collection_is_recorded_answered_and_purged() {
        let dir = tempfile::tempdir().expect("tempdir");
        let metrics = StorageMetrics::new(&prometheus::Registry::new()).expect("metrics");
        let e = Engine::open(
            dir.path(),
            Partitioning::with_count(16).expect("q"),
            Durability::Buffered,
            None,
            metrics,
        )
        .expect("open");
        let k = KeyRef {
            bucket: "b",
            key: "k",
        };
        let (o, _) = e
            .coordinate_put(
                &k,
                &DotSet::new(),
                NewWrite::value(b"v".to_vec(), "t", 1),
                SIB,
                None,
            )
            .expect("put");
        let (t, _) = e
            .coordinate_put(&k, o.context(), NewWrite::tombstone(2), SIB, None)
            .expect("delete");
        let p = e.partitioning().partition_of(dynamo_core::key_hash("b", "k"));
        let d = t.digest();
        let st = e.tombstone_status(&k, d).expect("status");
        assert_eq!((st.holds, st.collected), (true, false));
        assert!(!e.tombstone_status(&k, d ^ 1).expect("status").holds);
        assert!(
            !e.collect_tombstone(&k, d ^ 1, 10).expect("collect"),
            "digest must match"
        );
        assert!(e.collect_tombstone(&k, d, 10).expect("collect"));
        assert!(e.get(&k).expect("get").is_none());
        assert_eq!(e.with_merkle(p, |m| m.summary().root), Some(0));
        let st = e.tombstone_status(&k, d).expect("status");
        assert_eq!((st.holds, st.collected), (false, true));
        assert!(!e.tombstone_status(&k, d ^ 1).expect("status").collected);
        // Records younger than the cut stay; older ones go.
        assert_eq!(e.purge_gc_records(10, None, 10).expect("purge"), (0, None));
        assert_eq!(e.purge_gc_records(11, None, 10).expect("purge"), (1, None));
        assert!(!e.tombstone_status(&k, d).expect("status").collected);
    }
}
