//! The change feed as a stream against the mock coordinator (`tests/mock`): cursors
//! chained page to page (through empty pages), the query on the wire, the resume cursor
//! each change carries, long polls, and `cursor_expired` as the stream's last item.

mod mock;

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use dynamo_client::{
    Change, ChangeStream, Client, ClientError, ErrorCode, FeedCursor, FeedOptions, RetryPolicy,
};
use futures::StreamExt as _;
use mock::{Mock, TOKEN};

/// Every test finishes within this, whatever the client does.
const WAIT: Duration = Duration::from_secs(30);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("the test finished in time")
}

fn client_with_timeout(mock: &Mock, timeout: Duration) -> Client {
    Client::builder(mock.url())
        .token(TOKEN)
        .timeout(timeout)
        .retry(RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        })
        .build()
        .expect("client")
}

fn client(mock: &Mock) -> Client {
    client_with_timeout(mock, Duration::from_secs(5))
}

/// A cursor from now, as a consumer's first call gets it.
async fn now(c: &Client, bucket: &str) -> FeedCursor {
    let page = c
        .feed_page(bucket, &FeedOptions::new())
        .await
        .expect("page from now");
    assert!(page.changes.is_empty(), "a page from now holds no change");
    page.cursor
}

/// The query parameters of every feed request the mock saw, in order.
fn feed_queries(mock: &Mock) -> Vec<HashMap<String, String>> {
    mock.state
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.uri.starts_with("/v1/feed/"))
        .map(|r| {
            let query = r.uri.split_once('?').map(|(_, q)| q).unwrap_or_default();
            url_pairs(query)
        })
        .collect()
}

/// Decodes a query string (the mock's cursors and the numbers need no percent-decoding).
fn url_pairs(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

async fn take(stream: &mut ChangeStream, n: usize) -> Vec<Change> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            stream
                .try_next()
                .await
                .expect("a change")
                .expect("the feed never ends"),
        );
    }
    out
}

fn keys(changes: &[Change]) -> Vec<&str> {
    changes.iter().map(|c| c.key.as_str()).collect()
}

// Goal: each page is asked with the previous page's cursor, with the stream's page size
// and wait on the wire, and each change carries the cursor that resumes after it
// without skipping: the page's starting cursor, the next page's for its last change.
// Method: five changes in pages of two ([k1 k2] [k3 k4] [k5]); another bucket's change
// in between is not delivered; a transient error on the way is retried unseen.
#[tokio::test]
async fn pages_chain_cursors_and_each_change_carries_its_resume_cursor() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let c0 = now(&c, "b").await;
        for i in 1..=5 {
            mock.state.seed("b", &format!("k{i}"), b"v", "text/plain");
            if i == 2 {
                mock.state.seed("other", "x", b"v", "text/plain");
            }
        }
        let mut stream = c.feed(
            "b",
            FeedOptions::new().cursor(c0.clone()).page_size(2).wait_ms(1000),
        );
        assert_eq!(stream.current_cursor(), Some(&c0));
        let first = take(&mut stream, 2).await;
        mock.state.fail_next(ErrorCode::Overloaded, 1);
        let rest = take(&mut stream, 3).await;
        let changes: Vec<Change> = first.into_iter().chain(rest).collect();
        assert_eq!(keys(&changes), ["k1", "k2", "k3", "k4", "k5"]);
        assert!(
            changes
                .iter()
                .all(|ch| !ch.deleted && !ch.context.as_str().is_empty())
        );

        // The first query is the page from now; then one per page, the overloaded
        // attempt included (it repeats the second page's query).
        let queries = &feed_queries(&mock)[1..];
        assert_eq!(queries.len(), 4, "{queries:?}");
        for q in queries {
            assert_eq!(q.get("limit").map(String::as_str), Some("2"), "{q:?}");
            assert_eq!(q.get("wait_ms").map(String::as_str), Some("1000"), "{q:?}");
        }
        let asked: Vec<&str> = queries.iter().map(|q| q["cursor"].as_str()).collect();
        assert_eq!(asked[0], c0.as_str());
        assert_eq!(asked[1], asked[2], "the retry asks for the same page");
        let (p1, p2) = (asked[1], asked[3]);
        assert_ne!(p1, c0.as_str());
        assert_ne!(p2, p1);
        let carried: Vec<&str> = changes.iter().map(|ch| ch.cursor.as_str()).collect();
        assert_eq!(carried[..4], [c0.as_str(), p1, p1, p2]);
        assert_ne!(carried[4], p2, "the last page's last change resumes after it");
        assert_eq!(stream.current_cursor(), Some(&changes[4].cursor));
    })
    .await;
}

// Goal: a page without changes is not the end: the stream polls again, with the cursor
// that page answered (never the old one again), until a change comes. Method: two
// scripted empty pages before the page holding the change; the mock's cursors differ on
// every page, so a repeated cursor would show.
#[tokio::test]
async fn an_empty_page_polls_again_with_its_new_cursor() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let c0 = now(&c, "b").await;
        mock.state.seed("b", "k1", b"v", "text/plain");
        mock.state.answer_empty_feed_pages(2);
        let mut stream = c.feed("b", FeedOptions::new().cursor(c0.clone()).wait_ms(1000));
        let changes = take(&mut stream, 1).await;
        assert_eq!(keys(&changes), ["k1"]);
        let asked: Vec<String> = feed_queries(&mock)[1..]
            .iter()
            .map(|q| q["cursor"].clone())
            .collect();
        assert_eq!(asked.len(), 3, "two empty pages, then the change: {asked:?}");
        assert_eq!(asked[0], c0.as_str());
        assert_ne!(asked[1], asked[0]);
        assert_ne!(asked[2], asked[1]);
    })
    .await;
}

// Goal: a poll that finds nothing waits on the server, and a change made meanwhile is
// delivered by that same poll. Method: the stream waits up to 20 s; the test writes
// once the mock has seen the poll, and the change must arrive within the test's bound.
#[tokio::test]
async fn a_long_poll_delivers_a_change_made_while_it_waits() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let c0 = now(&c, "b").await;
        let mut stream = c.feed("b", FeedOptions::new().cursor(c0).wait_ms(20_000));
        let next = tokio::spawn(async move { stream.try_next().await });
        while feed_queries(&mock).len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        c.put("b", "late", "v", "text/plain", None).await.expect("put");
        let change = next.await.expect("join").expect("a change").expect("one");
        assert_eq!(change.key, "late");
        assert_eq!(feed_queries(&mock).len(), 2, "the waiting poll delivered it");
    })
    .await;
}

// Goal: a long poll that outlasts the client's request timeout is not a timeout: the
// client waits the poll's wait on top of its bound. Method: a 1 s timeout, a 2 s wait
// on a quiet bucket: the page comes back empty.
#[tokio::test]
async fn a_long_poll_outlasting_the_request_timeout_is_not_a_timeout() {
    within(async {
        let mock = Mock::start().await;
        let c = client_with_timeout(&mock, Duration::from_secs(1));
        let c0 = now(&c, "b").await;
        let page = c
            .feed_page("b", &FeedOptions::new().cursor(c0).wait_ms(2000))
            .await
            .expect("an empty page, not a timeout");
        assert!(page.changes.is_empty());
    })
    .await;
}

// Goal: a consumer that saves a change's cursor after handling it, and restarts from the
// saved copy (through JSON, as a file would hold it), gets every later change: at worst
// the handled part of that change's page again, never a gap. Method: pages of two; stop
// after k3 (the first change of the second page); resume.
#[tokio::test]
async fn resuming_from_a_saved_cursor_repeats_at_most_its_page_and_skips_nothing() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let c0 = now(&c, "b").await;
        for i in 1..=5 {
            mock.state.seed("b", &format!("k{i}"), b"v", "text/plain");
        }
        let opts = FeedOptions::new().page_size(2).wait_ms(1000);
        let mut stream = c.feed("b", opts.clone().cursor(c0));
        let handled = take(&mut stream, 3).await;
        assert_eq!(keys(&handled), ["k1", "k2", "k3"]);
        let saved = serde_json::to_string(&handled[2].cursor).expect("saved");
        assert_eq!(stream.current_cursor(), Some(&handled[2].cursor));
        drop(stream);

        let restored: FeedCursor = serde_json::from_str(&saved).expect("restored");
        let mut resumed = c.feed("b", opts.cursor(restored));
        let again = take(&mut resumed, 3).await;
        assert_eq!(keys(&again), ["k3", "k4", "k5"], "k3's page again, then the rest");

        // Saving after a page's last change repeats nothing.
        let mut after_page = c.feed(
            "b",
            FeedOptions::new().cursor(handled[1].cursor.clone()).page_size(2),
        );
        assert_eq!(keys(&take(&mut after_page, 1).await), ["k3"]);
    })
    .await;
}

// Goal: a cursor past the feed's retention ends the stream with a typed
// `cursor_expired` (410), asked once (it is not transient), and nothing after it.
#[tokio::test]
async fn an_expired_cursor_ends_the_stream_with_cursor_expired() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let c0 = now(&c, "b").await;
        mock.state.seed("b", "k1", b"v", "text/plain");
        mock.state.expire_feed_cursors();
        let mut stream = c.feed("b", FeedOptions::new().cursor(c0.clone()));
        let e = stream.try_next().await.expect_err("expired");
        assert!(
            matches!(
                e,
                ClientError::Api {
                    status: 410,
                    code: ErrorCode::CursorExpired,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(stream.next().await.is_none(), "the stream ends after the error");
        assert_eq!(feed_queries(&mock).len(), 2, "the page from now, then one poll");
        assert_eq!(stream.current_cursor(), Some(&c0), "nothing was delivered");
    })
    .await;
}

// Goal: the page from now sends neither a cursor nor a wait, and holds nothing written
// before it; the next page holds what came after.
#[tokio::test]
async fn a_page_from_now_skips_the_past() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        mock.state.seed("b", "before", b"v", "text/plain");
        let c0 = now(&c, "b").await;
        assert_eq!(feed_queries(&mock)[0], HashMap::new());
        c.put("b", "after", "v", "text/plain", None).await.expect("put");
        let read = c.get("b", "after").await.expect("get").expect("found");
        c.delete("b", "after", Some(&read.context)).await.expect("delete");
        let page = c
            .feed_page("b", &FeedOptions::new().cursor(c0).wait_ms(0))
            .await
            .expect("page");
        let seen: Vec<(&str, bool)> = page
            .changes
            .iter()
            .map(|ch| (ch.key.as_str(), ch.deleted))
            .collect();
        assert_eq!(seen, [("after", false), ("after", true)]);
        assert_eq!(page.changes[1].cursor, page.cursor);
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
        let items: Vec<Result<Change, ClientError>> = c.feed("Bad", FeedOptions::new()).collect().await;
        assert!(
            matches!(items.as_slice(), [Err(e)] if e.code() == Some(ErrorCode::InvalidBucket)),
            "{items:?}"
        );
        for size in [0, 1001] {
            let items: Vec<_> = c.feed("b", FeedOptions::new().page_size(size)).collect().await;
            assert!(
                matches!(items.as_slice(), [Err(e)] if e.code() == Some(ErrorCode::InvalidParameter)),
                "{items:?}"
            );
        }
        assert!(mock.state.requests().is_empty());
    })
    .await;
}
