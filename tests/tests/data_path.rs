//! End-to-end tests of the data path (issue #5): a real cluster of processes, the public
//! REST API over loopback.

use dynamo_testkit::eventually;
use dynamo_tests::{Cluster, Options, ROOT_TOKEN, WAIT, expect_error, sibling_values};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const CTX: &str = "x-dynamo-context";

async fn put(c: &Cluster, path: &str, body: &str, ctx: Option<&str>) -> reqwest::Response {
    let mut r = c
        .req(Method::PUT, path)
        .header("content-type", "text/plain")
        .body(body.to_owned());
    if let Some(ctx) = ctx {
        r = r.header(CTX, ctx);
    }
    r.send().await.expect("put")
}

async fn get_json(c: &Cluster, path: &str) -> (StatusCode, Value, Option<String>) {
    let r = c
        .req(Method::GET, path)
        .header("accept", "application/json")
        .send()
        .await
        .expect("get");
    let status = r.status();
    let ctx = r
        .headers()
        .get(CTX)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, r.json().await.unwrap_or(Value::Null), ctx)
}

// Goal: the basic contract: put, get (raw and JSON), delete, 404 after delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn put_get_delete_round_trip() {
    let c = Cluster::start(Options::default()).await;
    let r = put(&c, "/v1/kv/users/alice", "hello", None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(r.headers().get(CTX).is_some(), "a PUT answers with its context");

    let r = c
        .req(Method::GET, "/v1/kv/users/alice")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.headers()["content-type"], "text/plain");
    assert!(r.headers().get(CTX).is_some());
    assert_eq!(r.text().await.expect("body"), "hello");

    let (status, env, _) = get_json(&c, "/v1/kv/users/alice").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sibling_values(&env), ["hello"]);

    // Keys are UTF-8, percent-encoded, and may contain slashes.
    let r = put(&c, "/v1/kv/users/a%2Fb%20c%C3%A9", "odd", None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c
        .req(Method::GET, "/v1/kv/users/a%2Fb%20c%C3%A9")
        .send()
        .await
        .expect("get");
    assert_eq!(r.text().await.expect("body"), "odd");

    let r = c
        .req(Method::DELETE, "/v1/kv/users/alice")
        .send()
        .await
        .expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, body, ctx) = get_json(&c, "/v1/kv/users/alice").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "not_found");
    assert!(ctx.is_some(), "a 404 over a tombstone carries its context");

    let r = put(&c, "/v1/kv/users/bob", "b", None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = c
        .req(Method::PUT, "/v1/kv/users/bob?returnbody=true")
        .body("b2")
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::OK);
    let env: Value = r.json().await.expect("envelope");
    assert_eq!(
        sibling_values(&env),
        ["b", "b2"],
        "a blind write keeps the earlier value as a sibling"
    );
}

// Goal: siblings and contexts behave as API.md says: concurrent blind writes → 300 with
// both; a write with the read context → one value; a stale context never removes a newer
// sibling.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn siblings_and_contexts() {
    let c = Cluster::start(Options::default()).await;
    put(&c, "/v1/kv/s/k", "one", None).await;
    put(&c, "/v1/kv/s/k", "two", None).await;
    let r = c.req(Method::GET, "/v1/kv/s/k").send().await.expect("get");
    assert_eq!(r.status(), StatusCode::MULTIPLE_CHOICES);
    let ctx = r.headers()[CTX].to_str().expect("ctx").to_owned();
    let env: Value = r.json().await.expect("envelope");
    assert_eq!(sibling_values(&env), ["one", "two"]);
    assert_eq!(env["context"], ctx);
    assert!(
        env["siblings"][0]["last_modified"]
            .as_str()
            .expect("time")
            .ends_with('Z')
    );

    // A stale context (from before "three") never removes "three".
    put(&c, "/v1/kv/s/k", "three", None).await;
    let r = put(&c, "/v1/kv/s/k", "resolved", Some(&ctx)).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let (status, env, ctx2) = get_json(&c, "/v1/kv/s/k").await;
    assert_eq!(status, StatusCode::MULTIPLE_CHOICES);
    assert_eq!(sibling_values(&env), ["resolved", "three"]);

    // Writing with the fresh context resolves to one value.
    put(&c, "/v1/kv/s/k", "final", ctx2.as_deref()).await;
    let (status, env, _) = get_json(&c, "/v1/kv/s/k").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sibling_values(&env), ["final"]);

    // LWW buckets never answer siblings.
    let r = c
        .req(Method::PUT, "/v1/buckets/last")
        .json(&json!({"conflict": "lww"}))
        .send()
        .await
        .expect("props");
    assert_eq!(r.status(), StatusCode::OK);
    put(&c, "/v1/kv/last/k", "a", None).await;
    put(&c, "/v1/kv/last/k", "b", None).await;
    let (status, env, _) = get_json(&c, "/v1/kv/last/k").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sibling_values(&env), ["b"]);
}

// Goal (issue 12): a context is good only for the key it was issued for, and only as
// issued. One moved from another key, altered, truncated, or made up (the unsealed
// format naming every writer's actor with the largest counter, which before would have
// replaced siblings the client never saw) is 400 invalid_context, and every replica
// still holds both siblings afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_and_foreign_contexts_are_refused_and_change_nothing() {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let c = Cluster::start(Options::default()).await;
    put(&c, "/v1/kv/f/k", "one", None).await;
    put(&c, "/v1/kv/f/k", "two", None).await;
    let other = put(&c, "/v1/kv/f/other", "x", None).await;
    let foreign = other.headers()[CTX].to_str().expect("ctx").to_owned();
    let (status, env, ctx) = get_json(&c, "/v1/kv/f/k").await;
    assert_eq!(status, StatusCode::MULTIPLE_CHOICES);
    assert_eq!(sibling_values(&env), ["one", "two"]);
    let real = ctx.expect("a context");

    let mut altered = b64.decode(&real).expect("base64url");
    let last = altered.len() - 1;
    altered[last] ^= 0x55;
    let altered = b64.encode(&altered);
    let truncated = real[..real.len() - 2].to_owned();
    // The unsealed format: 0x01, then postcard's (vv, cloud) with every actor that wrote
    // a sibling at u64::MAX.
    let stored = c.node_get(0, "f", "k").await.expect("stored on node 0");
    let mut actors: Vec<u64> = stored["siblings"]
        .as_array()
        .expect("siblings")
        .iter()
        .map(|s| s["dot"]["actor"].as_u64().expect("actor"))
        .collect();
    actors.sort_unstable();
    actors.dedup();
    let varint = |mut v: u64, out: &mut Vec<u8>| loop {
        let byte = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            break;
        }
        out.push(byte | 0x80);
    };
    let mut unsealed = vec![1u8, actors.len() as u8];
    for a in &actors {
        varint(*a, &mut unsealed);
        varint(u64::MAX, &mut unsealed);
    }
    unsealed.push(0);
    let made_up = b64.encode(&unsealed);

    for (what, ctx) in [
        ("another key's", foreign.as_str()),
        ("altered", altered.as_str()),
        ("truncated", truncated.as_str()),
        ("made-up", made_up.as_str()),
    ] {
        let r = put(&c, "/v1/kv/f/k", "overwrite", Some(ctx)).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what} context");
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "invalid_context", "{what} context: {body}");
        let r = c
            .req(Method::DELETE, "/v1/kv/f/k")
            .header(CTX, ctx)
            .send()
            .await
            .expect("delete");
        assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{what} context on a delete");
    }
    for node in 0..c.nodes.len() {
        let Some(obj) = c.node_get(node, "f", "k").await else {
            continue;
        };
        let live = obj["siblings"]
            .as_array()
            .expect("siblings")
            .iter()
            .filter(|s| !s["value"].as_str().unwrap_or_default().is_empty())
            .count();
        assert_eq!(live, 2, "node {node} still holds both siblings: {obj}");
    }
    // The real context still resolves them.
    assert_eq!(
        put(&c, "/v1/kv/f/k", "resolved", Some(&real)).await.status(),
        StatusCode::NO_CONTENT
    );
    let (_, env, _) = get_json(&c, "/v1/kv/f/k").await;
    assert_eq!(sibling_values(&env), ["resolved"]);
}

// Goal: every client-reachable error code of docs/api.md answers with its status and JSON
// body, and bad input changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_error_code_is_reachable_and_changes_nothing() {
    let c = Cluster::start(Options::default()).await;
    put(&c, "/v1/kv/b/k", "original", None).await;
    let h = &c.http;
    let u = c.url();

    expect_error(
        h.get(format!("{u}/v1/kv/b/k")).send().await.expect("s"),
        401,
        "unauthorized",
    )
    .await;
    expect_error(
        h.get(format!("{u}/v1/kv/b/k"))
            .bearer_auth("nope")
            .send()
            .await
            .expect("s"),
        401,
        "unauthorized",
    )
    .await;
    expect_error(
        c.req(Method::GET, "/v1/kv/Bad!/k").send().await.expect("s"),
        400,
        "invalid_bucket",
    )
    .await;
    let long = "k".repeat(1025);
    expect_error(
        c.req(Method::PUT, &format!("/v1/kv/b/{long}"))
            .body("x")
            .send()
            .await
            .expect("s"),
        400,
        "invalid_key",
    )
    .await;
    expect_error(
        c.req(Method::PUT, "/v1/kv/b/k")
            .header(CTX, "!!!")
            .body("bad")
            .send()
            .await
            .expect("s"),
        400,
        "invalid_context",
    )
    .await;
    expect_error(
        c.req(Method::GET, "/v1/kv/b/k?r=9").send().await.expect("s"),
        400,
        "invalid_quorum",
    )
    .await;
    expect_error(
        c.req(Method::PUT, "/v1/kv/b/k?w=0")
            .body("bad")
            .send()
            .await
            .expect("s"),
        400,
        "invalid_quorum",
    )
    .await;
    expect_error(
        c.req(Method::GET, "/v1/kv/b/k?timeout_ms=0")
            .send()
            .await
            .expect("s"),
        400,
        "invalid_parameter",
    )
    .await;
    expect_error(
        c.req(Method::GET, "/v1/kv/b/k?bogus=1").send().await.expect("s"),
        400,
        "invalid_parameter",
    )
    .await;
    expect_error(
        c.req(Method::GET, "/v1/kv/b/missing").send().await.expect("s"),
        404,
        "not_found",
    )
    .await;
    expect_error(
        c.req(Method::GET, "/v1/nothing").send().await.expect("s"),
        404,
        "route_not_found",
    )
    .await;
    expect_error(
        c.req(Method::PATCH, "/v1/kv/b/k").send().await.expect("s"),
        405,
        "method_not_allowed",
    )
    .await;
    let big = vec![b'x'; 1024 * 1024 + 1];
    expect_error(
        c.req(Method::PUT, "/v1/kv/b/k")
            .body(big)
            .send()
            .await
            .expect("s"),
        413,
        "value_too_large",
    )
    .await;
    let huge = vec![b'x'; 3 * 1024 * 1024];
    // On a connection of its own: the server answers before reading the whole body and
    // closes the connection, which a pooled client could otherwise pick for the next
    // request (a broken pipe that is not the server's answer to that request).
    let once = dynamo_testkit::http_builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    expect_error(
        once.put(format!("{}/v1/kv/b/k", c.url()))
            .bearer_auth(ROOT_TOKEN)
            .body(huge)
            .send()
            .await
            .expect("s"),
        413,
        "body_too_large",
    )
    .await;
    let uri = format!("/v1/kv/b/{}", "%41".repeat(3000));
    expect_error(
        c.req(Method::GET, &uri).send().await.expect("s"),
        414,
        "uri_too_long",
    )
    .await;
    expect_error(
        c.req(Method::PUT, "/v1/buckets/b")
            .header("content-type", "text/plain")
            .body("{}")
            .send()
            .await
            .expect("s"),
        415,
        "unsupported_media_type",
    )
    .await;
    expect_error(
        c.req(Method::PUT, "/v1/buckets/b")
            .header("content-type", "application/json")
            .body("{nope")
            .send()
            .await
            .expect("s"),
        400,
        "invalid_json",
    )
    .await;
    // An array of the fields' values is not an object: serde alone would take it.
    expect_error(
        c.req(Method::PUT, "/v1/buckets/b")
            .header("content-type", "application/json")
            .body("[null, null]")
            .send()
            .await
            .expect("s"),
        400,
        "invalid_json",
    )
    .await;
    expect_error(
        c.req(Method::PUT, "/v1/buckets/b")
            .json(&json!({"r": 5}))
            .send()
            .await
            .expect("s"),
        422,
        "invalid_bucket_properties",
    )
    .await;
    expect_error(
        c.req(Method::PUT, "/v1/buckets/b")
            .json(&json!({"n": 2}))
            .send()
            .await
            .expect("s"),
        409,
        "bucket_n_immutable",
    )
    .await;
    c.req(Method::PUT, "/v1/buckets/one")
        .json(&json!({"max_siblings": 1}))
        .send()
        .await
        .expect("s");
    put(&c, "/v1/kv/one/k", "a", None).await;
    expect_error(put(&c, "/v1/kv/one/k", "b", None).await, 409, "too_many_siblings").await;
    c.req(Method::PUT, "/v1/buckets/counts")
        .json(&json!({"conflict": "crdt", "crdt_type": "counter"}))
        .send()
        .await
        .expect("s");
    expect_error(
        put(&c, "/v1/kv/counts/k", "1", None).await,
        409,
        "wrong_bucket_type",
    )
    .await;
    expect_error(
        c.req(Method::POST, "/v1/cluster/nodes")
            .json(&json!({"node_id": "node-0", "address": c.nodes[0].url()}))
            .send()
            .await
            .expect("s"),
        409,
        "membership_conflict",
    )
    .await;
    expect_error(
        c.req(Method::DELETE, "/v1/cluster/nodes/node-99")
            .send()
            .await
            .expect("s"),
        404,
        "node_not_found",
    )
    .await;
    expect_error(
        c.req(Method::DELETE, "/v1/admin/tokens/abc")
            .send()
            .await
            .expect("s"),
        404,
        "token_not_found",
    )
    .await;

    // Scoped tokens: 403 outside their bucket or permission.
    let t: Value = c
        .req(Method::POST, "/v1/admin/tokens")
        .json(&json!({"buckets": ["b"], "permissions": ["read"]}))
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("json");
    let token = t["token"].as_str().expect("token");
    let r = h
        .get(format!("{u}/v1/kv/b/k"))
        .bearer_auth(token)
        .send()
        .await
        .expect("s");
    assert_eq!(r.status(), StatusCode::OK);
    expect_error(
        h.put(format!("{u}/v1/kv/b/k"))
            .bearer_auth(token)
            .body("x")
            .send()
            .await
            .expect("s"),
        403,
        "forbidden",
    )
    .await;
    expect_error(
        h.get(format!("{u}/v1/kv/other/k"))
            .bearer_auth(token)
            .send()
            .await
            .expect("s"),
        403,
        "forbidden",
    )
    .await;
    expect_error(
        h.put(format!("{u}/v1/buckets/b"))
            .bearer_auth(token)
            .json(&json!({"r": 1}))
            .send()
            .await
            .expect("s"),
        403,
        "forbidden",
    )
    .await;

    // Nothing above changed the stored value: not through a quorum read, and not on any
    // replica (every node holds the key: three nodes, N = 3).
    let r = c.req(Method::GET, "/v1/kv/b/k").send().await.expect("get");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.text().await.expect("body"), "original");
    c.wait_every_replica_holds("b", "k", b"original").await;
    let props: Value = c
        .req(Method::GET, "/v1/buckets/b")
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("json");
    assert_eq!(
        props,
        json!({"n": 3, "r": 2, "w": 2, "conflict": "siblings", "max_siblings": 32})
    );
    // The OpenAPI document lists the object routes, and needs no token.
    let r = c
        .http
        .request(Method::GET, format!("{}/v1/openapi.json", c.url()))
        .send()
        .await
        .expect("s");
    assert_eq!(r.status(), StatusCode::OK);
    let doc: Value = r.json().await.expect("json");
    assert!(doc["paths"]["/v1/kv/{bucket}/{key}"]["put"].is_object());
    assert!(doc["paths"]["/v1/feed/{bucket}"]["get"].is_object());
    let _ = ROOT_TOKEN;
}

async fn create_token(c: &Cluster, body: Value) -> Value {
    let r = c
        .req(Method::POST, "/v1/admin/tokens")
        .json(&body)
        .send()
        .await
        .expect("create");
    assert_eq!(r.status(), StatusCode::CREATED);
    r.json::<Value>().await.expect("json")
}

async fn read_status(c: &Cluster, token: &str) -> StatusCode {
    c.http
        .get(format!("{}/v1/kv/b/nothing", c.url()))
        .bearer_auth(token)
        .send()
        .await
        .expect("get")
        .status()
}

// Goal (issue 12): a token with a TTL works until it expires, then is 401; the cluster
// views (internal addresses) need cluster-wide admin while a key's placement needs read
// on its bucket; every admin action, allowed or refused, leaves an audit line naming the
// token id and never a secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_expire_cluster_views_need_admin_and_admin_actions_are_audited() {
    let c = Cluster::start(Options::default()).await;
    let (u, h) = (c.url(), &c.http);
    let brief = create_token(&c, json!({"buckets": "*", "permissions": ["read"], "ttl_s": 1})).await;
    let secret = brief["token"].as_str().expect("token").to_owned();
    assert!(
        brief["expires"].as_str().is_some_and(|e| e.ends_with('Z')),
        "{brief}"
    );
    // Refused with 401 once expired (and never before: a fresh token reads).
    let first = read_status(&c, &secret).await;
    assert!(
        first == StatusCode::NOT_FOUND || first == StatusCode::UNAUTHORIZED,
        "{first}"
    );
    eventually("the one-second token expires", || async {
        read_status(&c, &secret).await == StatusCode::UNAUTHORIZED
    })
    .await;
    let r = h
        .get(format!("{u}/v1/kv/b/nothing"))
        .bearer_auth(&secret)
        .send()
        .await
        .expect("get");
    expect_error(r, 401, "unauthorized").await;
    expect_error(
        c.req(Method::POST, "/v1/admin/tokens")
            .json(&json!({"buckets": "*", "permissions": ["read"], "ttl_s": 0}))
            .send()
            .await
            .expect("s"),
        400,
        "invalid_request",
    )
    .await;

    let reader = create_token(&c, json!({"buckets": ["b"], "permissions": ["read", "write"]})).await;
    let rt = reader["token"].as_str().expect("token").to_owned();
    assert!(reader.get("expires").is_none(), "no TTL, no expiry: {reader}");
    for path in ["/v1/cluster", "/v1/ring"] {
        let r = h
            .get(format!("{u}{path}"))
            .bearer_auth(&rt)
            .send()
            .await
            .expect("s");
        expect_error(r, 403, "forbidden").await;
        let r = c.req(Method::GET, path).send().await.expect("s");
        assert_eq!(r.status(), StatusCode::OK, "{path} with the root token");
    }
    let r = h
        .get(format!("{u}/v1/ring?bucket=b&key=k"))
        .bearer_auth(&rt)
        .send()
        .await
        .expect("s");
    assert_eq!(r.status(), StatusCode::OK, "placement of a key it may read");
    let r = h
        .get(format!("{u}/v1/ring?bucket=other&key=k"))
        .bearer_auth(&rt)
        .send()
        .await
        .expect("s");
    expect_error(r, 403, "forbidden").await;
    // A refused admin action is audited too.
    let r = h
        .put(format!("{u}/v1/buckets/b"))
        .bearer_auth(&rt)
        .json(&json!({"r": 1}))
        .send()
        .await
        .expect("s");
    expect_error(r, 403, "forbidden").await;
    let id = reader["id"].as_str().expect("id").to_owned();
    let r = c
        .req(Method::DELETE, &format!("/v1/admin/tokens/{id}"))
        .send()
        .await
        .expect("s");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);

    let brief_id = brief["id"].as_str().expect("id").to_owned();
    let expected = [
        format!("principal=\"root\" action=\"token.create\" object=\"{brief_id}\" result=\"ok\""),
        format!(
            "principal=\"{id}\" action=\"bucket.props\" object=\"b\" result=\"refused\" code=\"forbidden\""
        ),
        format!("principal=\"root\" action=\"token.delete\" object=\"{id}\" result=\"ok\""),
    ];
    let mut log = String::new();
    eventually("the audit lines are written", || {
        log = c.coordinator.log_text();
        std::future::ready(expected.iter().all(|l| log.contains(l.as_str())))
    })
    .await;
    assert!(
        log.lines()
            .filter(|l| l.contains("action="))
            .all(|l| l.contains(" audit: ")),
        "{log}"
    );
    assert!(
        !log.contains(&secret) && !log.contains(&rt),
        "a secret reached the log"
    );
}

async fn idem_put(c: &Cluster, path: &str, body: &str, key: &str) -> reqwest::Response {
    c.req(Method::PUT, path)
        .header("content-type", "text/plain")
        .header("idempotency-key", key)
        .body(body.to_owned())
        .send()
        .await
        .expect("put")
}

// Goal: the Idempotency-Key contract through the coordinator: a repeat of a PUT (and of
// a DELETE) answers as the first did, with the first's context, and stores nothing new
// (one value, not two siblings, although both are blind writes); the same key for
// another body is 422 idempotency_key_reused and changes nothing; the key is scoped to
// the key's path; a malformed key is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_keys_make_retries_safe() {
    let c = Cluster::start(Options::default()).await;
    let first = idem_put(&c, "/v1/kv/b/k", "v1", "order-17").await;
    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    let ctx = first.headers()[CTX].clone();
    let again = idem_put(&c, "/v1/kv/b/k", "v1", "order-17").await;
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
    assert_eq!(again.headers()[CTX], ctx, "answered as the first was");
    let (_, env, _) = get_json(&c, "/v1/kv/b/k").await;
    assert_eq!(
        sibling_values(&env),
        ["v1"],
        "a blind repeat would have made a sibling"
    );

    expect_error(
        idem_put(&c, "/v1/kv/b/k", "v2", "order-17").await,
        422,
        "idempotency_key_reused",
    )
    .await;
    let (_, env, _) = get_json(&c, "/v1/kv/b/k").await;
    assert_eq!(sibling_values(&env), ["v1"], "a refused reuse changes nothing");

    // The same key on another object is another claim.
    assert_eq!(
        idem_put(&c, "/v1/kv/b/other", "v1", "order-17").await.status(),
        StatusCode::NO_CONTENT
    );

    for bad in ["", "has space", &"x".repeat(129)] {
        expect_error(
            idem_put(&c, "/v1/kv/b/k", "v1", bad).await,
            400,
            "invalid_request",
        )
        .await;
    }

    let del = |key: &'static str| {
        c.req(Method::DELETE, "/v1/kv/b/k")
            .header(CTX, ctx.clone())
            .header("idempotency-key", key)
            .send()
    };
    let d1 = del("del-1").await.expect("delete");
    assert_eq!(d1.status(), StatusCode::NO_CONTENT);
    let d_ctx = d1.headers()[CTX].clone();
    // A write in between: the repeated delete must not delete it.
    let v3 = put(&c, "/v1/kv/b/k", "v3", d_ctx.to_str().ok()).await;
    assert_eq!(v3.status(), StatusCode::NO_CONTENT);
    let d2 = del("del-1").await.expect("delete");
    assert_eq!(d2.status(), StatusCode::NO_CONTENT);
    assert_eq!(d2.headers()[CTX], d_ctx);
    let (status, env, _) = get_json(&c, "/v1/kv/b/k").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sibling_values(&env), ["v3"]);
    let replays = c
        .metric(&c.url(), "dynamo_coordinator_idempotent_replays_total")
        .await;
    assert_eq!(replays, 2.0);
}

// Goal: with one of four storage nodes killed, writes (W=2) and reads (R=2) go on; a
// fallback holds hints for the dead node; after it restarts the hints are delivered and
// it has the writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sloppy_quorum_and_hinted_handoff_survive_a_killed_node() {
    let mut c = Cluster::start(Options {
        nodes: 4,
        ..Options::default()
    })
    .await;
    c.nodes[1].kill9();
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    for k in &keys {
        let r = put(&c, &format!("/v1/kv/hh/{k}"), k, None).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT, "write {k} with a node down");
    }
    for k in &keys {
        let r = c
            .req(Method::GET, &format!("/v1/kv/hh/{k}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK, "read {k} with a node down");
    }
    let mut hints = 0.0;
    for (i, n) in c.nodes.iter().enumerate() {
        if i != 1 {
            hints += c.metric(&n.url(), "dynamo_storage_hints_pending").await;
        }
    }
    assert!(hints > 0.0, "fallbacks hold hints for the dead node");
    assert!(
        c.metric(&c.url(), "dynamo_coordinator_sloppy_fallbacks_total{op=\"put\"}")
            .await
            > 0.0
    );

    c.nodes[1].start();
    dynamo_testkit::wait_ready(&c.nodes[1].url()).await;
    // Every key whose preference list holds node-1 must reach it through its hints.
    eventually("every hint delivered", || async {
        let mut pending = 0.0;
        for (i, n) in c.nodes.iter().enumerate() {
            if i != 1 {
                pending += c.metric(&n.url(), "dynamo_storage_hints_pending").await;
            }
        }
        pending == 0.0
    })
    .await;
    for k in &keys {
        let placement: Value = c
            .req(Method::GET, &format!("/v1/ring?bucket=hh&key={k}"))
            .send()
            .await
            .expect("ring")
            .json()
            .await
            .expect("json");
        let owners: Vec<&str> = placement["preference_list"]
            .as_array()
            .expect("list")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if owners.contains(&"node-1") {
            assert!(
                c.node_get(1, "hh", k).await.is_some(),
                "node-1 lacks {k} after hinted handoff"
            );
        }
    }
}

// Goal: a hung node (SIGSTOP) costs one replica timeout, not one per request or per
// probe: at most the one request in flight to it when it hung fails (an indeterminate
// 503: a coordinate that may have applied is never retried elsewhere), every later request
// succeeds, no client operation is sent to it again while it is down (background probes
// are counted apart), and it is used again once it resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_node_is_skipped_after_one_timeout() {
    let c = Cluster::start(Options::default()).await;
    c.nodes[2].pause();
    let mut failed = Vec::new();
    for i in 0..30 {
        let r = put(&c, &format!("/v1/kv/hang/k{i}"), "v", None).await;
        if r.status() != StatusCode::NO_CONTENT {
            assert_eq!(
                r.status(),
                StatusCode::SERVICE_UNAVAILABLE,
                "only an indeterminate 503"
            );
            failed.push(i);
            continue;
        }
        let r = c
            .req(Method::GET, &format!("/v1/kv/hang/k{i}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK);
    }
    assert!(
        failed.len() <= 1,
        "requests {failed:?} failed: more than the one in flight"
    );
    assert!(
        failed.iter().all(|&i| i == 0),
        "only the first request can meet the hang: {failed:?}"
    );
    let node2 = |result: &'static str| {
        let c = &c;
        async move {
            c.metric(
                &c.url(),
                &format!("dynamo_coordinator_replica_batches_total{{peer=\"node-2\",result=\"{result}\"}}"),
            )
            .await
        }
    };
    let timeouts = node2("timeout").await;
    assert!(timeouts >= 1.0, "the hung node was tried");
    // One batch per lane may have been out when it hung; nothing was sent after that.
    assert!(
        timeouts <= 2.0,
        "{timeouts} client batches timed out on the hung node"
    );
    c.nodes[2].resume();
    eventually("the resumed node probed up", || async {
        node2("probe_ok").await >= 1.0
    })
    .await;
    let before = node2("ok").await;
    for i in 0..10 {
        let r = put(&c, &format!("/v1/kv/hang/again{i}"), "v", None).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    assert!(node2("ok").await > before, "the node serves again once up");
}

// Goal: read repair: a replica that missed a write (down during it) gets it from a read.
// Killed, not paused: a paused node would still apply the write it had been sent, once
// resumed, and there would be nothing left to repair.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_repair_fixes_a_stale_replica() {
    // Every replica asked, whichever slot node-0 holds in the key's preference list: with
    // the default R-first fan-out, a read asks node-0 only when it is one of the first R
    // (anti-entropy repairs the others; tests/tests/anti_entropy.rs).
    let mut c = Cluster::start(Options {
        coordinator_args: vec!["--read-fanout".into(), "all".into()],
        ..Options::default()
    })
    .await;
    c.nodes[0].kill9();
    let r = put(&c, "/v1/kv/rr/key", "fresh", None).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    c.nodes[0].start();
    dynamo_testkit::wait_ready(&c.nodes[0].url()).await;
    assert!(
        c.node_get(0, "rr", "key").await.is_none(),
        "node-0 missed the write"
    );
    // Reads until node-0 is probed again and repaired (bounded).
    eventually("node-0 repaired by reads", || async {
        if c.node_get(0, "rr", "key").await.is_some() {
            return true;
        }
        let r = c.req(Method::GET, "/v1/kv/rr/key?r=2").send().await.expect("get");
        assert_eq!(r.status(), StatusCode::OK);
        false
    })
    .await;
    // The coordinator counts the repair once the node's answer is back, which may be just
    // after the node already serves the repaired value.
    eventually("the repair counted", || async {
        c.metric(&c.url(), "dynamo_coordinator_read_repairs_total").await >= 1.0
    })
    .await;
}

// Goal: with the ring service stopped, reads and writes go on with the cached ring.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cached_ring_serves_while_the_ring_service_is_down() {
    let mut c = Cluster::start(Options::default()).await;
    c.ring.kill9();
    for i in 0..10 {
        let r = put(&c, &format!("/v1/kv/cache/k{i}"), "v", None).await;
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
        let r = c
            .req(Method::GET, &format!("/v1/kv/cache/k{i}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), StatusCode::OK);
    }
    let view: Value = c
        .req(Method::GET, "/v1/cluster")
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("json");
    assert_eq!(view["nodes"].as_array().map(Vec::len), Some(3));
}

// Goal: with too few replicas reachable, writes and reads fail with quorum_unavailable
// (and succeed again once they are back).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_unavailable_when_too_few_nodes_answer() {
    let mut c = Cluster::start(Options::default()).await;
    put(&c, "/v1/kv/q/k", "v", None).await;
    c.nodes[0].kill9();
    c.nodes[1].kill9();
    expect_error(put(&c, "/v1/kv/q/k", "w", None).await, 503, "quorum_unavailable").await;
    expect_error(
        c.req(Method::GET, "/v1/kv/q/k").send().await.expect("get"),
        503,
        "quorum_unavailable",
    )
    .await;
    // R=1 still reads from the one replica left. The failed write may be there too (a
    // write that misses W is not undone, as in Dynamo), so one value or two siblings.
    let r = c.req(Method::GET, "/v1/kv/q/k?r=1").send().await.expect("get");
    assert!(
        matches!(r.status().as_u16(), 200 | 300),
        "R=1 still works with one replica: {}",
        r.status()
    );
}

// Goal: a coordinator that has never seen a ring (the ring service is not there) answers
// 503 ring_unavailable, not a hang or a 500; it is alive but not ready (`/readyz` 503,
// so a load balancer sends it nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ring_service_means_ring_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = dynamo_tests::free_port();
    let dead_ring = format!("http://127.0.0.1:{}", dynamo_tests::free_port());
    let coord = dynamo_tests::Proc::spawn(
        "dynamo-coordinator",
        "coordinator",
        port,
        vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--ring-url".into(),
            dead_ring,
            "--root-token".into(),
            ROOT_TOKEN.into(),
            "--context-key".into(),
            dynamo_tests::CONTEXT_KEY.into(),
        ],
        dir.path(),
    );
    let http = dynamo_testkit::unsigned_http();
    // Alive, but not ready: it has never heard from the ring service.
    dynamo_testkit::eventually("the coordinator is alive", || async {
        http.get(format!("{}/healthz", coord.url()))
            .send()
            .await
            .is_ok_and(|r| r.status() == StatusCode::OK)
    })
    .await;
    let r = http
        .get(format!("{}/readyz", coord.url()))
        .send()
        .await
        .expect("readyz");
    expect_error(r, 503, "ring_unavailable").await;
    let r = http
        .get(format!("{}/v1/kv/b/k", coord.url()))
        .bearer_auth(ROOT_TOKEN)
        .send()
        .await
        .expect("get");
    expect_error(r, 503, "ring_unavailable").await;
    let r = http
        .get(format!("{}/healthz", coord.url()))
        .send()
        .await
        .expect("healthz");
    assert_eq!(r.status(), StatusCode::OK);
    let _ = WAIT;
}

/// One public call of the hostile suite: method, path, body, and the permission it needs
/// (`read` or `write` on the bucket `h`, or cluster-wide `admin`).
struct Call {
    method: Method,
    path: &'static str,
    body: Option<Value>,
    needs: &'static str,
}

fn calls() -> Vec<Call> {
    let call = |method, path, body, needs| Call {
        method,
        path,
        body,
        needs,
    };
    vec![
        call(Method::GET, "/v1/kv/h/k1", None, "read"),
        call(Method::PUT, "/v1/kv/h/k1", Some(json!("overwritten")), "write"),
        call(Method::DELETE, "/v1/kv/h/k2", None, "write"),
        call(Method::GET, "/v1/buckets/h", None, "read"),
        call(Method::PUT, "/v1/buckets/h", Some(json!({"r": 1})), "admin"),
        call(Method::GET, "/v1/cluster", None, "admin"),
        call(Method::GET, "/v1/ring", None, "admin"),
        call(
            Method::POST,
            "/v1/cluster/nodes",
            Some(json!({"node_id": "intruder", "address": "http://127.0.0.1:1"})),
            "admin",
        ),
        call(Method::DELETE, "/v1/cluster/nodes/node-0", None, "admin"),
        call(
            Method::POST,
            "/v1/admin/tokens",
            Some(json!({"buckets": "*", "permissions": ["admin"]})),
            "admin",
        ),
        call(Method::GET, "/v1/admin/tokens", None, "admin"),
        call(Method::DELETE, "/v1/admin/tokens/0123456789abcdef", None, "admin"),
    ]
}

// Goal (issue 12, ARCHITECTURE §4 invariants 4 and 7): every public endpoint refuses a
// missing, unknown, expired or wrong-scope credential with 401 or 403 and its code;
// oversized, malformed and trickled requests are refused with theirs; a flood past a
// token's rate gets 429 with Retry-After; afterwards every key the suite touched holds its
// original value on every replica, and the bucket, the tokens and the membership are as
// they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_requests_are_refused_per_endpoint_and_change_nothing() {
    let c = Cluster::start(Options {
        coordinator_args: vec!["--body-read-timeout-ms".into(), "1000".into()],
        ..Options::default()
    })
    .await;
    assert_eq!(put(&c, "/v1/kv/h/k1", "one", None).await.status(), 204);
    assert_eq!(put(&c, "/v1/kv/h/k2", "two", None).await.status(), 204);
    let token = |v: Value| v["token"].as_str().expect("token").to_owned();
    let reader = token(create_token(&c, json!({"buckets": ["h"], "permissions": ["read"]})).await);
    let elsewhere = token(
        create_token(
            &c,
            json!({"buckets": ["other"], "permissions": ["read", "write"]}),
        )
        .await,
    );
    let expired = token(
        create_token(
            &c,
            json!({"buckets": "*", "permissions": ["read", "write"], "ttl_s": 1}),
        )
        .await,
    );
    let flood = token(
        create_token(
            &c,
            json!({"buckets": ["h"], "permissions": ["read"], "rate_limit_rps": 1}),
        )
        .await,
    );
    eventually("the short-lived token has expired", || async {
        read_status(&c, &expired).await == StatusCode::UNAUTHORIZED
    })
    .await;
    let tokens_before: Value = c
        .req(Method::GET, "/v1/admin/tokens")
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("json");

    let send = |call: &Call, bearer: Option<&str>| {
        let mut r = c
            .http
            .request(call.method.clone(), format!("{}{}", c.url(), call.path));
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        match &call.body {
            Some(Value::String(s)) => r.header("content-type", "text/plain").body(s.clone()),
            Some(v) => r.json(v),
            None => r,
        }
        .send()
    };
    for call in calls() {
        let what = format!("{} {}", call.method, call.path);
        for (who, bearer) in [
            ("no token", None),
            (
                "an unknown token",
                Some("dk_0123456789abcdef_not-a-token-of-this-cluster"),
            ),
            ("a malformed header", Some("")),
            ("an expired token", Some(expired.as_str())),
        ] {
            let r = send(&call, bearer).await.expect("send");
            assert_eq!(r.status(), 401, "{what} with {who}");
            let e: Value = r.json().await.expect("json");
            assert_eq!(e["error"]["code"], "unauthorized", "{what} with {who}: {e}");
        }
        // A token of another bucket, and a read-only token on anything but a read.
        let mut wrong_scope = vec![("another bucket's token", elsewhere.as_str())];
        if call.needs != "read" {
            wrong_scope.push(("a read-only token", reader.as_str()));
        }
        for (who, bearer) in wrong_scope {
            let r = send(&call, Some(bearer)).await.expect("send");
            assert_eq!(r.status(), 403, "{what} with {who}");
            let e: Value = r.json().await.expect("json");
            assert_eq!(e["error"]["code"], "forbidden", "{what} with {who}: {e}");
        }
    }

    // Oversized and malformed, with a valid token.
    let big = vec![b'x'; (1 << 20) + 1];
    let once = dynamo_testkit::http_builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let r = once
        .put(format!("{}/v1/kv/h/k1", c.url()))
        .bearer_auth(ROOT_TOKEN)
        .body(big)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 413, "a value over 1 MiB");
    expect_error(
        c.req(Method::PUT, "/v1/buckets/h")
            .header("content-type", "application/json")
            .body("{\"r\": ")
            .send()
            .await
            .expect("s"),
        400,
        "invalid_json",
    )
    .await;
    // A body that trickles: the coordinator gives up after its body read timeout.
    let addr = c.url().trim_start_matches("http://").to_owned();
    let mut raw = tokio::net::TcpStream::connect(&addr).await.expect("connect");
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let head = format!(
        "PUT /v1/kv/h/k1 HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {ROOT_TOKEN}\r\n\
         content-type: text/plain\r\ncontent-length: 100\r\n\r\nslow"
    );
    raw.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, raw.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");

    // A flood past a token's rate.
    let mut limited = 0;
    for _ in 0..30 {
        let r = c
            .http
            .get(format!("{}/v1/kv/h/k1", c.url()))
            .bearer_auth(&flood)
            .send()
            .await
            .expect("send");
        if r.status() == 429 {
            assert!(r.headers().contains_key("retry-after"));
            let e: Value = r.json().await.expect("json");
            assert_eq!(e["error"]["code"], "rate_limited");
            limited += 1;
        }
    }
    assert!(
        limited > 0,
        "30 requests in a row at 1 per second were all admitted"
    );

    // Nothing changed: every touched key on every replica, the bucket, tokens, members.
    for (key, value) in [("k1", "one"), ("k2", "two")] {
        c.wait_every_replica_holds("h", key, value.as_bytes()).await;
    }
    let props: Value = c
        .req(Method::GET, "/v1/buckets/h")
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("json");
    assert_eq!(props["r"], 2, "{props}");
    let tokens_after: Value = c
        .req(Method::GET, "/v1/admin/tokens")
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("json");
    assert_eq!(tokens_after, tokens_before);
    let cluster: Value = c
        .req(Method::GET, "/v1/cluster")
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("json");
    let nodes: Vec<&str> = cluster["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["node_id"].as_str())
        .collect();
    assert_eq!(nodes, vec!["node-0", "node-1", "node-2"], "{cluster}");
}
