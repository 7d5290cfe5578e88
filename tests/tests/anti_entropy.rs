//! Anti-entropy end to end (issue 13): a real cluster of processes converges without
//! reads.

use std::time::Instant;

use dynamo_testkit::eventually;
use dynamo_tests::{Cluster, Options};
use futures::StreamExt as _;
use reqwest::Method;

const KEYS: usize = 10_000;
const BUCKET: &str = "cold";

// Goal: a storage node that was down while 10 000 keys were written holds every one of
// them after it comes back, through anti-entropy alone: nothing reads the keys (no read
// repair), and with three nodes and n = 3 there is no fallback to hold hints. Every key
// is checked on every node directly; the time it took is printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_ten_thousand_writes_converges_without_reads() {
    let mut c = Cluster::start(Options {
        storage_args: vec![
            "--anti-entropy-interval-ms".into(),
            "500".into(),
            "--anti-entropy-tranquility".into(),
            "0".into(),
        ],
        ..Options::default()
    })
    .await;
    c.nodes[2].kill9();

    let keys: Vec<String> = (0..KEYS).map(|i| format!("k{i:05}")).collect();
    let written = Instant::now();
    let results: Vec<(String, reqwest::StatusCode)> = futures::stream::iter(keys.iter().cloned())
        .map(|k| {
            let c = &c;
            async move {
                let status = c
                    .req(Method::PUT, &format!("/v1/kv/{BUCKET}/{k}"))
                    .header("content-type", "text/plain")
                    .body(format!("value of {k}"))
                    .send()
                    .await
                    .expect("put")
                    .status();
                (k, status)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    for (k, status) in &results {
        assert!(status.is_success(), "put {k}: {status}");
    }
    println!("wrote {KEYS} keys with node-2 down in {:?}", written.elapsed());
    c.nodes[2].start();
    dynamo_tests::wait_ready(&c.nodes[2].url()).await;
    let missing = c
        .node_get_many(2, BUCKET, &keys)
        .await
        .iter()
        .filter(|o| o.is_none())
        .count();
    println!("node-2 lacked {missing} of the {KEYS} keys when it came back");
    let restarted = Instant::now();
    eventually("node-2 holds every key", || async {
        c.node_get_many(2, BUCKET, &keys)
            .await
            .iter()
            .all(Option::is_some)
    })
    .await;
    println!(
        "anti-entropy brought node-2 all {KEYS} keys {:?} after its restart",
        restarted.elapsed()
    );
    for node in 0..3 {
        let held = c.node_get_many(node, BUCKET, &keys).await;
        for (k, o) in keys.iter().zip(&held) {
            let o = o.as_ref().unwrap_or_else(|| panic!("node-{node} lacks {k}"));
            let values: Vec<&[u8]> = o.live_siblings().map(|s| s.value.as_slice()).collect();
            assert_eq!(
                values,
                vec![format!("value of {k}").as_bytes()],
                "node-{node} {k}"
            );
        }
    }
    async fn view(c: &Cluster) -> dynamo_core::wire::cluster::ClusterView {
        let r = c.req(Method::GET, "/v1/cluster").send().await.expect("cluster");
        assert!(r.status().is_success(), "{}", r.status());
        r.json().await.expect("json")
    }
    // The cluster view carries each node's progress: every partition node-0 compares
    // (all of them: its id sorts first) confirmed in sync after node-2 came back, and
    // the keys counted where they were pushed from.
    let back_ms = dynamo_testkit::now_ms() - restarted.elapsed().as_millis() as u64;
    eventually(
        "node-0 confirms every partition after node-2's return",
        || async {
            let v = view(&c).await;
            v.nodes
                .iter()
                .find(|n| n.node_id.as_str() == "node-0")
                .and_then(|n| n.anti_entropy)
                .and_then(|ae| ae.oldest_partition_ms)
                .is_some_and(|ms| ms >= back_ms)
        },
    )
    .await;
    let v = view(&c).await;
    let mut pushed = 0;
    for n in &v.nodes {
        let ae = n
            .anti_entropy
            .unwrap_or_else(|| panic!("{} reported no progress", n.node_id));
        assert!(ae.enabled && ae.passes >= 1, "{}: {ae:?}", n.node_id);
        assert!(ae.last_pass_ms.is_some(), "{}: {ae:?}", n.node_id);
        pushed += ae.keys_pushed;
    }
    assert!(
        pushed >= KEYS as u64,
        "the keys came by anti-entropy ({pushed} pushed)"
    );
}
