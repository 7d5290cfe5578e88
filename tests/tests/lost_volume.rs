//! A storage node whose volume was lost (issue 16: the replace of a pod whose PVC was
//! lost): it comes back under its member id with an empty data directory, as a
//! StatefulSet pod does. The ring service refuses the new volume and keeps the member
//! down, the node serves nothing from it, and a replace in place refills it from the
//! other replicas: never a silent rejoin.

use std::time::{Duration, Instant};

use dynamo_core::wire::cluster::NodeState;
use dynamo_testkit::eventually;
use dynamo_tests::membership::{ChangeWait, node_name};
use dynamo_tests::{Cluster, Options};
use reqwest::Method;
use serde_json::{Value, json};

const BUCKET: &str = "vol";
const KEYS: usize = 200;

/// What storage node `i` answers a direct replica read of `key` with: `Ok(found)` or
/// `Err(error code)`.
async fn direct_read(c: &Cluster, i: usize, key: &str) -> Result<bool, String> {
    let body = json!({"ops": [{"op": "get", "bucket": BUCKET, "key": key}]});
    let r: Value = c
        .http
        .post(format!("{}/internal/v1/replicas", c.nodes[i].url()))
        .json(&body)
        .send()
        .await
        .expect("node read")
        .json()
        .await
        .expect("json");
    let result = &r["results"][0];
    match result["code"].as_str() {
        Some(code) => Err(code.to_owned()),
        None => Ok(!result["object"].is_null()),
    }
}

async fn put(c: &Cluster, key: &str, value: &str) -> u16 {
    c.req(Method::PUT, &format!("/v1/kv/{BUCKET}/{key}"))
        .header("content-type", "text/plain")
        .body(value.to_owned())
        .send()
        .await
        .expect("put")
        .status()
        .as_u16()
}

// Goal: after node-1 lost its volume and came back empty under its id, (1) the ring
// service refuses its new volume and keeps it down, (2) the node answers no read from it
// (`volume_unconfirmed`, where a silent rejoin answered "not found" for keys it had
// acknowledged), (3) every key stays readable and writable through the others, (4) a
// replace in place of a healthy member is refused, and (5) a replace in place refills
// node-1 with every key (anti-entropy is off, so the copy is the refill's), after which
// it is up, bound to its new volume, and serves. The time to the refusal and the
// refill's duration are printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_back_with_an_empty_volume_is_refused_then_refilled_in_place() {
    let mut c = Cluster::start(Options {
        durability: "sync".into(),
        storage_args: vec!["--anti-entropy-interval-ms".into(), "0".into()],
        ..Options::default()
    })
    .await;
    let keys: Vec<String> = (0..KEYS).map(|i| format!("k{i:03}")).collect();
    for k in &keys {
        assert_eq!(put(&c, k, &format!("value of {k}")).await, 204, "put {k}");
    }
    for k in keys.iter().take(3) {
        c.wait_every_replica_holds(BUCKET, k, format!("value of {k}").as_bytes())
            .await;
    }
    let before = c.ring_state().await.expect("ring state");
    let bound = before.nodes[1].volume.expect("node-1 bound to its first volume");

    // The disk is lost; the pod comes back with the same name and an empty volume.
    c.wipe(1);
    let lost_at = Instant::now();
    c.nodes[1].start();
    dynamo_tests::wait_ready(&c.nodes[1].url()).await;
    eventually("the ring service refuses node-1's new volume", || async {
        c.ring_state().await.is_some_and(|s| {
            let n = &s.nodes[1];
            n.volume_refused.is_some() && n.state == NodeState::Down && n.volume == Some(bound)
        })
    })
    .await;
    println!("new volume refused {:?} after the restart", lost_at.elapsed());
    eventually("node-1 knows it is refused", || async {
        c.metric(&c.nodes[1].url(), "dynamo_storage_volume_unconfirmed")
            .await
            == 1.0
    })
    .await;
    for k in keys.iter().take(20) {
        assert_eq!(
            direct_read(&c, 1, k).await,
            Err("volume_unconfirmed".to_owned()),
            "node-1 must not answer {k} from its empty volume"
        );
    }
    let listing = c
        .http
        .get(format!("{}/internal/v1/buckets/{BUCKET}/keys", c.nodes[1].url()))
        .send()
        .await
        .expect("listing");
    assert_eq!(listing.status().as_u16(), 503, "nor list from it");

    // The data path goes on through node-0 and node-2.
    for k in &keys {
        let r = c
            .req(Method::GET, &format!("/v1/kv/{BUCKET}/{k}?r=2"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status().as_u16(), 200, "read {k} while node-1 is refused");
        assert_eq!(r.text().await.expect("body"), format!("value of {k}"));
    }
    assert_eq!(put(&c, "during", "written while refused").await, 204);

    let healthy = c
        .req(
            Method::POST,
            &format!("/v1/cluster/nodes/{}/replace", node_name(0)),
        )
        .json(&json!({"node_id": node_name(0), "address": c.nodes[0].url()}))
        .send()
        .await
        .expect("replace");
    assert_eq!(healthy.status().as_u16(), 409, "a healthy member is not refilled");

    let refill_started = Instant::now();
    let r = c
        .req(
            Method::POST,
            &format!("/v1/cluster/nodes/{}/replace", node_name(1)),
        )
        .json(&json!({"node_id": node_name(1), "address": c.nodes[1].url()}))
        .send()
        .await
        .expect("replace");
    assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap_or_default());
    match c.wait_change(Duration::from_secs(90)).await {
        ChangeWait::Finished => {}
        other => panic!("the refill did not finish: {other:?}"),
    }
    println!("refilled node-1 in place in {:?}", refill_started.elapsed());

    let after = c.ring_state().await.expect("ring state");
    let n = &after.nodes[1];
    assert_eq!((n.state, n.volume_refused), (NodeState::Up, None));
    assert!(n.volume.is_some_and(|v| v != bound), "bound to the new volume");
    assert_eq!(
        after.ring.as_ref().map(|r| r.owners().to_vec()),
        before.ring.as_ref().map(|r| r.owners().to_vec()),
        "no partition moved"
    );
    c.wait_volumes_bound().await;
    let mut all = keys.clone();
    all.push("during".into());
    let held = c.node_get_many(1, BUCKET, &all).await;
    let missing: Vec<&String> = all
        .iter()
        .zip(&held)
        .filter(|(_, o)| o.is_none())
        .map(|(k, _)| k)
        .collect();
    assert!(
        missing.is_empty(),
        "node-1 lacks {} keys after the refill: {missing:?}",
        missing.len()
    );
}
