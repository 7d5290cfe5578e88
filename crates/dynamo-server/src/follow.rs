//! Following the ring service's cluster state: the one long-poll loop of every service
//! that caches it (coordinators and storage nodes), with one set of rules.
//!
//! - `GET {ring}/internal/v1/state?after=V&wait_ms=20000`: `200` with a newer
//!   [`ClusterState`], or `304` when nothing changed within the wait.
//! - The first poll asks for the state at once (no `after`): a cluster nobody joined yet
//!   is version 0, which a long poll past version 0 would wait on forever.
//! - Each state goes to the service's [`StateSink`], which applies
//!   [`dynamo_core::wire::cluster::decide`]: an older ring, or another ring under the same
//!   epoch, is refused (invariant 5).
//! - After a refused or unchanged `200`, the next poll asks past its version, with a
//!   short pause, so a ring service that keeps offering it is not polled in a tight loop.
//! - Once a minute without any `200`, the poll asks for a full copy (no `after`): a ring
//!   service that restarted with smaller versions would otherwise be waited on forever.
//! - Failures back off ([`dynamo_core::backoff::Backoff`], with jitter) and the cached
//!   state keeps serving. It is a [`Worker`]: it stops with the service's workers.

use std::future::Future;
use std::time::Duration;

use dynamo_core::backoff::Backoff;
use dynamo_core::wire::cluster::{ClusterState, Decision};
use dynamo_core::wire::routes;
use tokio_util::sync::CancellationToken;

use crate::internal::InternalClient;
use crate::metrics::{InvariantViolations, invariant};
use crate::worker::{Next, Worker};

/// How long the ring service may hold a state long poll.
pub const STATE_WAIT: Duration = Duration::from_secs(20);
/// The backoff after failed polls.
pub const POLL_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
/// Pause after a `200` that changed nothing (or was refused).
pub const MIN_POLL_GAP: Duration = Duration::from_millis(500);
/// Without any `200` for this long, ask for a full copy (no `after`).
pub const FULL_REFRESH: Duration = Duration::from_secs(60);

/// Where a service keeps the state it follows.
pub trait StateSink: Send + Sync {
    /// Returns the version of the current state (0 without one).
    fn version(&self) -> u64;

    /// Offers a state the ring service sent; the sink decides with
    /// [`dynamo_core::wire::cluster::decide`] and stores what it adopts.
    ///
    /// # Errors
    /// A message when storing failed (the state stays as it was; the poll backs off).
    fn offer(&self, state: ClusterState) -> impl Future<Output = Result<Decision, String>> + Send;

    /// Called on every answer of the ring service (`200` or `304`): the service is
    /// reachable and the cached state is current as of now. Coordinators bound how long
    /// they trust their copy of the tokens by it.
    fn heard(&self) {}
}

/// Records a state [`Decision::Refused`] by a sink: the invariant-violation counter
/// (invariant 5) and an error naming both epochs.
pub fn record_refusal(violations: &InvariantViolations, decision: Decision, offered_version: u64) {
    if let Decision::Refused { current, offered } = decision {
        violations.record(invariant::RING_EPOCH_MONOTONIC);
        tracing::error!(
            ring_epoch = %current,
            offered_epoch = %offered,
            offered_version,
            "refusing a cluster state with an older ring (or another ring under the same epoch)"
        );
    }
}

/// Fetches the state once: `Some` for a `200`, `None` for a `304`. With `after`, the ring
/// service holds the poll until it has a newer version (or `wait` passes); without, it
/// answers at once with what it has, even the empty state of a cluster nobody joined yet
/// (version 0, which no `after` is below).
///
/// # Errors
/// A message for a transport failure or any other answer.
pub async fn fetch_state(
    client: &InternalClient,
    ring_url: &str,
    after: Option<u64>,
    wait: Duration,
    timeout: Duration,
) -> Result<Option<ClusterState>, String> {
    let wait_ms = wait.as_millis().to_string();
    let after = after.map(|a| a.to_string());
    let mut query = vec![("wait_ms", wait_ms.as_str())];
    if let Some(after) = &after {
        query.push(("after", after.as_str()));
    }
    let resp = client
        .get(routes::url(ring_url, routes::ring::STATE))
        .query(&query)
        .timeout(timeout)
        .send()
        .await
        .map_err(|e| e.without_url().to_string())?;
    match resp.status().as_u16() {
        304 => Ok(None),
        200 => resp
            .json()
            .await
            .map(Some)
            .map_err(|e| e.without_url().to_string()),
        s => Err(format!("answered {s}")),
    }
}

/// Why one poll of the `cluster-state` worker failed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The ring service did not answer, or answered something else than a state.
    #[error("polling the ring service failed ({0}); serving with the cached state")]
    Poll(String),
    /// The sink could not store an adopted state.
    #[error("storing the cluster state failed: {0}")]
    Store(String),
}

/// The `cluster-state` worker: follows the ring service at `ring_url` into `sink` (see
/// the module doc).
pub struct Follower<S> {
    client: InternalClient,
    ring_url: String,
    wait: Duration,
    slack: Duration,
    sink: S,
    seen: u64,
    /// True once a `200` came: until then every poll asks for the state at once.
    loaded: bool,
    last_full: tokio::time::Instant,
}

impl<S: StateSink> Follower<S> {
    /// A follower of `ring_url` into `sink`, asking the ring service to hold each poll
    /// for [`STATE_WAIT`]; `slack` is added to the wait as the poll's timeout.
    pub fn new(client: InternalClient, ring_url: String, slack: Duration, sink: S) -> Follower<S> {
        Follower::with_wait(client, ring_url, STATE_WAIT, slack, sink)
    }

    /// As [`Follower::new`], with the long poll held for `wait` (so the ring service
    /// answers at least that often).
    pub fn with_wait(
        client: InternalClient,
        ring_url: String,
        wait: Duration,
        slack: Duration,
        sink: S,
    ) -> Follower<S> {
        Follower {
            seen: sink.version(),
            loaded: false,
            client,
            ring_url,
            wait,
            slack,
            sink,
            last_full: tokio::time::Instant::now(),
        }
    }
}

impl<S: StateSink + 'static> Worker for Follower<S> {
    type Error = FollowError;

    fn name(&self) -> &'static str {
        "cluster-state"
    }

    async fn work(&mut self, stop: &CancellationToken) -> Result<Next, FollowError> {
        // A full copy at first (the ring service may have nothing newer than version 0
        // to wait for) and once a minute without any `200`.
        let after = if !self.loaded || self.last_full.elapsed() >= FULL_REFRESH {
            None
        } else {
            Some(self.seen)
        };
        let polled = tokio::select! {
            () = stop.cancelled() => return Ok(Next::Done),
            r = fetch_state(&self.client, &self.ring_url, after, self.wait, self.wait + self.slack) => r,
        };
        let polled = polled.map_err(FollowError::Poll)?;
        self.sink.heard();
        let Some(state) = polled else {
            return Ok(Next::Busy);
        };
        self.last_full = tokio::time::Instant::now();
        self.loaded = true;
        let version = state.version;
        let decision = self.sink.offer(state).await.map_err(FollowError::Store)?;
        // Past a refused version too: the ring service answers again only when it has
        // something newer.
        self.seen = version;
        Ok(if decision == Decision::Adopted {
            Next::Busy
        } else {
            Next::Throttled(MIN_POLL_GAP)
        })
    }

    async fn wait_for_work(&mut self) {}

    fn retry(&self) -> Backoff {
        POLL_BACKOFF
    }
}
