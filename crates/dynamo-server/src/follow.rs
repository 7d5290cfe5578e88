//! Following the ring service's cluster state: the one long-poll loop of every service
//! that caches it (coordinators and storage nodes), with one set of rules.
//!
//! - `GET {ring}/internal/v1/state?after=V&wait_ms=20000`: `200` with a newer
//!   [`ClusterState`], or `304` when nothing changed within the wait.
//! - Each state goes to the service's [`StateSink`], which applies
//!   [`dynamo_core::wire::cluster::decide`]: an older ring, or another ring under the same
//!   epoch, is refused (invariant 5).
//! - After a refused or unchanged `200`, the next poll asks past its version, with a
//!   short pause, so a ring service that keeps offering it is not polled in a tight loop.
//! - Once a minute without any `200`, the poll asks for a full copy (`after=0`): a ring
//!   service that restarted with smaller versions would otherwise be waited on forever.
//! - Failures back off ([`dynamo_core::backoff::Backoff`], with jitter) and the cached
//!   state keeps serving; the loop stops when `stop` is cancelled.

use std::future::Future;
use std::time::Duration;

use dynamo_core::backoff::Backoff;
use dynamo_core::wire::cluster::{ClusterState, Decision};
use dynamo_core::wire::routes;
use tokio_util::sync::CancellationToken;

/// How long the ring service may hold a state long poll.
pub const STATE_WAIT: Duration = Duration::from_secs(20);
/// The backoff after failed polls.
pub const POLL_BACKOFF: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
/// Pause after a `200` that changed nothing (or was refused).
pub const MIN_POLL_GAP: Duration = Duration::from_millis(500);
/// Without any `200` for this long, ask for a full copy (`after=0`).
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
}

/// Fetches the state once: `Some` for a `200`, `None` for a `304`.
///
/// # Errors
/// A message for a transport failure or any other answer.
pub async fn fetch_state(
    client: &reqwest::Client,
    ring_url: &str,
    after: u64,
    wait: Duration,
    timeout: Duration,
) -> Result<Option<ClusterState>, String> {
    let wait_ms = wait.as_millis().to_string();
    let resp = client
        .get(routes::url(ring_url, routes::ring::STATE))
        .query(&[
            ("after", after.to_string().as_str()),
            ("wait_ms", wait_ms.as_str()),
        ])
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

/// Follows the ring service at `ring_url` into `sink` until `stop` (see the module doc);
/// `slack` is added to the long poll's wait as its timeout.
pub async fn follow_cluster_state(
    client: reqwest::Client,
    ring_url: String,
    slack: Duration,
    sink: &impl StateSink,
    stop: CancellationToken,
) {
    let mut seen = sink.version();
    let mut last_full = tokio::time::Instant::now();
    let mut failures = 0u32;
    loop {
        let after = if last_full.elapsed() >= FULL_REFRESH {
            0
        } else {
            seen
        };
        let polled = tokio::select! {
            () = stop.cancelled() => return,
            r = fetch_state(&client, &ring_url, after, STATE_WAIT, STATE_WAIT + slack) => r,
        };
        let pause = match polled {
            Ok(None) => {
                failures = 0;
                Duration::ZERO
            }
            Ok(Some(state)) => {
                last_full = tokio::time::Instant::now();
                let version = state.version;
                match sink.offer(state).await {
                    Ok(decision) => {
                        failures = 0;
                        // Past a refused version too: the ring service answers again only
                        // when it has something newer.
                        seen = version;
                        if decision == Decision::Adopted {
                            Duration::ZERO
                        } else {
                            MIN_POLL_GAP
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        tracing::error!(error = %e, "storing the cluster state failed");
                        POLL_BACKOFF.delay(failures, rand::random())
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(error = %e, "ring service state poll failed; serving with the cached state");
                } else {
                    tracing::debug!(error = %e, failures, "ring service state poll failed");
                }
                POLL_BACKOFF.delay(failures, rand::random())
            }
        };
        if !pause.is_zero() {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }
}
