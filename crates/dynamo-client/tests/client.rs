//! The SDK against a mock coordinator on loopback (`tests/mock`): every call over real
//! HTTP, checking what goes on the wire as well as what comes back.

mod mock;

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dynamo_client::{
    BatchOp, BucketPropsPatch, ChangeKindName, ChangeProgress, ChangeSummary, Client, ClientError,
    ConflictMode, ETag, ErrorCode, Lookup, NodeId, NodeRegistration, NodeState, Permission, Precondition,
    RequestOptions, RetryPolicy, RingEpoch, Sibling, TokenRequest, Value,
};
use mock::{Mock, TOKEN};

/// Every test finishes within this, whatever the client does.
const WAIT: Duration = Duration::from_secs(30);

async fn within<F: Future>(f: F) -> F::Output {
    tokio::time::timeout(WAIT, f)
        .await
        .expect("the test finished in time")
}

fn fast_retries(max_retries: u32) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    }
}

fn client(mock: &Mock) -> Client {
    Client::builder(mock.url())
        .token(TOKEN)
        .timeout(Duration::from_secs(5))
        .retry(fast_retries(3))
        .build()
        .expect("client")
}

fn header<'a>(seen: &'a mock::Seen, name: &str) -> Option<&'a str> {
    seen.headers.get(name).and_then(|v| v.to_str().ok())
}

fn texts(siblings: &[Sibling]) -> Vec<String> {
    let mut v: Vec<String> = siblings
        .iter()
        .map(|s| s.text().expect("utf-8").to_owned())
        .collect();
    v.sort();
    v
}

/// Merges comma-separated sets: the union of every sibling's elements plus `extra`.
fn union(siblings: &[Sibling], extra: &str) -> Value {
    let mut all: Vec<&str> = siblings
        .iter()
        .filter_map(Sibling::text)
        .flat_map(|t| t.split(','))
        .chain([extra])
        .filter(|s| !s.is_empty())
        .collect();
    all.sort_unstable();
    all.dedup();
    Value::text(all.join(","))
}

// Goal: a put and a get round-trip the value, its content type and a context, with the
// bearer token and `Accept: application/json` on the wire.
#[tokio::test]
async fn put_then_get_round_trips_value_content_type_and_context() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let ctx = c
            .put("users", "alice", "hello", "text/plain", None)
            .await
            .expect("put");
        assert!(!ctx.as_str().is_empty());
        let put = mock.state.last();
        assert_eq!(put.method, "PUT");
        assert_eq!(header(&put, "authorization"), Some("Bearer mock-root-token"));
        assert_eq!(header(&put, "content-type"), Some("text/plain"));
        assert_eq!(header(&put, "x-dynamo-context"), None, "a first write is blind");

        let object = c.get("users", "alice").await.expect("get").expect("found");
        let only = object.single().expect("one sibling");
        assert_eq!(only.value, b"hello");
        assert_eq!(only.content_type, "text/plain");
        assert_eq!(only.last_modified.len(), "2023-11-14T22:13:20.000Z".len());
        assert_eq!(object.context, ctx, "the read covers exactly the write");
        assert_eq!(header(&mock.state.last(), "accept"), Some("application/json"));
    })
    .await;
}

// Goal: a 404 `not_found` is `None`, not an error, and is not retried.
#[tokio::test]
async fn missing_key_is_none() {
    within(async {
        let mock = Mock::start().await;
        let got = client(&mock).get("users", "nobody").await.expect("get");
        assert_eq!(got, None);
        assert_eq!(mock.state.requests().len(), 1);
    })
    .await;
}

// Goal: a 300 answer's siblings all reach the caller, and a write with the read's context
// (sent back verbatim in the header) replaces exactly them.
#[tokio::test]
async fn siblings_from_a_300_are_replaced_by_a_write_with_their_context() {
    within(async {
        let mock = Mock::start().await;
        mock.state.seed("b", "k", b"one", "text/plain");
        mock.state.seed("b", "k", b"two", "application/x-two");
        let c = client(&mock);

        let object = c.get("b", "k").await.expect("get").expect("found");
        assert!(object.has_siblings());
        assert_eq!(texts(&object.siblings), ["one", "two"]);
        assert!(
            object
                .siblings
                .iter()
                .any(|s| s.content_type == "application/x-two")
        );

        c.put("b", "k", "three", "text/plain", Some(&object.context))
            .await
            .expect("put");
        let put = mock.state.last();
        assert_eq!(header(&put, "x-dynamo-context"), Some(object.context.as_str()));
        assert_eq!(mock.state.values("b", "k"), vec![b"three".to_vec()]);
    })
    .await;
}

// Goal: a deleted key reads as not found but exposes its tombstone's context, and a write
// carrying that context supersedes the delete.
#[tokio::test]
async fn deleted_key_exposes_the_tombstone_context() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let ctx = c.put("b", "k", "v", "text/plain", None).await.expect("put");
        c.delete("b", "k", Some(&ctx)).await.expect("delete");
        assert_eq!(header(&mock.state.last(), "x-dynamo-context"), Some(ctx.as_str()));

        assert_eq!(c.get("b", "k").await.expect("get"), None);
        let lookup = c.lookup("b", "k", &RequestOptions::new()).await.expect("lookup");
        let Lookup::NotFound {
            context: Some(tombstone),
            ..
        } = lookup
        else {
            panic!("expected a tombstone context, got {lookup:?}");
        };
        c.put("b", "k", "again", "text/plain", Some(&tombstone))
            .await
            .expect("put");
        let object = c.get("b", "k").await.expect("get").expect("found");
        assert_eq!(texts(&object.siblings), ["again"]);
    })
    .await;
}

// Goal: every key byte outside the unreserved set is percent-encoded in the path, so keys
// with `/`, `?`, `#`, `%`, spaces and non-ASCII arrive intact.
#[tokio::test]
async fn keys_are_percent_encoded_in_the_path() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let key = "a/b c?d#e%f+g~h.é";
        c.put("b", key, "v", "text/plain", None).await.expect("put");
        let seen = mock.state.last();
        assert_eq!(seen.uri, "/v1/kv/b/a%2Fb%20c%3Fd%23e%25f%2Bg~h.%C3%A9");
        assert_eq!(seen.object, Some(("b".into(), key.into())));
        let object = c.get("b", key).await.expect("get").expect("found");
        assert_eq!(texts(&object.siblings), ["v"]);

        // Keys no URL path can carry are refused before anything is sent.
        let before = mock.state.requests().len();
        let e = c.get("b", "..").await.expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::InvalidKey));
        let e = c.get("Bad", "k").await.expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::InvalidBucket));
        assert_eq!(mock.state.requests().len(), before);
    })
    .await;
}

// Goal: `r`, `w` and `timeout_ms` travel as query parameters on the calls they apply to.
#[tokio::test]
async fn request_options_reach_the_query() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let opts = RequestOptions::new().r(1).w(3).timeout_ms(250);
        c.put_with("b", "k", "v", "text/plain", None, &opts)
            .await
            .expect("put");
        let put = mock.state.last().uri;
        assert!(
            put.contains("w=3") && put.contains("timeout_ms=250") && !put.contains("r=1"),
            "{put}"
        );
        c.lookup("b", "k", &opts).await.expect("lookup");
        let get = mock.state.last().uri;
        assert!(
            get.contains("r=1") && get.contains("timeout_ms=250") && !get.contains("w=3"),
            "{get}"
        );
        c.delete_with("b", "k", None, &opts).await.expect("delete");
        assert!(mock.state.last().uri.contains("w=3"));
    })
    .await;
}

// Goal: `put_returning_body` sends `returnbody=true` and returns the stored object with
// every sibling and the context covering them.
#[tokio::test]
async fn put_returning_body_returns_every_stored_sibling() {
    within(async {
        let mock = Mock::start().await;
        mock.state.seed("b", "k", b"theirs", "text/plain");
        let c = client(&mock);
        let stored = c
            .put_returning_body("b", "k", "mine", "text/plain", None, &RequestOptions::new())
            .await
            .expect("put");
        assert!(mock.state.last().uri.contains("returnbody=true"));
        assert_eq!(
            texts(&stored.siblings),
            ["mine", "theirs"],
            "a blind write is a sibling"
        );
        let read = c.get("b", "k").await.expect("get").expect("found");
        assert_eq!(read.context, stored.context);
    })
    .await;
}

// Goal: an API error keeps its status, code, message and request id, and a 401 is not
// retried.
#[tokio::test]
async fn unauthorized_is_a_typed_api_error() {
    within(async {
        let mock = Mock::start().await;
        let c = Client::builder(mock.url())
            .token("wrong")
            .retry(fast_retries(3))
            .build()
            .expect("client");
        let e = c.get("b", "k").await.expect_err("refused");
        let ClientError::Api {
            status,
            code,
            request_id,
            ..
        } = &e
        else {
            panic!("expected an API error, got {e:?}");
        };
        assert_eq!((*status, *code), (401, ErrorCode::Unauthorized));
        assert_eq!(request_id.as_deref(), Some("mock-request"));
        assert_eq!(mock.state.requests().len(), 1, "a permanent error is not retried");
    })
    .await;
}

// Goal: a transient 503 is retried and the retry's answer returned.
#[tokio::test]
async fn transient_503_is_retried_then_succeeds() {
    within(async {
        let mock = Mock::start().await;
        mock.state.seed("b", "k", b"v", "text/plain");
        mock.state.fail_next(ErrorCode::QuorumUnavailable, 1);
        let object = client(&mock)
            .get("b", "k")
            .await
            .expect("retried")
            .expect("found");
        assert_eq!(texts(&object.siblings), ["v"]);
        assert_eq!(mock.state.requests().len(), 2);
    })
    .await;
}

// Goal: every attempt of one write carries the same Idempotency-Key (so the server
// answers a retry as the first attempt), and two writes carry different ones.
#[tokio::test]
async fn a_retried_write_keeps_its_idempotency_key() {
    within(async {
        let mock = Mock::start().await;
        mock.state.fail_next(ErrorCode::QuorumUnavailable, 1);
        let c = client(&mock);
        c.put("b", "k", "v", "text/plain", None).await.expect("retried");
        c.put("b", "k", "w", "text/plain", None)
            .await
            .expect("second write");
        let keys: Vec<String> = mock
            .state
            .requests()
            .iter()
            .map(|r| r.headers["idempotency-key"].to_str().expect("ascii").to_owned())
            .collect();
        assert_eq!(keys.len(), 3, "one retry, then a second write");
        assert_eq!(keys[0], keys[1], "the retry repeats the key");
        assert_ne!(keys[1], keys[2], "another write, another key");
        assert!(keys.iter().all(|k| k.len() <= 128 && k.starts_with("sdk-")));
    })
    .await;
}

// Goal: a permanent 400 is answered at once, with its code.
#[tokio::test]
async fn permanent_400_is_not_retried() {
    within(async {
        let mock = Mock::start().await;
        mock.state.fail_next(ErrorCode::InvalidQuorum, 1);
        let e = client(&mock)
            .put("b", "k", "v", "text/plain", None)
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::InvalidQuorum));
        assert_eq!(e.status(), Some(400));
        assert!(!e.is_transient());
        assert_eq!(mock.state.requests().len(), 1);
    })
    .await;
}

// Goal: the retry budget is bounded: with 2 retries, a server that stays overloaded sees
// exactly 3 attempts and the caller gets the transient error.
#[tokio::test]
async fn retry_budget_is_bounded() {
    within(async {
        let mock = Mock::start().await;
        mock.state.fail_next(ErrorCode::Overloaded, 10);
        let c = Client::builder(mock.url())
            .token(TOKEN)
            .retry(fast_retries(2))
            .build()
            .expect("client");
        let e = c.get("b", "k").await.expect_err("gives up");
        assert_eq!(e.code(), Some(ErrorCode::Overloaded));
        assert!(e.is_transient());
        assert_eq!(mock.state.requests().len(), 3);
    })
    .await;
}

// Goal: `update` hands every sibling to the closure and writes its merge back with the
// read's context, leaving one value.
#[tokio::test]
async fn update_merges_all_siblings_in_one_call() {
    within(async {
        let mock = Mock::start().await;
        mock.state.seed("b", "set", b"a", "text/plain");
        mock.state.seed("b", "set", b"b", "text/plain");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let stored = client(&mock)
            .update("b", "set", move |current| {
                let object = current.expect("the key exists");
                log.lock().expect("lock").push(texts(&object.siblings));
                object.resolve_with(|s| union(s, "c"))
            })
            .await
            .expect("update");
        assert_eq!(
            *seen.lock().expect("lock"),
            vec![vec!["a".to_owned(), "b".to_owned()]]
        );
        assert_eq!(texts(&stored.siblings), ["a,b,c"]);
        assert_eq!(mock.state.values("b", "set"), vec![b"a,b,c".to_vec()]);
    })
    .await;
}

// Goal: when a concurrent write slips in between `update`'s read and write, the closure
// runs again on the new siblings (its own last result among them), so nothing is dropped
// and one merged value is left.
#[tokio::test]
async fn update_retries_when_a_concurrent_write_makes_new_siblings() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        c.put("b", "set", "x", "text/plain", None).await.expect("put");
        mock.state.write_concurrently_before_next_put(b"y");
        let calls = Arc::new(Mutex::new(Vec::new()));
        let log = calls.clone();
        let stored = c
            .update("b", "set", move |current| {
                let object = current.expect("the key exists");
                log.lock().expect("lock").push(texts(&object.siblings));
                object.resolve_with(|s| union(s, "me"))
            })
            .await
            .expect("update");
        let calls = calls.lock().expect("lock").clone();
        assert_eq!(
            calls,
            vec![vec!["x".to_owned()], vec!["me,x".to_owned(), "y".to_owned()]]
        );
        assert_eq!(texts(&stored.siblings), ["me,x,y"]);
        assert_eq!(mock.state.values("b", "set"), vec![b"me,x,y".to_vec()]);
    })
    .await;
}

// Goal: `update` is bounded: writers that keep colliding exhaust its attempts and the
// caller gets the object with its siblings visible, never a silently dropped one.
#[tokio::test]
async fn update_stops_after_its_attempts_with_siblings_visible() {
    within(async {
        let mock = Mock::start().await;
        for v in [b"p", b"q", b"r"] {
            mock.state.write_concurrently_before_next_put(v);
        }
        let c = Client::builder(mock.url())
            .token(TOKEN)
            .update_attempts(2)
            .build()
            .expect("client");
        let mut calls = 0;
        let stored = c
            .update("b", "k", |current| {
                calls += 1;
                current.map_or_else(|| Value::text("first"), |o| o.resolve_with(|s| union(s, "")))
            })
            .await
            .expect("update");
        assert_eq!(calls, 2);
        assert!(stored.has_siblings());
        let puts = mock.state.requests().iter().filter(|r| r.method == "PUT").count();
        assert_eq!(puts, 2);
    })
    .await;
}

// Goal: `update` on a key without a value passes `None`, and after a delete it carries
// the tombstone's context so the write supersedes the delete.
#[tokio::test]
async fn update_of_a_missing_or_deleted_key_starts_from_none() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let stored = c
            .update("b", "k", |current| {
                assert!(current.is_none());
                Value::text("fresh")
            })
            .await
            .expect("update");
        c.delete("b", "k", Some(&stored.context)).await.expect("delete");
        let tombstone = c
            .lookup("b", "k", &RequestOptions::new())
            .await
            .expect("lookup")
            .context()
            .cloned()
            .expect("tombstone context");
        c.update("b", "k", |current| {
            assert!(current.is_none());
            Value::text("reborn")
        })
        .await
        .expect("update");
        assert_eq!(
            header(&mock.state.last(), "x-dynamo-context"),
            Some(tombstone.as_str())
        );
    })
    .await;
}

// Goal: bucket properties read with defaults, patch partially, and a refused patch comes
// back as `invalid_bucket_properties`.
#[tokio::test]
async fn bucket_props_read_and_patch() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let props = c.bucket_props("users").await.expect("get");
        assert_eq!((props.n, props.r, props.w), (3, 2, 2));
        let patched = c
            .set_bucket_props(
                "users",
                &BucketPropsPatch {
                    r: Some(1),
                    conflict: Some(ConflictMode::Lww),
                    ..Default::default()
                },
            )
            .await
            .expect("set");
        assert_eq!((patched.r, patched.conflict), (1, ConflictMode::Lww));
        assert_eq!(
            header(&mock.state.last(), "content-type"),
            Some("application/json")
        );
        let e = c
            .set_bucket_props(
                "users",
                &BucketPropsPatch {
                    r: Some(5),
                    ..Default::default()
                },
            )
            .await
            .expect_err("refused");
        assert_eq!(e.code(), Some(ErrorCode::InvalidBucketProperties));
        assert_eq!(e.status(), Some(422));
    })
    .await;
}

// Goal: the cluster view, the ring and a key's placement decode into their types, and
// the placement's bucket and key travel in the query.
#[tokio::test]
async fn cluster_ring_and_placement_decode() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let view = c.cluster().await.expect("cluster");
        assert_eq!(view.epoch.0, 7);
        assert_eq!(view.nodes[1].state, NodeState::Down);
        let ring = c.ring().await.expect("ring");
        assert_eq!((ring.partitions, ring.owners.len()), (4, 4));
        let placement = c.placement("b", "a key/x").await.expect("placement");
        assert_eq!(placement.preference_list.len(), 2);
        let uri = mock.state.last().uri;
        assert!(uri.contains("bucket=b") && uri.contains("key=a+key%2Fx"), "{uri}");
    })
    .await;
}

// Goal: join and decommission send the documented requests and surface membership
// errors by code.
#[tokio::test]
async fn join_and_decommission_nodes() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let reg = NodeRegistration {
            node_id: NodeId::new("node-c").expect("id"),
            address: "http://10.0.0.9:7070".into(),
            zone: Some("z3".into()),
        };
        c.join_node(&reg).await.expect("join");
        let e = c.join_node(&reg).await.expect_err("already a member");
        assert_eq!(e.code(), Some(ErrorCode::MembershipConflict));
        let view = c.cluster().await.expect("cluster");
        assert!(
            view.nodes
                .iter()
                .any(|n| n.node_id == reg.node_id && n.state == NodeState::Joining)
        );

        c.decommission(&reg.node_id).await.expect("decommission");
        assert_eq!(mock.state.last().uri, "/v1/cluster/nodes/node-c");
        let e = c
            .decommission(&NodeId::new("node-z").expect("id"))
            .await
            .expect_err("unknown");
        assert_eq!(e.code(), Some(ErrorCode::NodeNotFound));
    })
    .await;
}

// Goal: a replace posts the new node's registration to the old node's replace route and
// answers the view with the change it began (the SDK's re-exported change types decode
// it); the new node then shows as joining and the old one as leaving; membership errors
// surface by code.
#[tokio::test]
async fn replace_a_node() {
    within(async {
        let mock = Mock::start().await;
        let change = ChangeProgress {
            change: ChangeSummary {
                kind: ChangeKindName::Replace,
                node: NodeId::new("node-b").expect("id"),
                replacement: Some(NodeId::new("node-d").expect("id")),
                phase: "copy".into(),
                epoch: RingEpoch(8),
                failed: None,
            },
            partitions_total: 4,
            partitions_done: 0,
            objects: 0,
            bytes: 0,
            stuck: None,
        };
        mock.state.script_cluster([(RingEpoch(7), Some(change.clone()))]);
        let c = client(&mock);
        let new = NodeRegistration {
            node_id: NodeId::new("node-d").expect("id"),
            address: "http://10.0.0.4:7070".into(),
            zone: Some("z2".into()),
        };
        let began = c
            .replace_node(&NodeId::new("node-b").expect("id"), &new)
            .await
            .expect("replace");
        let seen = mock.state.last();
        assert_eq!(
            (seen.method.as_str(), seen.uri.as_str()),
            ("POST", "/v1/cluster/nodes/node-b/replace")
        );
        assert_eq!(header(&seen, "content-type"), Some("application/json"));
        assert_eq!(began.change, Some(change));

        let view = c.cluster().await.expect("cluster");
        let state_of = |id: &str| {
            view.nodes
                .iter()
                .find(|n| n.node_id.as_str() == id)
                .map(|n| n.state)
        };
        assert_eq!(state_of("node-b"), Some(NodeState::Leaving));
        assert_eq!(state_of("node-d"), Some(NodeState::Joining));
        let joined = view
            .nodes
            .iter()
            .find(|n| n.node_id == new.node_id)
            .expect("node-d");
        assert_eq!(
            (joined.address.as_str(), joined.zone.as_deref()),
            ("http://10.0.0.4:7070", Some("z2"))
        );

        let e = c
            .replace_node(&NodeId::new("node-a").expect("id"), &new)
            .await
            .expect_err("already a member");
        assert_eq!(e.code(), Some(ErrorCode::MembershipConflict));
        let other = NodeRegistration {
            node_id: NodeId::new("node-e").expect("id"),
            ..new
        };
        let e = c
            .replace_node(&NodeId::new("node-z").expect("id"), &other)
            .await
            .expect_err("unknown");
        assert_eq!(e.code(), Some(ErrorCode::NodeNotFound));
    })
    .await;
}

/// A replace of node-b by node-d in `phase`, publishing ring epoch 8; failed with
/// `failed` when given.
fn replace_change(phase: &str, failed: Option<&str>) -> ChangeProgress {
    ChangeProgress {
        change: ChangeSummary {
            kind: ChangeKindName::Replace,
            node: NodeId::new("node-b").expect("id"),
            replacement: Some(NodeId::new("node-d").expect("id")),
            phase: phase.into(),
            epoch: RingEpoch(8),
            failed: failed.map(Into::into),
        },
        partitions_total: 4,
        partitions_done: 1,
        objects: 10,
        bytes: 1000,
        stuck: failed.map(Into::into),
    }
}

// Goal: `retry_change` posts to the retry route (no body) and answers the view of the
// change running again, no longer failed; a retry with the change running, or with no
// change at all, is a `membership_conflict` error.
#[tokio::test]
async fn retry_runs_a_failed_change_again_and_answers_the_view() {
    within(async {
        let mock = Mock::start().await;
        let running = replace_change("copy", None);
        mock.state.script_cluster([
            (
                RingEpoch(7),
                Some(replace_change("copy", Some("5 attempts failed"))),
            ),
            (RingEpoch(7), Some(running.clone())),
        ]);
        let c = client(&mock);
        let view = c.retry_change().await.expect("retry");
        let seen = mock.state.last();
        assert_eq!(
            (seen.method.as_str(), seen.uri.as_str()),
            ("POST", "/v1/cluster/change/retry")
        );
        assert_eq!(header(&seen, "content-type"), None, "no body");
        assert_eq!(view.change, Some(running));

        let e = c.retry_change().await.expect_err("the change runs");
        assert_eq!(e.code(), Some(ErrorCode::MembershipConflict));
        mock.state.script_cluster([(RingEpoch(8), None)]);
        let e = c.retry_change().await.expect_err("no change");
        assert_eq!(e.code(), Some(ErrorCode::MembershipConflict));
    })
    .await;
}

// Goal: `abort_change` posts to the abort route and answers the view without the change:
// the replacing node forgotten, the replaced node up again, the ring epoch unchanged; an
// abort once the new ring is published (catch-up phase), or with no change, is a
// `membership_conflict` error and changes nothing.
#[tokio::test]
async fn abort_undoes_a_change_before_its_ring_is_published() {
    within(async {
        let mock = Mock::start().await;
        mock.state.script_cluster([(
            RingEpoch(7),
            Some(replace_change("copy", Some("5 attempts failed"))),
        )]);
        let c = client(&mock);
        let new = NodeRegistration {
            node_id: NodeId::new("node-d").expect("id"),
            address: "http://10.0.0.4:7070".into(),
            zone: None,
        };
        c.replace_node(&NodeId::new("node-b").expect("id"), &new)
            .await
            .expect("replace");

        let view = c.abort_change().await.expect("abort");
        let seen = mock.state.last();
        assert_eq!(
            (seen.method.as_str(), seen.uri.as_str()),
            ("POST", "/v1/cluster/change/abort")
        );
        assert_eq!((view.epoch, view.change), (RingEpoch(7), None));
        let state_of = |id: &str| {
            view.nodes
                .iter()
                .find(|n| n.node_id.as_str() == id)
                .map(|n| n.state)
        };
        assert_eq!(state_of("node-d"), None, "the replacing node is forgotten");
        assert_eq!(state_of("node-b"), Some(NodeState::Up));
        let e = c.abort_change().await.expect_err("no change");
        assert_eq!(e.code(), Some(ErrorCode::MembershipConflict));

        let published = replace_change("catch_up", Some("5 attempts failed"));
        mock.state
            .script_cluster([(RingEpoch(8), Some(published.clone()))]);
        let e = c.abort_change().await.expect_err("the ring is published");
        assert_eq!(e.code(), Some(ErrorCode::MembershipConflict));
        assert!(
            e.to_string().contains("already published"),
            "the server's reason: {e}"
        );
        let view = c.cluster().await.expect("cluster");
        assert_eq!(view.change, Some(published), "the refused abort changed nothing");
    })
    .await;
}

// Goal: a created token is listed without its secret, authenticates, and is gone after
// its deletion.
#[tokio::test]
async fn tokens_create_list_delete() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        let created = c
            .create_token(&TokenRequest::all_buckets(vec![Permission::Read]))
            .await
            .expect("create");
        let listed = c.list_tokens().await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, created.id);
        assert_eq!(listed[0].permissions, vec![Permission::Read]);

        let scoped = Client::new(&mock.url(), created.token.clone()).expect("client");
        assert_eq!(scoped.get("b", "k").await.expect("authenticated"), None);

        c.delete_token(&created.id).await.expect("delete");
        assert!(c.list_tokens().await.expect("list").is_empty());
        let e = c.delete_token(&created.id).await.expect_err("gone");
        assert_eq!(e.code(), Some(ErrorCode::TokenNotFound));
    })
    .await;
}

// Goal: nothing waits forever: a server that accepts and never answers ends in a
// timeout, which is not retried (the request may have been applied).
#[tokio::test]
async fn a_silent_server_ends_in_a_timeout() {
    within(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                open.push(socket);
            }
        });
        let c = Client::builder(format!("http://{addr}"))
            .token(TOKEN)
            .timeout(Duration::from_millis(200))
            .retry(fast_retries(3))
            .build()
            .expect("client");
        let e = c.get("b", "k").await.expect_err("times out");
        assert!(matches!(e, ClientError::Timeout { .. }), "{e:?}");
        assert!(!e.is_transient());
        held.abort();
    })
    .await;
}

// Goal: a refused connection is a transport error, marked transient (the request never
// left), and retried within the budget before it is returned.
#[tokio::test]
async fn a_refused_connection_is_a_transient_transport_error() {
    within(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let c = Client::builder(format!("http://{addr}"))
            .token(TOKEN)
            .retry(fast_retries(2))
            .build()
            .expect("client");
        let e = c.get("b", "k").await.expect_err("refused");
        assert!(matches!(e, ClientError::Transport { .. }), "{e:?}");
        assert!(e.is_transient());
        assert!(!c.is_ready().await.is_ok_and(|ready| ready));
    })
    .await;
}

// Goal: conditional writes through the SDK: reads expose the ETag, `put_if_match` sends
// it as If-Match and applies while it is current, a stale one is precondition_failed
// and changes nothing, `put_if_absent` sends If-None-Match: * and creates only,
// `delete_if_match` deletes only the version it names, and a tombstone's 404 exposes
// its ETag too.
#[tokio::test]
async fn conditional_writes_send_their_preconditions() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        c.put("b", "k", "v1", "text/plain", None).await.expect("put");
        let first = c.get("b", "k").await.expect("get").expect("found");
        let e1 = first.etag.clone().expect("a read exposes the ETag");
        let w = c
            .put_if_match("b", "k", "v2", "text/plain", &e1)
            .await
            .expect("matches");
        assert_eq!(header(&mock.state.last(), "if-match"), Some(e1.as_str()));
        let e2 = w.etag.expect("a write answers its ETag");
        assert_ne!(e1, e2);
        assert_eq!(
            mock.state.values("b", "k"),
            [b"v2".to_vec()],
            "the matched version was replaced"
        );

        let stale = c
            .put_if_match("b", "k", "v3", "text/plain", &e1)
            .await
            .expect_err("stale");
        assert_eq!(stale.code(), Some(ErrorCode::PreconditionFailed));
        assert_eq!(mock.state.values("b", "k"), [b"v2".to_vec()]);

        let created = c
            .put_if_absent("b", "new", "n", "text/plain")
            .await
            .expect("absent");
        assert_eq!(header(&mock.state.last(), "if-none-match"), Some("*"));
        assert!(created.etag.is_some());
        let again = c
            .put_if_absent("b", "new", "m", "text/plain")
            .await
            .expect_err("exists");
        assert_eq!(again.code(), Some(ErrorCode::PreconditionFailed));

        let gone = c.delete_if_match("b", "k", &e1).await.expect_err("stale");
        assert_eq!(gone.code(), Some(ErrorCode::PreconditionFailed));
        let deleted = c.delete_if_match("b", "k", &e2).await.expect("deleted");
        let lookup = c.lookup("b", "k", &RequestOptions::new()).await.expect("lookup");
        let Lookup::NotFound { etag: Some(tomb), .. } = lookup else {
            panic!("expected a tombstone's ETag, got {lookup:?}");
        };
        assert_eq!(Some(tomb.clone()), deleted.etag);
        let revived = c
            .put_if(
                "b",
                "k",
                "v4",
                "text/plain",
                None,
                &Precondition::IfMatch(tomb),
                &RequestOptions::new(),
            )
            .await
            .expect("still deleted as seen");
        assert!(revived.etag.is_some());
        let bad = c
            .put_if_match("b", "k", "x", "text/plain", &ETag::new("bad\nvalue\n"))
            .await;
        assert!(bad.is_err());
    })
    .await;
}

// Goal: `batch` sends the operations as API.md writes them and returns one result per
// operation in order, failures included, without failing the call.
#[tokio::test]
async fn batches_return_one_result_per_operation_in_order() {
    within(async {
        let mock = Mock::start().await;
        let c = client(&mock);
        c.put("b", "old", "o", "text/plain", None).await.expect("put");
        let results = c
            .batch(&[
                BatchOp::put("b", "x", "x1", "text/plain", None),
                BatchOp::get("b", "old"),
                BatchOp::get("b", "missing"),
                BatchOp::delete("b", "old", None),
                BatchOp::put("b", "y", "y1", "text/plain", Some("forged".into())),
            ])
            .await
            .expect("batch");
        let statuses: Vec<u16> = results.iter().map(|r| r.status).collect();
        assert_eq!(statuses, [204, 200, 404, 204, 400]);
        assert_eq!(results[1].siblings.as_ref().expect("siblings")[0].value, b"o");
        assert!(results[1].etag.is_some() && results[1].context.is_some());
        assert_eq!(
            results[2].error.as_ref().map(|e| e.code),
            Some(ErrorCode::NotFound)
        );
        assert_eq!(
            results[4].error.as_ref().map(|e| e.code),
            Some(ErrorCode::InvalidContext)
        );
        assert_eq!(mock.state.values("b", "x"), [b"x1".to_vec()]);
        let sent = mock.state.last();
        assert_eq!(sent.uri, "/v1/batch");
        let e = c.batch(&[]).await.expect_err("an empty batch is refused");
        assert_eq!(e.code(), Some(ErrorCode::InvalidRequest));
    })
    .await;
}
