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
//! - `POST {ring}/internal/v1/heartbeat` with a [`Heartbeat`] every heartbeat interval;
//!   `404` means the node is not a member yet (logged at debug; beats go on).
//! - `GET {ring}/internal/v1/state?after=V&wait_ms=20000`: a long poll, `200` with a
//!   newer [`ClusterState`] or `304` when nothing changed within the wait. Once a minute
//!   without any `200`, the node asks with `after=0` (a full copy), so a ring service that
//!   restarted with smaller versions is not waited on forever.
//! - Failures back off exponentially (with jitter) up to [`MAX_BACKOFF`]; both workers
//!   retry for as long as the node runs and stop at shutdown.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use dynamo_core::RingEpoch;
use dynamo_core::wire::cluster::{ClusterState, Heartbeat};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::codec::CodecError;
use crate::engine::Engine;
use crate::error::StorageError;
use crate::metrics::{RING_EPOCH_MONOTONIC, StorageMetrics};

/// How long the ring service may hold a state long poll.
pub const STATE_WAIT: Duration = Duration::from_secs(20);
/// Longest pause between retries after failures.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// First pause after a failure; doubles per consecutive failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Pause after a `200` that changed nothing (or was refused), so a ring service that
/// answers at once is not polled in a tight loop.
const MIN_POLL_GAP: Duration = Duration::from_millis(500);
/// Without any `200` for this long, ask for a full copy (`after=0`).
const FULL_REFRESH: Duration = Duration::from_secs(60);
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

/// What [`ClusterCache::offer`] did with a state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Stored and now current.
    Adopted,
    /// Identical to the current state; nothing to do.
    Unchanged,
    /// Refused: its ring is older than the cached one, or differs under the same epoch.
    Refused {
        /// The cached epoch.
        current: RingEpoch,
        /// The offered epoch.
        offered: RingEpoch,
    },
}

/// Decides whether `incoming` may replace `current` (pure; unit-tested below).
///
/// `floor` is the highest epoch ever adopted. A state without a ring counts as epoch 0,
/// so it never replaces a ring.
pub(crate) fn decide(floor: RingEpoch, current: Option<&ClusterState>, incoming: &ClusterState) -> Decision {
    let offered = ring_epoch_of(incoming);
    let current_ring = current.and_then(|c| c.ring.as_ref());
    let floor = floor.max(current.map_or(RingEpoch(0), ring_epoch_of));
    let refused = Decision::Refused {
        current: floor,
        offered,
    };
    if offered < floor {
        return refused;
    }
    // Every ring change makes a larger epoch: another ring under the cached epoch means
    // two rings claim one epoch, and adopting it would move the node backwards for one
    // of them.
    if offered == floor
        && let (Some(mine), Some(theirs)) = (current_ring, incoming.ring.as_ref())
        && mine != theirs
    {
        return refused;
    }
    if current == Some(incoming) {
        return Decision::Unchanged;
    }
    Decision::Adopted
}

fn ring_epoch_of(s: &ClusterState) -> RingEpoch {
    s.ring.as_ref().map_or(RingEpoch(0), |r| r.epoch())
}

/// The node's cached cluster state.
pub struct ClusterCache {
    current: Mutex<Cached>,
    /// Serialises offers, so the check and the durable store of one offer are not
    /// interleaved with another's; `current` itself is only locked for short copies.
    offers: Mutex<()>,
    metrics: StorageMetrics,
}

struct Cached {
    floor: RingEpoch,
    state: Option<Arc<ClusterState>>,
}

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
    pub fn load(engine: &Engine, metrics: StorageMetrics) -> Result<ClusterCache, StorageError> {
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
            .max(state.as_deref().map_or(RingEpoch(0), ring_epoch_of));
        metrics.ring_epoch.set(floor.0 as i64);
        if let Some(s) = &state {
            tracing::info!(ring_epoch = %floor, version = s.version, "cached cluster state loaded");
        }
        Ok(ClusterCache {
            current: Mutex::new(Cached { floor, state }),
            offers: Mutex::new(()),
            metrics,
        })
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
            Decision::Refused { current, offered } => {
                self.metrics
                    .invariant_violations
                    .with_label_values(&[RING_EPOCH_MONOTONIC])
                    .inc();
                tracing::error!(
                    ring_epoch = %current,
                    offered_epoch = %offered,
                    offered_version = incoming.version,
                    "ring service offered an older ring (or another ring under the same epoch); refused"
                );
            }
            Decision::Adopted => {
                let epoch = ring_epoch_of(&incoming).max(floor);
                // Invariant: the epoch only grows; `decide` refused anything older, and this
                // pairs that check right before the node's own state changes.
                debug_assert!(ring_epoch_of(&incoming) >= floor, "ring epoch went backwards");
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
                *lock(&self.current) = Cached {
                    floor: epoch,
                    state: Some(Arc::new(incoming)),
                };
            }
        }
        Ok(decision)
    }
}

/// Returns the pause before retry number `failures` (≥ 1): `base · 2^(failures−1)`,
/// capped at `cap`, with jitter in its upper half so that nodes restarted together do not
/// retry in step.
fn backoff(base: Duration, cap: Duration, failures: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let d = exp.min(cap);
    d.mul_f64(rand::random_range(0.5..=1.0))
}

async fn sleep_or_stop(d: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = stop.cancelled() => false,
        () = tokio::time::sleep(d) => true,
    }
}

/// Where and how to reach the ring service.
#[derive(Debug, Clone)]
pub struct RingService {
    /// Its base URL (`http://host:port`).
    pub url: String,
    /// Timeout of a heartbeat, and the slack added to a long poll's wait.
    pub timeout: Duration,
}

/// Runs the `heartbeat` worker until `stop`: one [`Heartbeat`] per `interval`, backing
/// off while the ring service fails.
pub async fn heartbeat(
    client: reqwest::Client,
    ring: RingService,
    beat: Heartbeat,
    interval: Duration,
    metrics: StorageMetrics,
    stop: CancellationToken,
) {
    let url = format!("{}/internal/v1/heartbeat", ring.url.trim_end_matches('/'));
    let mut failures = 0u32;
    loop {
        let sent = tokio::select! {
            () = stop.cancelled() => return,
            r = client.post(&url).json(&beat).timeout(ring.timeout).send() => r,
        };
        let result = match &sent {
            Ok(r) if r.status().is_success() => "ok",
            Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => "not_member",
            _ => "error",
        };
        metrics.heartbeats.with_label_values(&[result]).inc();
        let pause = if result == "error" {
            failures += 1;
            let why = match sent {
                Ok(r) => format!("status {}", r.status()),
                Err(e) => e.to_string(),
            };
            if failures == 1 {
                tracing::warn!(error = %why, "heartbeat to the ring service failed; backing off");
            } else {
                tracing::debug!(error = %why, failures, "heartbeat failed");
            }
            backoff(interval, MAX_BACKOFF.max(interval), failures)
        } else {
            if failures > 0 {
                tracing::info!(failures, "ring service reachable again");
            }
            failures = 0;
            if result == "not_member" {
                tracing::debug!("heartbeat: not a member of the ring yet");
            }
            interval
        };
        if !sleep_or_stop(pause, &stop).await {
            return;
        }
    }
}

/// Runs the `cluster-state` worker until `stop`: long-polls the ring service for newer
/// states and offers each to `cache`.
pub async fn follow_state(
    engine: Arc<Engine>,
    cache: Arc<ClusterCache>,
    client: reqwest::Client,
    ring: RingService,
    stop: CancellationToken,
) {
    let url = format!("{}/internal/v1/state", ring.url.trim_end_matches('/'));
    let wait_ms = STATE_WAIT.as_millis().to_string();
    let mut seen_version = cache.version();
    let mut last_full = Instant::now();
    let mut failures = 0u32;
    loop {
        let after = if last_full.elapsed() >= FULL_REFRESH {
            0
        } else {
            seen_version
        };
        let poll = async {
            let resp = client
                .get(&url)
                .query(&[
                    ("after", after.to_string().as_str()),
                    ("wait_ms", wait_ms.as_str()),
                ])
                .timeout(STATE_WAIT + ring.timeout)
                .send()
                .await?;
            if resp.status() == reqwest::StatusCode::NOT_MODIFIED {
                return Ok(None);
            }
            let resp = resp.error_for_status()?;
            resp.json::<ClusterState>().await.map(Some)
        };
        let polled = tokio::select! {
            () = stop.cancelled() => return,
            r = poll => r,
        };
        let pause = match polled {
            Ok(None) => {
                failures = 0;
                Duration::ZERO
            }
            Ok(Some(state)) => {
                failures = 0;
                last_full = Instant::now();
                let version = state.version;
                let (e, c) = (engine.clone(), cache.clone());
                match tokio::task::spawn_blocking(move || c.offer(&e, state)).await {
                    Ok(Ok(Decision::Adopted)) => {
                        seen_version = version;
                        Duration::ZERO
                    }
                    Ok(Ok(Decision::Unchanged | Decision::Refused { .. })) => {
                        // Long-poll past a refused version: the ring service answers again
                        // only when it has something newer.
                        seen_version = version;
                        MIN_POLL_GAP
                    }
                    Ok(Err(e)) => {
                        failures += 1;
                        tracing::error!(error = ?e, "storing the cluster state failed");
                        backoff(FIRST_BACKOFF, MAX_BACKOFF, failures)
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::error!(error = %e, "storing the cluster state failed");
                        backoff(FIRST_BACKOFF, MAX_BACKOFF, failures)
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "ring service state poll failed; serving with the cached ring");
                } else {
                    tracing::debug!(error = %e, failures, "ring service state poll failed");
                }
                backoff(FIRST_BACKOFF, MAX_BACKOFF, failures)
            }
        };
        if !pause.is_zero() && !sleep_or_stop(pause, &stop).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use dynamo_core::ring::{Member, Ring};
    use dynamo_core::{NodeId, Partitioning};

    use super::*;

    fn ring(nodes: usize) -> Ring {
        let members = (0..nodes)
            .map(|i| (NodeId::new(format!("n{i}")).expect("id"), Member::default()))
            .collect();
        Ring::new(Partitioning::with_count(16).expect("q"), 3, members).expect("ring")
    }

    fn state(version: u64, ring: Option<Ring>) -> ClusterState {
        ClusterState {
            version,
            ring,
            nodes: Vec::new(),
            buckets: BTreeMap::new(),
            tokens: Vec::new(),
            handoffs: Vec::new(),
        }
    }

    #[test]
    fn ring_epochs_only_grow() {
        let r1 = ring(3);
        let r2 = r1
            .with_member_added(NodeId::new("n9").expect("id"), Member::default())
            .expect("join");
        let s1 = state(1, Some(r1.clone()));
        let s2 = state(2, Some(r2.clone()));
        assert_eq!(decide(RingEpoch(0), None, &s1), Decision::Adopted);
        assert_eq!(decide(RingEpoch(1), Some(&s1), &s2), Decision::Adopted);
        assert_eq!(decide(RingEpoch(2), Some(&s2), &s2), Decision::Unchanged);
        // Older ring, even under a larger document version.
        assert_eq!(
            decide(RingEpoch(2), Some(&s2), &state(7, Some(r1.clone()))),
            Decision::Refused {
                current: RingEpoch(2),
                offered: RingEpoch(1)
            }
        );
        // No ring at all is epoch 0: never replaces a ring.
        assert!(matches!(
            decide(RingEpoch(2), Some(&s2), &state(8, None)),
            Decision::Refused { .. }
        ));
        // A floor from the volume holds even without a decodable document.
        assert!(matches!(
            decide(RingEpoch(2), None, &s1),
            Decision::Refused { .. }
        ));
        assert_eq!(decide(RingEpoch(2), None, &s2), Decision::Adopted);
        // Another ring under the same epoch is refused; the same ring with new bucket
        // properties is adopted.
        let other = ring(4);
        assert_eq!(other.epoch(), r1.epoch());
        assert!(matches!(
            decide(RingEpoch(1), Some(&s1), &state(3, Some(other))),
            Decision::Refused { .. }
        ));
        let mut s1b = state(4, Some(r1));
        s1b.buckets.insert(
            dynamo_core::BucketName::new("b").expect("bucket"),
            dynamo_core::wire::cluster::BucketRecord {
                props: dynamo_core::wire::BucketProps::default(),
                has_data: true,
            },
        );
        assert_eq!(decide(RingEpoch(1), Some(&s1), &s1b), Decision::Adopted);
    }

    #[test]
    fn documents_round_trip_and_unknown_formats_are_refused() {
        let s = state(5, Some(ring(2)));
        let doc = encode_document(&s);
        assert_eq!(decode_document(&doc).expect("decode"), s);
        assert!(matches!(
            decode_document(&[9, b'{']),
            Err(CodecError::UnknownFormat(9))
        ));
        assert!(decode_document(&[]).is_err());
        assert!(decode_document(&[DOCUMENT_V1, b'{']).is_err());
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        for failures in 1..40 {
            let d = backoff(FIRST_BACKOFF, MAX_BACKOFF, failures);
            let full = FIRST_BACKOFF
                .saturating_mul(1 << (failures - 1).min(16))
                .min(MAX_BACKOFF);
            assert!(d <= full && d >= full / 2, "{failures}: {d:?}");
        }
    }
}
