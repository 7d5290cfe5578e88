//! Anti-entropy: replicas of a partition compare their Merkle trees and exchange the keys
//! that differ, both ways, so cold keys converge without anyone reading them.
//!
//! # A pass
//! The `anti-entropy` worker runs one pass per `--anti-entropy-interval-ms`. For every
//! partition, with the cached ring, it takes the preference list for the largest `n` of
//! any bucket and, if this node is on it, runs an [`exchange`] with each peer on it whose
//! id sorts after its own: each pair of replicas is compared once per pass, by the one
//! with the smaller id (if that one is down, the pairs without it still are).
//!
//! # An exchange (one partition, one peer)
//! 1. The peer's tree summary: equal roots end it (one request).
//! 2. Otherwise a [`DiffWalk`] down the differing branches, one request per level, to the
//!    differing leaves.
//! 3. For the differing leaves of each window of [`LEAF_WINDOW`] leaves, both sides' key
//!    digests in the hash range from the first to the last (the peer's by `…/digests`,
//!    pages of [`MAX_DIGEST_PAGE`]), compared key by key.
//! 4. Keys the peer holds differently or alone are read from it (replica `get`, batches
//!    of [`MAX_BATCH_OPS`] across ranges) and merged here; then keys this node holds
//!    differently or alone are pushed to it (replica `replicate`), unless the merge made
//!    them equal. Merging is the DVV sync, so an exchange only adds what the other side
//!    lacked and never undoes a write.
//!
//! Only keys that both replicate are exchanged: a key of a bucket with `n` smaller than
//! one of the pair's positions in the preference list stays where it is.
//!
//! # Cost
//! Proportional to the difference: in sync, one request per partition and peer; `k`
//! differing keys cost at most the tree's depth in walk requests, the digest pages of the
//! differing leaves, and the reads and pushes of the `k` keys. Values move only for keys
//! that differ.
//!
//! # Yielding to clients
//! After each partition the worker sleeps `--anti-entropy-tranquility` times what the
//! partition took, and it never moves more than `--anti-entropy-max-bytes-per-sec` of
//! values (it sleeps when ahead of that rate).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dynamo_core::merkle::{DiffWalk, DifferingLeaf, HashRange, MerkleError, MerkleSummary};
use dynamo_core::version::{ConflictRule, VersionedObject};
use dynamo_core::wire::BucketProps;
use dynamo_core::wire::cluster::{AntiEntropyStatus, ClusterState};
use dynamo_core::wire::internal::{MAX_BATCH_OPS, ReplicaOp, ReplicaResult};
use dynamo_core::wire::routes;
use dynamo_core::{BucketName, PartitionId, RingEpoch};
use dynamo_server::clock::now_ms;
use dynamo_server::internal::{InternalClient, SendError};
use dynamo_server::worker::{Next, Tranquilizer, Worker};
use tokio_util::sync::CancellationToken;

use crate::api::{ChildrenRequest, ChildrenResponse, DigestPage, MAX_DIGEST_PAGE, MAX_MERKLE_NODES};
use crate::cluster::ClusterCache;
use crate::engine::{Engine, KeyRef};
use crate::error::StorageError;
use crate::peer::BatchError;

/// Differing leaves whose indexes lie within this many of each other are compared in one
/// digest scan (which then also reads the digests of the equal leaves between them):
/// sparse differences cost one scan per leaf, dense ones (a wiped replica) one scan per
/// window instead of one per leaf.
pub const LEAF_WINDOW: u32 = 256;
/// Stored bytes pushed in one replica batch, at most (a batch holds at least one key).
pub const PUSH_BATCH_BYTES: usize = 4 << 20;

/// The anti-entropy settings.
#[derive(Debug, Clone, Copy)]
pub struct AeSettings {
    /// Pause between passes.
    pub interval: Duration,
    /// Sleep after a partition, as a multiple of the time it took.
    pub tranquility: u32,
    /// Most stored bytes moved per second.
    pub max_bytes_per_sec: u64,
}

/// Why an exchange stopped.
#[derive(Debug, thiserror::Error)]
pub enum AeError {
    /// The peer did not answer, or refused.
    #[error("peer unreachable or refused")]
    Peer(#[from] SendError),
    /// The peer answered something that does not fit the comparison.
    #[error("the peer's tree is not comparable: {0}")]
    Tree(#[from] MerkleError),
    /// The peer's answer to a replica batch did not match the batch.
    #[error("the peer's replica batch answer does not match: {0}")]
    BadAnswer(String),
    /// The local engine failed.
    #[error("local storage failed")]
    Storage(#[from] StorageError),
}

impl From<reqwest::Error> for AeError {
    fn from(e: reqwest::Error) -> Self {
        AeError::Peer(e.into())
    }
}

impl From<BatchError> for AeError {
    fn from(e: BatchError) -> Self {
        match e {
            BatchError::Send(e) => AeError::Peer(e),
            mismatch @ BatchError::Mismatch { .. } => AeError::BadAnswer(mismatch.to_string()),
        }
    }
}

impl From<tokio::task::JoinError> for AeError {
    fn from(e: tokio::task::JoinError) -> Self {
        AeError::Storage(StorageError::from(e))
    }
}

/// What one exchange did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    /// Requests sent to the peer.
    pub round_trips: u64,
    /// Leaves whose item sets differed.
    pub differing_leaves: u64,
    /// Keys whose digests were compared (both sides' keys in the differing leaves).
    pub keys_compared: u64,
    /// Keys read from the peer and merged here.
    pub pulled: u64,
    /// Keys pushed to the peer.
    pub pushed: u64,
    /// Stored bytes of the keys pulled.
    pub bytes_pulled: u64,
    /// Stored bytes of the keys pushed.
    pub bytes_pushed: u64,
}

impl ExchangeStats {
    fn add(&mut self, o: &ExchangeStats) {
        self.round_trips += o.round_trips;
        self.differing_leaves += o.differing_leaves;
        self.keys_compared += o.keys_compared;
        self.pulled += o.pulled;
        self.pushed += o.pushed;
        self.bytes_pulled += o.bytes_pulled;
        self.bytes_pushed += o.bytes_pushed;
    }
}

/// Keeps the bytes an exchange moves under a rate: after moving some, sleep while ahead.
#[derive(Debug)]
pub struct Pacer {
    started: Instant,
    bytes: u64,
    max_bytes_per_sec: u64,
}

impl Pacer {
    /// A pacer for `max_bytes_per_sec` (at least 1), counting from now.
    pub fn new(max_bytes_per_sec: u64) -> Pacer {
        Pacer {
            started: Instant::now(),
            bytes: 0,
            max_bytes_per_sec: max_bytes_per_sec.max(1),
        }
    }

    /// Counts `bytes` moved and sleeps until the rate allows them. Returns false when
    /// `stop` was cancelled meanwhile.
    pub async fn moved(&mut self, bytes: u64, stop: &CancellationToken) -> bool {
        self.bytes = self.bytes.saturating_add(bytes);
        let due = Duration::from_secs_f64(self.bytes as f64 / self.max_bytes_per_sec as f64);
        let ahead = due.saturating_sub(self.started.elapsed());
        if ahead.is_zero() {
            return !stop.is_cancelled();
        }
        tokio::select! {
            () = stop.cancelled() => false,
            () = tokio::time::sleep(ahead) => true,
        }
    }
}

/// What decides, per key, the merge rule and whether a pair of replicas both hold it.
pub struct Buckets<'a> {
    state: &'a ClusterState,
}

impl<'a> Buckets<'a> {
    /// Reads the buckets of `state`.
    pub fn new(state: &'a ClusterState) -> Buckets<'a> {
        Buckets { state }
    }

    fn props(&self, bucket: &BucketName) -> BucketProps {
        self.state
            .buckets
            .get(bucket)
            .map(|b| b.props.clone())
            .unwrap_or_default()
    }

    /// The largest `n` of any bucket (the default's included).
    pub fn max_n(&self) -> u8 {
        self.state
            .buckets
            .values()
            .map(|b| b.props.n)
            .chain([BucketProps::default().n])
            .max()
            .unwrap_or(1)
    }

    /// The ring epoch exchanges with these buckets are planned with.
    fn epoch(&self) -> RingEpoch {
        self.state.ring_epoch()
    }

    fn conflict(&self, bucket: &BucketName) -> ConflictRule {
        self.props(bucket).conflict_rule()
    }

    /// True when replicas at `positions` of a preference list both hold keys of `bucket`.
    fn shared_by(&self, bucket: &BucketName, positions: (usize, usize)) -> bool {
        usize::from(self.props(bucket).n) > positions.0.max(positions.1)
    }
}

/// Compares partition `p` with the peer at `peer` and exchanges the differing keys both
/// ways, for keys of buckets that replicas at `positions` (this node's and the peer's
/// place in the preference list) both hold.
///
/// # Errors
/// [`AeError`]; what was merged or pushed before it stays (every step is idempotent).
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    engine: &Arc<Engine>,
    client: &InternalClient,
    peer: &str,
    p: PartitionId,
    buckets: &Buckets<'_>,
    positions: (usize, usize),
    pacer: &mut Pacer,
    stop: &CancellationToken,
) -> Result<ExchangeStats, AeError> {
    let mut stats = ExchangeStats::default();
    let remote: MerkleSummary = client
        .get(routes::url(peer, &routes::storage::merkle(p)))
        .query(&[("epoch", buckets.epoch().0)])
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    stats.round_trips += 1;
    let walk = engine
        .with_merkle(p, |t| DiffWalk::new(t, remote))
        .ok_or_else(|| StorageError::from(crate::codec::CodecError::Key))??;
    let leaves = walk_down(engine, client, peer, p, walk, &mut stats).await?;
    stats.differing_leaves = leaves.len() as u64;
    let mut moves = Moves::default();
    for run in runs(&leaves) {
        if stop.is_cancelled() {
            return Ok(stats);
        }
        compare_range(
            engine, client, peer, p, run, buckets, positions, &mut moves, &mut stats,
        )
        .await?;
        if moves.pulls.len() >= MAX_BATCH_OPS || moves.pushes.len() >= MAX_BATCH_OPS {
            moves
                .flush(engine, client, peer, buckets, pacer, &mut stats, stop)
                .await?;
        }
    }
    moves
        .flush(engine, client, peer, buckets, pacer, &mut stats, stop)
        .await?;
    Ok(stats)
}

/// Walks the differing branches to the leaves: one request per level (more when a level
/// has more differing nodes than a request may name).
async fn walk_down(
    engine: &Arc<Engine>,
    client: &InternalClient,
    peer: &str,
    p: PartitionId,
    mut walk: DiffWalk,
    stats: &mut ExchangeStats,
) -> Result<Vec<DifferingLeaf>, AeError> {
    let url = routes::url(peer, &routes::storage::merkle_children(p));
    while !walk.is_done() {
        let pending = walk.pending().to_vec();
        let mut replies = Vec::with_capacity(pending.len());
        for chunk in pending.chunks(MAX_MERKLE_NODES) {
            let answer: ChildrenResponse = client
                .post(&url)
                .json(&ChildrenRequest {
                    nodes: chunk.to_vec(),
                })
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            stats.round_trips += 1;
            replies.extend(answer.children);
        }
        // Compared with the tree as it is now: writes since the walk began make the
        // result approximate, which the next pass corrects.
        engine
            .with_merkle(p, |t| walk.feed(t, &replies))
            .ok_or_else(|| StorageError::from(crate::codec::CodecError::Key))??;
    }
    Ok(walk.finish()?.leaves)
}

/// Groups differing leaves (in increasing order) into hash ranges: each from a leaf to
/// the last differing leaf fewer than [`LEAF_WINDOW`] leaves after it.
pub fn runs(leaves: &[DifferingLeaf]) -> Vec<HashRange> {
    let mut out: Vec<(HashRange, u32)> = Vec::new();
    for l in leaves {
        match out.last_mut() {
            Some((range, first)) if l.leaf - *first < LEAF_WINDOW => range.end = l.hashes.end,
            _ => out.push((l.hashes, l.leaf)),
        }
    }
    out.into_iter().map(|(r, _)| r).collect()
}

/// A key, as both sides name it.
type KeyId = (BucketName, String);

/// Keys found to differ and not yet moved: pulls first (so that what is pushed includes
/// what the peer had), then pushes.
#[derive(Default)]
struct Moves {
    pulls: Vec<KeyId>,
    /// Each with the peer's digest of it (`None`: the peer lacks it), to skip keys the
    /// pulls made equal.
    pushes: Vec<(KeyId, Option<u128>)>,
}

impl Moves {
    #[allow(clippy::too_many_arguments)]
    async fn flush(
        &mut self,
        engine: &Arc<Engine>,
        client: &InternalClient,
        peer: &str,
        buckets: &Buckets<'_>,
        pacer: &mut Pacer,
        stats: &mut ExchangeStats,
        stop: &CancellationToken,
    ) -> Result<(), AeError> {
        let pulls = std::mem::take(&mut self.pulls);
        for chunk in pulls.chunks(MAX_BATCH_OPS) {
            let bytes = pull(engine, client, peer, chunk, buckets, stats).await?;
            if !pacer.moved(bytes, stop).await {
                return Ok(());
            }
        }
        let pushes = std::mem::take(&mut self.pushes);
        let mut start = 0;
        while start < pushes.len() {
            let (sent, bytes) = push(engine, client, peer, &pushes[start..], buckets, stats).await?;
            start += sent;
            if !pacer.moved(bytes, stop).await {
                return Ok(());
            }
        }
        Ok(())
    }
}

/// Compares the digests of one hash range and queues the keys that differ in `moves`.
#[allow(clippy::too_many_arguments)]
async fn compare_range(
    engine: &Arc<Engine>,
    client: &InternalClient,
    peer: &str,
    p: PartitionId,
    range: HashRange,
    buckets: &Buckets<'_>,
    positions: (usize, usize),
    moves: &mut Moves,
    stats: &mut ExchangeStats,
) -> Result<(), AeError> {
    let remote = remote_digests(client, peer, p, range, stats).await?;
    let local = local_digests(engine, p, range).await?;
    stats.keys_compared += (remote.len() + local.len()) as u64;
    let shared = |k: &KeyId| buckets.shared_by(&k.0, positions);
    for (k, d) in &remote {
        if local.get(k) != Some(d) && shared(k) {
            moves.pulls.push(k.clone());
        }
    }
    for (k, d) in &local {
        let theirs = remote.get(k).copied();
        if theirs != Some(*d) && shared(k) {
            moves.pushes.push((k.clone(), theirs));
        }
    }
    Ok(())
}

async fn remote_digests(
    client: &InternalClient,
    peer: &str,
    p: PartitionId,
    range: HashRange,
    stats: &mut ExchangeStats,
) -> Result<BTreeMap<KeyId, u128>, AeError> {
    let url = routes::url(peer, &routes::storage::partition_digests(p));
    let mut out = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let mut req = client.get(&url).query(&[
            ("start", range.start.to_string()),
            ("end", range.end.to_string()),
            ("limit", MAX_DIGEST_PAGE.to_string()),
        ]);
        if let Some(a) = &after {
            req = req.query(&[("after", a)]);
        }
        let page: DigestPage = req.send().await?.error_for_status()?.json().await?;
        stats.round_trips += 1;
        for k in page.keys {
            out.insert((k.bucket, k.key), k.digest);
        }
        match page.next {
            Some(n) => after = Some(n),
            None => return Ok(out),
        }
    }
}

async fn local_digests(
    engine: &Arc<Engine>,
    p: PartitionId,
    range: HashRange,
) -> Result<BTreeMap<KeyId, u128>, AeError> {
    let e = engine.clone();
    let keys = tokio::task::spawn_blocking(move || -> Result<Vec<_>, StorageError> {
        let mut out = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let (page, next) =
                e.scan_digests(p, range.start, range.end, after.as_deref(), MAX_DIGEST_PAGE)?;
            out.extend(page);
            match next {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    })
    .await??;
    Ok(keys
        .into_iter()
        // A stored bucket that no longer parses is left for an operator, as GC does.
        .filter_map(|(k, d)| Some(((BucketName::new(k.bucket).ok()?, k.key), d)))
        .collect())
}

/// The stored size of an object's values, as the bytes anti-entropy accounts for.
fn object_bytes(o: &VersionedObject) -> u64 {
    o.siblings().iter().map(|s| s.value.len() as u64).sum()
}

/// Sends one replica batch to the peer, counting the round trip.
async fn send_batch(
    client: &InternalClient,
    peer: &str,
    epoch: RingEpoch,
    ops: Vec<ReplicaOp>,
    stats: &mut ExchangeStats,
) -> Result<Vec<ReplicaResult>, AeError> {
    let results = crate::peer::replica_batch(client, peer, epoch, ops).await?;
    stats.round_trips += 1;
    Ok(results)
}

/// Reads `keys` from the peer and merges them here; returns the bytes moved.
async fn pull(
    engine: &Arc<Engine>,
    client: &InternalClient,
    peer: &str,
    keys: &[KeyId],
    buckets: &Buckets<'_>,
    stats: &mut ExchangeStats,
) -> Result<u64, AeError> {
    let ops = keys
        .iter()
        .map(|(bucket, key)| ReplicaOp::Get {
            bucket: bucket.clone(),
            key: key.clone(),
        })
        .collect();
    let results = send_batch(client, peer, buckets.epoch(), ops, stats).await?;
    let mut merges = Vec::new();
    for ((bucket, key), r) in keys.iter().zip(results) {
        match r {
            ReplicaResult::Got { object: Some(object) } => {
                merges.push((bucket.clone(), key.clone(), object, buckets.conflict(bucket)));
            }
            // Collected or gone since the digest scan: nothing to take.
            ReplicaResult::Got { object: None } => {}
            ReplicaResult::Error { code, message } => {
                tracing::debug!(%code, %message, "anti-entropy: the peer could not read a key");
            }
            other => return Err(AeError::BadAnswer(format!("{other:?} to a get"))),
        }
    }
    let e = engine.clone();
    let (n, bytes) = tokio::task::spawn_blocking(move || -> Result<(u64, u64), StorageError> {
        let mut bytes = 0;
        for (bucket, key, object, conflict) in &merges {
            let k = KeyRef {
                bucket: bucket.as_str(),
                key,
            };
            e.replicate(&k, object, *conflict, None)?;
            bytes += object_bytes(object);
        }
        Ok((merges.len() as u64, bytes))
    })
    .await??;
    stats.pulled += n;
    stats.bytes_pulled += bytes;
    Ok(bytes)
}

/// Pushes a prefix of `keys` (one batch, bounded by [`MAX_BATCH_OPS`] and
/// [`PUSH_BATCH_BYTES`]) to the peer, skipping keys whose local digest now equals the
/// peer's; returns how many keys it covered and the bytes moved.
async fn push(
    engine: &Arc<Engine>,
    client: &InternalClient,
    peer: &str,
    keys: &[(KeyId, Option<u128>)],
    buckets: &Buckets<'_>,
    stats: &mut ExchangeStats,
) -> Result<(usize, u64), AeError> {
    let e = engine.clone();
    let wanted: Vec<(KeyId, Option<u128>)> = keys.iter().take(MAX_BATCH_OPS).cloned().collect();
    let (covered, objects) = tokio::task::spawn_blocking(move || -> Result<_, StorageError> {
        let mut objects = Vec::new();
        let mut bytes = 0usize;
        let mut covered = 0;
        for ((bucket, key), theirs) in &wanted {
            if covered > 0 && bytes >= PUSH_BATCH_BYTES {
                break;
            }
            covered += 1;
            let k = KeyRef {
                bucket: bucket.as_str(),
                key,
            };
            // Gone since the scan (collected), or made equal by a pull: nothing to push.
            if let Some(o) = e.get(&k)?
                && Some(o.digest()) != *theirs
            {
                bytes += object_bytes(&o) as usize;
                objects.push((bucket.clone(), key.clone(), o));
            }
        }
        Ok((covered, objects))
    })
    .await??;
    if objects.is_empty() {
        return Ok((covered, 0));
    }
    let bytes: u64 = objects.iter().map(|(_, _, o)| object_bytes(o)).sum();
    let n = objects.len() as u64;
    let ops = objects
        .into_iter()
        .map(|(bucket, key, object)| ReplicaOp::Replicate {
            conflict: buckets.conflict(&bucket),
            bucket,
            key,
            object,
            hint: None,
            idempotency: None,
        })
        .collect();
    for r in send_batch(client, peer, buckets.epoch(), ops, stats).await? {
        if let ReplicaResult::Error { code, message } = r {
            tracing::debug!(%code, %message, "anti-entropy: the peer refused a pushed key");
        }
    }
    stats.pushed += n;
    stats.bytes_pushed += bytes;
    Ok((covered, bytes))
}

/// What a pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PassStats {
    /// Exchanges whose roots matched.
    pub in_sync: u64,
    /// Exchanges that moved keys.
    pub repaired: u64,
    /// Exchanges whose trees differed but that moved nothing.
    pub differed: u64,
    /// Exchanges that failed (the peer was down, say).
    pub failed: u64,
    /// The sum of every exchange's counts.
    pub totals: ExchangeStats,
}

/// What anti-entropy has done since the node started, for `GET /internal/v1/node` (and so
/// a coordinator's `GET /v1/cluster`).
#[derive(Debug)]
pub struct AeProgress {
    enabled: bool,
    passes: AtomicU64,
    last_pass_ms: AtomicU64,
    /// Per partition: when this node last compared it with every peer it initiates with,
    /// all successfully (ms since the Unix epoch; 0: compared, never all successfully).
    /// `u64::MAX`: not compared here (not a replica, its id sorts last, or no pass yet).
    partitions: Vec<AtomicU64>,
    keys_pulled: AtomicU64,
    keys_pushed: AtomicU64,
    bytes_moved: AtomicU64,
}

impl AeProgress {
    /// Progress of a node with `partitions` partitions; `enabled` false when anti-entropy
    /// does not run.
    pub fn new(partitions: u32, enabled: bool) -> AeProgress {
        AeProgress {
            enabled,
            passes: AtomicU64::new(0),
            last_pass_ms: AtomicU64::new(0),
            partitions: (0..partitions).map(|_| AtomicU64::new(u64::MAX)).collect(),
            keys_pulled: AtomicU64::new(0),
            keys_pushed: AtomicU64::new(0),
            bytes_moved: AtomicU64::new(0),
        }
    }

    fn partition(&self, p: PartitionId, value: u64) {
        if let Some(slot) = self.partitions.get(p.0 as usize) {
            slot.store(value, Ordering::Relaxed);
        }
    }

    /// Marks a partition compared here without success, keeping an earlier success.
    fn partition_failed(&self, p: PartitionId) {
        if let Some(slot) = self.partitions.get(p.0 as usize) {
            let _ = slot.compare_exchange(u64::MAX, 0, Ordering::Relaxed, Ordering::Relaxed);
        }
    }

    fn exchanged(&self, s: &ExchangeStats) {
        self.keys_pulled.fetch_add(s.pulled, Ordering::Relaxed);
        self.keys_pushed.fetch_add(s.pushed, Ordering::Relaxed);
        self.bytes_moved
            .fetch_add(s.bytes_pulled + s.bytes_pushed, Ordering::Relaxed);
    }

    /// The progress as the wire shows it.
    pub fn status(&self) -> AntiEntropyStatus {
        let ms = |v: u64| (v > 0).then_some(v);
        let compared: Vec<u64> = self
            .partitions
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .filter(|&v| v != u64::MAX)
            .collect();
        // Absent while some partition was never confirmed (0), or none is compared here.
        let oldest = compared.iter().copied().min().and_then(ms);
        AntiEntropyStatus {
            enabled: self.enabled,
            passes: self.passes.load(Ordering::Relaxed),
            compared_partitions: u32::try_from(compared.len()).unwrap_or(u32::MAX),
            last_pass_ms: ms(self.last_pass_ms.load(Ordering::Relaxed)),
            oldest_partition_ms: oldest,
            keys_pulled: self.keys_pulled.load(Ordering::Relaxed),
            keys_pushed: self.keys_pushed.load(Ordering::Relaxed),
            bytes_moved: self.bytes_moved.load(Ordering::Relaxed),
        }
    }
}

/// The `anti-entropy` worker: one [`pass`] per interval.
pub struct AntiEntropy {
    /// The node's engine.
    pub engine: Arc<Engine>,
    /// The cluster state a pass plans with.
    pub cluster: Arc<ClusterCache>,
    /// The client for the peers.
    pub client: InternalClient,
    /// Interval, tranquility and rate.
    pub settings: AeSettings,
    /// Where passes report what they did.
    pub progress: Arc<AeProgress>,
}

impl Worker for AntiEntropy {
    type Error = StorageError;

    fn name(&self) -> &'static str {
        "anti-entropy"
    }

    async fn work(&mut self, stop: &CancellationToken) -> Result<Next, StorageError> {
        let started = Instant::now();
        let progress = &self.progress;
        if let Some(s) = pass(
            &self.engine,
            &self.cluster,
            &self.client,
            self.settings,
            progress,
            stop,
        )
        .await
        {
            let m = self.engine.metrics();
            let now = now_ms();
            m.ae_passes.inc();
            m.ae_last_pass.set((now / 1000) as i64);
            progress.passes.fetch_add(1, Ordering::Relaxed);
            progress.last_pass_ms.store(now, Ordering::Relaxed);
            m.ae_pass_seconds.set(started.elapsed().as_secs_f64());
            let t = s.totals;
            if t.pulled + t.pushed > 0 || s.failed > 0 {
                tracing::info!(
                    in_sync = s.in_sync,
                    repaired = s.repaired,
                    failed = s.failed,
                    pulled = t.pulled,
                    pushed = t.pushed,
                    bytes = t.bytes_pulled + t.bytes_pushed,
                    round_trips = t.round_trips,
                    "anti-entropy pass"
                );
            } else {
                tracing::debug!(in_sync = s.in_sync, differed = s.differed, "anti-entropy pass");
            }
        }
        Ok(Next::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.settings.interval).await;
    }
}

/// Runs one pass. Returns `None` when it was skipped or cut short (no usable ring yet,
/// shutdown).
pub async fn pass(
    engine: &Arc<Engine>,
    cluster: &ClusterCache,
    client: &InternalClient,
    settings: AeSettings,
    progress: &AeProgress,
    stop: &CancellationToken,
) -> Option<PassStats> {
    let state = cluster.current()?;
    let ring = state.ring.as_ref()?;
    if ring.partitioning() != engine.partitioning() {
        return None;
    }
    let buckets = Buckets::new(&state);
    let n = usize::from(buckets.max_n());
    let addresses = crate::peer::addresses(&state);
    let me = engine.identity().node_id.clone();
    let metrics = engine.metrics().clone();
    let mut pacer = Pacer::new(settings.max_bytes_per_sec);
    let mut stats = PassStats::default();
    for p in 0..engine.partitioning().count() {
        let p = PartitionId(p);
        let list = ring.preference_list(p, n).preference_list;
        let Some(mine) = list.iter().position(|id| *id == me) else {
            progress.partition(p, u64::MAX);
            continue;
        };
        if !list.iter().any(|id| *id > me) {
            progress.partition(p, u64::MAX);
            continue;
        }
        let pace = Tranquilizer::start(settings.tranquility);
        let mut all_ok = true;
        for (theirs, peer) in list.iter().enumerate().filter(|(_, id)| **id > me) {
            if stop.is_cancelled() {
                return None;
            }
            let Some(address) = addresses.get(peer) else {
                all_ok = false;
                continue;
            };
            let result = exchange(
                engine,
                client,
                address,
                p,
                &buckets,
                (mine, theirs),
                &mut pacer,
                stop,
            )
            .await;
            let label = match &result {
                Ok(s) if s.pulled + s.pushed > 0 => "repaired",
                Ok(s) if s.differing_leaves > 0 => "differed",
                Ok(_) => "in_sync",
                Err(_) => "failed",
            };
            metrics.ae_exchanges.with_label_values(&[label]).inc();
            match result {
                Ok(s) => {
                    match label {
                        "repaired" => stats.repaired += 1,
                        "differed" => stats.differed += 1,
                        _ => stats.in_sync += 1,
                    }
                    metrics.ae_keys.with_label_values(&["pulled"]).inc_by(s.pulled);
                    metrics.ae_keys.with_label_values(&["pushed"]).inc_by(s.pushed);
                    metrics
                        .ae_bytes
                        .with_label_values(&["pulled"])
                        .inc_by(s.bytes_pulled);
                    metrics
                        .ae_bytes
                        .with_label_values(&["pushed"])
                        .inc_by(s.bytes_pushed);
                    metrics.ae_round_trips.inc_by(s.round_trips);
                    progress.exchanged(&s);
                    stats.totals.add(&s);
                }
                Err(e) => {
                    all_ok = false;
                    stats.failed += 1;
                    tracing::debug!(partition = p.0, peer = %peer, error = %e, "anti-entropy exchange failed");
                }
            }
        }
        if all_ok {
            progress.partition(p, now_ms());
        } else {
            progress.partition_failed(p);
        }
        if !pace.rest(stop).await {
            return None;
        }
    }
    Some(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Goal: the status says how many partitions the node compares itself, and its oldest
    // clean comparison only once every one of them has had one; a failure after a success
    // keeps the success.
    #[test]
    fn progress_reports_the_oldest_clean_comparison_of_the_partitions_compared_here() {
        let p = AeProgress::new(4, true);
        let s = p.status();
        assert_eq!((s.compared_partitions, s.oldest_partition_ms), (0, None));
        p.partition(PartitionId(0), 5_000);
        p.partition_failed(PartitionId(1));
        p.partition(PartitionId(2), u64::MAX);
        let s = p.status();
        assert_eq!((s.compared_partitions, s.oldest_partition_ms), (2, None));
        p.partition(PartitionId(1), 7_000);
        p.partition_failed(PartitionId(0));
        let s = p.status();
        assert_eq!((s.compared_partitions, s.oldest_partition_ms), (2, Some(5_000)));
        p.exchanged(&ExchangeStats {
            pulled: 2,
            pushed: 3,
            bytes_pulled: 10,
            bytes_pushed: 20,
            ..ExchangeStats::default()
        });
        let s = p.status();
        assert_eq!((s.keys_pulled, s.keys_pushed, s.bytes_moved), (2, 3, 30));
    }
}
