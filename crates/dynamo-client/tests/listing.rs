//! Listing keys as a stream against the mock coordinator (`tests/mock`): pages fetched
//! lazily and followed to `next: null` (through empty pages), the query on the wire,
//! and errors as stream items.

mod mock;

use std::future::Future;
use std::time::Duration;

use dynamo_client::{Client, ClientError, ErrorCode, ListOptions, RetryPolicy};
use futures::{StreamExt as _, TryStreamExt as _};
use mock::{Mock, TOKEN};

/// Every test finishes within this, whatever the client does.
const WAIT: Duration = Duration::from_secs(30);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("the test finished in time")
}

fn client(mock: &Mock) -> Client {
    Client::builder(mock.url())
        .token(TOKEN)
        .timeout(Duration::from_secs(5))
        .retry(RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        })
        .build()
        .expect("client")
}

/// Deletes a key with the context of a read, leaving a tombstone.
async fn delete(c: &Client, bucket: &str, key: &str) {
    let read = c.get(bucket, key).await.expect("get").expect("found");
    c.delete(bucket, key, Some(&read.context)).await.expect("delete");
}

/// The listing requests the mock saw, as their query strings.
fn list_queries(mock: &Mock) -> Vec<String> {
    mock.state
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.uri.contains("list"))
        .map(|r| {
            r.uri
                .split_once('?')
                .map(|(_, q)| q.to_owned())
                .unwrap_or_default()
        })
        .collect()
}

// Goal: the stream follows `next` until `null`, through a page that holds no key but
// still has a next, and yields every live key once, in byte order. Method: seven keys,
// three deleted in a row, listed two at a time: the mock reads two keys per page, so the
// pages are [k01 k02] [] [k06] [k07].
#[tokio::test]
async fn pages_are_followed_to_the_end_through_an_empty_page() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        for i in 1..=7 {
            mock.state.seed("b", &format!("k{i:02}"), b"v", "text/plain");
        }
        mock.state.seed("b", "other", b"v", "text/plain");
        mock.state.seed("elsewhere", "k00", b"v", "text/plain");
        for key in ["k03", "k04", "k05"] {
            delete(&c, "b", key).await;
        }

        let keys: Vec<String> = c
            .list_keys_with("b", ListOptions::new().prefix("k").page_size(2))
            .try_collect()
            .await
            .expect("listed");
        assert_eq!(keys, ["k01", "k02", "k06", "k07"]);
        assert_eq!(
            list_queries(&mock),
            [
                "list=&prefix=k&limit=2",
                "list=&prefix=k&start_after=k02&limit=2",
                "list=&prefix=k&start_after=k04&limit=2",
                "list=&prefix=k&start_after=k06&limit=2",
            ]
        );
    })
    .await;
}

// Goal: prefix and start_after reach the server intact, whatever bytes they hold (they
// travel percent-encoded in the query), and without a page size none is sent.
#[tokio::test]
async fn prefix_and_start_after_are_passed_through() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        for key in ["a b/é&1", "a b/é&2", "a b/é&3", "a c", "a b/"] {
            mock.state.seed("b", key, b"v", "text/plain");
        }
        let keys: Vec<String> = c
            .list_keys_with("b", ListOptions::new().prefix("a b/é&").start_after("a b/é&1"))
            .try_collect()
            .await
            .expect("listed");
        assert_eq!(keys, ["a b/é&2", "a b/é&3"]);
        let queries = list_queries(&mock);
        assert_eq!(queries.len(), 1, "one page held everything");
        assert!(!queries[0].contains("limit"), "{}", queries[0]);

        let everything: Vec<String> = c.list_keys("b", "").try_collect().await.expect("listed");
        assert_eq!(everything.len(), 5);
        assert!(
            !list_queries(&mock)[1].contains("prefix"),
            "an empty prefix is not sent"
        );
    })
    .await;
}

// Goal: pages are fetched only as the stream is read, and an error answer is an item
// of the stream (typed, with its code), after which the stream ends; a transient one
// on the way is retried unseen.
#[tokio::test]
async fn pages_are_fetched_lazily_and_errors_end_the_stream() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        for i in 1..=5 {
            mock.state.seed("b", &format!("k{i}"), b"v", "text/plain");
        }
        let mut keys = c.list_keys_with("b", ListOptions::new().page_size(2));
        assert!(
            list_queries(&mock).is_empty(),
            "nothing is sent before the stream is read"
        );
        assert_eq!(keys.try_next().await.expect("page 1").as_deref(), Some("k1"));
        assert_eq!(keys.try_next().await.expect("page 1").as_deref(), Some("k2"));
        assert_eq!(list_queries(&mock).len(), 1, "the second page is not fetched yet");

        mock.state.fail_next(ErrorCode::Overloaded, 1);
        assert_eq!(keys.try_next().await.expect("retried").as_deref(), Some("k3"));
        mock.state.fail_next(ErrorCode::Forbidden, 1);
        assert_eq!(keys.try_next().await.expect("page 2").as_deref(), Some("k4"));
        let e = keys.try_next().await.expect_err("page 3 refused");
        assert!(
            matches!(
                e,
                ClientError::Api {
                    status: 403,
                    code: ErrorCode::Forbidden,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(keys.next().await.is_none(), "the stream ends after an error");
    })
    .await;
}

// Goal: input the server would refuse is refused before sending, as the stream's only
// item.
#[tokio::test]
async fn bad_input_is_the_first_item_and_nothing_is_sent() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let items: Vec<Result<String, ClientError>> = c.list_keys("Bad", "").collect().await;
        assert!(
            matches!(items.as_slice(), [Err(e)] if e.code() == Some(ErrorCode::InvalidBucket)),
            "{items:?}"
        );
        for size in [0, 1001] {
            let items: Vec<_> = c
                .list_keys_with("b", ListOptions::new().page_size(size))
                .collect()
                .await;
            assert!(
                matches!(items.as_slice(), [Err(e)] if e.code() == Some(ErrorCode::InvalidParameter)),
                "{items:?}"
            );
        }
        assert!(mock.state.requests().is_empty());
    })
    .await;
}
