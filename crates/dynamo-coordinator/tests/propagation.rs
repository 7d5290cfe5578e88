//! The coordinator forwards the client's request id and W3C trace to storage nodes, so
//! one PUT is one trace across services. Drives a real coordinator in-process against a
//! fake ring service and a fake storage node that records what it receives.

mod common;

use std::collections::BTreeMap;

use common::{Behaviour, Coordinator, FakeNode, TOKEN};
use dynamo_core::NodeId;

// Goal: a client's x-request-id and traceparent reach the storage node with the same
// request id and trace id (and a new span id).
#[tokio::test]
async fn request_id_and_trace_reach_the_storage_nodes() {
    let node = FakeNode::new(1, Behaviour::Normal);
    let members = BTreeMap::from([(NodeId::new("node-0").expect("id"), Some(node.serve().await))]);
    let ring_url = common::fake_ring_service(common::ring(8, members)).await;
    let coordinator = Coordinator::start(ring_url, |_| {}).await;
    let url = coordinator.url.clone();

    let http = dynamo_testkit::unsigned_http();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let resp = http
        .put(format!("{url}/v1/kv/b/k?w=1"))
        .bearer_auth(TOKEN)
        .header("x-request-id", "req-42")
        .header("traceparent", format!("00-{trace}-00f067aa0ba902b7-01"))
        .body("v")
        .send()
        .await
        .expect("put");
    assert_eq!(resp.status().as_u16(), 204);
    assert_eq!(resp.headers()["x-request-id"], "req-42");

    let seen = node.headers.lock().expect("lock").clone();
    assert!(!seen.is_empty());
    for (rid, tp) in seen {
        assert_eq!(rid.as_deref(), Some("req-42"));
        let tp = tp.expect("traceparent sent");
        assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
        assert!(!tp.contains("00f067aa0ba902b7"), "a new span id per hop");
    }
    coordinator.stop().await;
}
