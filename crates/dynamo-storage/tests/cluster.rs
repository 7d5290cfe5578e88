//! The node knowing the cluster: heartbeats to the ring service, the cached ring, and
//! invariant 5 (a ring epoch never goes backwards on a node), through real HTTP against a
//! fake ring service on loopback.

mod common;

use common::fake_ring::{FakeRing, ring_of, state_of};
use common::*;
use dynamo_core::ring::{Member, Ring};
use dynamo_core::wire::cluster::{ChangeKindName, ChangeSummary, ClusterState};
use dynamo_core::wire::internal::ReplicaResult;
use dynamo_core::{DotSet, ErrorCode, NodeId, VolumeId};

const VIOLATIONS: &str = "dynamo_invariant_violations_total{invariant=\"ring_epoch_monotonic\"}";

#[derive(serde::Deserialize)]
struct View {
    ring_epoch: u64,
    state: Option<ClusterState>,
}

async fn view(url: &str) -> View {
    client()
        .get(format!("{url}/internal/v1/cluster-state"))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("view json")
}

async fn start_following(dir: &std::path::Path, node_id: &str, ring_url: &str) -> InProcess {
    let mut config = dynamo_storage::Config::for_dir(dir);
    config.node_id = Some(node_id.into());
    config.ring_url = Some(ring_url.into());
    config.heartbeat_interval_ms = 50;
    start_with(config).await
}

/// Rings of epochs 1, 2 and 3 (each a join of one more node).
fn rings() -> (Ring, Ring, Ring) {
    let r1 = ring_of(&[
        ("node-a", "http://127.0.0.1:1".into()),
        ("node-b", "http://127.0.0.1:2".into()),
    ]);
    let add = |r: &Ring, id: &str| {
        r.with_member_added(NodeId::new(id).expect("id"), Member::default())
            .expect("join")
    };
    let r2 = add(&r1, "node-c");
    let r3 = add(&r2, "node-d");
    (r1, r2, r3)
}

// Goal: the node adopts the ring the ring service publishes, refuses a later document
// carrying an older ring epoch (counting the breach of invariant 5 and keeping its view),
// and adopts the next newer ring. Method: a fake ring service publishes epoch 2, then
// epoch 1 under a larger document version, then epoch 3; the node's read-only view and
// its metrics are polled, each wait bounded.
#[tokio::test]
async fn the_node_caches_the_ring_and_refuses_an_older_epoch() {
    let (r1, r2, r3) = rings();
    let ring = FakeRing::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_following(dir.path(), "node-a", &ring.url).await;
    assert_eq!(
        view(&node.url()).await.ring_epoch,
        0,
        "no ring before the first state"
    );
    assert_eq!(metric(&node.url(), VIOLATIONS).await, 0.0);

    ring.publish(state_of(1, &r2));
    eventually("epoch 2 adopted", || async {
        view(&node.url()).await.ring_epoch == 2
    })
    .await;
    let v = view(&node.url()).await;
    assert_eq!(v.state.expect("state").ring.as_ref(), Some(&r2));
    assert_eq!(metric(&node.url(), "dynamo_storage_ring_epoch").await, 2.0);

    // An older ring under a newer document version: refused, counted, view unchanged.
    ring.publish(state_of(2, &r1));
    eventually("older ring refused", || async {
        metric(&node.url(), VIOLATIONS).await >= 1.0
    })
    .await;
    let v = view(&node.url()).await;
    assert_eq!(v.ring_epoch, 2);
    let s = v.state.expect("state");
    assert_eq!((s.version, s.ring.as_ref()), (1, Some(&r2)));

    // The next newer ring is adopted as usual.
    ring.publish(state_of(3, &r3));
    eventually("epoch 3 adopted", || async {
        view(&node.url()).await.ring_epoch == 3
    })
    .await;
    assert_eq!(metric(&node.url(), VIOLATIONS).await, 1.0, "one refusal only");
    node.shutdown().await;
    ring.stop();
}

// Goal: a restarted node has the last ring it saw even though the ring service is gone,
// and the epoch floor survives the restart: a ring service that comes back with an older
// ring is refused. Method: learn epoch 2, stop node and ring service, restart the node
// pointing at a closed port and read its view; then start a fake ring serving epoch 1.
#[tokio::test]
async fn a_restarted_node_has_the_last_ring_without_the_ring_service() {
    let (r1, r2, _) = rings();
    let ring = FakeRing::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_following(dir.path(), "node-a", &ring.url).await;
    ring.publish(state_of(7, &r2));
    eventually("epoch 2 adopted", || async {
        view(&node.url()).await.ring_epoch == 2
    })
    .await;
    // The node's first heartbeat binds its volume, a newer version of the same state.
    eventually("volume bound", || async {
        metric(&node.url(), "dynamo_storage_volume_unconfirmed").await == 0.0
    })
    .await;
    let seen = view(&node.url()).await.state.expect("state").version;
    node.shutdown().await;
    ring.stop();

    // Nothing listens on port 1: the ring service is away.
    let node = start_following(dir.path(), "node-a", "http://127.0.0.1:1").await;
    let v = view(&node.url()).await;
    assert_eq!(v.ring_epoch, 2);
    let s = v.state.expect("cached state");
    assert_eq!((s.version, s.ring.as_ref()), (seen, Some(&r2)));
    assert_eq!(metric(&node.url(), "dynamo_storage_ring_epoch").await, 2.0);
    node.shutdown().await;

    let ring = FakeRing::start().await;
    ring.publish(state_of(9, &r1));
    let node = start_following(dir.path(), "node-a", &ring.url).await;
    eventually("older ring refused after restart", || async {
        metric(&node.url(), VIOLATIONS).await >= 1.0
    })
    .await;
    assert_eq!(view(&node.url()).await.ring_epoch, 2);
    node.shutdown().await;
    ring.stop();
}

// Goal: heartbeats reach the ring service with the node's id and advertised address, go
// on while the node is not a member yet (404), and are answered once it is. Method: a
// fake ring service answers 404 until it is told to accept the node.
#[tokio::test]
async fn heartbeats_arrive_with_the_advertised_address() {
    let ring = FakeRing::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_following(dir.path(), "node-a", &ring.url).await;
    eventually("three heartbeats while not a member", || async {
        ring.heartbeats().len() >= 3
    })
    .await;
    for beat in ring.heartbeats() {
        assert_eq!(beat.node_id.as_str(), "node-a");
        assert_eq!(
            beat.address,
            node.url(),
            "default advertise address is the bound one"
        );
    }
    assert!(
        metric(
            &node.url(),
            "dynamo_storage_heartbeats_total{result=\"not_member\"}"
        )
        .await
            >= 3.0
    );

    ring.accept("node-a");
    eventually("a heartbeat accepted", || async {
        metric_opt(&node.url(), "dynamo_storage_heartbeats_total{result=\"ok\"}")
            .await
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(ring.state_polls() >= 1, "the state is followed too");
    node.shutdown().await;

    // The flag overrides the advertised address.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = dynamo_storage::Config::for_dir(dir.path());
    config.node_id = Some("node-b".into());
    config.ring_url = Some(ring.url.clone());
    config.heartbeat_interval_ms = 50;
    config.advertise_address = Some("http://node-b.storage:7100".into());
    let node = start_with(config).await;
    eventually("a heartbeat from node-b", || async {
        ring.heartbeats()
            .iter()
            .any(|b| b.node_id.as_str() == "node-b" && b.address == "http://node-b.storage:7100")
    })
    .await;
    node.shutdown().await;
    ring.stop();
}

/// The code a coordinated write on `url` is answered with (`None`: stored).
async fn write_refusal(url: &str) -> Option<ErrorCode> {
    let r = batch(url, vec![put_op("b", "k", b"v", DotSet::new())]).await;
    match r.results.into_iter().next() {
        Some(ReplicaResult::Put { .. }) => None,
        Some(ReplicaResult::Error { code, .. }) => Some(code),
        other => panic!("unexpected {other:?}"),
    }
}

async fn listing_status(url: &str) -> u16 {
    client()
        .get(format!("{url}/internal/v1/buckets/b/keys"))
        .send()
        .await
        .expect("send")
        .status()
        .as_u16()
}

// Goal: a node whose new (empty) volume stands in for a member bound to another volume
// (the member's disk was lost) takes no part in the data path: replica operations answer
// `volume_unconfirmed` (each provably not applied), listings 503, also after a restart
// (the marker is durable); once the ring binds the new volume it still refuses while the
// replace in place copies into it, and serves from the catch-up on. Method: a fake ring
// service publishes each stage; a write and a listing probe the gate, each wait bounded.
#[tokio::test]
async fn a_new_volume_under_a_bound_member_serves_only_once_its_refill_copied() {
    let ring = FakeRing::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_following(dir.path(), "node-a", &ring.url).await;
    let r = ring_of(&[("node-a", node.url()), ("node-b", "http://127.0.0.1:2".into())]);
    let me = NodeId::new("node-a").expect("id");
    let with = |version: u64, volume: VolumeId, phase: Option<&str>| {
        let mut s = state_of(version, &r);
        for n in &mut s.nodes {
            if n.node_id == me {
                n.volume = Some(volume);
            }
        }
        s.change = phase.map(|phase| ChangeSummary {
            kind: ChangeKindName::Replace,
            node: me.clone(),
            replacement: Some(me.clone()),
            phase: phase.into(),
            epoch: dynamo_core::RingEpoch(2),
            failed: None,
        });
        s
    };
    let lost = VolumeId(1);
    ring.publish(with(1, lost, None));
    eventually("state adopted", || async {
        view(&node.url()).await.ring_epoch == 1
    })
    .await;
    assert_eq!(
        write_refusal(&node.url()).await,
        Some(ErrorCode::VolumeUnconfirmed)
    );
    assert_eq!(listing_status(&node.url()).await, 503);
    assert_eq!(
        metric(&node.url(), "dynamo_storage_volume_unconfirmed").await,
        1.0
    );

    node.shutdown().await;
    let node = start_following(dir.path(), "node-a", &ring.url).await;
    assert_eq!(
        write_refusal(&node.url()).await,
        Some(ErrorCode::VolumeUnconfirmed),
        "a restart does not make the new volume trusted"
    );

    #[derive(serde::Deserialize)]
    struct Info {
        volume: VolumeId,
    }
    let info: Info = client()
        .get(format!("{}/internal/v1/node", node.url()))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    assert_ne!(info.volume, lost);
    ring.publish(with(2, info.volume, Some("copy")));
    eventually("refill seen", || async {
        view(&node.url()).await.state.is_some_and(|s| s.change.is_some())
    })
    .await;
    assert_eq!(
        write_refusal(&node.url()).await,
        Some(ErrorCode::VolumeUnconfirmed),
        "bound, but still being copied into"
    );
    ring.publish(with(3, info.volume, Some("catch_up")));
    eventually("serves from the catch-up on", || async {
        write_refusal(&node.url()).await.is_none()
    })
    .await;
    assert_eq!(listing_status(&node.url()).await, 200);
    assert_eq!(
        metric(&node.url(), "dynamo_storage_volume_unconfirmed").await,
        0.0
    );
    node.shutdown().await;
    ring.stop();
}

// Goal: `--ring-url` takes several replicas and the node passes one it cannot connect
// to: with a closed address first and the fake ring service second, heartbeats reach the
// fake (and are answered once the node is a member), the state it publishes is adopted,
// and a release is acknowledged there. Method: one node following "closed,fake"; each
// wait bounded.
#[tokio::test]
async fn a_closed_first_ring_replica_is_passed_for_the_next() {
    let ring = FakeRing::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let urls = format!("{},{}", dynamo_testkit::closed_address(), ring.url);
    let node = start_following(dir.path(), "node-a", &urls).await;

    ring.accept("node-a");
    eventually("a heartbeat accepted", || async {
        metric_opt(&node.url(), "dynamo_storage_heartbeats_total{result=\"ok\"}")
            .await
            .is_some_and(|n| n >= 1.0)
    })
    .await;
    assert!(
        ring.heartbeats().iter().all(|b| b.node_id.as_str() == "node-a"),
        "the fake took the node's heartbeats"
    );

    let (_, r2, _) = rings();
    let mut state = state_of(1, &r2);
    // A release of a partition the node still holds: nothing to delete, acknowledged.
    state.releases = vec![dynamo_core::wire::cluster::Release {
        node: NodeId::new("node-a").expect("id"),
        epoch: r2.epoch(),
        partitions: vec![dynamo_core::PartitionId(0)],
    }];
    ring.publish(state);
    eventually("epoch 2 adopted", || async {
        view(&node.url()).await.ring_epoch == 2
    })
    .await;
    eventually("the release acknowledged", || async {
        ring.releases_done()
            .iter()
            .any(|d| d.node.as_str() == "node-a" && d.epoch == r2.epoch())
    })
    .await;
    node.shutdown().await;
    ring.stop();
}
