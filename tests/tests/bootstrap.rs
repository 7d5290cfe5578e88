//! Starting a cluster the way containers do: every service at once, before any node is a
//! member, and `dynamo cluster bootstrap` joining the storage nodes through the public
//! API. A coordinator that started before the first join must show the empty cluster
//! (not wait for a ring forever), and bootstrap must be safe to run again.

use std::process::Command;
use std::time::Duration;

use dynamo_tests::{Cluster, Options, ROOT_TOKEN, binary, output_text};
use serde_json::Value;

/// Runs `dynamo cluster bootstrap` against the cluster's coordinator with `nodes`
/// (`ID=ADDRESS` specs); returns its exit code and what it printed.
fn bootstrap(cluster: &Cluster, nodes: &[String]) -> (Option<i32>, String) {
    let mut args: Vec<String> = vec![
        "--endpoint".into(),
        cluster.url(),
        "--token".into(),
        ROOT_TOKEN.into(),
        "cluster".into(),
        "bootstrap".into(),
        "--timeout".into(),
        "120".into(),
    ];
    args.extend(nodes.iter().cloned());
    let out = Command::new(binary("dynamo"))
        .args(&args)
        .output()
        .expect("run dynamo");
    (out.status.code(), output_text(&out))
}

/// Every node of the cluster as a bootstrap spec, `node-<i>=<its URL>`.
fn every_node(cluster: &Cluster) -> Vec<String> {
    cluster
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| format!("node-{i}={}", n.url()))
        .collect()
}

async fn view(cluster: &Cluster) -> Value {
    let resp = cluster
        .req(reqwest::Method::GET, "/v1/cluster")
        .send()
        .await
        .expect("GET /v1/cluster");
    assert_eq!(
        resp.status().as_u16(),
        200,
        "GET /v1/cluster before and after the joins"
    );
    resp.json().await.expect("json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_joins_every_node_once_from_an_empty_cluster() {
    let cluster = Cluster::start(Options {
        join: false,
        ..Options::default()
    })
    .await;

    // Before any join: the coordinator shows the empty cluster at once.
    let empty = tokio::time::timeout(Duration::from_secs(10), view(&cluster))
        .await
        .expect("the empty cluster shows within 10 s");
    assert_eq!(empty["epoch"], 0, "{empty}");
    assert_eq!(empty["nodes"].as_array().map(Vec::len), Some(0), "{empty}");

    let (code, text) = tokio::task::block_in_place(|| bootstrap(&cluster, &every_node(&cluster)));
    assert_eq!(code, Some(0), "bootstrap failed:\n{text}");
    let joined = view(&cluster).await;
    let nodes = joined["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 3, "{joined}");
    for (i, node) in cluster.nodes.iter().enumerate() {
        let n = nodes
            .iter()
            .find(|n| n["node_id"] == format!("node-{i}"))
            .unwrap_or_else(|| panic!("node-{i} is not a member: {joined}"));
        assert_eq!(n["address"], node.url());
    }
    let epoch = joined["epoch"].as_u64().expect("epoch");
    assert!(epoch >= 3, "three joins, three epochs at least: {joined}");
    cluster.wait_routable(3).await;

    // Again: every node is a member, nothing changes.
    let (code, text) = tokio::task::block_in_place(|| bootstrap(&cluster, &every_node(&cluster)));
    assert_eq!(code, Some(0), "a second bootstrap failed:\n{text}");
    assert_eq!(text.matches("is a member").count(), 3, "{text}");
    assert_eq!(view(&cluster).await["epoch"].as_u64(), Some(epoch));

    // A node id given another member's address is refused, and changes nothing.
    let spec = format!("node-9={}", cluster.nodes[0].url());
    let (code, text) = tokio::task::block_in_place(|| bootstrap(&cluster, &[spec]));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("is the address of member node-0"), "{text}");
    assert_eq!(view(&cluster).await["epoch"].as_u64(), Some(epoch));
}
