//! The ring service's addresses as its clients hold them: an ordered list of replicas,
//! any of which answers, and the one currently in use.
//!
//! The ring service runs as several replicas (Raft). Any replica answers reads (the
//! state long poll) and forwards writes to its leader itself, so a client needs no
//! leader knowledge: only the list, and a rule for moving on when a replica does not
//! answer. That rule lives here, once:
//!
//! - Every call starts at the current URL ([`RingUrls::current`]); one list is shared by
//!   all the workers and handlers of a process, so what one learned (a replica is away)
//!   the others use at once.
//! - A failure moves the list on with [`RingUrls::failed`], which rotates only if the URL
//!   that failed is still the current one: two calls failing on the same replica at once
//!   move the list by one, not two, and never skip past a replica that answers.
//! - [`RingUrls::call`] tries the next URLs within one call, each at most once, so a call
//!   makes at most [`RingUrls::len`] attempts. Which failures may move on is the
//!   caller's to say: a read or an idempotent write may go on after any failure, a
//!   relayed write only when nothing was sent (a timeout after sending may have been
//!   applied, and another replica would apply it twice).
//!
//! A single URL is a list of one: it never switches, and behaves as before.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Most URLs a list may hold. A ring service runs 3 or 5 replicas; the cap bounds how
/// many attempts one call may make ([`RingUrls::call`]).
pub const MAX_RING_URLS: usize = 16;

/// Why a list of ring-service URLs was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingUrlsError {
    /// Nothing but blanks and commas.
    #[error("no URL given")]
    Empty,
    /// An entry between two commas is blank (`a,,b`, or a trailing comma).
    #[error("entry {position} of the list is empty")]
    EmptyEntry {
        /// The entry's position, from 1.
        position: usize,
    },
    /// An entry is not an `http(s)://host[:port][/path]` base URL.
    #[error("{url:?} is not an http(s) base URL ({reason})")]
    NotHttp {
        /// The entry as given (trimmed).
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The same URL twice: a failover would only try it again.
    #[error("{url:?} is listed twice")]
    Duplicate {
        /// The URL listed twice.
        url: String,
    },
    /// More than [`MAX_RING_URLS`] entries.
    #[error("{count} URLs; at most {MAX_RING_URLS}")]
    TooMany {
        /// How many were given.
        count: usize,
    },
}

/// A non-empty, ordered list of ring-service base URLs and the one in use; cloning
/// shares the list and its current URL.
#[derive(Clone)]
pub struct RingUrls {
    inner: Arc<Inner>,
}

struct Inner {
    /// Invariant: 1 to [`MAX_RING_URLS`] distinct http(s) base URLs, without a trailing
    /// `/` (the route paths begin with one).
    urls: Box<[String]>,
    /// Index of the current URL, always below `urls.len()`.
    current: AtomicUsize,
}

impl RingUrls {
    /// Parses a comma-separated list of base URLs (one URL is a list of one): entries
    /// are trimmed, and a trailing `/` is dropped. The first entry is the current one.
    ///
    /// # Errors
    /// [`RingUrlsError`] for an empty list or entry, an entry that is not an http(s)
    /// URL with a host (or carries a query or fragment), a duplicate, or more than
    /// [`MAX_RING_URLS`] entries.
    pub fn parse(list: &str) -> Result<RingUrls, RingUrlsError> {
        if list.split(',').all(|e| e.trim().is_empty()) {
            return Err(RingUrlsError::Empty);
        }
        let count = list.split(',').count();
        if count > MAX_RING_URLS {
            return Err(RingUrlsError::TooMany { count });
        }
        let mut urls: Vec<String> = Vec::with_capacity(count);
        for (i, entry) in list.split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                return Err(RingUrlsError::EmptyEntry { position: i + 1 });
            }
            check_base_url(entry).map_err(|reason| RingUrlsError::NotHttp {
                url: entry.to_owned(),
                reason,
            })?;
            let url = entry.trim_end_matches('/').to_owned();
            if urls.contains(&url) {
                return Err(RingUrlsError::Duplicate { url });
            }
            urls.push(url);
        }
        Ok(RingUrls {
            inner: Arc::new(Inner {
                urls: urls.into_boxed_slice(),
                current: AtomicUsize::new(0),
            }),
        })
    }

    /// Returns the URL calls start at.
    pub fn current(&self) -> &str {
        &self.inner.urls[self.index()]
    }

    /// Records that `url` did not answer: when it is still the current URL, the next one
    /// (in list order, wrapping) becomes current, and the switch is logged once, naming
    /// both. When another caller already moved on, nothing changes, so concurrent
    /// failures of one replica move the list by one and never skip a healthy replica.
    ///
    /// Returns the URL switched to, or `None` when nothing changed (a list of one, or
    /// `url` no longer current).
    pub fn failed(&self, url: &str) -> Option<&str> {
        let urls = &self.inner.urls;
        let at = self.index();
        if urls.len() < 2 || urls[at] != url {
            return None;
        }
        let next = (at + 1) % urls.len();
        // Only the caller that wins the exchange switches (and logs): a concurrent
        // failure that read the same index loses it and leaves the list alone.
        self.inner
            .current
            .compare_exchange(at, next, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        tracing::warn!(from = url, to = %urls[next], "ring service replica did not answer; switching to the next");
        Some(&urls[next])
    }

    /// Runs `attempt` against the current URL and, while it fails with an error
    /// `moves_on` accepts, against the next ones in list order: each URL at most once, so
    /// at most [`RingUrls::len`] attempts. Each failure that moves on is recorded with
    /// [`RingUrls::failed`] (the last one too, so the next call starts further on).
    ///
    /// `attempt` gets a base URL; `moves_on` says whether a failure means that replica
    /// did not take the call and another may (see the module doc for which failures a
    /// write may move on after).
    ///
    /// Cancel-safe as far as `attempt` is: dropping the future drops the attempt in
    /// flight and tries no other URL.
    ///
    /// # Errors
    /// The first error `moves_on` refuses, else the error of the last attempt.
    pub async fn call<'a, T, E, Fut>(
        &'a self,
        mut attempt: impl FnMut(&'a str) -> Fut,
        moves_on: impl Fn(&E) -> bool,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        let urls = &self.inner.urls;
        let start = self.index();
        let mut tried = 0;
        loop {
            let url = urls[(start + tried) % urls.len()].as_str();
            tried += 1;
            match attempt(url).await {
                Ok(t) => return Ok(t),
                Err(e) => {
                    let move_on = moves_on(&e);
                    if move_on {
                        self.failed(url);
                    }
                    if !move_on || tried == urls.len() {
                        return Err(e);
                    }
                }
            }
        }
    }

    /// Returns how many URLs the list holds (at least 1).
    pub fn len(&self) -> usize {
        self.inner.urls.len()
    }

    /// Always false: a list holds at least one URL (for clippy's `len` rule).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Returns the URLs in list order.
    pub fn as_slice(&self) -> &[String] {
        &self.inner.urls
    }

    fn index(&self) -> usize {
        let at = self.inner.current.load(Ordering::Acquire);
        debug_assert!(at < self.inner.urls.len(), "current index out of the list");
        at
    }
}

impl fmt::Display for RingUrls {
    /// The list as it is given on the command line: comma-separated.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.inner.urls.join(","))
    }
}

impl fmt::Debug for RingUrls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RingUrls")
            .field("urls", &self.inner.urls)
            .field("current", &self.current())
            .finish()
    }
}

impl std::str::FromStr for RingUrls {
    type Err = RingUrlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RingUrls::parse(s)
    }
}

/// Checks that `url` is an http(s) URL with a host and neither query nor fragment (the
/// route paths are appended to it); the reason otherwise.
fn check_base_url(url: &str) -> Result<(), &'static str> {
    let parsed = reqwest::Url::parse(url).map_err(|_| "not a URL")?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err("the scheme must be http or https");
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("no host");
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("a base URL takes no query or fragment");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(list: &str) -> RingUrls {
        RingUrls::parse(list).expect("a valid list")
    }

    // Goal: a list parses trimmed, in order, without trailing slashes; one URL is a list
    // of one; the first entry is current.
    #[test]
    fn a_list_parses_in_order_and_trimmed() {
        let u = urls(" http://ring-0:7000/ , https://ring-1:7000,http://10.0.0.2:7000/base/ ");
        assert_eq!(
            u.as_slice(),
            [
                "http://ring-0:7000",
                "https://ring-1:7000",
                "http://10.0.0.2:7000/base"
            ]
        );
        assert_eq!(u.current(), "http://ring-0:7000");
        assert_eq!(u.len(), 3);
        assert_eq!(
            u.to_string(),
            "http://ring-0:7000,https://ring-1:7000,http://10.0.0.2:7000/base"
        );
        let one = urls("http://127.0.0.1:7000");
        assert_eq!((one.len(), one.current()), (1, "http://127.0.0.1:7000"));
    }

    // Goal: every malformed list is refused with the error naming what is wrong.
    #[test]
    fn malformed_lists_are_refused() {
        let err = |list: &str| RingUrls::parse(list).expect_err(list);
        assert_eq!(err(""), RingUrlsError::Empty);
        assert_eq!(err(" , ,"), RingUrlsError::Empty);
        assert_eq!(
            err("http://a:1,,http://b:1"),
            RingUrlsError::EmptyEntry { position: 2 }
        );
        assert_eq!(err("http://a:1,"), RingUrlsError::EmptyEntry { position: 2 });
        for bad in [
            "ring:7000",
            "ftp://ring:7000",
            "http://",
            "http://a:1?x=1",
            "http://a:1/#f",
        ] {
            assert!(
                matches!(err(&format!("http://ok:1,{bad}")), RingUrlsError::NotHttp { url, .. } if url == bad),
                "{bad}"
            );
        }
        assert_eq!(
            err("http://a:1,http://a:1/"),
            RingUrlsError::Duplicate {
                url: "http://a:1".into()
            }
        );
        let many = (0..=MAX_RING_URLS)
            .map(|i| format!("http://ring-{i}:7000"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(
            err(&many),
            RingUrlsError::TooMany {
                count: MAX_RING_URLS + 1
            }
        );
        assert!(
            RingUrls::parse(&many[..many.rfind(',').expect("a comma")]).is_ok(),
            "exactly the cap is fine"
        );
    }

    // Goal: a failure of the current URL moves on (wrapping), a failure of a URL that is
    // no longer current changes nothing (two concurrent failures of one replica move the
    // list by one, never past a healthy one), and a list of one never moves.
    #[test]
    fn failed_rotates_only_from_the_current_url() {
        let u = urls("http://a:1,http://b:1,http://c:1");
        let shared = u.clone();
        assert_eq!(u.failed("http://a:1"), Some("http://b:1"));
        // A second caller that also saw `a` fail: `b` stays current.
        assert_eq!(shared.failed("http://a:1"), None);
        assert_eq!(shared.current(), "http://b:1", "clones share the current URL");
        assert_eq!(u.failed("http://c:1"), None, "not current");
        assert_eq!(u.failed("http://b:1"), Some("http://c:1"));
        assert_eq!(u.failed("http://c:1"), Some("http://a:1"), "wraps around");
        assert_eq!(u.failed("http://nowhere:1"), None);

        let one = urls("http://a:1");
        assert_eq!(one.failed("http://a:1"), None);
        assert_eq!(one.current(), "http://a:1");
    }

    // Goal: concurrent failures of the same replica from many threads move the list by
    // exactly one. Method: 8 threads each report `a` failed once.
    #[test]
    fn concurrent_failures_of_one_replica_move_the_list_by_one() {
        let u = urls("http://a:1,http://b:1,http://c:1");
        let switched: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| s.spawn(|| usize::from(u.failed("http://a:1").is_some())))
                .collect();
            handles.into_iter().map(|h| h.join().expect("thread")).sum()
        });
        assert_eq!(switched, 1);
        assert_eq!(u.current(), "http://b:1");
    }

    /// Runs `call` with attempts that fail on the URLs in `down` (moving on when `moves`)
    /// and answer elsewhere; returns the outcome and the URLs tried, in order.
    async fn run_call(u: &RingUrls, down: &[&str], moves: bool) -> (Result<String, String>, Vec<String>) {
        let tried = std::sync::Mutex::new(Vec::new());
        let out = u
            .call(
                |url| {
                    tried.lock().expect("lock").push(url.to_owned());
                    let fails = down.contains(&url);
                    async move {
                        if fails {
                            Err(format!("{url} down"))
                        } else {
                            Ok(url.to_owned())
                        }
                    }
                },
                |_| moves,
            )
            .await;
        (out, tried.into_inner().expect("lock"))
    }

    // Goal: a call starts at the current URL, moves on past failures `moves_on` accepts,
    // tries each URL at most once, leaves the one that answered current, and stops at
    // once on a failure `moves_on` refuses.
    #[tokio::test]
    async fn call_tries_each_url_at_most_once() {
        let u = urls("http://a:1,http://b:1,http://c:1");
        let (out, tried) = run_call(&u, &["http://a:1"], true).await;
        assert_eq!(out, Ok("http://b:1".into()));
        assert_eq!(tried, ["http://a:1", "http://b:1"]);
        assert_eq!(
            u.current(),
            "http://b:1",
            "the next call starts at the one that answered"
        );

        // Everything down: three attempts, one per URL, starting at the current one.
        let (out, tried) = run_call(&u, &["http://a:1", "http://b:1", "http://c:1"], true).await;
        assert_eq!(out, Err("http://a:1 down".into()), "the last attempt's error");
        assert_eq!(tried, ["http://b:1", "http://c:1", "http://a:1"]);
        assert_eq!(u.current(), "http://b:1", "a full lap ends where it began");

        // A failure that must not move on (a write that may have been applied): one attempt.
        let (out, tried) = run_call(&u, &["http://b:1"], false).await;
        assert_eq!(out, Err("http://b:1 down".into()));
        assert_eq!(tried, ["http://b:1"]);
        assert_eq!(u.current(), "http://b:1", "not moved");
    }

    /// A replica that takes every request and closes the connection without answering
    /// (one that died after taking a write); returns its URL and how many it took.
    async fn dying_replica() -> (String, Arc<AtomicUsize>) {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let taken = Arc::new(AtomicUsize::new(0));
        let counter = taken.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 4096];
                if socket.read(&mut buf).await.is_ok_and(|n| n > 0) {
                    counter.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        (url, taken)
    }

    /// A replica answering `204` to `POST /w`; returns its URL and how many it took.
    async fn answering_replica() -> (String, Arc<AtomicUsize>) {
        let taken = Arc::new(AtomicUsize::new(0));
        let counter = taken.clone();
        let url = dynamo_testkit::serve(axum::Router::new().route(
            "/w",
            axum::routing::post(move || {
                counter.fetch_add(1, Ordering::SeqCst);
                async { axum::http::StatusCode::NO_CONTENT }
            }),
        ))
        .await;
        (url, taken)
    }

    /// `POST {base}/w` through `urls` with the write rule: move on only when no
    /// connection could be made.
    async fn write(urls: &RingUrls) -> Result<reqwest::Response, crate::internal::SendError> {
        let client = dynamo_testkit::http();
        urls.call(
            |base| client.post(format!("{base}/w")).send(),
            crate::internal::SendError::is_connect,
        )
        .await
    }

    // Goal: the write rule over real HTTP: a write moves past a replica it could not
    // connect to (nothing was sent) and lands once on the next; a write a replica took
    // and then died on (the connection closed without an answer) is not sent to another
    // replica, which could apply it a second time.
    #[tokio::test]
    async fn a_write_moves_on_only_when_nothing_was_sent() {
        let (up, landed) = answering_replica().await;
        let closed = dynamo_testkit::closed_address();
        let u = urls(&format!("{closed},{up}"));
        let r = write(&u).await.expect("the second replica answers");
        assert_eq!(r.status().as_u16(), 204);
        assert_eq!(landed.load(Ordering::SeqCst), 1);
        assert_eq!(u.current(), up);

        let (dying, taken) = dying_replica().await;
        let u = urls(&format!("{dying},{up}"));
        let e = write(&u).await.expect_err("the replica died before answering");
        assert!(!e.is_connect(), "{e:?}");
        assert_eq!(taken.load(Ordering::SeqCst), 1, "the dying replica took it");
        assert_eq!(landed.load(Ordering::SeqCst), 1, "and no other replica saw it");
        assert_eq!(u.current(), dying, "not moved");
    }
}
