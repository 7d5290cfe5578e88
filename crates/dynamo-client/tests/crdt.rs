//! The SDK's CRDT calls against the mock coordinator (`tests/mock`), which applies ops
//! with the core's real CRDTs: what goes on the wire (op shapes, contexts, idempotency
//! keys, query) and what comes back (values, typed errors).

mod mock;

use std::future::Future;
use std::time::Duration;

use dynamo_client::{
    Client, ClientError, CrdtBucket, CrdtOp, CrdtType, ErrorCode, Precondition, RequestOptions, RetryPolicy,
};
use mock::{Mock, Seen, TOKEN};
use serde_json::json;

/// Every test finishes within this, whatever the client does.
const WAIT: Duration = Duration::from_secs(30);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("the test finished in time")
}

fn builder(mock: &Mock) -> dynamo_client::ClientBuilder {
    Client::builder(mock.url())
        .token(TOKEN)
        .timeout(Duration::from_secs(5))
        .retry(RetryPolicy {
            max_retries: 3,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        })
}

fn crdt(mock: &Mock, bucket: &str) -> CrdtBucket {
    builder(mock).build().expect("client").crdt(bucket)
}

/// The requests of one method, in order.
fn sent(mock: &Mock, method: &str) -> Vec<Seen> {
    mock.state
        .requests()
        .into_iter()
        .filter(|r| r.method == method)
        .collect()
}

fn methods(mock: &Mock) -> Vec<String> {
    mock.state.requests().into_iter().map(|r| r.method).collect()
}

// Goal: each helper sends its op in the documented JSON shape, as `application/json` to
// `/v1/crdt/{bucket}/{key}` with an Idempotency-Key and no context, and decodes the
// value, type, context and ETag answered.
#[tokio::test]
async fn helpers_send_the_documented_op_shapes() {
    within(async {
        let mock = Mock::start().await;
        mock.state.crdt_bucket("counters", CrdtType::Counter);
        mock.state.crdt_bucket("tags", CrdtType::Set);
        mock.state.crdt_bucket("regs", CrdtType::Register);
        mock.state.crdt_bucket("maps", CrdtType::Map);
        let client = builder(&mock).build().expect("client");

        assert_eq!(
            client.crdt("counters").increment("a/b", 5).await.expect("incr"),
            5
        );
        assert_eq!(
            client.crdt("counters").increment("a/b", -7).await.expect("decr"),
            -2
        );
        let post = mock.state.last();
        assert_eq!(post.method, "POST");
        assert_eq!(post.uri, "/v1/crdt/counters/a%2Fb");
        assert_eq!(post.object, Some(("counters".into(), "a/b".into())));
        assert_eq!(post.json(), json!({"increment": -7}));
        assert_eq!(post.header("content-type"), Some("application/json"));
        assert_eq!(post.header("accept"), Some("application/json"));
        assert_eq!(post.header("authorization"), Some("Bearer mock-root-token"));
        assert_eq!(
            post.header("x-dynamo-context"),
            None,
            "an increment removes nothing"
        );
        assert!(
            post.header("idempotency-key")
                .is_some_and(|k| k.starts_with("sdk-"))
        );

        let added = client.crdt("tags").add("k", ["b", "a"]).await.expect("add");
        assert_eq!(mock.state.last().json(), json!({"add": ["b", "a"]}));
        assert_eq!(added.crdt_type, CrdtType::Set);
        assert_eq!(added.as_set(), Some(vec!["a", "b"]));
        assert!(!added.context.as_str().is_empty());
        assert!(added.etag.as_str().starts_with('"'));

        let assigned = client
            .crdt("regs")
            .assign("k", json!({"x": [1, null]}))
            .await
            .expect("assign");
        assert_eq!(mock.state.last().json(), json!({"assign": {"x": [1, null]}}));
        assert_eq!(assigned.value, json!({"x": [1, null]}));
        assert_eq!(assigned.crdt_type, CrdtType::Register);

        let updated = client
            .crdt("maps")
            .update(
                "k",
                [
                    ("hits", CrdtOp::Increment(1)),
                    ("tags", CrdtOp::Add(vec!["x".into()])),
                    ("name", CrdtOp::Assign("ann".into())),
                ],
            )
            .await
            .expect("update");
        assert_eq!(
            mock.state.last().json(),
            json!({"update": {"hits": {"increment": 1}, "tags": {"add": ["x"]}, "name": {"assign": "ann"}}})
        );
        assert_eq!(updated.value, json!({"hits": 1, "tags": ["x"], "name": "ann"}));
        assert_eq!(
            methods(&mock).iter().filter(|m| *m == "GET").count(),
            0,
            "no op here reads first"
        );
    })
    .await;
}

// Goal: a read answers the merged value with its type, context and ETag, a missing key
// is `None` (not retried), and the bucket's options reach the query: `r` on reads, `w`
// on ops, `timeout_ms` on both.
#[tokio::test]
async fn get_decodes_the_value_and_options_reach_the_query() {
    within(async {
        let mock = Mock::start().await;
        mock.state.crdt_bucket("tags", CrdtType::Set);
        let tags = crdt(&mock, "tags").with_options(RequestOptions::new().r(1).w(2).timeout_ms(700));
        assert_eq!(tags.bucket(), "tags");

        assert_eq!(tags.get("k").await.expect("get"), None);
        assert_eq!(mock.state.requests().len(), 1);
        let written = tags.add("k", ["x"]).await.expect("add");
        let read = tags.get("k").await.expect("get").expect("found");
        assert_eq!(read.value, json!(["x"]));
        assert_eq!(read.crdt_type, CrdtType::Set);
        assert_eq!(read.context, written.context, "nothing happened in between");
        assert_eq!(read.etag, written.etag);

        let uris: Vec<String> = mock.state.requests().into_iter().map(|r| r.uri).collect();
        assert_eq!(
            uris,
            [
                "/v1/crdt/tags/k?timeout_ms=700&r=1",
                "/v1/crdt/tags/k?timeout_ms=700&w=2",
                "/v1/crdt/tags/k?timeout_ms=700&r=1",
            ]
        );
    })
    .await;
}

// Goal: `remove` and `remove_fields` read the key first and send that read's context
// verbatim, one call for the caller; an element added after the read survives (the
// server honours the context).
#[tokio::test]
async fn removes_read_first_and_send_the_observed_context() {
    within(async {
        let mock = Mock::start().await;
        mock.state.crdt_bucket("tags", CrdtType::Set);
        mock.state.crdt_bucket("maps", CrdtType::Map);
        let tags = crdt(&mock, "tags");
        tags.add("k", ["a", "b"]).await.expect("add");
        let seen = tags.get("k").await.expect("get").expect("found");

        let after = tags.remove("k", ["a"]).await.expect("remove");
        assert_eq!(after.as_set(), Some(vec!["b"]));
        assert_eq!(methods(&mock), ["POST", "GET", "GET", "POST"]);
        let remove = mock.state.last();
        assert_eq!(remove.json(), json!({"remove": ["a"]}));
        assert_eq!(
            remove.header("x-dynamo-context"),
            Some(seen.context.as_str()),
            "the context of the read just before"
        );

        let maps = crdt(&mock, "maps");
        maps.update(
            "m",
            [
                ("f", CrdtOp::Increment(1)),
                ("g", CrdtOp::Assign(json!(2))),
                ("t", CrdtOp::Add(vec!["x".into(), "y".into()])),
            ],
        )
        .await
        .expect("update");
        let before = maps.get("m").await.expect("get").expect("found");
        let after = maps.remove_fields("m", ["f"]).await.expect("remove fields");
        assert_eq!(after.value, json!({"g": 2, "t": ["x", "y"]}));
        let remove = mock.state.last();
        assert_eq!(remove.json(), json!({"remove_fields": ["f"]}));
        assert_eq!(remove.header("x-dynamo-context"), Some(before.context.as_str()));

        // A remove nested in an update needs the context too, so it reads first as well.
        let gets = sent(&mock, "GET").len();
        let after = maps
            .update("m", [("t", CrdtOp::Remove(vec!["x".into()]))])
            .await
            .expect("nested remove");
        assert_eq!(after.value, json!({"g": 2, "t": ["y"]}));
        assert_eq!(sent(&mock, "GET").len(), gets + 1);
        assert_eq!(
            mock.state.last().json(),
            json!({"update": {"t": {"remove": ["x"]}}})
        );
        assert!(mock.state.last().header("x-dynamo-context").is_some());
    })
    .await;
}

// Goal: a retry after a 503 repeats the op's Idempotency-Key, so an increment the
// coordinating replica applied before the 503 is counted once; another op gets another
// key. Method: the mock applies the op, answers 503, then answers the repeat of the key
// as the first attempt without applying it.
#[tokio::test]
async fn a_retried_increment_keeps_its_idempotency_key_and_counts_once() {
    within(async {
        let mock = Mock::start().await;
        mock.state.crdt_bucket("c", CrdtType::Counter);
        let counters = crdt(&mock, "c");

        mock.state
            .fail_crdt_ops_after_applying(ErrorCode::QuorumUnavailable, 1);
        assert_eq!(counters.increment("k", 5).await.expect("retried"), 5);
        assert_eq!(mock.state.crdt_value("c", "k"), Some(json!(5)), "counted once");

        // A 503 before anything was applied is retried under the same key too.
        mock.state.fail_next(ErrorCode::QuorumUnavailable, 1);
        assert_eq!(counters.increment("k", 1).await.expect("retried"), 6);

        let keys: Vec<String> = sent(&mock, "POST")
            .iter()
            .map(|r| r.header("idempotency-key").expect("a key").to_owned())
            .collect();
        assert_eq!(keys.len(), 4, "two ops, each retried once");
        assert_eq!(keys[0], keys[1], "the retry repeats the key");
        assert_eq!(keys[2], keys[3], "the retry repeats the key");
        assert_ne!(keys[1], keys[2], "another op, another key");
    })
    .await;
}

// Goal: on `context_not_seen` a remove reads again and retries with the new read's
// context (and a new Idempotency-Key: a new request), and gives up with the typed error
// after the client's `update_attempts`. Method: another client adds `b` just before the
// first remove, which the mock answers `context_not_seen`; the retry's context covers `b`.
#[tokio::test]
async fn context_not_seen_reads_again_and_retries() {
    within(async {
        let mock = Mock::start().await;
        mock.state.crdt_bucket("s", CrdtType::Set);
        let tags = crdt(&mock, "s");
        tags.add("k", ["a"]).await.expect("add");

        mock.state
            .apply_concurrently_before_next_crdt_op(CrdtOp::Add(vec!["b".into()]));
        mock.state.answer_context_not_seen(1);
        let after = tags
            .remove("k", ["a"])
            .await
            .expect("removed on the second attempt");
        assert_eq!(after.as_set(), Some(vec!["b"]));
        assert_eq!(methods(&mock), ["POST", "GET", "POST", "GET", "POST"]);
        let posts = sent(&mock, "POST");
        let (first, retry) = (&posts[1], &posts[2]);
        assert_eq!(first.json(), retry.json());
        assert_ne!(
            first.header("x-dynamo-context"),
            retry.header("x-dynamo-context"),
            "the retry sends what the second read saw"
        );
        assert_ne!(first.header("idempotency-key"), retry.header("idempotency-key"));

        // Bounded: with 2 attempts, a coordinator that keeps answering context_not_seen
        // sees 2 removes, and the caller gets the typed error.
        let two = builder(&mock)
            .update_attempts(2)
            .build()
            .expect("client")
            .crdt("s");
        mock.state.answer_context_not_seen(2);
        let before = sent(&mock, "POST").len();
        let e = two.remove("k", ["b"]).await.expect_err("gives up");
        assert_eq!(e.code(), Some(ErrorCode::ContextNotSeen));
        assert_eq!(e.status(), Some(409));
        assert!(!e.is_transient());
        assert_eq!(sent(&mock, "POST").len(), before + 2);

        // With the caller's own context nothing is re-read: the error is theirs to handle.
        let read = tags.get("k").await.expect("get").expect("found");
        mock.state.answer_context_not_seen(1);
        let before = mock.state.requests().len();
        let e = tags
            .apply_with_context("k", &CrdtOp::Remove(vec!["b".into()]), &read.context)
            .await
            .expect_err("context not seen");
        assert_eq!(e.code(), Some(ErrorCode::ContextNotSeen));
        assert_eq!(mock.state.requests().len(), before + 1);
        assert_eq!(
            mock.state.last().header("x-dynamo-context"),
            Some(read.context.as_str())
        );
    })
    .await;
}

// Goal: error answers become the SDK's typed errors with their codes and are not
// retried; input that can never succeed is refused before anything is sent.
#[tokio::test]
async fn errors_map_to_typed_errors() {
    within(async {
        let mock = Mock::start().await;
        mock.state.crdt_bucket("s", CrdtType::Set);

        let plain = crdt(&mock, "plain");
        let e = plain.increment("k", 1).await.expect_err("not a CRDT bucket");
        let ClientError::Api {
            status,
            code,
            request_id,
            ..
        } = &e
        else {
            panic!("expected an API error, got {e:?}");
        };
        assert_eq!((*status, *code), (409, ErrorCode::WrongBucketType));
        assert_eq!(request_id.as_deref(), Some("mock-request"));
        assert_eq!(mock.state.requests().len(), 1, "a permanent error is not retried");
        let e = plain.get("k").await.expect_err("not a CRDT bucket");
        assert_eq!(e.code(), Some(ErrorCode::WrongBucketType));

        let tags = crdt(&mock, "s");
        let e = tags.increment("k", 1).await.expect_err("not a counter");
        assert_eq!(
            (e.status(), e.code()),
            (Some(422), Some(ErrorCode::InvalidCrdtOperation))
        );

        tags.add("k", ["a"]).await.expect("add");
        let e = tags.remove("k", ["zzz"]).await.expect_err("never observed");
        assert_eq!(e.code(), Some(ErrorCode::InvalidCrdtOperation));

        // The client's budget: 3 retries, so 4 attempts.
        mock.state.fail_next(ErrorCode::Overloaded, 4);
        let e = tags.add("k", ["b"]).await.expect_err("stays overloaded");
        assert!(
            e.is_transient(),
            "a transient error spent the retry budget: {e:?}"
        );

        // A remove from a key without a value: the read says so and nothing is sent.
        let before = mock.state.requests().len();
        let e = tags
            .remove("missing", ["a"])
            .await
            .expect_err("nothing to remove");
        assert!(
            matches!(
                &e,
                ClientError::InvalidInput {
                    code: ErrorCode::InvalidCrdtOperation,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(methods(&mock)[before..], ["GET"]);

        let before = mock.state.requests().len();
        let e = tags.add("..", ["a"]).await.expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::InvalidKey));
        let e = crdt(&mock, "Bad").get("k").await.expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::InvalidBucket));
        let e = tags
            .apply_with_context(
                "k",
                &CrdtOp::Remove(vec!["a".into()]),
                &"bad\nctx".parse().expect("ctx"),
            )
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::InvalidContext));
        assert_eq!(mock.state.requests().len(), before, "nothing was sent");
    })
    .await;
}

// Goal: `apply_if` sends `If-None-Match: *` or `If-Match` with a read's ETag, and a
// precondition that does not hold is `precondition_failed` with nothing changed.
#[tokio::test]
async fn apply_if_sends_its_precondition() {
    within(async {
        let mock = Mock::start().await;
        mock.state.crdt_bucket("c", CrdtType::Counter);
        let counters = crdt(&mock, "c");
        let created = counters
            .apply_if("k", &CrdtOp::Increment(1), &Precondition::IfAbsent)
            .await
            .expect("created");
        assert_eq!(mock.state.last().header("if-none-match"), Some("*"));
        let e = counters
            .apply_if("k", &CrdtOp::Increment(1), &Precondition::IfAbsent)
            .await
            .expect_err("exists");
        assert_eq!(
            (e.status(), e.code()),
            (Some(412), Some(ErrorCode::PreconditionFailed))
        );

        let matched = counters
            .apply_if(
                "k",
                &CrdtOp::Increment(2),
                &Precondition::IfMatch(created.etag.clone()),
            )
            .await
            .expect("unchanged since");
        assert_eq!(mock.state.last().header("if-match"), Some(created.etag.as_str()));
        assert_eq!(matched.as_counter(), Some(3));
        let e = counters
            .apply_if("k", &CrdtOp::Increment(2), &Precondition::IfMatch(created.etag))
            .await
            .expect_err("changed since");
        assert_eq!(e.code(), Some(ErrorCode::PreconditionFailed));
        assert_eq!(mock.state.crdt_value("c", "k"), Some(json!(3)));
    })
    .await;
}
