//! Who gets through the coordinator's door: per-token rate limits and the root token's
//! rotation without a restart.

mod common;

use std::collections::BTreeMap;

use common::*;
use dynamo_core::wire::cluster::{AllBuckets, BucketScope, ClusterState, Permission, TokenRecord};
use dynamo_testkit::eventually;

/// A scoped token `dk_<id>_secret` as the ring service would hold it.
fn token(id: &str, rate_limit_rps: Option<u32>) -> (String, TokenRecord) {
    let secret = format!("dk_{id}_not-a-real-secret-but-long-enough");
    let record = TokenRecord {
        id: id.into(),
        sha256: dynamo_coordinator::auth::token_sha256(&secret),
        buckets: BucketScope::All(AllBuckets::Star),
        permissions: vec![Permission::Read],
        created_ms: 1,
        expires_ms: None,
        rate_limit_rps,
    };
    (secret, record)
}

/// A ring of one node that no request here reaches (bucket reads are answered from the
/// coordinator's cached state).
fn one_node_ring() -> dynamo_core::ring::Ring {
    ring(
        16,
        BTreeMap::from([(dynamo_core::NodeId::new("node-0").expect("id"), None)]),
    )
}

async fn status(url: &str, bearer: &str) -> (u16, Option<String>, serde_json::Value) {
    let r = dynamo_testkit::unsigned_http()
        .get(format!("{url}/v1/buckets/b"))
        .bearer_auth(bearer)
        .send()
        .await
        .expect("send");
    let retry = r
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let s = r.status().as_u16();
    (s, retry, r.json().await.unwrap_or_default())
}

// Goal: a token over its own limit gets `429 rate_limited` with `Retry-After` before any
// work; another token and the root token keep their own allowances; a token without a
// limit of its own gets the coordinator's default. Counts, not timing: 100 requests in a
// row are far more than one second's refill of a 3 per second limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_over_their_rate_get_429_with_retry_after() {
    let (slow, slow_record) = token("aaaa0001", Some(3));
    let (other, other_record) = token("aaaa0002", None);
    let ring_url = fake_ring_service_with(ClusterState {
        version: 1,
        ring: Some(one_node_ring()),
        tokens: vec![slow_record, other_record],
        ..ClusterState::default()
    })
    .await;
    let c = Coordinator::start(ring_url, |c| c.token_rate_limit_rps = 20).await;
    let mut admitted = 0;
    let mut limited = None;
    for _ in 0..100 {
        match status(&c.url, &slow).await {
            (200, ..) => admitted += 1,
            (429, retry, body) => limited = Some((retry, body)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!((3..100).contains(&admitted), "{admitted} of 100 admitted");
    let (retry, body) = limited.expect("some requests were limited");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(retry.is_some_and(|r| r.parse::<u64>().is_ok_and(|s| s >= 1)));

    let others = futures_count(&c.url, &other, 100).await;
    assert!((20..100).contains(&others), "the default limit: {others} of 100");
    assert_eq!(
        futures_count(&c.url, TOKEN, 200).await,
        200,
        "root: no limit by default"
    );
    c.stop().await;
}

async fn futures_count(url: &str, bearer: &str, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if status(url, bearer).await.0 == 200 {
            ok += 1;
        }
    }
    ok
}

// Goal: the root token rotates by editing `--root-token-file`: a second line is accepted
// beside the first, and once the old line is gone the old token is refused, with no
// restart. A file broken in between changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_token_rotates_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("root-token");
    let (old, new) = (TOKEN, "the-new-root-token-0123456789");
    std::fs::write(&path, format!("{old}\n")).expect("write");
    let ring_url = fake_ring_service(one_node_ring()).await;
    let file = path.clone();
    let c = Coordinator::start(ring_url, move |c| {
        c.root_token = dynamo_coordinator::config::Secret(String::new());
        c.root_token_file = Some(file);
        c.root_token_reload_ms = 20;
    })
    .await;
    assert_eq!(status(&c.url, new).await.0, 401);

    std::fs::write(&path, format!("{new}\n{old}\n")).expect("write");
    eventually("the new root token is accepted", || async {
        status(&c.url, new).await.0 == 200
    })
    .await;
    assert_eq!(status(&c.url, old).await.0, 200, "both while rotating");

    // A broken file: the worker's next reads fail, and the tokens stay as they were.
    let failed = || async {
        dynamo_testkit::metric(
            &c.url,
            "dynamo_coordinator_worker_errors_total{worker=\"root-token-reload\"}",
        )
        .await
    };
    let before = failed().await.unwrap_or(0.0);
    std::fs::write(&path, "short\n").expect("write");
    eventually("a read of the broken file failed", || async {
        failed().await.is_some_and(|n| n > before)
    })
    .await;
    assert_eq!(status(&c.url, old).await.0, 200, "a broken file changes nothing");
    assert_eq!(status(&c.url, new).await.0, 200);

    std::fs::write(&path, format!("{new}\n")).expect("write");
    eventually("the old root token is refused", || async {
        status(&c.url, old).await.0 == 401
    })
    .await;
    assert_eq!(status(&c.url, new).await.0, 200);
    c.stop().await;
}

// Goal (issue 12: revocation within a stated bound): while the ring service does not
// answer, scoped tokens keep working up to --max-ring-silence-ms and are then refused with
// 503 ring_unavailable (a token revoked meanwhile cannot live on in this coordinator's
// cache), while the root token keeps working; once the ring service answers again, so do
// the tokens. The last contact is a metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scoped_tokens_fail_closed_when_the_ring_service_is_silent() {
    let (secret, record) = token("aaaa0003", None);
    let (ring_url, up) = fake_ring_service_switch(ClusterState {
        version: 1,
        ring: Some(one_node_ring()),
        tokens: vec![record],
        ..ClusterState::default()
    })
    .await;
    let c = Coordinator::start(ring_url, |c| {
        c.ring_poll_wait_ms = 100;
        c.max_ring_silence_ms = 1_000;
    })
    .await;
    eventually("the scoped token works", || async {
        status(&c.url, &secret).await.0 == 200
    })
    .await;
    let contact = dynamo_testkit::metric(&c.url, "dynamo_coordinator_ring_last_contact_timestamp_seconds")
        .await
        .expect("the metric");
    assert!(contact > 1.7e9, "a Unix time: {contact}");
    assert_eq!(readyz(&c.url).await, (200, "ready".to_owned()));

    up.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("the scoped token is refused", || async {
        status(&c.url, &secret).await.0 == 503
    })
    .await;
    let (_, retry, body) = status(&c.url, &secret).await;
    assert_eq!(body["error"]["code"], "ring_unavailable", "{body}");
    assert!(retry.is_some());
    assert_eq!(status(&c.url, TOKEN).await.0, 200, "the root token still works");
    // Still ready (the data path serves), and /readyz says why scoped tokens fail.
    let (ready, text) = readyz(&c.url).await;
    assert_eq!(ready, 200);
    assert!(
        text.starts_with("ready; degraded:") && text.contains("scoped tokens are refused"),
        "{text}"
    );

    up.store(true, std::sync::atomic::Ordering::SeqCst);
    eventually("the scoped token works again", || async {
        status(&c.url, &secret).await.0 == 200
    })
    .await;
    assert_eq!(readyz(&c.url).await, (200, "ready".to_owned()));
    c.stop().await;
}

/// `/readyz`'s status and body.
async fn readyz(url: &str) -> (u16, String) {
    let r = dynamo_testkit::unsigned_http()
        .get(format!("{url}/readyz"))
        .send()
        .await
        .expect("readyz");
    (r.status().as_u16(), r.text().await.expect("body"))
}
