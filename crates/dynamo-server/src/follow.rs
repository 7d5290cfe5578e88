//! Following the ring service's cluster state: the one long-poll loop of every service
//! that caches it (coordinators and storage nodes), with one set of rules.
//!
//! - `GET {ring}/internal/v1/state?after=V&wait_ms=20000`: `200` with a newer
//!   [`ClusterState`], or `304` when nothing changed within the wait.
//! - `{ring}` is one replica of the ring service, the current URL of a [`RingUrls`]
//!   (any replica answers the poll). A poll that fails at that replica (no connection,
//!   a timeout, a `5xx`, a state cut off on the way) moves the list on to the next
//!   replica before the backoff ([`RingUrls::failed`], which logs the switch once), so
//!   the next poll asks another one. An answer every replica would give the same (a
//!   `4xx`, a state that does not decode) does not move it. The next poll keeps its
//!   `after`: a replica that is behind holds the poll until it has something newer.
//! - The first poll asks for the state at once (no `after`): a cluster nobody joined yet
//!   is version 0, which a long poll past version 0 would wait on forever.
//! - Each state goes to the service's [`StateSink`], which applies
//!   [`dynamo_core::wire::cluster::decide`]: an older ring, or another ring under the same
//!   epoch, is refused (invariant 5), and an older version of the same ring (a ring
//!   replica that lags) is not taken.
//! - After a refused or unchanged `200`, the next poll asks past its version, with a
//!   short pause, so a ring service that keeps offering it is not polled in a tight loop.
//! - Once a minute without any `200`, the poll asks for a full copy (no `after`): a
//!   newer ring under a smaller version (a ring group rebuilt from nothing) would otherwise
//!   be waited on forever.
//! - Failures back off ([`dynamo_core::backoff::Backoff`], with jitter) and the cached
//!   state keeps serving. It is a [`Worker`]: it stops with the service's workers.

use std::future::Future;
use std::time::Duration;

use dynamo_core::backoff::Backoff;
use dynamo_core::wire::cluster::{ClusterState, Decision};
use dynamo_core::wire::routes;
use tokio_util::sync::CancellationToken;

use crate::internal::{InternalClient, SendError};
use crate::metrics::{InvariantViolations, invariant};
use crate::ring_urls::RingUrls;
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

/// Why one fetch of the state from one ring-service replica failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No answer: the connection failed, or the call timed out.
    #[error("the ring service did not answer")]
    Unreachable(#[source] SendError),
    /// An answer that is neither a state nor "unchanged".
    #[error("the ring service answered {0}")]
    Status(reqwest::StatusCode),
    /// A `200` whose state did not arrive whole or did not decode.
    #[error("the ring service's state could not be read")]
    Body(#[source] reqwest::Error),
}

impl FetchError {
    /// Returns whether another replica may answer where this one failed: no answer, a
    /// `5xx`, or a state cut off by the connection or the timeout. A `4xx` or a state
    /// that does not decode is what every replica would send.
    pub fn moves_on(&self) -> bool {
        match self {
            FetchError::Unreachable(_) => true,
            FetchError::Status(s) => s.is_server_error(),
            FetchError::Body(e) => !e.is_decode(),
        }
    }
}

/// Fetches the state once from the replica at `ring_url`: `Some` for a `200`, `None`
/// for a `304`. With `after`, the ring service holds the poll until it has a newer
/// version (or `wait` passes); without, it answers at once with what it has, even the
/// empty state of a cluster nobody joined yet (version 0, which no `after` is below).
///
/// # Errors
/// [`FetchError`]: no answer within `timeout`, or any other answer.
pub async fn fetch_state(
    client: &InternalClient,
    ring_url: &str,
    after: Option<u64>,
    wait: Duration,
    timeout: Duration,
) -> Result<Option<ClusterState>, FetchError> {
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
        .map_err(|e| FetchError::Unreachable(e.without_url()))?;
    match resp.status() {
        reqwest::StatusCode::NOT_MODIFIED => Ok(None),
        reqwest::StatusCode::OK => resp
            .json()
            .await
            .map(Some)
            .map_err(|e| FetchError::Body(e.without_url())),
        s => Err(FetchError::Status(s)),
    }
}

/// Fetches the state at once (no `after`) from the current replica of `urls`, moving on
/// to the next replicas, each at most once, while one fails as [`FetchError::moves_on`]
/// says (a read: any replica may answer it). `Some` for a `200`, `None` for a `304`.
///
/// # Errors
/// The last replica's [`FetchError`], or the first one every replica would repeat.
pub async fn fetch_state_from_any(
    client: &InternalClient,
    urls: &RingUrls,
    timeout: Duration,
) -> Result<Option<ClusterState>, FetchError> {
    urls.call(
        |url| fetch_state(client, url, None, Duration::ZERO, timeout),
        FetchError::moves_on,
    )
    .await
}

/// Why one poll of the `cluster-state` worker failed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The ring service did not answer, or answered something else than a state.
    #[error("polling the ring service at {url} failed; serving with the cached state")]
    Poll {
        /// The replica polled.
        url: String,
        /// What went wrong.
        #[source]
        source: FetchError,
    },
    /// The sink could not store an adopted state.
    #[error("storing the cluster state failed: {0}")]
    Store(String),
}

/// The `cluster-state` worker: follows the ring service at `urls` (one replica at a
/// time, the list's current one) into `sink` (see the module doc).
pub struct Follower<S> {
    client: InternalClient,
    /// Shared with the service's other callers of the ring service: a replica found away
    /// here is skipped there too.
    urls: RingUrls,
    wait: Duration,
    slack: Duration,
    sink: S,
    seen: u64,
    /// True once a `200` came: until then every poll asks for the state at once.
    loaded: bool,
    last_full: tokio::time::Instant,
}

impl<S: StateSink> Follower<S> {
    /// A follower of the replicas at `urls` into `sink`, asking the ring service to hold
    /// each poll for [`STATE_WAIT`]; `slack` is added to the wait as the poll's timeout.
    pub fn new(client: InternalClient, urls: RingUrls, slack: Duration, sink: S) -> Follower<S> {
        Follower::with_wait(client, urls, STATE_WAIT, slack, sink)
    }

    /// As [`Follower::new`], with the long poll held for `wait` (so the ring service
    /// answers at least that often).
    pub fn with_wait(
        client: InternalClient,
        urls: RingUrls,
        wait: Duration,
        slack: Duration,
        sink: S,
    ) -> Follower<S> {
        Follower {
            seen: sink.version(),
            loaded: false,
            client,
            urls,
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
        let url = self.urls.current();
        let polled = tokio::select! {
            () = stop.cancelled() => return Ok(Next::Done),
            r = fetch_state(&self.client, url, after, self.wait, self.wait + self.slack) => r,
        };
        let polled = match polled {
            Ok(p) => p,
            Err(source) => {
                // Before the backoff, so the retry asks the next replica; the poll keeps
                // its `after`, which holds on a replica that is behind.
                if source.moves_on() {
                    self.urls.failed(url);
                }
                return Err(FollowError::Poll {
                    url: url.to_owned(),
                    source,
                });
            }
        };
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::StatusCode;
    use axum::response::IntoResponse as _;
    use dynamo_core::RingEpoch;
    use dynamo_core::wire::cluster::decide;

    use super::*;

    /// A sink keeping what it adopts, by the one rule.
    #[derive(Clone, Default)]
    struct Kept(Arc<Mutex<Option<ClusterState>>>);

    impl StateSink for Kept {
        fn version(&self) -> u64 {
            self.0.lock().expect("lock").as_ref().map_or(0, |s| s.version)
        }

        async fn offer(&self, state: ClusterState) -> Result<Decision, String> {
            let mut kept = self.0.lock().expect("lock");
            let decision = decide(RingEpoch(0), kept.as_ref(), &state);
            if decision == Decision::Adopted {
                *kept = Some(state);
            }
            Ok(decision)
        }
    }

    /// A ring-service replica whose state route answers `status` (with state version 1
    /// when it is `200`).
    async fn replica(status: StatusCode) -> String {
        let state = ClusterState {
            version: 1,
            ..ClusterState::default()
        };
        dynamo_testkit::serve(axum::Router::new().route(
            routes::ring::STATE,
            axum::routing::get(move || {
                let state = state.clone();
                async move {
                    if status == StatusCode::OK {
                        axum::Json(state).into_response()
                    } else {
                        status.into_response()
                    }
                }
            }),
        ))
        .await
    }

    fn follower(urls: &RingUrls, kept: &Kept) -> Follower<Kept> {
        Follower::with_wait(
            dynamo_testkit::http(),
            urls.clone(),
            Duration::from_millis(10),
            Duration::from_secs(5),
            kept.clone(),
        )
    }

    // Goal: a poll that fails at a replica (no connection, then a 5xx) moves the follower
    // on to the next replica before its backoff, and the next poll, there, adopts the
    // state. Method: replicas "closed, 503, up"; one `work` call per poll.
    #[tokio::test]
    async fn a_failed_poll_moves_on_to_the_next_replica() {
        let closed = dynamo_testkit::closed_address();
        let failing = replica(StatusCode::SERVICE_UNAVAILABLE).await;
        let up = replica(StatusCode::OK).await;
        let urls = RingUrls::parse(&format!("{closed},{failing},{up}")).expect("urls");
        let kept = Kept::default();
        let mut f = follower(&urls, &kept);
        let stop = CancellationToken::new();

        let e = f.work(&stop).await.expect_err("nothing listens");
        assert!(
            matches!(&e, FollowError::Poll { url, source: FetchError::Unreachable(_) } if *url == closed),
            "{e:?}"
        );
        assert_eq!(urls.current(), failing);

        let e = f.work(&stop).await.expect_err("a 503");
        assert!(
            matches!(&e, FollowError::Poll { source: FetchError::Status(s), .. } if s.as_u16() == 503),
            "{e:?}"
        );
        assert_eq!(urls.current(), up);

        assert_eq!(f.work(&stop).await.expect("a state"), Next::Busy);
        assert_eq!(kept.version(), 1, "adopted from the third replica");
        assert_eq!(urls.current(), up, "a replica that answers stays current");
    }

    // Goal: an answer every replica would give the same (a 4xx: a refused signature) does
    // not move the follower; it backs off and asks the same replica again.
    #[tokio::test]
    async fn a_refusal_does_not_move_the_follower() {
        let refusing = replica(StatusCode::UNAUTHORIZED).await;
        let up = replica(StatusCode::OK).await;
        let urls = RingUrls::parse(&format!("{refusing},{up}")).expect("urls");
        let kept = Kept::default();
        let mut f = follower(&urls, &kept);
        let e = f.work(&CancellationToken::new()).await.expect_err("a 401");
        assert!(
            matches!(&e, FollowError::Poll { source: FetchError::Status(s), .. } if s.as_u16() == 401),
            "{e:?}"
        );
        assert_eq!(urls.current(), refusing);
        assert_eq!(kept.version(), 0);
    }
}
