//! Membership changes end to end: the ring service in-process, fake storage nodes that
//! record the pull requests of each handoff.

mod common;

use std::collections::BTreeSet;

use axum::http::StatusCode;
use common::*;
use dynamo_core::ring::Member;
use dynamo_core::wire::cluster::{KeyPlacement, NodeState};
use dynamo_core::{NodeId, PartitionId};
use serde_json::{Value, json};

/// Checks that the recorded pulls are exactly `expected`, each once in the copy round
/// (seeing the old epoch: the ring was not yet published) and once in the catch-up round
/// (seeing the new one).
fn assert_pulls_match(recorded: &[(NodeId, u32, NodeId, u64)], expected: &[(NodeId, u32, NodeId)], old: u64) {
    let strip = |e: u64| -> Vec<(NodeId, u32, NodeId)> {
        let mut v: Vec<_> = recorded
            .iter()
            .filter(|r| r.3 == e)
            .map(|(a, b, c, _)| (a.clone(), *b, c.clone()))
            .collect();
        v.sort();
        v
    };
    assert!(!expected.is_empty(), "the change moves something");
    assert_eq!(strip(old), expected, "copy round, before the ring is published");
    assert_eq!(
        strip(old + 1),
        expected,
        "catch-up round, after the ring is published"
    );
    assert_eq!(recorded.len(), 2 * expected.len(), "no other pulls");
}

fn assert_balanced(r: &dynamo_core::ring::Ring) {
    let q = r.owners().len();
    let s = r.members().len();
    for m in r.members().keys() {
        let c = r.partitions_of(m).len();
        assert!(c == q / s || c == q.div_ceil(s), "{m} owns {c} of {q}");
    }
}

// Goal: three joins make epochs 1, 2, 3 and a balanced ring whose preference lists hold
// three distinct nodes; the key placement route agrees with core.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_joins_make_a_balanced_ring_with_epochs_one_to_three() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = start(config(dir.path())).await;
    let (s, v) = call("GET", &format!("{}/internal/v1/ring", ring.url), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("ring_unavailable"))
    );

    let nodes = [
        FakeNode::start("node-a", &ring.url).await,
        FakeNode::start("node-b", &ring.url).await,
        FakeNode::start("node-c", &ring.url).await,
    ];
    let mut versions = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let s = join_and_wait(&ring.url, n, i as u64 + 1).await;
        versions.push(s.version);
        let r = s.ring.expect("ring");
        assert_eq!(r.members().len(), i + 1);
        assert_eq!(r.members()[&id(&n.id)].address.as_deref(), Some(n.url.as_str()));
        assert_balanced(&r);
    }
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
    // Joins move replicas only to the newcomer: the first node never receives anything.
    assert!(nodes[0].pulls().is_empty());
    assert_eq!(
        nodes[1].pulls().len(),
        2 * 32,
        "b copied everything from a, twice"
    );

    let r = ring_of(&ring.url).await;
    for p in 0..32 {
        let pl = r.preference_list(PartitionId(p), 3).preference_list;
        assert_eq!(pl.iter().collect::<BTreeSet<_>>().len(), 3, "partition {p}");
    }
    let (s, v) = call(
        "GET",
        &format!("{}/internal/v1/ring?bucket=photos&key=cat.jpg", ring.url),
        None,
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let placed: KeyPlacement = serde_json::from_value(v).expect("placement");
    let want = r.preference_list_for(dynamo_core::key_hash("photos", "cat.jpg"), 3);
    assert_eq!(placed.preference_list, want.preference_list);
    assert_eq!(placed.epoch.0, 3);

    let view = cluster_view(&ring.url).await;
    assert_eq!(view.epoch.0, 3);
    assert!(view.handoffs.is_empty());
    assert!(view.nodes.iter().all(|n| n.state == NodeState::Up), "{view:?}");
    assert_eq!(metric(&ring.url, "dynamo_ring_epoch").await, 3.0);
    assert_eq!(metric(&ring.url, "dynamo_ring_members").await, 3.0);
    ring.shutdown().await;
}

// Goal: a join sends exactly the pulls the plan computed from core's preference lists
// asks for (receiver, partition, source), all before the new ring is published, then
// the same again as catch-up; the published ring is core's `with_member_added`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_pulls_exactly_the_planned_partitions_before_publishing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = start(config(dir.path())).await;
    let a = FakeNode::start("node-a", &ring.url).await;
    let b = FakeNode::start("node-b", &ring.url).await;
    let c = FakeNode::start("node-c", &ring.url).await;
    join_and_wait(&ring.url, &a, 1).await;
    // The first join has nothing to copy; the second copies everything to b.
    assert!(a.pulls().is_empty());
    join_and_wait(&ring.url, &b, 2).await;
    let old = ring_of(&ring.url).await;
    for n in [&a, &b, &c] {
        n.clear();
    }

    let (s, v) = call(
        "POST",
        &format!("{}/internal/v1/nodes", ring.url),
        Some(c.registration()),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert!(
        v["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["node_id"] == "node-c" && n["state"] == "joining"),
        "{v}"
    );
    let done = wait_state(&ring.url, "the join of c", |s| {
        settled(s) && s.ring.as_ref().is_some_and(|r| r.epoch().0 == 3)
    })
    .await;

    let new = old
        .with_member_added(
            id("node-c"),
            Member {
                zone: None,
                address: Some(c.url.clone()),
            },
        )
        .expect("core join");
    assert_eq!(
        done.ring.as_ref().expect("ring"),
        &new,
        "the published ring is core's"
    );
    let expected = expected_pulls(&old, &new, 3, &[]);
    assert!(expected.iter().all(|(to, _, _)| *to == id("node-c")));
    let recorded = recorded_pulls(&[&a, &b, &c]);
    assert_pulls_match(&recorded, &expected, 2);
    ring.shutdown().await;
}

// Goal: a decommission copies the leaver's replicas to the nodes that take them over,
// from every holder (the leaver included: it may hold writes the others lack),
// publishes the ring without it only after, forgets the leaver, and then releases
// exactly the leaver's partitions from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decommission_hands_off_then_removes_the_leaver() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = start(config(dir.path())).await;
    let nodes = [
        FakeNode::start("node-a", &ring.url).await,
        FakeNode::start("node-b", &ring.url).await,
        FakeNode::start("node-c", &ring.url).await,
        FakeNode::start("node-d", &ring.url).await,
    ];
    for (i, n) in nodes.iter().enumerate() {
        join_and_wait(&ring.url, n, i as u64 + 1).await;
    }
    let old = ring_of(&ring.url).await;
    nodes.iter().for_each(FakeNode::clear);

    let (s, v) = call("DELETE", &format!("{}/internal/v1/nodes/node-b", ring.url), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    assert!(
        v["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["node_id"] == "node-b" && n["state"] == "leaving"),
        "{v}"
    );
    let done = wait_state(&ring.url, "the decommission", |s| {
        settled(s) && s.ring.as_ref().is_some_and(|r| r.epoch().0 == 5)
    })
    .await;

    let new = old.with_member_removed(&id("node-b")).expect("core removal");
    assert_eq!(done.ring.as_ref().expect("ring"), &new);
    let expected = expected_pulls(&old, &new, 3, &[]);
    assert!(expected.iter().all(|(to, _, _)| *to != id("node-b")));
    assert!(
        expected.iter().any(|(_, _, from)| *from == id("node-b")),
        "the leaver is a source"
    );
    let recorded = recorded_pulls(&nodes.iter().collect::<Vec<_>>());
    assert_pulls_match(&recorded, &expected, 4);
    wait_state(&ring.url, "the release acknowledged", |s| s.releases.is_empty()).await;
    let released = expected_releases(&old, &new, 3);
    assert_eq!(
        released.keys().collect::<Vec<_>>(),
        vec![&id("node-b")],
        "only the leaver lets go"
    );
    assert_eq!(nodes[1].released(), released[&id("node-b")]);
    let held: Vec<u32> = (0..32)
        .filter(|&p| {
            old.preference_list(PartitionId(p), 3)
                .preference_list
                .contains(&id("node-b"))
        })
        .collect();
    assert_eq!(nodes[1].released(), held, "everything the leaver held");

    assert!(
        done.nodes.iter().all(|n| n.node_id != id("node-b")),
        "the leaver is gone"
    );
    assert!(!done.ring.expect("ring").members().contains_key(&id("node-b")));
    let (s, v) = call(
        "POST",
        &format!("{}/internal/v1/heartbeat", ring.url),
        Some(json!({"node_id": "node-b", "address": nodes[1].url})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("node_not_found"))
    );
    ring.shutdown().await;
}

// Goal: replacing a node that is down gives the new node exactly the old one's
// partitions, copied from the other replicas: the down node, which the receiver cannot
// reach, is skipped, and the change completes; the old node is then released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replacement_of_a_down_node_copies_from_the_other_replicas() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.heartbeat_timeout_ms = 1_000;
    let ring = start(cfg).await;
    let nodes = [
        FakeNode::start("node-a", &ring.url).await,
        FakeNode::start("node-b", &ring.url).await,
        FakeNode::start("node-c", &ring.url).await,
        FakeNode::start("node-d", &ring.url).await,
    ];
    let beats = heartbeat_loop(
        &ring.url,
        nodes[..2].iter().map(|n| (n.id.clone(), n.url.clone())).collect(),
    );
    for (i, n) in nodes[..3].iter().enumerate() {
        join_and_wait(&ring.url, n, i as u64 + 1).await;
    }
    wait_state(&ring.url, "node-c down", |s| {
        s.nodes
            .iter()
            .any(|n| n.node_id == id("node-c") && n.state == NodeState::Down)
    })
    .await;
    let old = ring_of(&ring.url).await;
    nodes.iter().for_each(FakeNode::clear);
    nodes[3].cannot_reach(Some(&nodes[2].url));

    let (s, v) = call(
        "POST",
        &format!("{}/internal/v1/nodes/node-c/replace", ring.url),
        Some(json!({"new_node": nodes[3].registration()})),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    let done = wait_state(&ring.url, "the replacement", |s| {
        settled(s) && s.ring.as_ref().is_some_and(|r| r.epoch().0 == 4)
    })
    .await;

    let new = old
        .with_member_replaced(
            &id("node-c"),
            id("node-d"),
            Member {
                zone: None,
                address: Some(nodes[3].url.clone()),
            },
        )
        .expect("core replace");
    assert_eq!(done.ring.as_ref().expect("ring"), &new);
    assert_eq!(new.partitions_of(&id("node-d")), old.partitions_of(&id("node-c")));
    let expected = expected_pulls(&old, &new, 3, &[id("node-c")]);
    assert!(
        expected
            .iter()
            .all(|(to, _, from)| *to == id("node-d") && *from != id("node-c"))
    );
    let recorded = recorded_pulls(&nodes.iter().collect::<Vec<_>>());
    assert_pulls_match(&recorded, &expected, 3);
    assert!(done.nodes.iter().all(|n| n.node_id != id("node-c")));
    assert!(metric(&ring.url, "dynamo_ring_handoff_pulls_total{result=\"skipped\"}").await >= 1.0);
    wait_state(&ring.url, "the release acknowledged", |s| s.releases.is_empty()).await;
    assert_eq!(
        nodes[2].released(),
        expected_releases(&old, &new, 3)[&id("node-c")]
    );
    beats.cancel();
    ring.shutdown().await;
}

// Goal: pulls that fail are retried with backoff, and the change completes once the
// receiver recovers; the retries are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pull_is_retried_and_the_change_completes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ring = start(config(dir.path())).await;
    let a = FakeNode::start("node-a", &ring.url).await;
    let b = FakeNode::start("node-b", &ring.url).await;
    join_and_wait(&ring.url, &a, 1).await;
    b.fail_next(5);
    join_and_wait(&ring.url, &b, 2).await;
    let pulls = b.pulls();
    // Every partition copied to b once per round despite the failures.
    let copied: BTreeSet<(u32, u64)> = pulls.iter().map(|p| (p.partition, p.epoch_seen)).collect();
    assert_eq!(copied.len(), 64, "32 partitions x 2 rounds");
    assert_eq!(pulls.len(), 64);
    assert_eq!(b.requests(), 64 + 5, "each failure was retried");
    assert!(metric(&ring.url, "dynamo_ring_handoff_pulls_total{result=\"retry\"}").await >= 5.0);
    ring.shutdown().await;
}

// Goal: a change whose pulls run out of attempts is marked failed without touching the
// ring; a retry resumes it after the receiver recovers, and an abort undoes a change
// whose ring is not yet published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_runs_out_of_attempts_fails_and_can_be_retried_or_aborted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.handoff_max_attempts = 2;
    let ring = start(cfg).await;
    let a = FakeNode::start("node-a", &ring.url).await;
    let b = FakeNode::start("node-b", &ring.url).await;
    let c = FakeNode::start("node-c", &ring.url).await;
    join_and_wait(&ring.url, &a, 1).await;

    let failed = |v: &Value| v["change"]["status"] == "failed";
    let wait_failed = || async {
        let last = std::sync::Mutex::new(Value::Null);
        dynamo_testkit::eventually("the change failed", || async {
            let (_, v) = call("GET", &format!("{}/internal/v1/change", ring.url), None).await;
            let done = failed(&v);
            *last.lock().expect("lock") = v;
            done
        })
        .await;
        last.into_inner().expect("lock")
    };

    b.fail_next(u32::MAX);
    let (s, _) = call(
        "POST",
        &format!("{}/internal/v1/nodes", ring.url),
        Some(b.registration()),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let v = wait_failed().await;
    assert!(
        v["change"]["reason"].as_str().expect("reason").contains("node-b"),
        "{v}"
    );
    assert_eq!(ring_of(&ring.url).await.epoch().0, 1, "nothing published");
    // Another change waits for this one.
    let (s, v) = call(
        "POST",
        &format!("{}/internal/v1/nodes", ring.url),
        Some(c.registration()),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("membership_conflict"))
    );

    b.fail_next(0);
    let (s, v) = call("POST", &format!("{}/internal/v1/change/retry", ring.url), None).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{v}");
    wait_state(&ring.url, "the retried join", |s| {
        settled(s) && s.ring.as_ref().is_some_and(|r| r.epoch().0 == 2)
    })
    .await;
    let (s, v) = call("POST", &format!("{}/internal/v1/change/retry", ring.url), None).await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (StatusCode::CONFLICT, Some("membership_conflict"))
    );

    c.fail_next(u32::MAX);
    let before = state(&ring.url).await;
    let (s, _) = call(
        "POST",
        &format!("{}/internal/v1/nodes", ring.url),
        Some(c.registration()),
    )
    .await;
    assert_eq!(s, StatusCode::ACCEPTED);
    wait_failed().await;
    let (s, v) = call("POST", &format!("{}/internal/v1/change/abort", ring.url), None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let after = state(&ring.url).await;
    assert_eq!(after.ring, before.ring, "an abort leaves the ring alone");
    assert_eq!(after.nodes, before.nodes, "the newcomer is forgotten");
    assert!(after.handoffs.is_empty());
    let (_, v) = call("GET", &format!("{}/internal/v1/change", ring.url), None).await;
    assert_eq!(v["change"], Value::Null);

    // The same join can be made again, and completes.
    c.fail_next(0);
    join_and_wait(&ring.url, &c, 3).await;
    ring.shutdown().await;
}

// Goal: a source the receiver cannot reach is skipped once liveness calls it down, the
// copy comes from the other holders, the change completes, and the holders that lost a
// partition to the newcomer (the down one included) are released from exactly those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_source_is_skipped_and_the_losers_are_released() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(dir.path());
    cfg.heartbeat_timeout_ms = 1_000;
    let ring = start(cfg).await;
    let nodes = [
        FakeNode::start("node-a", &ring.url).await,
        FakeNode::start("node-b", &ring.url).await,
        FakeNode::start("node-c", &ring.url).await,
        FakeNode::start("node-d", &ring.url).await,
    ];
    let beats = heartbeat_loop(
        &ring.url,
        nodes[1..].iter().map(|n| (n.id.clone(), n.url.clone())).collect(),
    );
    for (i, n) in nodes[..3].iter().enumerate() {
        join_and_wait(&ring.url, n, i as u64 + 1).await;
    }
    wait_state(&ring.url, "node-a down", |s| {
        s.nodes
            .iter()
            .any(|n| n.node_id == id("node-a") && n.state == NodeState::Down)
    })
    .await;
    let old = ring_of(&ring.url).await;
    nodes.iter().for_each(FakeNode::clear);
    nodes[3].cannot_reach(Some(&nodes[0].url));
    join_and_wait(&ring.url, &nodes[3], 4).await;
    let new = ring_of(&ring.url).await;
    let expected = expected_pulls(&old, &new, 3, &[id("node-a")]);
    let recorded = recorded_pulls(&nodes.iter().collect::<Vec<_>>());
    assert_pulls_match(&recorded, &expected, 3);
    assert!(
        nodes[3].pulls().iter().all(|p| p.source != nodes[0].url),
        "never from the unreachable source"
    );
    assert!(metric(&ring.url, "dynamo_ring_handoff_pulls_total{result=\"skipped\"}").await >= 1.0);

    wait_state(&ring.url, "the releases acknowledged", |s| s.releases.is_empty()).await;
    let released = expected_releases(&old, &new, 3);
    assert!(!released.is_empty(), "a join takes partitions from someone");
    for n in &nodes {
        assert_eq!(
            n.released(),
            released.get(&id(&n.id)).cloned().unwrap_or_default(),
            "{}",
            n.id
        );
    }
    beats.cancel();
    ring.shutdown().await;
}
