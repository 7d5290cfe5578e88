//! The coordinator's write and read rules under failures (issue 10), against a real
//! coordinator in-process, a fake ring service, and fake storage nodes whose behaviour
//! each test scripts: at most once (a coordinate that may have applied is never retried
//! elsewhere; one refused past its deadline is), and a fallback's "not found" is no vote.

mod common;

use std::collections::BTreeMap;

use common::{Behaviour, Coordinator, FakeNode, TOKEN};
use dynamo_core::version::{ConflictRule, NewWrite, VersionedObject};
use dynamo_core::{ActorId, DotSet, NodeId, key_hash};

struct Setup {
    url: String,
    nodes: BTreeMap<NodeId, FakeNode>,
    /// The key's preference list (3 owners) then its fallback.
    order: Vec<NodeId>,
    coordinator: Coordinator,
}

impl Setup {
    fn node(&self, i: usize) -> &FakeNode {
        &self.nodes[&self.order[i]]
    }

    fn coordinates(&self) -> usize {
        self.nodes.values().map(FakeNode::coordinates).sum()
    }

    async fn stop(self) {
        self.coordinator.stop().await;
    }
}

/// Four fake nodes (N = 3 plus one fallback for key `b/k`); `behaviour(i)` scripts the
/// i-th node of the key's order (0..3 owners, 3 the fallback); `None` is a dead node.
async fn start(behaviour: impl Fn(usize) -> Option<Behaviour>) -> Setup {
    let ids: BTreeMap<NodeId, Option<String>> = (0..4)
        .map(|i| (NodeId::new(format!("node-{i}")).expect("id"), None))
        .collect();
    let pl = common::ring(8, ids).preference_list_for(key_hash("b", "k"), 3);
    let mut order = pl.preference_list.clone();
    order.extend(pl.fallbacks.iter().cloned());
    assert_eq!(order.len(), 4);

    let mut nodes = BTreeMap::new();
    let mut members = BTreeMap::new();
    for (i, id) in order.iter().enumerate() {
        let fake = FakeNode::new(i as u64 + 1, behaviour(i).unwrap_or(Behaviour::Normal));
        let address = match behaviour(i) {
            Some(_) => fake.serve().await,
            None => dynamo_testkit::closed_address(),
        };
        nodes.insert(id.clone(), fake);
        members.insert(id.clone(), Some(address));
    }
    let ring = common::ring(8, members);
    assert_eq!(
        ring.preference_list_for(key_hash("b", "k"), 3).preference_list,
        pl.preference_list,
        "addresses do not move partitions"
    );
    let ring_url = common::fake_ring_service(ring).await;
    let coordinator = Coordinator::start(ring_url, |c| {
        c.replica_timeout_ms = 300;
        c.request_timeout_ms = 2_000;
    })
    .await;
    Setup {
        url: coordinator.url.clone(),
        nodes,
        order,
        coordinator,
    }
}

async fn put(url: &str) -> reqwest::Response {
    dynamo_testkit::unsigned_http()
        .put(format!("{url}/v1/kv/b/k"))
        .bearer_auth(TOKEN)
        .body("v")
        .send()
        .await
        .expect("put")
}

// Goal (regression, issue 10): a coordinate that timed out may have minted the write, so
// it is not retried on another node: the client gets an indeterminate 503 and exactly one
// node ever saw a coordinate. Before, the write was coordinated again on a fallback and
// could take effect twice under two dots.
#[tokio::test]
async fn a_coordinate_that_timed_out_is_not_retried_elsewhere() {
    let s = start(|i| {
        Some(if i == 0 {
            Behaviour::HangCoordinate
        } else {
            Behaviour::Normal
        })
    })
    .await;
    let r = put(&s.url).await;
    assert_eq!(r.status().as_u16(), 503);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "quorum_unavailable");
    assert_eq!(s.coordinates(), 1, "the write was coordinated once");
    assert!(
        s.nodes.values().all(|n| n.object.lock().expect("lock").is_none()),
        "nothing was stored elsewhere"
    );
    s.stop().await;
}

// Goal: a coordinate the node refused (here: past its deadline) did not apply, so it is
// retried on the next node and the write succeeds; coordinates carry a deadline.
#[tokio::test]
async fn a_coordinate_refused_past_its_deadline_is_retried_on_the_next_node() {
    let s = start(|i| {
        Some(if i == 0 {
            Behaviour::RefuseCoordinate
        } else {
            Behaviour::Normal
        })
    })
    .await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    let r = put(&s.url).await;
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(
        s.coordinates(),
        2,
        "refused once, then coordinated by the next node"
    );
    let deadline = s.node(0).deadlines.lock().expect("lock")[0].expect("a deadline is sent");
    assert!(
        deadline > before && deadline <= before + 2_000 + 1_000,
        "deadline {deadline} vs now {before}"
    );
    s.stop().await;
}

// Goal (regression, issue 10): with one owner dead, a fallback asked in its place answers
// "not found" at once; that is no vote, so a stale fast owner and the fallback cannot make
// an existing key read 404 while the owner that holds it is slower.
#[tokio::test]
async fn a_fallbacks_not_found_does_not_count_toward_r() {
    let s = start(|i| match i {
        0 => None,
        1 => Some(Behaviour::SlowRead),
        _ => Some(Behaviour::Normal),
    })
    .await;
    let mut o = VersionedObject::new();
    o.put(
        &DotSet::new(),
        ActorId(9),
        NewWrite::value(b"kept".to_vec(), "text/plain", 1),
        ConflictRule::Siblings { max_siblings: 8 },
    )
    .expect("put");
    *s.node(1).object.lock().expect("lock") = Some(o);
    let r = dynamo_testkit::unsigned_http()
        .get(format!("{}/v1/kv/b/k", s.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("get");
    assert_eq!(r.status().as_u16(), 200, "the slower owner's copy is awaited");
    assert_eq!(r.text().await.expect("body"), "kept");
    s.stop().await;
}
