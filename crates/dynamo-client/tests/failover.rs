//! Several coordinator endpoints: a request that fails transiently on one is retried on
//! the next, within the retry budget, honouring `Retry-After`, with the same
//! `Idempotency-Key`; a permanent answer is never retried. Against two mocks on loopback
//! (`tests/mock`), asserting what each one saw and in which order.

mod mock;

use std::future::Future;
use std::time::Duration;

use dynamo_client::{Client, ClientError, ErrorCode, RetryPolicy};
use mock::{Mock, TOKEN};

/// Every test finishes within this, whatever the client does.
const WAIT: Duration = Duration::from_secs(30);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("the test finished in time")
}

fn retries(max_retries: u32, max_backoff: Duration) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_backoff: Duration::from_millis(1),
        max_backoff,
    }
}

fn client(endpoints: &[String], policy: RetryPolicy) -> Client {
    Client::builder("http://unused")
        .endpoints(endpoints.iter().cloned())
        .token(TOKEN)
        .timeout(Duration::from_secs(5))
        .retry(policy)
        .build()
        .expect("client")
}

/// A loopback URL where nothing listens: connecting is refused.
async fn down_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    format!("http://{addr}")
}

fn idempotency_key(seen: &mock::Seen) -> String {
    seen.header("idempotency-key")
        .expect("a write is keyed")
        .to_owned()
}

// Goal: with the first coordinator down, a write lands on the second, and later requests
// go straight there. Method: a refused port first, a mock second; count what the mock saw.
#[tokio::test]
async fn a_down_endpoint_fails_over_to_the_next_and_the_client_stays_there() {
    within(async {
        let up = Mock::start().await;
        let c = client(
            &[down_url().await, up.url()],
            retries(3, Duration::from_millis(5)),
        );
        c.put("b", "k", "v", "text/plain", None)
            .await
            .expect("failed over");
        assert_eq!(up.state.values("b", "k"), [b"v".to_vec()]);
        assert_eq!(c.endpoint(), up.url(), "the endpoint that answered is kept");

        let read = c.get("b", "k").await.expect("get").expect("found");
        assert_eq!(read.single().map(|s| s.value.as_slice()), Some(&b"v"[..]));
        assert_eq!(
            up.state.requests().len(),
            2,
            "each request reached the live mock once"
        );
        assert!(c.is_ready().await.is_ok(), "a live endpoint answers readiness");
    })
    .await;
}

// Goal: a 503 with Retry-After moves the retry to the next coordinator, no sooner than
// the Retry-After, carrying the same Idempotency-Key (so a coordinator that finds the
// first attempt's record answers from it instead of writing twice). Method: the first
// mock answers 503 overloaded with `Retry-After: 1`; compare both mocks' logs. The wait
// is checked as a lower bound between the two arrivals, which no scheduling can break.
#[tokio::test]
async fn a_503_with_retry_after_is_retried_on_the_next_endpoint_with_the_same_key() {
    within(async {
        let first = Mock::start().await;
        let second = Mock::start().await;
        first
            .state
            .fail_next_with_retry_after(ErrorCode::Overloaded, 1, 1);
        let c = client(&[first.url(), second.url()], retries(3, Duration::from_secs(2)));
        c.put("b", "k", "v", "text/plain", None).await.expect("retried");

        let (a, b) = (first.state.requests(), second.state.requests());
        assert_eq!((a.len(), b.len()), (1, 1), "one attempt each, in order");
        assert_eq!(idempotency_key(&a[0]), idempotency_key(&b[0]));
        assert!(
            b[0].at.duration_since(a[0].at) >= Duration::from_secs(1),
            "the retry waited for Retry-After"
        );
        assert_eq!(second.state.values("b", "k"), [b"v".to_vec()]);
        assert!(first.state.values("b", "k").is_empty());
    })
    .await;
}

// Goal: a `429 rate_limited` fails over like a 503, and a Retry-After longer than the
// policy's max_backoff is cut to it (else this test would wait an hour).
#[tokio::test]
async fn a_429_fails_over_and_a_huge_retry_after_is_capped() {
    within(async {
        let first = Mock::start().await;
        let second = Mock::start().await;
        first
            .state
            .fail_next_with_retry_after(ErrorCode::RateLimited, 1, 3600);
        let c = client(&[first.url(), second.url()], retries(3, Duration::from_millis(5)));
        c.put("b", "k", "v", "text/plain", None).await.expect("retried");
        assert_eq!(first.state.requests().len(), 1);
        assert_eq!(second.state.values("b", "k"), [b"v".to_vec()]);
    })
    .await;
}

// Goal: permanent 4xx answers are returned at once, never tried on another coordinator
// (which would answer the same), and leave the client where it was.
#[tokio::test]
async fn a_4xx_is_not_retried_anywhere() {
    within(async {
        let first = Mock::start().await;
        let second = Mock::start().await;
        let c = client(&[first.url(), second.url()], retries(3, Duration::from_millis(5)));
        for code in [
            ErrorCode::InvalidQuorum,
            ErrorCode::PreconditionFailed,
            ErrorCode::TooManySiblings,
            ErrorCode::Forbidden,
        ] {
            first.state.fail_next(code, 1);
            let e = c
                .put("b", "k", "v", "text/plain", None)
                .await
                .expect_err("refused");
            assert_eq!(e.code(), Some(code));
            assert!(!e.is_transient());
        }
        assert_eq!(first.state.requests().len(), 4);
        assert!(second.state.requests().is_empty());
        assert_eq!(c.endpoint(), first.url());
    })
    .await;
}

// Goal: the retry budget counts attempts on every endpoint together: with 3 retries
// and two coordinators that stay overloaded, exactly 4 attempts go out, alternating.
#[tokio::test]
async fn the_retry_budget_spans_all_endpoints() {
    within(async {
        let first = Mock::start().await;
        let second = Mock::start().await;
        first.state.fail_next(ErrorCode::Overloaded, 10);
        second.state.fail_next(ErrorCode::QuorumUnavailable, 10);
        let c = client(&[first.url(), second.url()], retries(3, Duration::from_millis(5)));
        let e = c
            .put("b", "k", "v", "text/plain", None)
            .await
            .expect_err("gives up");
        assert!(e.is_transient());

        let mut attempts: Vec<(std::time::Instant, &str, String)> = Vec::new();
        let (a, b) = (first.state.requests(), second.state.requests());
        attempts.extend(a.iter().map(|s| (s.at, "first", idempotency_key(s))));
        attempts.extend(b.iter().map(|s| (s.at, "second", idempotency_key(s))));
        attempts.sort_by_key(|(at, _, _)| *at);
        let order: Vec<&str> = attempts.iter().map(|(_, which, _)| *which).collect();
        assert_eq!(order, ["first", "second", "first", "second"]);
        assert!(
            attempts.iter().all(|(_, _, key)| *key == attempts[0].2),
            "one key throughout"
        );
    })
    .await;
}

// Goal: a timeout is not failed over: the request may have been applied, so it is
// answered at once rather than sent to a second coordinator.
#[tokio::test]
async fn a_timeout_is_not_failed_over() {
    within(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let second = Mock::start().await;
        let c = Client::builder("http://unused")
            .endpoints([format!("http://{addr}"), second.url()])
            .token(TOKEN)
            .timeout(Duration::from_millis(200))
            .retry(retries(3, Duration::from_millis(5)))
            .build()
            .expect("client");
        let e = c
            .put("b", "k", "v", "text/plain", None)
            .await
            .expect_err("times out");
        assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
        assert!(second.state.requests().is_empty());
        held.abort();
    })
    .await;
}
