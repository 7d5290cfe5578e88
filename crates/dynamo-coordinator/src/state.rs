//! The coordinator's cached view of the cluster: the last `ClusterState` the ring service
//! served, kept current by long-polling, used for every routing decision.
//!
//! The coordinator stays stateless: the cache lives in memory. While the ring service is
//! away it keeps serving with the last state it saw. It follows the ring service with
//! the storage nodes' follower and rules ([`dynamo_server::follow`], [`decide`]): an
//! older ring, or another ring under the same epoch, is never installed (invariant 5).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use dynamo_core::ring::Ring;
use dynamo_core::wire::BucketProps;
use dynamo_core::wire::cluster::{BucketRecord, ClusterState, Decision, decide};
use dynamo_core::{BucketName, ErrorCode, RingEpoch};
use dynamo_server::ApiError;
use dynamo_server::follow;
use dynamo_server::internal::InternalClient;
use dynamo_server::ring_urls::RingUrls;
use tokio::sync::watch;

use crate::metrics::CoordinatorMetrics;

/// Added to the long poll's wait as its timeout.
const RING_SLACK: Duration = Duration::from_secs(5);

/// A cluster state and its ring, shared as they are: every request reads them, and
/// cloning the ring per request (one node id per partition) cost more allocations than
/// the rest of a read (docs/benchmarks.md, profile).
struct Cached {
    state: Arc<ClusterState>,
    ring: Option<Arc<Ring>>,
}

/// The cached cluster state.
#[derive(Clone)]
pub struct ClusterCache {
    state: Arc<RwLock<Option<Cached>>>,
    /// When the ring service last answered (wall clock ms; 0: never).
    heard_ms: Arc<AtomicU64>,
    changed: watch::Sender<u64>,
    /// The ring service's replicas, shared by the follower and every admin relay: a
    /// replica one of them found away is skipped by the others.
    ring_urls: RingUrls,
    client: InternalClient,
    metrics: CoordinatorMetrics,
}

impl ClusterCache {
    /// Builds an empty cache for the ring service at `ring_urls` (any of its replicas).
    pub fn new(ring_urls: RingUrls, client: InternalClient, metrics: CoordinatorMetrics) -> Self {
        ClusterCache {
            state: Arc::new(RwLock::new(None)),
            heard_ms: Arc::new(AtomicU64::new(0)),
            changed: watch::channel(0).0,
            ring_urls,
            client,
            metrics,
        }
    }

    /// Records that the ring service answered just now.
    pub fn mark_heard(&self) {
        let now = dynamo_server::clock::now_ms();
        self.heard_ms.store(now, Ordering::Relaxed);
        self.metrics.ring_last_contact.set((now / 1000) as i64);
    }

    /// Returns how long the ring service has been silent (since its last answer), or
    /// `None` when it never answered.
    pub fn silence(&self) -> Option<Duration> {
        match self.heard_ms.load(Ordering::Relaxed) {
            0 => None,
            at => Some(Duration::from_millis(
                dynamo_server::clock::now_ms().saturating_sub(at),
            )),
        }
    }

    /// Returns the ring service's replicas (calls start at the current one).
    pub fn ring_urls(&self) -> &RingUrls {
        &self.ring_urls
    }

    /// Returns the last state seen, or `ring_unavailable` before the first.
    ///
    /// # Errors
    /// `503 ring_unavailable` when no state was ever loaded.
    pub fn current(&self) -> Result<Arc<ClusterState>, ApiError> {
        self.state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
            .map(|c| c.state.clone())
            .ok_or_else(Self::never_loaded)
    }

    /// Returns the ring of the last state seen; one lock, as every request asks.
    ///
    /// # Errors
    /// `503 ring_unavailable` when no state was ever loaded, or no node has joined yet.
    pub fn ring(&self) -> Result<Arc<Ring>, ApiError> {
        match self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_ref()
        {
            None => Err(Self::never_loaded()),
            Some(Cached { ring: None, .. }) => Err(ApiError::new(
                ErrorCode::RingUnavailable,
                "no node has joined the cluster yet",
            )),
            Some(Cached { ring: Some(r), .. }) => Ok(r.clone()),
        }
    }

    fn never_loaded() -> ApiError {
        ApiError::new(
            ErrorCode::RingUnavailable,
            "no ring seen yet; is the ring service up?",
        )
    }

    /// Returns the effective properties of `bucket`.
    pub fn bucket(&self, bucket: &BucketName, defaults: &BucketProps) -> (BucketProps, bool) {
        match self.current().ok().and_then(|s| s.buckets.get(bucket).cloned()) {
            Some(BucketRecord { props, has_data }) => (props, has_data),
            None => (defaults.clone(), false),
        }
    }

    /// Installs `state` if [`decide`] adopts it (an older ring, or another ring under
    /// the same epoch, is refused and counted: invariant 5). Returns the decision.
    pub fn install(&self, state: ClusterState) -> Decision {
        let mut slot = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = slot.as_ref().map(|c| c.state.clone());
        let floor = current.as_deref().map_or(RingEpoch(0), ClusterState::ring_epoch);
        let decision = decide(floor, current.as_deref(), &state);
        if decision != Decision::Adopted {
            follow::record_refusal(&self.metrics.invariant_violations, decision, state.version);
            return decision;
        }
        let version = state.version;
        if let Some(ring) = &state.ring {
            self.metrics.ring_epoch.set(ring.epoch().0 as i64);
        }
        let ring = state.ring.clone().map(Arc::new);
        *slot = Some(Cached {
            state: Arc::new(state),
            ring,
        });
        drop(slot);
        self.changed.send_replace(version);
        tracing::debug!(version, "cluster state installed");
        decision
    }

    /// Fetches the state now (after an admin change this coordinator made), waiting at
    /// most `timeout` for each replica. It asks the current replica first (the one that
    /// just took the change) and moves on to the next ones, each at most once, when one
    /// does not answer: a read may go to any replica.
    ///
    /// # Errors
    /// `503 ring_unavailable` when no replica answers.
    pub async fn refresh(&self, timeout: Duration) -> Result<(), ApiError> {
        let state = follow::fetch_state_from_any(&self.client, &self.ring_urls, timeout)
            .await
            .map_err(|e| ApiError::new(ErrorCode::RingUnavailable, e.to_string()))?;
        self.mark_heard();
        if let Some(s) = state {
            self.install(s);
        }
        Ok(())
    }

    /// Follows the ring service until `stop` ([`dynamo_server::follow`]), each long poll
    /// held for at most `wait`.
    pub fn follower(self, wait: Duration) -> follow::Follower<ClusterCache> {
        let (client, urls) = (self.client.clone(), self.ring_urls.clone());
        follow::Follower::with_wait(client, urls, wait, RING_SLACK, self)
    }

    /// Returns a receiver that sees the version of every state installed from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Waits until a state with at least `version` is installed, or `timeout`.
    pub async fn wait_for_version(&self, version: u64, timeout: Duration) {
        let mut rx = self.changed.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|v| *v >= version)).await;
    }
}

impl follow::StateSink for ClusterCache {
    fn version(&self) -> u64 {
        self.current().map_or(0, |s| s.version)
    }

    async fn offer(&self, state: ClusterState) -> Result<Decision, String> {
        Ok(self.install(state))
    }

    fn heard(&self) {
        self.mark_heard();
    }
}
