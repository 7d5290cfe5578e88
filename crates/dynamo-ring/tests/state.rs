//! The state document, long-polls, liveness, buckets, tokens and input validation.

mod common;

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use common::*;
use dynamo_core::wire::cluster::{BucketRecord, NodeState};
use serde_json::{Value, json};

// Goal: a long-poll with an old version answers at once; with the current version it
// waits and answers on the next change; with nothing changing it answers 304 with no
// body once `wait_ms` has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_answer_at_once_on_change_or_304_at_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = start(config(dir.path())).await;
    let s0 = state(&ring.url).await;
    assert_eq!(s0.version, 0);
    assert!(s0.ring.is_none());
    let (s, _) = call(
        "PUT",
        &format!("{}/internal/v1/buckets/b1", ring.url),
        Some(json!({"r": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);

    // An old version: at once, even with a long wait.
    let t = Instant::now();
    let (s, v) = call(
        "GET",
        &format!("{}/internal/v1/state?after=0&wait_ms=30000", ring.url),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["version"], 1);
    assert!(t.elapsed() < Duration::from_secs(10), "answered without waiting");

    // The current version: waits for the next change.
    let url = format!("{}/internal/v1/state?after=1&wait_ms=20000", ring.url);
    let poll = tokio::spawn(async move { call("GET", &url, None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished(), "the long-poll waits");
    let (s, _) = call(
        "PUT",
        &format!("{}/internal/v1/buckets/b2", ring.url),
        Some(json!({"w": 1})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = tokio::time::timeout(WAIT, poll)
        .await
        .expect("answers")
        .expect("join");
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["version"], 2);
    assert_eq!(v["buckets"]["b2"]["props"]["w"], 1);

    // Nothing changes: 304, no body, after about wait_ms.
    let t = Instant::now();
    let (s, v) = call(
        "GET",
        &format!("{}/internal/v1/state?after=2&wait_ms=300", ring.url),
        None,
    )
    .await;
    assert_eq!((s, v), (StatusCode::NOT_MODIFIED, Value::Null));
    assert!(t.elapsed() >= Duration::from_millis(300));
    ring.shutdown().await;
}

// Goal: heartbeats keep a member up; silence marks it down after the timeout (a state
// version bump), and down is not a departure: the ring and membership are unchanged,
// and the next heartbeat brings it back up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_mark_up_silence_marks_down_and_down_is_not_a_departure() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.heartbeat_timeout_ms = 1_000;
    let ring = start(cfg).await;
    let a = FakeNode::start("node-a", &ring.url).await;
    let b = FakeNode::start("node-b", &ring.url).await;
    let beat_a = heartbeat_loop(&ring.url, vec![(a.id.clone(), a.url.clone())]);
    join_and_wait(&ring.url, &a, 1).await;
    join_and_wait(&ring.url, &b, 2).await;
    let ring_before = ring_of(&ring.url).await;

    let down = wait_state(&ring.url, "node-b down", |s| {
        s.nodes
            .iter()
            .any(|n| n.node_id == id("node-b") && n.state == NodeState::Down)
    })
    .await;
    assert_eq!(
        down.ring.as_ref(),
        Some(&ring_before),
        "an outage does not change the ring"
    );
    assert_eq!(down.nodes.len(), 2, "nor the membership");
    let view = cluster_view(&ring.url).await;
    let va = view.nodes.iter().find(|n| n.node_id == id("node-a")).expect("a");
    assert_eq!(va.state, NodeState::Up);
    assert!(va.last_heartbeat_ms_ago.is_some_and(|ms| ms < 1_000), "{va:?}");
    let vb = view.nodes.iter().find(|n| n.node_id == id("node-b")).expect("b");
    assert_eq!((vb.state, vb.last_heartbeat_ms_ago), (NodeState::Down, None));

    // Heartbeats alone do not bump the version; a transition does.
    let v = state(&ring.url).await.version;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(state(&ring.url).await.version, v, "a's heartbeats change nothing");
    let (s, _) = call(
        "POST",
        &format!("{}/internal/v1/heartbeat", ring.url),
        Some(json!({"node_id": "node-b", "address": b.url})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let up = state(&ring.url).await;
    assert!(up.version > v);
    assert!(
        up.nodes.iter().all(|n| n.state == NodeState::Up),
        "{:?}",
        up.nodes
    );
    assert_eq!(up.ring.as_ref(), Some(&ring_before));
    beat_a.cancel();
    ring.shutdown().await;
}

// Goal: a heartbeat from a new address updates the ring member's address with a new
// epoch (core's `with_member_updated`), and nothing else moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_with_a_new_address_updates_the_ring_member() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = start(config(dir.path())).await;
    let a = FakeNode::start("node-a", &ring.url).await;
    join_and_wait(&ring.url, &a, 1).await;
    let before = ring_of(&ring.url).await;
    let (s, _) = call(
        "POST",
        &format!("{}/internal/v1/heartbeat", ring.url),
        Some(json!({"node_id": "node-a", "address": "http://127.0.0.1:1"})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let after = ring_of(&ring.url).await;
    assert_eq!(after.epoch().0, 2);
    assert_eq!(after.owners(), before.owners());
    assert_eq!(
        after.members()[&id("node-a")].address.as_deref(),
        Some("http://127.0.0.1:1")
    );
    let st = state(&ring.url).await;
    assert_eq!(st.nodes[0].address, "http://127.0.0.1:1");
    ring.shutdown().await;
}

// Goal: bucket properties are validated by core (422), default when unset, and `n` can
// no longer change once the bucket is marked written (409); `written` is idempotent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bucket_patches_are_validated_and_n_freezes_once_written() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = start(config(dir.path())).await;
    let url = format!("{}/internal/v1/buckets/users", ring.url);
    let (s, v) = call("GET", &url, None).await;
    assert_eq!(s, StatusCode::OK);
    let rec: BucketRecord = serde_json::from_value(v).expect("record");
    assert_eq!(
        (rec.props.n, rec.props.r, rec.props.w, rec.has_data),
        (3, 2, 2, false)
    );

    let (s, v) = call("PUT", &url, Some(json!({"r": 4}))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("invalid_bucket_properties")
        )
    );
    let (s, v) = call("PUT", &url, Some(json!({"conflict": "crdt"}))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("invalid_bucket_properties")
        )
    );
    let (s, v) = call(
        "PUT",
        &url,
        Some(json!({"n": 5, "conflict": "crdt", "crdt_type": "counter"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["props"]["n"].as_u64(), v["props"]["crdt_type"].as_str()),
        (Some(5), Some("counter"))
    );

    let written = format!("{url}/written");
    let (s, _) = call("POST", &written, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let v1 = state(&ring.url).await.version;
    let (s, _) = call("POST", &written, None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert_eq!(state(&ring.url).await.version, v1, "idempotent: no new version");

    let (s, v) = call("PUT", &url, Some(json!({"n": 3}))).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("bucket_n_immutable"))
    );
    let (s, v) = call("PUT", &url, Some(json!({"n": 5, "r": 3}))).await;
    assert_eq!(s, StatusCode::OK, "the same n with other changes is fine: {v}");
    let (_, v) = call("GET", &url, None).await;
    assert_eq!(
        (
            v["props"]["n"].as_u64(),
            v["props"]["r"].as_u64(),
            v["has_data"].as_bool()
        ),
        (Some(5), Some(3), Some(true))
    );

    // A bucket never configured can be marked written too.
    let (s, _) = call(
        "POST",
        &format!("{}/internal/v1/buckets/fresh/written", ring.url),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (_, v) = call("GET", &format!("{}/internal/v1/buckets/fresh", ring.url), None).await;
    assert_eq!(v["has_data"], true);
    ring.shutdown().await;
}

// Goal: tokens are stored hashed (201), a duplicate id is a 400 `invalid_request`, and
// delete answers 204 then 404 `token_not_found`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_created_refused_when_duplicate_and_deleted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = start(config(dir.path())).await;
    let url = format!("{}/internal/v1/tokens", ring.url);
    let tok = json!({
        "id": "app-1",
        "sha256": "0123456789abcdef".repeat(4),
        "buckets": ["photos", "users"],
        "permissions": ["read"],
        "created_ms": 1u64,
    });
    let (s, v) = call("POST", &url, Some(tok.clone())).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["id"], "app-1");
    let st = state(&ring.url).await;
    assert_eq!(st.tokens.len(), 1);
    assert_eq!(st.tokens[0].sha256, "0123456789abcdef".repeat(4));

    let (s, v) = call("POST", &url, Some(tok)).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    assert_eq!(
        state(&ring.url).await.version,
        st.version,
        "the duplicate changed nothing"
    );

    let (s, _) = call("DELETE", &format!("{url}/app-1"), None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let (s, v) = call("DELETE", &format!("{url}/app-1"), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("token_not_found"))
    );
    assert!(state(&ring.url).await.tokens.is_empty());
    ring.shutdown().await;
}

// Goal (ARCHITECTURE §4 invariant 4): every bad request gets a 4xx with the right code
// and a JSON body, and changes nothing: the state document is identical afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invariant_4_bad_requests_get_a_4xx_and_change_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.max_body_bytes = 8 << 10;
    let ring = start(cfg).await;
    let a = FakeNode::start("node-a", &ring.url).await;
    join_and_wait(&ring.url, &a, 1).await;
    let r = &ring.url;
    let (s, _) = call(
        "POST",
        &format!("{r}/internal/v1/tokens"),
        Some(json!({
            "id": "t", "sha256": "f".repeat(64), "buckets": "*", "permissions": ["admin"], "created_ms": 0
        })),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let before = state(r).await;

    let good_token = |patch: Value| {
        let mut t = json!({"id": "t2", "sha256": "e".repeat(64), "buckets": "*", "permissions": ["read"], "created_ms": 0});
        for (k, v) in patch.as_object().expect("object") {
            t[k] = v.clone();
        }
        t
    };
    let cases: Vec<(&str, String, Option<Value>, u16, &str)> = vec![
        // membership
        (
            "POST",
            format!("{r}/internal/v1/nodes"),
            Some(json!({"node_id": "Bad Id", "address": "http://x:1"})),
            400,
            "invalid_json",
        ),
        (
            "POST",
            format!("{r}/internal/v1/nodes"),
            Some(json!({"node_id": "n1", "address": "ftp://x:1"})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("{r}/internal/v1/nodes"),
            Some(json!({"node_id": "n1", "address": "http://x:1/p"})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("{r}/internal/v1/nodes"),
            Some(json!({"node_id": "n1", "address": "http://x:1", "zone": ""})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("{r}/internal/v1/nodes"),
            Some(json!({"node_id": "n1", "address": "http://x:1", "extra": 1})),
            400,
            "invalid_json",
        ),
        (
            "POST",
            format!("{r}/internal/v1/nodes"),
            Some(json!({"node_id": "node-a", "address": "http://x:1"})),
            409,
            "membership_conflict",
        ),
        (
            "POST",
            format!("{r}/internal/v1/nodes"),
            Some(json!({"node_id": "n1", "address": a.url})),
            409,
            "membership_conflict",
        ),
        (
            "DELETE",
            format!("{r}/internal/v1/nodes/node-zz"),
            None,
            404,
            "node_not_found",
        ),
        (
            "DELETE",
            format!("{r}/internal/v1/nodes/NODE"),
            None,
            400,
            "invalid_node_id",
        ),
        (
            "DELETE",
            format!("{r}/internal/v1/nodes/node-a"),
            None,
            409,
            "membership_conflict",
        ),
        (
            "POST",
            format!("{r}/internal/v1/nodes/node-zz/replace"),
            Some(json!({"new_node": {"node_id": "n1", "address": "http://x:1"}})),
            404,
            "node_not_found",
        ),
        (
            "POST",
            format!("{r}/internal/v1/nodes/node-a/replace"),
            Some(json!({"new_node": {"node_id": "node-a", "address": "http://x:1"}})),
            409,
            "membership_conflict",
        ),
        (
            "POST",
            format!("{r}/internal/v1/nodes/node-a/replace"),
            Some(json!({"new_node": {"node_id": "n1", "address": "nope"}})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("{r}/internal/v1/change/retry"),
            None,
            409,
            "membership_conflict",
        ),
        (
            "POST",
            format!("{r}/internal/v1/change/abort"),
            None,
            409,
            "membership_conflict",
        ),
        // heartbeats
        (
            "POST",
            format!("{r}/internal/v1/heartbeat"),
            Some(json!({"node_id": "node-zz", "address": "http://x:1"})),
            404,
            "node_not_found",
        ),
        (
            "POST",
            format!("{r}/internal/v1/heartbeat"),
            Some(json!({"node_id": "node-a", "address": "x"})),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("{r}/internal/v1/heartbeat"),
            Some(json!({"node_id": "node-a"})),
            400,
            "invalid_json",
        ),
        // state and ring queries
        (
            "GET",
            format!("{r}/internal/v1/state?wait_ms=30001"),
            None,
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            format!("{r}/internal/v1/state?after=-1"),
            None,
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            format!("{r}/internal/v1/state?bogus=1"),
            None,
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            format!("{r}/internal/v1/ring?bucket=b"),
            None,
            400,
            "invalid_parameter",
        ),
        (
            "GET",
            format!("{r}/internal/v1/ring?bucket=B&key=k"),
            None,
            400,
            "invalid_bucket",
        ),
        // buckets
        (
            "GET",
            format!("{r}/internal/v1/buckets/Bad"),
            None,
            400,
            "invalid_bucket",
        ),
        (
            "PUT",
            format!("{r}/internal/v1/buckets/ok"),
            Some(json!({"n": 0})),
            422,
            "invalid_bucket_properties",
        ),
        (
            "PUT",
            format!("{r}/internal/v1/buckets/ok"),
            Some(json!({"n": 8})),
            422,
            "invalid_bucket_properties",
        ),
        (
            "PUT",
            format!("{r}/internal/v1/buckets/ok"),
            Some(json!({"nn": 3})),
            400,
            "invalid_json",
        ),
        (
            "PUT",
            format!("{r}/internal/v1/buckets/ok"),
            Some(json!({"n": "three"})),
            400,
            "invalid_json",
        ),
        (
            "PUT",
            format!("{r}/internal/v1/buckets/a%2Fb"),
            Some(json!({"n": 3})),
            400,
            "invalid_bucket",
        ),
        (
            "POST",
            format!("{r}/internal/v1/buckets/UPPER/written"),
            None,
            400,
            "invalid_bucket",
        ),
        // tokens
        (
            "POST",
            format!("{r}/internal/v1/tokens"),
            Some(good_token(json!({"id": "t"}))),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("{r}/internal/v1/tokens"),
            Some(good_token(json!({"sha256": "f".repeat(64)}))),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("{r}/internal/v1/tokens"),
            Some(good_token(json!({"sha256": "xyz"}))),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("{r}/internal/v1/tokens"),
            Some(good_token(json!({"permissions": []}))),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("{r}/internal/v1/tokens"),
            Some(good_token(json!({"buckets": []}))),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("{r}/internal/v1/tokens"),
            Some(good_token(json!({"id": "has space"}))),
            400,
            "invalid_request",
        ),
        (
            "POST",
            format!("{r}/internal/v1/tokens"),
            Some(good_token(json!({"permissions": ["root"]}))),
            400,
            "invalid_json",
        ),
        (
            "DELETE",
            format!("{r}/internal/v1/tokens/nope"),
            None,
            404,
            "token_not_found",
        ),
        // plumbing
        (
            "GET",
            format!("{r}/internal/v1/nowhere"),
            None,
            404,
            "route_not_found",
        ),
        (
            "PATCH",
            format!("{r}/internal/v1/nodes"),
            None,
            405,
            "method_not_allowed",
        ),
        (
            "POST",
            format!("{r}/internal/v1/tokens"),
            Some(json!({"id": "x".repeat(9000)})),
            413,
            "body_too_large",
        ),
    ];
    for (method, url, body, status, code) in cases {
        let (s, v) = call(method, &url, body.clone()).await;
        assert_eq!(
            (s.as_u16(), v["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {url} {body:?}: {v}"
        );
        assert!(
            v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    }
    // Without Content-Type: application/json.
    let resp = client()
        .post(format!("{r}/internal/v1/nodes"))
        .body(r#"{"node_id":"n1","address":"http://x:1"}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 415);

    assert_eq!(state(r).await, before, "no bad request changed anything");
    assert!(cluster_view(r).await.handoffs.is_empty());
    ring.shutdown().await;
}

// Goal: shutdown does not wait for long-polls: a poll in flight is answered
// `503 shutting_down` at once, and `run` returns cleanly well before the poll's wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_long_polls_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = start(config(dir.path())).await;
    let url = format!("{}/internal/v1/state?after=0&wait_ms=30000", ring.url);
    let poll = tokio::spawn(async move { call("GET", &url, None).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!poll.is_finished());
    let t = Instant::now();
    ring.shutdown().await;
    let (s, v) = tokio::time::timeout(WAIT, poll)
        .await
        .expect("answered")
        .expect("join");
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("shutting_down"))
    );
    assert!(t.elapsed() < Duration::from_secs(10), "did not wait for the poll");
}

// Goal (ARCHITECTURE §4 invariant 7): membership, tokens and bucket properties need the
// control key. A member (every storage node holds the member key) is `403 forbidden`
// there; an unsigned caller is `401 unauthorized` everywhere, reads and heartbeats
// included; nothing refused changes the state. A member may still read the state and
// beat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_routes_need_the_control_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = start(config(dir.path())).await;
    let r = &ring.url;
    let before = state(r).await;
    let token = json!({
        "id": "mine", "sha256": "0123456789abcdef".repeat(4), "buckets": [],
        "permissions": ["admin"], "created_ms": 1u64,
    });
    let node = json!({"node_id": "node-x", "address": "http://127.0.0.1:1"});
    let control_calls: Vec<(reqwest::Method, String, Option<Value>)> = vec![
        (
            reqwest::Method::POST,
            format!("{r}/internal/v1/tokens"),
            Some(token),
        ),
        (
            reqwest::Method::DELETE,
            format!("{r}/internal/v1/tokens/abc"),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("{r}/internal/v1/nodes"),
            Some(node.clone()),
        ),
        (
            reqwest::Method::DELETE,
            format!("{r}/internal/v1/nodes/node-x"),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("{r}/internal/v1/nodes/node-x/replace"),
            Some(node),
        ),
        (
            reqwest::Method::PUT,
            format!("{r}/internal/v1/buckets/b"),
            Some(json!({"r": 1})),
        ),
        (
            reqwest::Method::POST,
            format!("{r}/internal/v1/change/retry"),
            None,
        ),
        (
            reqwest::Method::POST,
            format!("{r}/internal/v1/change/abort"),
            None,
        ),
    ];
    let member = dynamo_testkit::http();
    let outsider = dynamo_testkit::unsigned_http();
    for (method, url, body) in &control_calls {
        let mut req = member.request(method.clone(), url);
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.expect("send");
        assert_eq!(resp.status(), 403, "{method} {url} as a member");
        let v: Value = resp.json().await.expect("json");
        assert_eq!(v["error"]["code"], "forbidden", "{v}");

        let mut req = outsider.request(method.clone(), url);
        if let Some(b) = body {
            req = req.json(b);
        }
        assert_eq!(
            req.send().await.expect("send").status(),
            401,
            "{method} {url} unsigned"
        );
    }
    for url in [
        format!("{r}/internal/v1/state"),
        format!("{r}/internal/v1/cluster"),
        format!("{r}/internal/v1/ring"),
    ] {
        assert_eq!(
            outsider.get(&url).send().await.expect("send").status(),
            401,
            "{url}"
        );
        // Admitted (the ring route answers 503 ring_unavailable before any node joined).
        let status = member.get(&url).send().await.expect("send").status();
        assert!(status == 200 || status == 503, "{url}: {status}");
    }
    let beat = json!({"node_id": "node-x", "address": "http://127.0.0.1:1"});
    let hb = format!("{r}/internal/v1/heartbeat");
    assert_eq!(
        outsider
            .post(&hb)
            .json(&beat)
            .send()
            .await
            .expect("send")
            .status(),
        401
    );
    // Not a member yet, but admitted as a member's request: the ring service answers it.
    assert_eq!(
        member.post(&hb).json(&beat).send().await.expect("send").status(),
        404
    );
    let after = state(r).await;
    assert_eq!(after.version, before.version, "nothing refused changed the state");
    assert!(after.tokens.is_empty());
    ring.shutdown().await;
}
