//! Knowing the cluster: the node's cached copy of the ring service's [`ClusterState`],
//! and the two workers that keep it current (`cluster-state`) and tell the ring service
//! the node is alive (`heartbeat`).
//!
//! The node needs the ring for work that is its own, not a coordinator's: tombstone GC
//! asks the other replicas of a key before collecting it, so it must know the key's
//! preference list and the bucket's `n`. The state is kept in memory and on the volume
//! (`meta` keyspace), so a restarted node has the last ring it saw even while the ring
//! service is away.
//!
//! **Invariant 5 (ARCHITECTURE.md §4):** the ring epoch of the cached state never goes
//! backwards, across restarts included. A state whose ring is older than the cached one,
//! or a different ring under the same epoch, is refused and counted in
//! `dynamo_invariant_violations_total{invariant="ring_epoch_monotonic"}`. The highest
//! epoch ever adopted is also stored apart from the document, as a floor that holds even
//! if the document one day fails to decode.
//!
//! # Protocol with the ring service
//! - `{ring}` is one replica of the ring service, taken from the node's one
//!   [`RingUrls`] list (`--ring-url`), which the heartbeats, the state follower and the
//!   release worker share: a replica one of them found away, the others skip too.
//! - `POST {ring}/internal/v1/heartbeat` with a [`Heartbeat`] (node id, address, volume)
//!   every heartbeat interval; `404` means the node is not a member yet (logged at debug;
//!   beats go on); `409 volume_mismatch` means the member is bound to another volume
//!   (logged once; beats go on, the state's `volume_refused` closes the volume gate).
//!   A beat that gets no answer or a `5xx` from a replica goes to the next one at once,
//!   each replica at most once per beat ([`RingUrls::call`]): a heartbeat is idempotent,
//!   so one a replica may have taken can be sent again. When every replica failed, the
//!   beats back off with jitter up to [`MAX_BACKOFF`].
//! - The state is followed by [`dynamo_server::follow`], the coordinators' follower too,
//!   into a [`StateSink`] that fsyncs what it adopts.

use dynamo_server::internal::{InternalClient, SendError};
use dynamo_server::ring_urls::RingUrls;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dynamo_core::RingEpoch;
use dynamo_core::backoff::Backoff;
use dynamo_core::wire::cluster::{ClusterState, Decision, Heartbeat, decide};
use dynamo_core::wire::routes;
use dynamo_server::worker::{Next, Worker};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::codec::CodecError;
use crate::engine::Engine;
use crate::error::StorageError;
use crate::metrics::StorageMetrics;
use crate::volume::{self, Standing};

/// Longest pause between retries after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Format byte of the cached document: `1 ‖ JSON(ClusterState)`.
const DOCUMENT_V1: u8 = 1;

/// `GET /internal/v1/cluster-state`: the node's view of the cluster.
#[derive(Debug, Clone, Serialize)]
pub struct NodeClusterView {
    /// The highest ring epoch the node adopted (0 before it learned one).
    pub ring_epoch: RingEpoch,
    /// The cached state, if the node has one.
    pub state: Option<ClusterState>,
}

/// The node's cached cluster state.
pub struct ClusterCache {
    current: Mutex<Cached>,
    /// Whether the node follows a ring service (and so has a member to be bound to).
    follows_ring: bool,
    /// Woken when the node sees itself listed without a volume (just joined): the
    /// heartbeat that binds it goes at once, not an interval later, so the node's volume
    /// gate opens before the join publishes its ring.
    beat_now: tokio::sync::Notify,
    /// Serialises offers, so the check and the durable store of one offer are not
    /// interleaved with another's; `current` itself is only locked for short copies.
    offers: Mutex<()>,
    metrics: StorageMetrics,
}

struct Cached {
    floor: RingEpoch,
    state: Option<Arc<ClusterState>>,
    /// The volume gate as of `state` ([`crate::volume`]); always serving for a node that
    /// follows no ring service.
    standing: Standing,
    /// Replica batches being applied, by the ring epoch the node knew when it admitted
    /// them (see [`ClusterCache::admit`]).
    admitted: BTreeMap<RingEpoch, usize>,
}

/// A replica batch admitted under the node's ring: the state to fence it by, held until
/// the batch is applied, so a catch-up copy can wait for every batch admitted under an
/// older ring ([`ClusterCache::drained`]).
pub struct Admission<'a> {
    cache: &'a ClusterCache,
    epoch: RingEpoch,
    /// The node's state when the batch was admitted.
    pub state: Option<Arc<ClusterState>>,
}

impl Admission<'_> {
    /// The ring epoch the node knew when it admitted the batch.
    pub fn epoch(&self) -> RingEpoch {
        self.epoch
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut c = lock(&self.cache.current);
        if let Some(n) = c.admitted.get_mut(&self.epoch) {
            *n -= 1;
            if *n == 0 {
                c.admitted.remove(&self.epoch);
            }
        }
    }
}

/// The node has not yet seen the ring a request needs, or still applies operations
/// admitted under an older one.
#[derive(Debug, thiserror::Error)]
#[error(
    "this node is at ring epoch {have}, {busy} replica batches admitted under an older ring than {want} still run"
)]
pub struct RingBehind {
    /// The epoch asked for.
    pub want: RingEpoch,
    /// The node's epoch.
    pub have: RingEpoch,
    /// Batches admitted under an older epoch still running.
    pub busy: usize,
}

/// How often [`ClusterCache::drained`] looks again.
const DRAIN_POLL: Duration = Duration::from_millis(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The guarded values are replaced whole after the store succeeded: a panic elsewhere
    // cannot leave them half-written.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn encode_document(s: &ClusterState) -> Vec<u8> {
    let mut v = vec![DOCUMENT_V1];
    // Serializing plain data into a Vec cannot fail.
    if serde_json::to_writer(&mut v, s).is_err() {
        unreachable!("serde_json cannot fail writing a ClusterState to a Vec");
    }
    v
}

fn decode_document(v: &[u8]) -> Result<ClusterState, CodecError> {
    match v.first() {
        Some(&DOCUMENT_V1) => {}
        Some(&f) => return Err(CodecError::UnknownFormat(f)),
        None => return Err(CodecError::Truncated),
    }
    serde_json::from_slice(&v[1..]).map_err(CodecError::Document)
}

impl ClusterCache {
    /// Loads the cached state from the volume (blocking).
    ///
    /// A cached document that no longer decodes is logged and dropped (the ring service
    /// will send a new one), but its epoch floor is kept, so the node still refuses
    /// anything older.
    ///
    /// # Errors
    /// Engine failures.
    pub fn load(
        engine: &Engine,
        metrics: StorageMetrics,
        follows_ring: bool,
    ) -> Result<ClusterCache, StorageError> {
        let cached = engine.cached_cluster_state()?;
        let state = match cached.document.as_deref().map(decode_document) {
            Some(Ok(s)) => Some(Arc::new(s)),
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cached cluster state does not decode; waiting for the ring service");
                None
            }
            None => None,
        };
        let floor = RingEpoch(cached.ring_epoch.unwrap_or(0))
            .max(state.as_deref().map_or(RingEpoch(0), ClusterState::ring_epoch));
        metrics.ring_epoch.set(floor.0 as i64);
        if let Some(s) = &state {
            tracing::info!(ring_epoch = %floor, version = s.version, "cached cluster state loaded");
        }
        let standing = judge_volume(engine, &metrics, follows_ring, state.as_deref())?;
        Ok(ClusterCache {
            current: Mutex::new(Cached {
                floor,
                state,
                standing,
                admitted: BTreeMap::new(),
            }),
            follows_ring,
            beat_now: tokio::sync::Notify::new(),
            offers: Mutex::new(()),
            metrics,
        })
    }

    /// Resolves when a heartbeat should go now ([`ClusterCache::offer`] saw the node
    /// listed but not yet bound to a volume).
    pub async fn beat_requested(&self) {
        self.beat_now.notified().await;
    }

    /// Why the node refuses data-path requests now (its volume gate), if it does.
    pub fn volume_refusal(&self) -> Option<String> {
        lock(&self.current).standing.refusal().map(str::to_owned)
    }

    /// Returns the current state, if any.
    pub fn current(&self) -> Option<Arc<ClusterState>> {
        lock(&self.current).state.clone()
    }

    /// Returns the highest ring epoch adopted.
    pub fn ring_epoch(&self) -> RingEpoch {
        lock(&self.current).floor
    }

    /// Returns the version of the current state (0 without one).
    pub fn version(&self) -> u64 {
        lock(&self.current).state.as_ref().map_or(0, |s| s.version)
    }

    /// Admits a replica batch: returns the state to fence it by, and counts the batch
    /// under the current epoch until the admission is dropped.
    pub fn admit(&self) -> Admission<'_> {
        let mut c = lock(&self.current);
        let epoch = c.floor;
        *c.admitted.entry(epoch).or_default() += 1;
        Admission {
            cache: self,
            epoch,
            state: c.state.clone(),
        }
    }

    /// Waits, at most `timeout`, until the node knows ring epoch `min` and every replica
    /// batch admitted under an older epoch has been applied. From then on, nothing
    /// planned for an older ring can land on a partition this node no longer holds, so a
    /// copy of it taken now misses nothing.
    ///
    /// # Errors
    /// [`RingBehind`] when that did not happen in time.
    pub async fn drained(&self, min: RingEpoch, timeout: Duration) -> Result<(), RingBehind> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (have, busy) = {
                let c = lock(&self.current);
                let busy: usize = c.admitted.range(..min).map(|(_, n)| *n).sum();
                (c.floor, busy)
            };
            if have >= min && busy == 0 {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RingBehind {
                    want: min,
                    have,
                    busy,
                });
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
    }

    /// Returns the read-only view served at `/internal/v1/cluster-state`.
    pub fn view(&self) -> NodeClusterView {
        let c = lock(&self.current);
        NodeClusterView {
            ring_epoch: c.floor,
            state: c.state.as_deref().cloned(),
        }
    }

    /// Offers a state from the ring service (blocking: an adopted state is fsynced before
    /// it becomes current). Token hashes are dropped: a storage node has no use for them.
    ///
    /// # Errors
    /// Engine failures while storing; the current state is then unchanged.
    pub fn offer(&self, engine: &Engine, mut incoming: ClusterState) -> Result<Decision, StorageError> {
        incoming.tokens.clear();
        let _serial = lock(&self.offers);
        let (floor, current) = {
            let c = lock(&self.current);
            (c.floor, c.state.clone())
        };
        let decision = decide(floor, current.as_deref(), &incoming);
        match decision {
            Decision::Unchanged => {}
            Decision::Refused { .. } => {
                dynamo_server::follow::record_refusal(
                    &self.metrics.invariant_violations,
                    decision,
                    incoming.version,
                );
            }
            Decision::Adopted => {
                let epoch = incoming.ring_epoch().max(floor);
                // Invariant: the epoch only grows; `decide` refused anything older, and this
                // pairs that check right before the node's own state changes.
                debug_assert!(incoming.ring_epoch() >= floor, "ring epoch went backwards");
                engine.store_cluster_state(epoch.0, &encode_document(&incoming))?;
                if let Some(ring) = &incoming.ring
                    && ring.partitioning() != engine.partitioning()
                {
                    tracing::warn!(
                        ring_partitions = ring.partitioning().count(),
                        node_partitions = engine.partitioning().count(),
                        "the ring's partition count differs from this node's; tombstone GC is paused"
                    );
                }
                if epoch > floor {
                    tracing::info!(ring_epoch = %epoch, version = incoming.version, "ring epoch adopted");
                } else {
                    tracing::debug!(version = incoming.version, "cluster state adopted");
                }
                self.metrics.ring_epoch.set(epoch.0 as i64);
                let standing = judge_volume(engine, &self.metrics, self.follows_ring, Some(&incoming))?;
                let me = &engine.identity().node_id;
                if incoming
                    .nodes
                    .iter()
                    .any(|n| n.node_id == *me && n.volume.is_none() && n.volume_refused.is_none())
                {
                    self.beat_now.notify_one();
                }
                let mut c = lock(&self.current);
                if c.standing != standing {
                    match standing.refusal() {
                        Some(why) => tracing::warn!(
                            reason = why,
                            "volume gate closed: this node takes no part in the data path"
                        ),
                        None => tracing::info!("volume gate open: this node serves the data path"),
                    }
                }
                c.floor = epoch;
                c.state = Some(Arc::new(incoming));
                c.standing = standing;
            }
        }
        Ok(decision)
    }
}

/// The volume gate for `state`, with its effects: a volume seen bound is confirmed for
/// good (durably, before the gate opens on it), and the gauge follows.
fn judge_volume(
    engine: &Engine,
    metrics: &StorageMetrics,
    follows_ring: bool,
    state: Option<&ClusterState>,
) -> Result<Standing, StorageError> {
    let id = engine.identity();
    let standing = if follows_ring {
        volume::standing(&id.node_id, id.volume, engine.volume_unconfirmed(), state)
    } else {
        Standing::Serving
    };
    if standing == Standing::Bound {
        engine.confirm_volume()?;
    }
    metrics
        .volume_unconfirmed
        .set(i64::from(standing.refusal().is_some()));
    Ok(standing)
}

/// Where and how to reach the ring service.
#[derive(Debug, Clone)]
pub struct RingService {
    /// Its replicas' base URLs (`http://host:port`), shared by every caller of the node.
    pub urls: RingUrls,
    /// Timeout of a heartbeat, and the slack added to a long poll's wait.
    pub timeout: Duration,
}

/// Why a heartbeat failed.
#[derive(Debug, thiserror::Error)]
pub enum HeartbeatError {
    /// The ring service did not answer.
    #[error("the ring service did not answer the heartbeat")]
    Unreachable(#[source] SendError),
    /// It answered with an error status.
    #[error("the ring service answered the heartbeat with {0}")]
    Refused(reqwest::StatusCode),
}

impl HeartbeatError {
    /// Returns whether the next replica may take the beat: this one did not answer, or
    /// answered a `5xx`. Any other refusal is what every replica would answer.
    fn moves_on(&self) -> bool {
        match self {
            HeartbeatError::Unreachable(_) => true,
            HeartbeatError::Refused(s) => s.is_server_error(),
        }
    }
}

/// Sends one heartbeat to the replica at `base`: its status, or the failure that may
/// move on to the next replica (no answer, a `5xx`).
async fn beat_once(
    client: &InternalClient,
    base: &str,
    beat: &Heartbeat,
    timeout: Duration,
) -> Result<reqwest::StatusCode, HeartbeatError> {
    let sent = client
        .post(routes::url(base, routes::ring::HEARTBEAT))
        .json(beat)
        .timeout(timeout)
        .send()
        .await;
    match sent {
        Ok(r) if r.status().is_server_error() => Err(HeartbeatError::Refused(r.status())),
        Ok(r) => Ok(r.status()),
        Err(e) => Err(HeartbeatError::Unreachable(e.without_url())),
    }
}

/// The `heartbeat` worker: one [`Heartbeat`] per `interval`, backing off from `interval`
/// while the ring service fails.
pub struct HeartbeatSender {
    /// The client for the ring service.
    pub client: InternalClient,
    /// The cached state, which asks for a beat at once when the node was just listed.
    pub cache: Arc<ClusterCache>,
    /// The ring service.
    pub ring: RingService,
    /// What each heartbeat says.
    pub beat: Heartbeat,
    /// Pause between heartbeats.
    pub interval: Duration,
    /// Where results are counted.
    pub metrics: StorageMetrics,
    /// A refusal was logged (once: the gauge and the counter carry the rest).
    pub refused_logged: bool,
}

impl Worker for HeartbeatSender {
    type Error = HeartbeatError;

    fn name(&self) -> &'static str {
        "heartbeat"
    }

    async fn work(&mut self, stop: &CancellationToken) -> Result<Next, HeartbeatError> {
        let (client, beat, timeout) = (&self.client, &self.beat, self.ring.timeout);
        let sent = tokio::select! {
            () = stop.cancelled() => return Ok(Next::Done),
            r = self.ring.urls.call(
                |base| beat_once(client, base, beat, timeout),
                HeartbeatError::moves_on,
            ) => r,
        };
        let result = match &sent {
            Ok(s) if s.is_success() => "ok",
            Ok(s) if *s == reqwest::StatusCode::NOT_FOUND => "not_member",
            Ok(s) if *s == reqwest::StatusCode::CONFLICT => "volume_refused",
            _ => "error",
        };
        self.metrics.heartbeats.with_label_values(&[result]).inc();
        match sent {
            Ok(s) if s.is_success() => self.refused_logged = false,
            Ok(s) if s == reqwest::StatusCode::NOT_FOUND => {
                tracing::debug!("heartbeat: not a member of the ring yet");
            }
            // Beats go on at the usual pace: the first one after a replace in place began
            // is taken, and the node is up again without a backoff's delay.
            Ok(s) if s == reqwest::StatusCode::CONFLICT => {
                if !self.refused_logged {
                    tracing::warn!(
                        volume = ?self.beat.volume,
                        "heartbeat refused: the ring service binds this member to another volume (this one is new); replace the node in place to refill it"
                    );
                    self.refused_logged = true;
                }
                return Ok(Next::Idle);
            }
            Ok(s) => return Err(HeartbeatError::Refused(s)),
            Err(e) => return Err(e),
        }
        Ok(Next::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::select! {
            () = tokio::time::sleep(self.interval) => {}
            () = self.cache.beat_requested() => {}
        }
    }

    fn retry(&self) -> Backoff {
        Backoff::new(self.interval, MAX_BACKOFF.max(self.interval))
    }
}

/// The `cluster-state` worker's sink: an offered state is decided, and an adopted one
/// fsynced, on the blocking pool.
pub struct StateSink {
    /// The node's engine (where the state is kept).
    pub engine: Arc<Engine>,
    /// The cache offers go to.
    pub cache: Arc<ClusterCache>,
}

impl dynamo_server::follow::StateSink for StateSink {
    fn version(&self) -> u64 {
        self.cache.version()
    }

    async fn offer(&self, state: ClusterState) -> Result<Decision, String> {
        let (e, c) = (self.engine.clone(), self.cache.clone());
        match tokio::task::spawn_blocking(move || c.offer(&e, state)).await {
            Ok(r) => r.map_err(|e| format!("{e:?}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use dynamo_core::ring::{Member, Ring};
    use dynamo_core::{NodeId, Partitioning};

    use super::*;

    #[test]
    fn documents_round_trip_and_unknown_formats_are_refused() {
        let members = ["a", "b"].map(|n| (NodeId::new(n).expect("id"), Member::default()));
        let ring = Ring::new(Partitioning::with_count(16).expect("q"), 3, members.into()).expect("ring");
        let s = ClusterState {
            version: 5,
            ring: Some(ring),
            ..ClusterState::default()
        };
        let doc = encode_document(&s);
        assert_eq!(decode_document(&doc).expect("decode"), s);
        assert!(matches!(
            decode_document(&[9, b'{']),
            Err(CodecError::UnknownFormat(9))
        ));
        assert!(decode_document(&[]).is_err());
        assert!(decode_document(&[DOCUMENT_V1, b'{']).is_err());
    }
}
