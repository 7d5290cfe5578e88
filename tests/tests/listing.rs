//! End-to-end tests of listing (issue 17): `GET /v1/kv/{bucket}?list`, paged by prefix
//! over the storage nodes' listing indexes, on a real cluster of processes over loopback.

use std::collections::BTreeMap;

use dynamo_tests::{Cluster, Options, ROOT_TOKEN, expect_error};
use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Sends `method` to each of `keys` in `bucket` (16 at a time; a put's value is the
/// key), each until acknowledged: a node killed meanwhile makes a few answers `503`
/// until the coordinators route around it (a retried put may leave two equal siblings,
/// which a listing does not see).
async fn each_acked(c: &Cluster, method: Method, bucket: &str, keys: &[String]) {
    futures::stream::iter(keys)
        .for_each_concurrent(16, |k| {
            let method = method.clone();
            async move {
                let started = std::time::Instant::now();
                loop {
                    let mut r = c.req(method.clone(), &format!("/v1/kv/{bucket}/{k}"));
                    if method == Method::PUT {
                        r = r.body(k.clone());
                    }
                    let status = r.send().await.expect("send").status();
                    if status == StatusCode::NO_CONTENT {
                        return;
                    }
                    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {k}");
                    assert!(started.elapsed().as_secs() < 30, "{method} {k} not acknowledged");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        })
        .await;
}

async fn put_all(c: &Cluster, bucket: &str, keys: &[String]) {
    each_acked(c, Method::PUT, bucket, keys).await;
}

async fn delete_all(c: &Cluster, bucket: &str, keys: &[String]) {
    each_acked(c, Method::DELETE, bucket, keys).await;
}

/// Lists `bucket` through `urls` in turn (page i through `urls[i % len]`), `limit` keys
/// a page; returns every key answered, in order, and the number of pages.
async fn list_all(
    c: &Cluster,
    urls: &[String],
    bucket: &str,
    prefix: &str,
    limit: usize,
) -> (Vec<String>, usize) {
    let mut keys = Vec::new();
    let mut after: Option<String> = None;
    for page in 0.. {
        let mut q: Vec<(&str, String)> = vec![("list", String::new()), ("prefix", prefix.to_owned())];
        q.push(("limit", limit.to_string()));
        if let Some(a) = &after {
            q.push(("start_after", a.clone()));
        }
        let r = c
            .http
            .request(Method::GET, format!("{}/v1/kv/{bucket}", urls[page % urls.len()]))
            .bearer_auth(ROOT_TOKEN)
            .query(&q)
            .send()
            .await
            .expect("list");
        assert_eq!(r.status(), StatusCode::OK, "page {page}");
        let body: Value = r.json().await.expect("json");
        let got: Vec<String> = body["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .map(|k| k.as_str().expect("a string").to_owned())
            .collect();
        assert!(
            got.len() <= limit,
            "page {page} holds {} keys, limit {limit}",
            got.len()
        );
        keys.extend(got);
        match body["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return (keys, page + 1),
        }
        assert!(page < 10_000, "the listing does not end");
    }
    unreachable!("the loop returns")
}

// Goal: a listing answers a bucket's live keys by prefix, in byte order, each once, in
// pages of at most `limit`, with `next` null on the last; deleted keys and other prefixes
// are left out; bad queries are clear 4xx. Method: write 150 keys under one prefix and 10
// under another, delete some, list with several page sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn listing_pages_a_bucket_by_prefix_in_key_order() {
    let c = Cluster::start(Options::default()).await;
    let urls = [c.url()];
    let a: Vec<String> = (0..150).map(|i| format!("a/{i:03}")).collect();
    let b: Vec<String> = (0..10).map(|i| format!("b/{i}")).collect();
    put_all(&c, "things", &a).await;
    put_all(&c, "things", &b).await;
    let gone: Vec<String> = a.iter().step_by(9).cloned().collect();
    delete_all(&c, "things", &gone).await;
    let expected: Vec<String> = a.iter().filter(|k| !gone.contains(k)).cloned().collect();
    for limit in [1, 7, 40, 1000] {
        let (keys, pages) = list_all(&c, &urls, "things", "a/", limit).await;
        assert_eq!(keys, expected, "limit {limit}");
        assert!(
            pages >= expected.len().div_ceil(limit),
            "limit {limit}: {pages} pages"
        );
    }
    let (all, _) = list_all(&c, &urls, "things", "", 100).await;
    assert_eq!(all.len(), expected.len() + b.len());
    assert!(all.windows(2).all(|w| w[0] < w[1]), "byte order, each once");
    let (none, pages) = list_all(&c, &urls, "empty", "", 10).await;
    assert_eq!((none.len(), pages), (0, 1));

    for (query, code) in [
        ("limit=5", "invalid_parameter"),
        ("list&limit=0", "invalid_parameter"),
        ("list&limit=1001", "invalid_parameter"),
    ] {
        let r = c
            .req(Method::GET, &format!("/v1/kv/things?{query}"))
            .send()
            .await
            .expect("list");
        expect_error(r, 400, code).await;
    }
    let r = c
        .http
        .request(Method::GET, format!("{}/v1/kv/things?list", c.url()))
        .send()
        .await
        .expect("list");
    expect_error(r, 401, "unauthorized").await;
}

// Goal: a listing that runs while keys are written and deleted returns each key that was
// live throughout exactly once, never a key deleted before it began, and keeps working
// when a storage node is killed midway. Method: 300 keys, every tenth deleted first;
// then, while one task lists (page size 23, alternating two coordinators) a second
// writes 200 new keys and deletes every seventh old one, and a node is killed after the
// first pages; the listing is checked against the three sets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listing_during_writes_and_deletes_returns_each_key_live_throughout_exactly_once() {
    let c = Cluster::start(Options::default()).await;
    let other = c.start_coordinator("coordinator-2").await;
    let urls = [c.url(), other.url()];
    let old: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
    put_all(&c, "live", &old).await;
    let deleted_before: Vec<String> = old.iter().step_by(10).cloned().collect();
    delete_all(&c, "live", &deleted_before).await;
    let deleted_during: Vec<String> = old
        .iter()
        .skip(3)
        .step_by(7)
        .filter(|k| !deleted_before.contains(k))
        .cloned()
        .collect();
    let new: Vec<String> = (0..200).map(|i| format!("k{i:03}-new")).collect();

    let churn = async {
        put_all(&c, "live", &new).await;
        delete_all(&c, "live", &deleted_during).await;
    };
    let lister = async {
        let (keys, _) = list_all(&c, &urls, "live", "k", 23).await;
        keys
    };
    let killer = async {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        c.nodes[0].crash();
    };
    let ((), keys, ()) = tokio::join!(churn, lister, killer);

    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for k in &keys {
        *seen.entry(k.as_str()).or_default() += 1;
    }
    for k in &old {
        let n = seen.get(k.as_str()).copied().unwrap_or(0);
        if deleted_before.contains(k) {
            assert_eq!(n, 0, "{k} was deleted before the listing began");
        } else if !deleted_during.contains(k) {
            assert_eq!(n, 1, "{k} was live throughout");
        } else {
            assert!(n <= 1, "{k} answered twice");
        }
    }
    assert!(seen.values().all(|&n| n == 1), "no key is answered twice");
    assert!(keys.windows(2).all(|w| w[0] < w[1]), "byte order across pages");
}
