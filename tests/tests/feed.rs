//! End-to-end tests of the change feed (issue 17): `GET /v1/feed/{bucket}` over the
//! storage nodes' change logs, on a real cluster of processes over loopback.

use std::collections::BTreeSet;
use std::time::Duration;

use dynamo_tests::{Cluster, Options, ROOT_TOKEN, expect_error};
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// One feed page through `url`: the changes as (key, deleted) and the next cursor.
async fn page(
    c: &Cluster,
    url: &str,
    bucket: &str,
    cursor: Option<&str>,
    limit: usize,
    wait_ms: u64,
) -> (Vec<(String, bool)>, String) {
    let mut q: Vec<(&str, String)> = vec![("limit", limit.to_string()), ("wait_ms", wait_ms.to_string())];
    if let Some(c) = cursor {
        q.push(("cursor", c.to_owned()));
    }
    let r = c
        .http
        .request(Method::GET, format!("{url}/v1/feed/{bucket}"))
        .bearer_auth(ROOT_TOKEN)
        .query(&q)
        .send()
        .await
        .expect("feed");
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.expect("json");
    let changes = body["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|ch| {
            assert!(
                ch["context"].as_str().is_some_and(|c| !c.is_empty()),
                "a context: {ch}"
            );
            (
                ch["key"].as_str().expect("key").to_owned(),
                ch["deleted"].as_bool().expect("deleted"),
            )
        })
        .collect();
    (changes, body["cursor"].as_str().expect("cursor").to_owned())
}

/// Sends `method` to `path` until it is acknowledged (a `503` is retried).
async fn acked(c: &Cluster, method: Method, path: &str, body: &str) {
    let started = std::time::Instant::now();
    loop {
        let mut r = c.req(method.clone(), path);
        if method == Method::PUT {
            r = r.body(body.to_owned());
        }
        let status = r.send().await.expect("send").status();
        if status == StatusCode::NO_CONTENT {
            return;
        }
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{method} {path}");
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{method} {path} not acknowledged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// Goal: the feed's documented shapes: without a cursor an empty page and a cursor; a
// long poll answers with the write made while it waited; a key's put comes before its
// delete; a write made before the cursor was issued is not delivered; bad queries are a
// clear 400. Method: one cluster, each call checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_feed_answers_its_contract() {
    let c = Cluster::start(Options::default()).await;
    let url = c.url();
    acked(&c, Method::PUT, "/v1/kv/orders/before", "x").await;
    let (changes, cursor) = page(&c, &url, "orders", None, 10, 0).await;
    assert!(changes.is_empty(), "without a cursor: from now");

    let writer = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        acked(&c, Method::PUT, "/v1/kv/orders/o-1", "paid").await;
    };
    let ((changes, cursor), ()) = tokio::join!(page(&c, &url, "orders", Some(&cursor), 10, 10_000), writer);
    assert!(!changes.is_empty(), "the long poll answered with the write");
    assert!(changes.iter().all(|(k, d)| k == "o-1" && !d), "{changes:?}");

    // A put and its delete, both on every replica before one page reads them: within a
    // page a key's changes are in causal order (across pages a lagging replica may still
    // bring an older change: docs/api.md).
    acked(&c, Method::PUT, "/v1/kv/orders/o-2", "new").await;
    acked(&c, Method::DELETE, "/v1/kv/orders/o-2", "").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let (seen, _) = page(&c, &url, "orders", Some(&cursor), 1000, 0).await;
    assert!(
        seen.iter().all(|(k, _)| k != "before"),
        "nothing from before the cursor: {seen:?}"
    );
    let o2: Vec<bool> = seen.iter().filter(|(k, _)| k == "o-2").map(|(_, d)| *d).collect();
    assert_eq!(
        o2,
        vec![false, true],
        "o-2's put, then its delete, each once: {seen:?}"
    );

    for (query, code) in [
        ("cursor=not-a-cursor", "invalid_parameter"),
        ("limit=0", "invalid_parameter"),
        ("limit=1001", "invalid_parameter"),
        ("wait_ms=30001", "invalid_parameter"),
    ] {
        let r = c
            .req(Method::GET, &format!("/v1/feed/orders?{query}"))
            .send()
            .await
            .expect("feed");
        expect_error(r, 400, code).await;
    }
    let r = c
        .req(Method::GET, "/v1/feed/other")
        .query(&[("cursor", cursor.as_str())])
        .send()
        .await
        .expect("feed");
    expect_error(r, 400, "invalid_parameter").await;
}

// Goal: a consumer that restarts midway (keeping only its cursor, through another
// coordinator, while the coordinator it used is killed and a new one starts) sees every
// acknowledged write at least once. Method: a writer puts 200 keys and deletes 40 of
// them through coordinator 1 while the consumer pages (limit 37, long polls) through
// coordinator 2; after 60 changes coordinator 2 is killed and the consumer continues
// through a new coordinator 3; it stops once it saw every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_consumer_sees_every_acknowledged_write_at_least_once() {
    let c = Cluster::start(Options::default()).await;
    let mut second = c.start_coordinator("coordinator-2").await;
    let (_, start) = page(&c, &second.url(), "events", None, 10, 0).await;
    let keys: Vec<String> = (0..200).map(|i| format!("e{i:03}")).collect();
    let deleted: Vec<String> = keys.iter().step_by(5).cloned().collect();

    let writer = async {
        for k in &keys {
            acked(&c, Method::PUT, &format!("/v1/kv/events/{k}"), k).await;
        }
        for k in &deleted {
            acked(&c, Method::DELETE, &format!("/v1/kv/events/{k}"), "").await;
        }
    };
    let consumer = async {
        let mut puts: BTreeSet<String> = BTreeSet::new();
        let mut deletes: BTreeSet<String> = BTreeSet::new();
        let mut cursor = start;
        let mut url = second.url();
        let mut restarted = None;
        let started = std::time::Instant::now();
        while puts.len() < keys.len() || deletes.len() < deleted.len() {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the consumer saw {} puts and {} deletes of {} and {}",
                puts.len(),
                deletes.len(),
                keys.len(),
                deleted.len()
            );
            let (changes, next) = page(&c, &url, "events", Some(&cursor), 37, 1000).await;
            cursor = next;
            for (k, d) in changes {
                if d {
                    deletes.insert(k);
                } else {
                    puts.insert(k);
                }
            }
            if restarted.is_none() && puts.len() >= 60 {
                // The restart: only the cursor survives; the coordinator it used dies.
                second.kill9();
                let third = c.start_coordinator("coordinator-3").await;
                url = third.url();
                restarted = Some(third);
            }
        }
        assert!(restarted.is_some(), "the consumer restarted midway");
        (puts, deletes)
    };
    let ((), (puts, deletes)) = tokio::join!(writer, consumer);
    assert_eq!(puts.into_iter().collect::<Vec<_>>(), keys);
    assert_eq!(deletes.into_iter().collect::<Vec<_>>(), {
        let mut d = deleted.clone();
        d.sort();
        d
    });
}

// Goal: a cursor older than the feed's retention is 410 cursor_expired, and a new
// cursor works. Method: storage nodes that keep entries 300 ms and purge every 200 ms;
// take a cursor, write, wait for the purge, read with the old cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cursor_older_than_the_retention_is_gone() {
    let c = Cluster::start(Options {
        storage_args: vec![
            "--feed-retention-ms".into(),
            "300".into(),
            "--gc-interval-ms".into(),
            "200".into(),
        ],
        ..Options::default()
    })
    .await;
    let url = c.url();
    let (_, old) = page(&c, &url, "short", None, 10, 0).await;
    acked(&c, Method::PUT, "/v1/kv/short/k", "v").await;
    dynamo_testkit::eventually("the old cursor expires", || async {
        let r = c
            .req(Method::GET, "/v1/feed/short")
            .query(&[("cursor", old.as_str())])
            .send()
            .await
            .expect("feed");
        r.status() == StatusCode::GONE
    })
    .await;
    let r = c
        .req(Method::GET, "/v1/feed/short")
        .query(&[("cursor", old.as_str())])
        .send()
        .await
        .expect("feed");
    expect_error(r, 410, "cursor_expired").await;
    let (changes, fresh) = page(&c, &url, "short", None, 10, 0).await;
    assert!(changes.is_empty());
    let (changes, _) = page(&c, &url, "short", Some(&fresh), 10, 0).await;
    assert!(changes.is_empty(), "nothing new since the fresh cursor");
}
