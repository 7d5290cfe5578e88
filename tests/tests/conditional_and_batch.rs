//! End-to-end tests of conditional writes and batches (issue 17): `ETag`, `If-Match`,
//! `If-None-Match: *` with and without `Idempotency-Key`, and `POST /v1/batch`, on a
//! real cluster of processes over loopback.

use dynamo_tests::{Cluster, Options, ROOT_TOKEN, expect_error, sibling_values};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const CTX: &str = "x-dynamo-context";

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// A PUT of `body` with extra `headers`.
async fn put(c: &Cluster, url: &str, path: &str, body: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = c
        .http
        .request(Method::PUT, format!("{url}{path}"))
        .bearer_auth(ROOT_TOKEN)
        .header("content-type", "text/plain")
        .body(body.to_owned());
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("put")
}

async fn delete(c: &Cluster, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let mut r = c.req(Method::DELETE, path);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.send().await.expect("delete")
}

/// A GET through `url` in the envelope form: the status, the body, the `ETag`.
async fn get(c: &Cluster, url: &str, path: &str) -> (StatusCode, Value, Option<String>) {
    let r = c
        .http
        .request(Method::GET, format!("{url}{path}"))
        .bearer_auth(ROOT_TOKEN)
        .header("accept", "application/json")
        .send()
        .await
        .expect("get");
    let etag = header(&r, "etag");
    (r.status(), r.json().await.unwrap_or(Value::Null), etag)
}

// Goal: an ETag names the version set read: the same on repeated reads and through a
// second coordinator, the one a PUT answered, the envelope's own `etag`, a new one after
// every write, and one on the 404 over a tombstone. Method: write, read through both
// coordinators, write again with the context, delete.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_etag_names_the_version_set() {
    let c = Cluster::start(Options::default()).await;
    let other = c.start_coordinator("coordinator-2").await;
    let (one, two) = (c.url(), other.url());
    let w = put(&c, &one, "/v1/kv/b/k", "v1", &[]).await;
    assert_eq!(w.status(), StatusCode::NO_CONTENT);
    let written = header(&w, "etag").expect("a PUT answers its ETag");
    assert!(
        written.starts_with('"') && written.ends_with('"'),
        "quoted: {written}"
    );
    let mut seen = vec![written.clone()];
    for url in [&one, &two, &one, &two] {
        let (status, env, etag) = get(&c, url, "/v1/kv/b/k").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            etag.as_deref(),
            Some(written.as_str()),
            "stable across reads and coordinators"
        );
        assert_eq!(
            env["etag"].as_str(),
            Some(written.as_str()),
            "the envelope carries it too"
        );
    }
    let raw = c.req(Method::GET, "/v1/kv/b/k").send().await.expect("raw get");
    assert_eq!(header(&raw, "etag").as_deref(), Some(written.as_str()));

    for v in ["v2", "v3", "v4"] {
        let (_, env, _) = get(&c, &one, "/v1/kv/b/k").await;
        let ctx = env["context"].as_str().expect("context").to_owned();
        let w = put(&c, &two, "/v1/kv/b/k", v, &[(CTX, ctx.as_str())]).await;
        assert_eq!(w.status(), StatusCode::NO_CONTENT);
        let etag = header(&w, "etag").expect("etag");
        assert!(!seen.contains(&etag), "every write changes the ETag");
        let (_, _, read) = get(&c, &one, "/v1/kv/b/k").await;
        assert_eq!(read.as_deref(), Some(etag.as_str()));
        seen.push(etag);
    }
    let d = delete(&c, "/v1/kv/b/k", &[]).await;
    assert_eq!(d.status(), StatusCode::NO_CONTENT);
    let tomb = header(&d, "etag").expect("a DELETE answers its ETag");
    let (status, _, etag) = get(&c, &two, "/v1/kv/b/k").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        etag.as_deref(),
        Some(tomb.as_str()),
        "a 404 over a tombstone carries its ETag"
    );
    assert!(!seen.contains(&tomb));
    let (status, _, etag) = get(&c, &one, "/v1/kv/b/never").await;
    assert_eq!((status, etag), (StatusCode::NOT_FOUND, None));
}

// Goal: If-Match applies a write only on the version set it names, and replaces exactly
// it (no sibling left); a stale ETag is 412 precondition_failed and changes nothing (read
// back); `If-Match: *` needs a live value; a list matches any of its tags.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn if_match_writes_only_over_the_version_it_names() {
    let c = Cluster::start(Options::default()).await;
    let u = c.url();
    let e1 = header(&put(&c, &u, "/v1/kv/b/k", "v1", &[]).await, "etag").expect("etag");
    let w = put(&c, &u, "/v1/kv/b/k", "v2", &[("if-match", e1.as_str())]).await;
    assert_eq!(w.status(), StatusCode::NO_CONTENT);
    let e2 = header(&w, "etag").expect("etag");
    let (_, env, etag) = get(&c, &u, "/v1/kv/b/k").await;
    assert_eq!(
        sibling_values(&env),
        ["v2"],
        "the matched version was replaced, not kept as a sibling"
    );
    assert_eq!(etag.as_deref(), Some(e2.as_str()));

    expect_error(
        put(&c, &u, "/v1/kv/b/k", "v3", &[("if-match", e1.as_str())]).await,
        412,
        "precondition_failed",
    )
    .await;
    expect_error(
        delete(&c, "/v1/kv/b/k", &[("if-match", e1.as_str())]).await,
        412,
        "precondition_failed",
    )
    .await;
    let (_, env, etag) = get(&c, &u, "/v1/kv/b/k").await;
    assert_eq!(
        sibling_values(&env),
        ["v2"],
        "a failed precondition changes nothing"
    );
    assert_eq!(etag.as_deref(), Some(e2.as_str()));

    let list = format!("\"nope\", W/{e2}, {e2}");
    let w = put(&c, &u, "/v1/kv/b/k", "v3", &[("if-match", list.as_str())]).await;
    assert_eq!(w.status(), StatusCode::NO_CONTENT, "one tag of the list matches");
    let e3 = header(&w, "etag").expect("etag");
    let w = put(&c, &u, "/v1/kv/b/k", "v4", &[("if-match", "*")]).await;
    assert_eq!(w.status(), StatusCode::NO_CONTENT, "a live value matches *");
    let e4 = header(&w, "etag").expect("etag");
    assert_ne!(e3, e4);
    let d = delete(&c, "/v1/kv/b/k", &[("if-match", e4.as_str())]).await;
    assert_eq!(d.status(), StatusCode::NO_CONTENT);
    expect_error(
        put(&c, &u, "/v1/kv/b/k", "v5", &[("if-match", "*")]).await,
        412,
        "precondition_failed",
    )
    .await;
    expect_error(
        put(&c, &u, "/v1/kv/b/none", "v", &[("if-match", e4.as_str())]).await,
        412,
        "precondition_failed",
    )
    .await;
    let (status, _, _) = get(&c, &u, "/v1/kv/b/none").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

// Goal: If-None-Match: * creates only: it applies on an absent key and over a tombstone
// (replacing it), and is 412 over a live value, which stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn if_none_match_creates_only() {
    let c = Cluster::start(Options::default()).await;
    let u = c.url();
    let absent = [("if-none-match", "*")];
    assert_eq!(
        put(&c, &u, "/v1/kv/b/k", "first", &absent).await.status(),
        StatusCode::NO_CONTENT
    );
    expect_error(
        put(&c, &u, "/v1/kv/b/k", "second", &absent).await,
        412,
        "precondition_failed",
    )
    .await;
    let (_, env, _) = get(&c, &u, "/v1/kv/b/k").await;
    assert_eq!(sibling_values(&env), ["first"]);
    assert_eq!(
        delete(&c, "/v1/kv/b/k", &[]).await.status(),
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        put(&c, &u, "/v1/kv/b/k", "again", &absent).await.status(),
        StatusCode::NO_CONTENT,
        "a tombstone does not count"
    );
    let (status, env, _) = get(&c, &u, "/v1/kv/b/k").await;
    assert_eq!(
        (status, sibling_values(&env)),
        (StatusCode::OK, vec!["again".to_owned()])
    );
}

// Goal: a conditional write with an Idempotency-Key, repeated after it succeeded, answers
// as the first did (its context, no 412 although its precondition no longer holds) and
// applies nothing; the same key with another precondition is 422; a conditional write
// that never succeeded is still 412 with a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_repeated_conditional_write_answers_as_the_first() {
    let c = Cluster::start(Options::default()).await;
    let u = c.url();
    let e1 = header(&put(&c, &u, "/v1/kv/b/k", "v1", &[]).await, "etag").expect("etag");
    let cond = [("if-match", e1.as_str()), ("idempotency-key", "op-1")];
    let first = put(&c, &u, "/v1/kv/b/k", "v2", &cond).await;
    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    let again = put(&c, &u, "/v1/kv/b/k", "v2", &cond).await;
    assert_eq!(again.status(), StatusCode::NO_CONTENT, "a repeat, not a 412");
    assert_eq!(
        header(&again, CTX),
        header(&first, CTX),
        "answered as the first was"
    );
    let (_, env, _) = get(&c, &u, "/v1/kv/b/k").await;
    assert_eq!(sibling_values(&env), ["v2"]);

    let other = [("if-match", "\"other\""), ("idempotency-key", "op-1")];
    expect_error(
        put(&c, &u, "/v1/kv/b/k", "v2", &other).await,
        422,
        "idempotency_key_reused",
    )
    .await;
    let fresh = [("if-match", e1.as_str()), ("idempotency-key", "op-2")];
    expect_error(
        put(&c, &u, "/v1/kv/b/k", "v9", &fresh).await,
        412,
        "precondition_failed",
    )
    .await;

    let create = [("if-none-match", "*"), ("idempotency-key", "create-1")];
    let first = put(&c, &u, "/v1/kv/b/new", "n", &create).await;
    assert_eq!(first.status(), StatusCode::NO_CONTENT);
    let again = put(&c, &u, "/v1/kv/b/new", "n", &create).await;
    assert_eq!(again.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&again, CTX), header(&first, CTX));
    let (_, env, _) = get(&c, &u, "/v1/kv/b/new").await;
    assert_eq!(sibling_values(&env), ["n"]);
}

// Goal: malformed preconditions are 400 invalid_request with a message, before anything
// is read or written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_preconditions_are_refused() {
    let c = Cluster::start(Options::default()).await;
    let u = c.url();
    put(&c, &u, "/v1/kv/b/k", "v1", &[]).await;
    for (name, value) in [
        ("if-match", "abc"),
        ("if-match", "\"unterminated"),
        ("if-match", "\"a\" \"b\""),
        ("if-match", ""),
        ("if-none-match", "\"tag\""),
    ] {
        expect_error(
            put(&c, &u, "/v1/kv/b/k", "bad", &[(name, value)]).await,
            400,
            "invalid_request",
        )
        .await;
        expect_error(
            delete(&c, "/v1/kv/b/k", &[(name, value)]).await,
            400,
            "invalid_request",
        )
        .await;
    }
    let (_, env, _) = get(&c, &u, "/v1/kv/b/k").await;
    assert_eq!(sibling_values(&env), ["v1"]);
}

async fn batch(c: &Cluster, token: &str, body: &Value) -> reqwest::Response {
    c.http
        .request(Method::POST, format!("{}/v1/batch", c.url()))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .expect("batch")
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

// Goal: a batch answers each operation in order as its own call would (statuses,
// contexts, ETags, siblings, error objects), one bad operation failing alone while the
// others apply; its writes are then visible to plain reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_answers_each_operation_as_its_own_call() {
    let c = Cluster::start(Options::default()).await;
    let u = c.url();
    put(&c, &u, "/v1/kv/b/old", "old", &[]).await;
    put(&c, &u, "/v1/kv/b/gone", "gone", &[]).await;
    let r = batch(
        &c,
        ROOT_TOKEN,
        &json!({"ops": [
            {"op": "put", "bucket": "b", "key": "x", "value": b64("x1"), "content_type": "text/plain"},
            {"op": "get", "bucket": "b", "key": "old"},
            {"op": "get", "bucket": "b", "key": "missing"},
            {"op": "put", "bucket": "b", "key": "y", "value": b64("y1"), "context": "not-a-context"},
            {"op": "delete", "bucket": "b", "key": "gone"},
            {"op": "put", "bucket": "other", "key": "z/with space", "value": ""},
        ]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    let res = body["results"].as_array().expect("results");
    let statuses: Vec<u64> = res
        .iter()
        .map(|r| r["status"].as_u64().expect("status"))
        .collect();
    assert_eq!(statuses, [204, 200, 404, 400, 204, 204], "{body}");
    for i in [0, 4, 5] {
        assert!(
            res[i]["context"].is_string() && res[i]["etag"].is_string(),
            "{}",
            res[i]
        );
    }
    assert_eq!(sibling_values(&res[1]), ["old"]);
    let (_, _, old_etag) = get(&c, &u, "/v1/kv/b/old").await;
    assert_eq!(res[1]["etag"].as_str(), old_etag.as_deref());
    assert_eq!(res[2]["error"]["code"], "not_found");
    assert_eq!(res[3]["error"]["code"], "invalid_context");
    assert!(res[3]["context"].is_null());

    let (_, env, _) = get(&c, &u, "/v1/kv/b/x").await;
    assert_eq!(sibling_values(&env), ["x1"]);
    assert_eq!(env["siblings"][0]["content_type"], "text/plain");
    assert_eq!(
        get(&c, &u, "/v1/kv/b/y").await.0,
        StatusCode::NOT_FOUND,
        "the bad put applied nothing"
    );
    assert_eq!(get(&c, &u, "/v1/kv/b/gone").await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        get(&c, &u, "/v1/kv/other/z%2Fwith%20space").await.0,
        StatusCode::OK
    );

    // A write with the context a batch get answered replaces what it saw.
    let r = batch(
        &c,
        ROOT_TOKEN,
        &json!({"ops": [{"op": "put", "bucket": "b", "key": "old", "value": b64("new"), "context": res[1]["context"]}]}),
    )
    .await;
    let body: Value = r.json().await.expect("json");
    assert_eq!(body["results"][0]["status"], 204, "{body}");
    let (_, env, _) = get(&c, &u, "/v1/kv/b/old").await;
    assert_eq!(sibling_values(&env), ["new"]);
}

// Goal: permissions apply per operation: with a token scoped to one bucket, its
// operations there succeed and the others are 403 forbidden in the results, changing
// nothing there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_permissions_apply_per_operation() {
    let c = Cluster::start(Options::default()).await;
    let r = c
        .req(Method::POST, "/v1/admin/tokens")
        .json(&json!({"buckets": ["open"], "permissions": ["read", "write"]}))
        .send()
        .await
        .expect("token");
    assert_eq!(r.status(), StatusCode::CREATED);
    let token = r.json::<Value>().await.expect("json")["token"]
        .as_str()
        .expect("token")
        .to_owned();
    let r = batch(
        &c,
        &token,
        &json!({"ops": [
            {"op": "put", "bucket": "open", "key": "a", "value": b64("a")},
            {"op": "put", "bucket": "closed", "key": "a", "value": b64("a")},
            {"op": "get", "bucket": "closed", "key": "a"},
            {"op": "get", "bucket": "open", "key": "a"},
        ]}),
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    let res = &body["results"];
    assert_eq!(res[0]["status"], 204, "{body}");
    for i in [1, 2] {
        assert_eq!(res[i]["status"], 403, "{body}");
        assert_eq!(res[i]["error"]["code"], "forbidden");
    }
    assert!(matches!(res[3]["status"].as_u64(), Some(200 | 404)), "{body}");
    assert_eq!(
        get(&c, &c.url(), "/v1/kv/closed/a").await.0,
        StatusCode::NOT_FOUND
    );
}

// Goal: a malformed batch is refused whole with 400 and runs nothing: more than 100
// operations, none, a bad bucket or key, a field its operation does not take, bad JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_malformed_batch_is_refused_whole() {
    let c = Cluster::start(Options::default()).await;
    let ok = json!({"op": "put", "bucket": "b", "key": "applied", "value": b64("v")});
    let many: Vec<Value> = (0..101).map(|_| ok.clone()).collect();
    expect_error(
        batch(&c, ROOT_TOKEN, &json!({"ops": many})).await,
        400,
        "invalid_request",
    )
    .await;
    expect_error(
        batch(&c, ROOT_TOKEN, &json!({"ops": []})).await,
        400,
        "invalid_request",
    )
    .await;
    let cases = [
        (
            json!({"op": "get", "bucket": "Bad!", "key": "k"}),
            "invalid_bucket",
        ),
        (json!({"op": "get", "bucket": "b", "key": ""}), "invalid_key"),
        (json!({"op": "put", "bucket": "b", "key": "k"}), "invalid_request"),
        (
            json!({"op": "get", "bucket": "b", "key": "k", "value": b64("v")}),
            "invalid_request",
        ),
        (
            json!({"op": "delete", "bucket": "b", "key": "k", "content_type": "text/plain"}),
            "invalid_request",
        ),
        (
            json!({"op": "get", "bucket": "b", "key": "k", "context": "x"}),
            "invalid_request",
        ),
        (
            json!({"op": "get", "bucket": "b", "key": "k", "r": 1}),
            "invalid_json",
        ),
        (json!({"op": "list", "bucket": "b", "key": "k"}), "invalid_json"),
    ];
    for (bad, code) in cases {
        expect_error(
            batch(&c, ROOT_TOKEN, &json!({"ops": [ok.clone(), bad]})).await,
            400,
            code,
        )
        .await;
    }
    assert_eq!(
        get(&c, &c.url(), "/v1/kv/b/applied").await.0,
        StatusCode::NOT_FOUND,
        "a refused batch runs nothing"
    );
    // 100 operations are fine.
    let hundred: Vec<Value> = (0..100)
        .map(|i| json!({"op": "put", "bucket": "b", "key": format!("k{i}"), "value": b64("v")}))
        .collect();
    let r = batch(&c, ROOT_TOKEN, &json!({"ops": hundred})).await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    let res = body["results"].as_array().expect("results");
    assert_eq!(res.len(), 100);
    assert!(res.iter().all(|r| r["status"] == 204), "{body}");
}
