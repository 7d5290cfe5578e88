//! The coordinator's cached view of the cluster: the last `ClusterState` the ring service
//! served, kept current by long-polling, used for every routing decision.
//!
//! The coordinator stays stateless: the cache lives in memory. While the ring service is
//! away it keeps serving with the last state it saw; a state with an older ring epoch is
//! never installed (invariant 5).

use std::sync::{Arc, RwLock};
use std::time::Duration;

use dynamo_core::ring::Ring;
use dynamo_core::wire::BucketProps;
use dynamo_core::wire::cluster::{BucketRecord, ClusterState};
use dynamo_core::{BucketName, ErrorCode};
use dynamo_server::ApiError;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::metrics::CoordinatorMetrics;

/// Longest long-poll asked of the ring service.
const POLL_WAIT_MS: u64 = 20_000;
/// Pause after a failed poll (bounded backoff up to 16×).
const POLL_BACKOFF: Duration = Duration::from_millis(250);

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
    changed: watch::Sender<u64>,
    ring_url: String,
    client: reqwest::Client,
    metrics: CoordinatorMetrics,
}

impl ClusterCache {
    /// Builds an empty cache for the ring service at `ring_url`.
    pub fn new(ring_url: String, client: reqwest::Client, metrics: CoordinatorMetrics) -> Self {
        ClusterCache {
            state: Arc::new(RwLock::new(None)),
            changed: watch::channel(0).0,
            ring_url: ring_url.trim_end_matches('/').to_owned(),
            client,
            metrics,
        }
    }

    /// Returns the ring service's address.
    pub fn ring_url(&self) -> &str {
        &self.ring_url
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

    /// Installs `state` unless it is older than what is cached. Returns whether it was
    /// installed.
    pub fn install(&self, state: ClusterState) -> bool {
        let mut slot = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(Cached { state: cur, .. }) = slot.as_ref() {
            let cur_epoch = cur.ring.as_ref().map(|r| r.epoch());
            let new_epoch = state.ring.as_ref().map(|r| r.epoch());
            if new_epoch < cur_epoch {
                self.metrics
                    .invariant_violations
                    .with_label_values(&["ring_epoch_monotonic"])
                    .inc();
                tracing::error!(
                    ?cur_epoch,
                    ?new_epoch,
                    "refusing a cluster state with an older ring epoch"
                );
                debug_assert!(false, "ring epoch went backwards");
                return false;
            }
            if state.version <= cur.version && new_epoch == cur_epoch {
                return false;
            }
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
        true
    }

    /// Fetches the state now (after an admin change this coordinator made), waiting at
    /// most `timeout`.
    ///
    /// # Errors
    /// `503 ring_unavailable` when the ring service does not answer.
    pub async fn refresh(&self, timeout: Duration) -> Result<(), ApiError> {
        let state = self.fetch(0, 0, timeout).await?;
        if let Some(s) = state {
            self.install(s);
        }
        Ok(())
    }

    async fn fetch(
        &self,
        after: u64,
        wait_ms: u64,
        timeout: Duration,
    ) -> Result<Option<ClusterState>, ApiError> {
        let unavailable = |e: String| ApiError::new(ErrorCode::RingUnavailable, format!("ring service: {e}"));
        let resp = self
            .client
            .get(format!("{}/internal/v1/state", self.ring_url))
            .query(&[("after", after), ("wait_ms", wait_ms)])
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| unavailable(e.to_string()))?;
        match resp.status().as_u16() {
            304 => Ok(None),
            200 => resp
                .json()
                .await
                .map(Some)
                .map_err(|e| unavailable(e.to_string())),
            s => Err(unavailable(format!("answered {s}"))),
        }
    }

    /// Long-polls the ring service until `stop`, installing every newer state.
    pub async fn run_poller(self, stop: CancellationToken) {
        let mut backoff = POLL_BACKOFF;
        loop {
            let after = self.current().map(|s| s.version).unwrap_or(0);
            let wait = Duration::from_millis(POLL_WAIT_MS);
            let result = tokio::select! {
                () = stop.cancelled() => return,
                r = self.fetch(after, POLL_WAIT_MS, wait + Duration::from_secs(5)) => r,
            };
            match result {
                Ok(Some(state)) => {
                    self.install(state);
                    backoff = POLL_BACKOFF;
                }
                Ok(None) => backoff = POLL_BACKOFF,
                Err(e) => {
                    tracing::debug!(error = %e.message, "cluster state poll failed; serving the cached state");
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(POLL_BACKOFF * 16);
                }
            }
        }
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
