//! End-to-end tests of CRDT buckets over REST (issue 17): `POST /v1/crdt/{bucket}/{key}`
//! and the merged reads, on a real cluster of processes over loopback, with a node killed
//! while clients work; and, beside the CRDT cart, the same cart on a siblings bucket with
//! the application's merge.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dynamo_tests::{Cluster, Options, ROOT_TOKEN, expect_error};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const CTX: &str = "x-dynamo-context";

/// How long one logical operation is retried (after a node is killed, a coordinator
/// needs up to its failure detector's timeout to route around it).
const OP_DEADLINE: Duration = Duration::from_secs(30);

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Makes `bucket` a CRDT bucket of `crdt_type` and waits until every coordinator in
/// `urls` knows it (properties reach coordinators through the ring service's long poll).
async fn make_bucket(c: &Cluster, urls: &[String], bucket: &str, crdt_type: &str) {
    let r = c
        .req(Method::PUT, &format!("/v1/buckets/{bucket}"))
        .json(&json!({"conflict": "crdt", "crdt_type": crdt_type}))
        .send()
        .await
        .expect("bucket");
    assert!(r.status().is_success(), "bucket {bucket}: {}", r.status());
    for url in urls {
        dynamo_testkit::eventually(&format!("{url} knows bucket {bucket}"), || async {
            let r = c
                .http
                .request(Method::GET, format!("{url}/v1/buckets/{bucket}"))
                .bearer_auth(ROOT_TOKEN)
                .send()
                .await;
            match r {
                Ok(r) => r.json::<Value>().await.is_ok_and(|p| p["crdt_type"] == crdt_type),
                Err(_) => false,
            }
        })
        .await;
    }
}

/// The index of the storage node that coordinates operations on `bucket`/`key` while
/// it is up: the first of the key's preference list. Killing it moves coordination to a
/// replica whose copy may lag, so operations there leave sibling states that only a
/// merge on read or on the next operation reconciles.
async fn coordinating_node(c: &Cluster, bucket: &str, key: &str) -> usize {
    let r: Value = c
        .req(Method::GET, &format!("/v1/ring?bucket={bucket}&key={key}"))
        .send()
        .await
        .expect("ring")
        .json()
        .await
        .expect("json");
    let first = r["preference_list"][0].as_str().expect("a preference list");
    first
        .strip_prefix("node-")
        .and_then(|i| i.parse().ok())
        .expect("node-<i>")
}

/// One POST of `op` through `url`, with optional context and idempotency key.
async fn post(
    c: &Cluster,
    url: &str,
    path: &str,
    op: &Value,
    context: Option<&str>,
    idempotency: Option<&str>,
) -> reqwest::Response {
    let mut r = c
        .http
        .request(Method::POST, format!("{url}{path}"))
        .bearer_auth(ROOT_TOKEN)
        .header("content-type", "application/json")
        .body(op.to_string());
    if let Some(ctx) = context {
        r = r.header(CTX, ctx);
    }
    if let Some(k) = idempotency {
        r = r.header("idempotency-key", k);
    }
    r.send().await.expect("post")
}

/// A read through `url`: the status, the JSON value and the context.
async fn read(c: &Cluster, url: &str, path: &str) -> (StatusCode, Value, Option<String>) {
    let r = c
        .http
        .request(Method::GET, format!("{url}{path}"))
        .bearer_auth(ROOT_TOKEN)
        .send()
        .await
        .expect("get");
    let ctx = header(&r, CTX);
    (r.status(), r.json().await.unwrap_or(Value::Null), ctx)
}

/// Applies `op` until it is acknowledged, reusing one `Idempotency-Key` so that a retry
/// of an attempt that did apply (its answer lost to the kill) applies nothing new.
/// Returns the answer and how many earlier attempts got a `503` (each may have applied).
/// Panics when it is not acknowledged within [`OP_DEADLINE`] or is refused.
async fn apply_acked(c: &Cluster, url: &str, path: &str, op: &Value, key: &str) -> (Value, i64) {
    let started = std::time::Instant::now();
    let mut unknown = 0;
    loop {
        let r = post(c, url, path, op, None, Some(key)).await;
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        if status == StatusCode::OK {
            return (body, unknown);
        }
        unknown += 1;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{op}: {body}");
        assert!(started.elapsed() < OP_DEADLINE, "{op} not acknowledged: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Removes `element` from the set at `path`: reads for the context, then removes with
/// it, until acknowledged. Without an `Idempotency-Key`: each attempt carries the context
/// of its own read (another request), and removing twice is harmless. After an attempt
/// whose answer was lost (a 503 that may have applied), a read without the element, or a
/// refusal because the applying replica no longer holds it, means that attempt applied.
async fn remove_acked(c: &Cluster, url: &str, path: &str, element: &str) {
    let started = std::time::Instant::now();
    let mut attempted = false;
    loop {
        let (status, value, ctx) = read(c, url, path).await;
        let present = value.as_array().is_some_and(|a| a.iter().any(|v| v == element));
        if status == StatusCode::OK && !present && attempted {
            return;
        }
        if status == StatusCode::OK && present {
            let op = json!({"remove": [element]});
            let r = post(c, url, path, &op, ctx.as_deref(), None).await;
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            match (status.as_u16(), body["error"]["code"].as_str()) {
                (200, _) => return,
                (422, Some("invalid_crdt_operation")) if attempted => return,
                (503, _) | (409, Some("context_not_seen")) => attempted |= status.as_u16() == 503,
                _ => panic!("remove {element}: {status} {body}"),
            }
        }
        // Otherwise the read missed the acknowledged add (a quorum without its replicas
        // while the killed node is routed around): read again.
        assert!(
            started.elapsed() < OP_DEADLINE,
            "remove of {element} not acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Goal: each documented shape of the CRDT calls answers as docs/api.md says: values and
// contexts on reads (through both paths), the merged value after operations of every
// type, and a clear 4xx, changing nothing, for each misuse. Method: one cluster, one
// bucket per type, every call checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn crdt_calls_answer_their_contract() {
    let c = Cluster::start(Options::default()).await;
    let url = c.url();
    for (b, t) in [
        ("counters", "counter"),
        ("sets", "set"),
        ("regs", "register"),
        ("maps", "map"),
    ] {
        make_bucket(&c, std::slice::from_ref(&url), b, t).await;
    }

    // A counter: 404 before any operation, then the running value.
    let (status, _, _) = read(&c, &url, "/v1/crdt/counters/hits").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let r = post(
        &c,
        &url,
        "/v1/crdt/counters/hits",
        &json!({"increment": 5}),
        None,
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "x-dynamo-crdt-type").as_deref(), Some("counter"));
    assert!(header(&r, "etag").is_some() && header(&r, CTX).is_some());
    assert_eq!(r.json::<Value>().await.expect("json"), json!(5));
    let r = post(
        &c,
        &url,
        "/v1/crdt/counters/hits",
        &json!({"increment": -2}),
        None,
        None,
    )
    .await;
    assert_eq!(r.json::<Value>().await.expect("json"), json!(3));
    for path in ["/v1/crdt/counters/hits", "/v1/kv/counters/hits"] {
        let (status, value, ctx) = read(&c, &url, path).await;
        assert_eq!((status, value), (StatusCode::OK, json!(3)), "{path}");
        assert!(ctx.is_some(), "{path} answers a context");
    }

    // A set: add, then remove with the observed context; without one it is refused.
    let r = post(
        &c,
        &url,
        "/v1/crdt/sets/cart",
        &json!({"add": ["apple", "pear"]}),
        None,
        None,
    )
    .await;
    assert_eq!(r.json::<Value>().await.expect("json"), json!(["apple", "pear"]));
    let before = read(&c, &url, "/v1/crdt/sets/cart").await;
    let r = post(
        &c,
        &url,
        "/v1/crdt/sets/cart",
        &json!({"remove": ["apple"]}),
        None,
        None,
    )
    .await;
    expect_error(r, 422, "invalid_crdt_operation").await;
    let r = post(
        &c,
        &url,
        "/v1/crdt/sets/cart",
        &json!({"remove": ["plum"]}),
        before.2.as_deref(),
        None,
    )
    .await;
    expect_error(r, 422, "invalid_crdt_operation").await;
    assert_eq!(
        read(&c, &url, "/v1/crdt/sets/cart").await.1,
        before.1,
        "refusals changed nothing"
    );
    let r = post(
        &c,
        &url,
        "/v1/crdt/sets/cart",
        &json!({"remove": ["apple"]}),
        before.2.as_deref(),
        None,
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(read(&c, &url, "/v1/crdt/sets/cart").await.1, json!(["pear"]));

    // A register and a map.
    let r = post(
        &c,
        &url,
        "/v1/crdt/regs/name",
        &json!({"assign": {"first": "Ann"}}),
        None,
        None,
    )
    .await;
    assert_eq!(r.json::<Value>().await.expect("json"), json!({"first": "Ann"}));
    let op =
        json!({"update": {"visits": {"increment": 2}, "tags": {"add": ["new"]}, "city": {"assign": "Oslo"}}});
    let r = post(&c, &url, "/v1/crdt/maps/user", &op, None, None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let (_, value, ctx) = read(&c, &url, "/v1/crdt/maps/user").await;
    assert_eq!(value, json!({"city": "Oslo", "tags": ["new"], "visits": 2}));
    let r = post(
        &c,
        &url,
        "/v1/crdt/maps/user",
        &json!({"remove_fields": ["tags"]}),
        ctx.as_deref(),
        None,
    )
    .await;
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"city": "Oslo", "visits": 2})
    );

    // Misuse, each a clear 4xx that changes nothing.
    let hits = "/v1/crdt/counters/hits";
    let r = post(&c, &url, hits, &json!({"add": ["x"]}), None, None).await;
    expect_error(r, 422, "invalid_crdt_operation").await;
    let r = post(&c, &url, hits, &json!({"increment": 1, "add": ["x"]}), None, None).await;
    expect_error(r, 422, "invalid_crdt_operation").await;
    let r = c
        .req(Method::POST, hits)
        .header("content-type", "text/plain")
        .body("{\"increment\": 1}")
        .send()
        .await
        .expect("post");
    expect_error(r, 415, "unsupported_media_type").await;
    let r = c
        .req(Method::PUT, "/v1/kv/counters/hits")
        .body("7")
        .send()
        .await
        .expect("put");
    expect_error(r, 409, "wrong_bucket_type").await;
    let r = c
        .req(Method::DELETE, "/v1/kv/counters/hits")
        .send()
        .await
        .expect("delete");
    expect_error(r, 409, "wrong_bucket_type").await;
    let r = post(&c, &url, "/v1/crdt/plain/k", &json!({"increment": 1}), None, None).await;
    expect_error(r, 409, "wrong_bucket_type").await;
    let r = c
        .req(Method::POST, hits)
        .header("content-type", "application/json")
        .header("if-none-match", "*")
        .body("{\"increment\": 1}")
        .send()
        .await
        .expect("post");
    expect_error(r, 412, "precondition_failed").await;
    let r = c
        .req(Method::PUT, "/v1/buckets/counters")
        .json(&json!({"conflict": "siblings"}))
        .send()
        .await
        .expect("bucket");
    expect_error(r, 409, "bucket_type_immutable").await;
    assert_eq!(
        read(&c, &url, hits).await.1,
        json!(3),
        "no refusal changed the counter"
    );

    // If-Match with the current ETag applies; a repeat under one Idempotency-Key
    // answers as the first did and counts once.
    let etag = {
        let r = c.req(Method::GET, hits).send().await.expect("get");
        header(&r, "etag").expect("etag")
    };
    let once = || {
        c.req(Method::POST, hits)
            .header("content-type", "application/json")
            .header("if-match", etag.as_str())
            .header("idempotency-key", "inc-once")
            .body("{\"increment\": 10}")
            .send()
    };
    let first = once().await.expect("post");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(first.json::<Value>().await.expect("json"), json!(13));
    let again = once().await.expect("post");
    assert_eq!(
        again.status(),
        StatusCode::OK,
        "a repeat of a conditional op that applied"
    );
    assert_eq!(
        read(&c, &url, hits).await.1,
        json!(13),
        "the repeat applied nothing"
    );
}

// Goal: concurrent increments through two coordinators, with a storage node killed while
// they run: every acknowledged increment counts, and one counts twice only where the
// documented limit allows it (docs/api.md, "Idempotent retries"): its first attempt got
// an indeterminate 503 from the killed node, whose replication of it landed after the
// retry was applied elsewhere. Method: 10 clients, 20 increments each of different sizes,
// each retried under its own Idempotency-Key until acknowledged; the node coordinating
// the key is killed midway and stays down; the value read through both coordinators is
// at least the sum of all increments and at most that plus each increment once more per
// attempt of it that answered 503 (exactly the sum when none did).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_counter_increments_with_a_node_killed_count_once_unless_retried() {
    let mut c = Cluster::start(Options::default()).await;
    let other = c.start_coordinator("coordinator-2").await;
    let urls = [c.url(), other.url()];
    make_bucket(&c, &urls, "counters", "counter").await;
    let path = "/v1/crdt/counters/total";
    let victim = coordinating_node(&c, "counters", "total").await;
    let acked = AtomicUsize::new(0);
    let (cluster, acked_ref) = (&c, &acked);
    let client = |id: usize| {
        let urls = urls.clone();
        async move {
            let (mut sum, mut retried_sum) = (0i64, 0i64);
            for i in 0..20usize {
                let by = (id * 20 + i) as i64 % 7 + 1;
                let url = &urls[(id + i) % 2];
                let (_, unknown) = apply_acked(
                    cluster,
                    url,
                    path,
                    &json!({"increment": by}),
                    &format!("c{id}-{i}"),
                )
                .await;
                acked_ref.fetch_add(1, Ordering::Relaxed);
                sum += by;
                retried_sum += by * unknown;
            }
            (sum, retried_sum)
        }
    };
    let killer = async {
        // Midway: a quarter of the 200 increments acknowledged.
        dynamo_testkit::eventually("50 increments acknowledged", || async {
            acked.load(Ordering::Relaxed) >= 50
        })
        .await;
        cluster.nodes[victim].crash();
        acked.load(Ordering::Relaxed)
    };
    let (sums, killed_at) = tokio::join!(futures::future::join_all((0..10).map(client)), killer);
    assert!(
        killed_at < 200,
        "the node was killed while clients ran ({killed_at} acknowledged)"
    );
    let expected: i64 = sums.iter().map(|s| s.0).sum();
    let retried: i64 = sums.iter().map(|s| s.1).sum();
    for url in &urls {
        let (status, value, _) = read(&c, url, path).await;
        assert_eq!(status, StatusCode::OK, "through {url}");
        let value = value.as_i64().expect("a counter's value");
        println!(
            "through {url}: {value}; acknowledged increments sum to {expected}, retried ones to {retried}"
        );
        assert!(
            (expected..=expected + retried).contains(&value),
            "through {url}: {value} is not within [{expected}, {expected} + {retried} retried]"
        );
    }
    c.nodes[victim].kill9();
}

/// The shoppers of both cart tests: 10 clients, each adding its own 6 items with `add`
/// and removing every other one with `remove` (through the two coordinators in turn, each
/// call acknowledged before the next), while node `victim` is killed once a third of the
/// 90 changes are acknowledged. Returns the items that must remain, in byte order.
async fn shop_while_a_node_dies(
    c: &Cluster,
    urls: &[String; 2],
    victim: usize,
    add: impl AsyncFn(&str, &str),
    remove: impl AsyncFn(&str, &str),
) -> Vec<String> {
    let acked = AtomicUsize::new(0);
    let client = |id: usize| {
        let (add, remove, acked) = (&add, &remove, &acked);
        async move {
            for j in 0..6usize {
                let item = format!("item-{id}-{j}");
                add(&urls[(id + j) % 2], &item).await;
                acked.fetch_add(1, Ordering::Relaxed);
                if j % 2 == 0 {
                    remove(&urls[(id + j + 1) % 2], &item).await;
                    acked.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    };
    let killer = async {
        dynamo_testkit::eventually("a third of the cart's changes acknowledged", || async {
            acked.load(Ordering::Relaxed) >= 30
        })
        .await;
        c.nodes[victim].crash();
        acked.load(Ordering::Relaxed)
    };
    let ((), killed_at) = tokio::join!(
        async {
            futures::future::join_all((0..10).map(client)).await;
        },
        killer
    );
    assert!(
        killed_at < 90,
        "the node was killed while clients ran ({killed_at} acknowledged)"
    );
    let mut expected: Vec<String> = (0..10)
        .flat_map(|id| {
            (0..6)
                .filter(|j| j % 2 == 1)
                .map(move |j| format!("item-{id}-{j}"))
        })
        .collect();
    expected.sort();
    expected
}

// Goal: the Dynamo paper's shopping cart as a CRDT set keeps every add and brings back no
// remove, with 10 clients through 2 coordinators and a storage node killed midway.
// Method: each client adds its own 6 items to one cart (each add retried under its own
// Idempotency-Key until acknowledged) and removes every other one after reading the cart
// for the context; the node coordinating the key is killed once a third of the work is
// acknowledged. The cart
// read through both coordinators is exactly the items added and not removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crdt_cart_keeps_every_add_and_no_remove_with_a_node_killed() {
    let mut c = Cluster::start(Options::default()).await;
    let other = c.start_coordinator("coordinator-2").await;
    let urls = [c.url(), other.url()];
    make_bucket(&c, &urls, "carts", "set").await;
    let path = "/v1/crdt/carts/cart-1";
    let victim = coordinating_node(&c, "carts", "cart-1").await;
    let expected = shop_while_a_node_dies(
        &c,
        &urls,
        victim,
        async |url: &str, item: &str| {
            apply_acked(&c, url, path, &json!({"add": [item]}), &format!("add-{item}")).await;
        },
        async |url: &str, item: &str| remove_acked(&c, url, path, item).await,
    )
    .await;
    let expected: Vec<Value> = expected.into_iter().map(Value::from).collect();
    for url in &urls {
        let (status, value, _) = read(&c, url, path).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(value, Value::Array(expected.clone()), "through {url}");
    }
    c.nodes[victim].kill9();
}

/// The siblings cart's value: what was added and what was removed, each merged by union,
/// so a remove is remembered and no union of siblings brings its item back (a 2P-set:
/// the app's own answer to the caveat `docs/consistency.md` describes).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Cart {
    added: std::collections::BTreeSet<String>,
    removed: std::collections::BTreeSet<String>,
}

impl Cart {
    fn items(&self) -> Vec<String> {
        self.added.difference(&self.removed).cloned().collect()
    }
}

/// Reads the siblings cart at `path` through `url`: every sibling merged, and the
/// context covering them (`None` before the first write).
async fn read_cart(c: &Cluster, url: &str, path: &str) -> Option<(Cart, Option<String>)> {
    let r = c
        .http
        .request(Method::GET, format!("{url}{path}"))
        .bearer_auth(ROOT_TOKEN)
        .header("accept", "application/json")
        .send()
        .await
        .ok()?;
    match r.status() {
        StatusCode::NOT_FOUND => Some((Cart::default(), header(&r, CTX))),
        StatusCode::OK | StatusCode::MULTIPLE_CHOICES => {
            let env: Value = r.json().await.ok()?;
            let mut cart = Cart::default();
            for v in dynamo_tests::sibling_values(&env) {
                let sibling: Cart = serde_json::from_str(&v).expect("a cart");
                cart.added.extend(sibling.added);
                cart.removed.extend(sibling.removed);
            }
            Some((cart, env["context"].as_str().map(str::to_owned)))
        }
        _ => None,
    }
}

/// Read, merge, change, write with the read's context, until a write is acknowledged
/// (a 503, or a read that failed, starts over; repeating a change is harmless: both sets
/// only grow).
async fn update_cart(c: &Cluster, url: &str, path: &str, change: impl Fn(&mut Cart)) {
    let started = std::time::Instant::now();
    loop {
        assert!(started.elapsed() < OP_DEADLINE, "a cart update not acknowledged");
        let Some((mut cart, ctx)) = read_cart(c, url, path).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        change(&mut cart);
        let mut w = c
            .http
            .request(Method::PUT, format!("{url}{path}"))
            .bearer_auth(ROOT_TOKEN)
            .header("content-type", "application/json")
            .body(serde_json::to_string(&cart).expect("a cart serializes"));
        if let Some(ctx) = &ctx {
            w = w.header(CTX, ctx);
        }
        let status = w.send().await.expect("put").status();
        if status == StatusCode::NO_CONTENT {
            return;
        }
        assert!(
            status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::CONFLICT,
            "cart write: {status}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// Goal: the Dynamo paper's cart on a siblings bucket, with the app's merge, keeps every
// add and brings back no remove, with 10 clients through 2 coordinators and the key's
// coordinating node killed midway. Method: the cart is {added, removed}, merged by union
// of each (so removes are remembered); each client adds its own 6 items and removes
// every other one, each change a read-merge-write with the read's context until
// acknowledged; the cart read through both coordinators is exactly the items added and
// not removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_siblings_cart_with_a_merge_keeps_every_add_and_no_remove_with_a_node_killed() {
    let mut c = Cluster::start(Options::default()).await;
    let other = c.start_coordinator("coordinator-2").await;
    let urls = [c.url(), other.url()];
    let path = "/v1/kv/carts/cart-1";
    let victim = coordinating_node(&c, "carts", "cart-1").await;
    let expected = shop_while_a_node_dies(
        &c,
        &urls,
        victim,
        async |url: &str, item: &str| {
            update_cart(&c, url, path, |cart| {
                cart.added.insert(item.to_owned());
            })
            .await;
        },
        async |url: &str, item: &str| {
            update_cart(&c, url, path, |cart| {
                cart.removed.insert(item.to_owned());
            })
            .await;
        },
    )
    .await;
    for url in &urls {
        let (cart, _) = read_cart(&c, url, path).await.expect("the cart reads");
        assert_eq!(cart.items(), expected, "through {url}");
    }
    c.nodes[victim].kill9();
}
