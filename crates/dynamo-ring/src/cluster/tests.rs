use super::*;
use dynamo_core::crdt::CrdtType;
use dynamo_core::wire::ConflictMode;
use dynamo_core::wire::cluster::Permission;

fn settings() -> Settings {
    Settings {
        partitioning: Partitioning::with_count(16).expect("q"),
        n: 3,
        early_release: false,
    }
}

fn id(s: &str) -> NodeId {
    NodeId::new(s).expect("id")
}

fn reg(s: &str, port: u16) -> NodeRegistration {
    NodeRegistration {
        node_id: id(s),
        address: format!("http://127.0.0.1:{port}"),
        zone: None,
    }
}

/// Drives a change to completion, as the worker would with all pulls succeeding.
fn complete(c: &mut Cluster) {
    let id = copy_and_publish(c, settings());
    catch_up_and_finish(c, id);
}

/// Every handoff of the change, done.
fn all_done(c: &Cluster) -> Vec<Handoff> {
    c.state
        .handoffs
        .iter()
        .map(|h| Handoff {
            done: true,
            ..h.clone()
        })
        .collect()
}

/// Runs a change's catch-up round and finishes it.
fn catch_up_and_finish(c: &mut Cluster, id: u64) {
    let done = all_done(c);
    c.record_progress(id, ChangePhase::CatchUp, &done, 0)
        .expect("progress");
    c.finish(id, &|_| true).expect("finish");
}

fn joined(names: &[&str]) -> Cluster {
    let mut c = Cluster::empty();
    for (i, n) in names.iter().enumerate() {
        c.begin(
            ChangeKind::Join {
                node: reg(n, 7100 + i as u16),
            },
            settings(),
        )
        .expect("join");
        complete(&mut c);
    }
    c
}

#[test]
fn joins_make_epochs_one_by_one_and_conflicts_are_refused() {
    let mut c = joined(&["a", "b", "c"]);
    assert_eq!(c.epoch(), RingEpoch(3));
    assert!(c.state.nodes.iter().all(|n| n.state == NodeState::Up));
    let before = c.clone();
    let e = c
        .begin(ChangeKind::Join { node: reg("a", 9999) }, settings())
        .expect_err("dup");
    assert_eq!(e.code(), ErrorCode::MembershipConflict);
    let e = c
        .begin(ChangeKind::Join { node: reg("d", 7100) }, settings())
        .expect_err("same address");
    assert_eq!(e.code(), ErrorCode::MembershipConflict);
    let e = c
        .begin(ChangeKind::Decommission { node: id("zz") }, settings())
        .expect_err("unknown");
    assert_eq!(e.code(), ErrorCode::NodeNotFound);
    assert_eq!(c, before, "refusals change nothing");

    c.begin(ChangeKind::Join { node: reg("d", 7200) }, settings())
        .expect("join d");
    assert_eq!(c.node(&id("d")).map(|n| n.state), Some(NodeState::Joining));
    assert_eq!(c.epoch(), RingEpoch(3), "the ring changes only at publish");
    let e = c
        .begin(ChangeKind::Decommission { node: id("a") }, settings())
        .expect_err("busy");
    assert_eq!(e.code(), ErrorCode::MembershipConflict);
}

#[test]
fn the_last_member_cannot_leave() {
    let mut c = joined(&["a"]);
    let e = c
        .begin(ChangeKind::Decommission { node: id("a") }, settings())
        .expect_err("last");
    assert_eq!(e.code(), ErrorCode::MembershipConflict);
    assert!(c.change.is_none());
}

#[test]
fn abort_restores_membership_only_before_publish() {
    let mut c = joined(&["a", "b"]);
    let before = c.clone();
    c.begin(ChangeKind::Decommission { node: id("b") }, settings())
        .expect("decommission");
    assert_eq!(c.node(&id("b")).map(|n| n.state), Some(NodeState::Leaving));
    c.abort(&|_| true).expect("abort");
    assert_eq!(c, before);

    c.begin(ChangeKind::Join { node: reg("x", 7300) }, settings())
        .expect("join");
    c.state.version += 1;
    let change = c.change.clone().expect("change");
    let done: Vec<Handoff> = c
        .state
        .handoffs
        .iter()
        .map(|h| Handoff {
            done: true,
            ..h.clone()
        })
        .collect();
    c.record_progress(change.id, ChangePhase::Copy, &done, 0)
        .expect("progress");
    c.publish(change.id, settings()).expect("publish");
    assert_eq!(
        c.abort(&|_| true).expect_err("published").code(),
        ErrorCode::MembershipConflict
    );
}

#[test]
fn publish_needs_every_copy_and_keeps_address_updates() {
    let mut c = joined(&["a"]);
    c.begin(ChangeKind::Join { node: reg("b", 7301) }, settings())
        .expect("join");
    c.state.version += 1;
    let change = c.change.clone().expect("change");
    assert_eq!(c.state.handoffs.len(), 16);
    assert_eq!(
        c.publish(change.id, settings())
            .expect_err("copies missing")
            .code(),
        ErrorCode::MembershipConflict
    );
    c.heartbeat(&Heartbeat {
        node_id: id("a"),
        address: "http://127.0.0.1:8888".into(),
        volume: None,
    })
    .expect("heartbeat");
    assert_eq!(c.epoch(), RingEpoch(2), "an address update is a new ring");
    let done: Vec<Handoff> = c
        .state
        .handoffs
        .iter()
        .map(|h| Handoff {
            done: true,
            ..h.clone()
        })
        .collect();
    c.record_progress(change.id, ChangePhase::Copy, &done, 0)
        .expect("progress");
    let epoch = c.publish(change.id, settings()).expect("publish");
    assert_eq!(epoch, RingEpoch(3));
    let ring = c.state.ring.as_ref().expect("ring");
    assert_eq!(
        ring.members()[&id("a")].address.as_deref(),
        Some("http://127.0.0.1:8888")
    );
    assert!(
        c.state.handoffs.iter().all(|h| !h.done),
        "catch-up round restarts"
    );
}

#[test]
fn liveness_transitions_never_touch_the_ring() {
    let mut c = joined(&["a", "b"]);
    let ring = c.state.ring.clone();
    let t = c.apply_liveness(&|n| n.as_str() != "b");
    assert_eq!(t, vec![(id("b"), NodeState::Down)]);
    assert!(c.apply_liveness(&|n| n.as_str() != "b").is_empty(), "no repeat");
    assert_eq!(c.state.ring, ring);
    c.heartbeat(&Heartbeat {
        node_id: id("b"),
        address: "http://127.0.0.1:7101".into(),
        volume: None,
    })
    .expect("heartbeat");
    assert_eq!(c.node(&id("b")).map(|n| n.state), Some(NodeState::Up));
    assert_eq!(c.state.ring, ring, "same address, same ring");
}

#[test]
fn buckets_validate_and_freeze_n_once_written() {
    let mut c = Cluster::empty();
    let b = BucketName::new("photos").expect("bucket");
    assert_eq!(c.bucket(&b).props, BucketProps::default());
    let bad = BucketPropsPatch {
        r: Some(9),
        ..Default::default()
    };
    assert_eq!(
        c.patch_bucket(&b, &bad).expect_err("r > n").code(),
        ErrorCode::InvalidBucketProperties
    );
    let n5 = BucketPropsPatch {
        n: Some(5),
        ..Default::default()
    };
    assert_eq!(c.patch_bucket(&b, &n5).expect("n=5").props.n, 5);
    c.mark_written(&b).expect("written");
    let n3 = BucketPropsPatch {
        n: Some(3),
        ..Default::default()
    };
    assert_eq!(
        c.patch_bucket(&b, &n3).expect_err("frozen").code(),
        ErrorCode::BucketNImmutable
    );
    assert!(c.patch_bucket(&b, &n5).is_ok(), "the same n is fine");
    let lww = BucketPropsPatch {
        conflict: Some(ConflictMode::Lww),
        ..Default::default()
    };
    assert!(
        c.patch_bucket(&b, &lww).is_ok(),
        "plain modes read the same values"
    );
    let counter = BucketPropsPatch {
        conflict: Some(ConflictMode::Crdt),
        crdt_type: Some(CrdtType::Counter),
        ..Default::default()
    };
    assert_eq!(
        c.patch_bucket(&b, &counter).expect_err("frozen type").code(),
        ErrorCode::BucketTypeImmutable
    );
    let fresh = BucketName::new("fresh").expect("bucket");
    assert!(
        c.patch_bucket(&fresh, &counter).is_ok(),
        "an empty bucket may become a CRDT bucket"
    );
    c.mark_written(&fresh).expect("written");
    let set = BucketPropsPatch {
        crdt_type: Some(CrdtType::Set),
        ..Default::default()
    };
    assert_eq!(
        c.patch_bucket(&fresh, &set).expect_err("frozen crdt type").code(),
        ErrorCode::BucketTypeImmutable
    );
    assert_eq!(
        c.patch_bucket(&fresh, &lww).expect_err("frozen crdt").code(),
        ErrorCode::BucketTypeImmutable
    );
}

#[test]
fn tokens_are_validated_and_unique() {
    let mut c = Cluster::empty();
    let t = TokenRecord {
        id: "tok1".into(),
        sha256: "a".repeat(64),
        buckets: BucketScope::Only(vec![BucketName::new("b").expect("bucket")]),
        permissions: vec![Permission::Read],
        created_ms: 1,
        expires_ms: None,
        rate_limit_rps: None,
    };
    c.add_token(t.clone()).expect("add");
    assert_eq!(
        c.add_token(t.clone()).expect_err("dup").code(),
        ErrorCode::InvalidRequest
    );
    let upper = TokenRecord {
        id: "tok2".into(),
        sha256: "A".repeat(64),
        ..t.clone()
    };
    assert!(c.add_token(upper).is_err());
    let none = TokenRecord {
        id: "tok3".into(),
        sha256: "b".repeat(64),
        permissions: vec![],
        ..t.clone()
    };
    assert!(c.add_token(none).is_err());
    assert_eq!(
        c.remove_token("nope").expect_err("missing").code(),
        ErrorCode::TokenNotFound
    );
    c.remove_token("tok1").expect("remove");
    assert!(c.state.tokens.is_empty());
    // An expiry must come after the creation, within ten years.
    for (expires, ok) in [
        (1, false),
        (2, true),
        (1 + MAX_TOKEN_TTL_S * 1000, true),
        (2 + MAX_TOKEN_TTL_S * 1000, false),
    ] {
        let timed = TokenRecord {
            id: format!("tok-{expires}"),
            sha256: format!("{expires:064x}"),
            expires_ms: Some(expires),
            ..t.clone()
        };
        assert_eq!(c.add_token(timed).is_ok(), ok, "expires at {expires}");
    }
}

#[test]
fn addresses_must_be_bare_http_urls() {
    for ok in [
        "http://127.0.0.1:7100",
        "https://node-0.dynamo.svc:7100/",
        "http://[::1]:1",
    ] {
        assert!(validate_address(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "127.0.0.1:7100",
        "ftp://x",
        "http://x/path",
        "http://x?q=1",
        "http://u:p@x",
        "http://",
        "http://x #",
    ] {
        assert!(validate_address(bad).is_err(), "{bad}");
    }
    assert!(validate_address(&format!("http://{}", "a".repeat(300))).is_err());
}

/// Acknowledges every pending release, as the nodes would after deleting.
fn release_all(c: &mut Cluster) {
    for r in c.state.releases.clone() {
        c.release_done(&ReleaseDone {
            node: r.node,
            epoch: r.epoch,
        })
        .expect("ack");
    }
    assert!(c.state.releases.is_empty());
}

/// Runs a change's copy round and publishes it.
fn copy_and_publish(c: &mut Cluster, s: Settings) -> u64 {
    c.state.version += 1;
    let change = c.change.clone().expect("a change");
    let done = all_done(c);
    c.record_progress(change.id, ChangePhase::Copy, &done, 0)
        .expect("progress");
    c.publish(change.id, s).expect("publish");
    change.id
}

// Goal: the old holders are told to let go only when the change finishes (every new
// holder confirmed its catch-up copy), with exactly the partitions they lost; an
// acknowledgement for an older epoch leaves a release in place.
#[test]
fn old_holders_are_released_only_when_the_change_finishes() {
    let mut c = joined(&["a", "b", "c", "d"]);
    release_all(&mut c);
    let old = c.state.ring.clone().expect("ring");
    c.begin(ChangeKind::Join { node: reg("e", 7300) }, settings())
        .expect("join");
    let id_e = copy_and_publish(&mut c, settings());
    assert!(c.state.releases.is_empty(), "nothing released at the publish");
    let new = c.state.ring.clone().expect("ring");
    let expected = crate::plan::releases(&old, &new, 3);
    assert!(!expected.is_empty(), "a join takes partitions from someone");
    catch_up_and_finish(&mut c, id_e);
    assert_eq!(c.state.releases, expected);

    let first = expected[0].clone();
    c.release_done(&ReleaseDone {
        node: first.node.clone(),
        epoch: RingEpoch(first.epoch.0 - 1),
    })
    .expect("ack");
    assert_eq!(
        c.state.releases.len(),
        expected.len(),
        "an older ack removes nothing"
    );
    c.release_done(&ReleaseDone {
        node: first.node.clone(),
        epoch: first.epoch,
    })
    .expect("ack");
    assert!(c.state.release_for(&first.node).is_none());
    assert_eq!(c.state.releases.len(), expected.len() - 1);
}

// Goal: the fault checker's negative control: with `early_release`, releases are written
// at the publish, before the catch-up.
#[test]
fn an_early_release_is_written_at_the_publish() {
    let mut c = joined(&["a", "b", "c", "d"]);
    release_all(&mut c);
    let early = Settings {
        early_release: true,
        ..settings()
    };
    c.begin(ChangeKind::Join { node: reg("e", 7300) }, early)
        .expect("join");
    copy_and_publish(&mut c, early);
    assert!(!c.state.releases.is_empty());
    assert_eq!(c.change.as_ref().map(|ch| ch.phase), Some(ChangePhase::CatchUp));
}

// Goal: a node that has not yet deleted a partition it let go cannot be planned to
// receive that partition again (its stale copy would merge into the fresh one); once
// it acknowledged, the same change is accepted.
#[test]
fn a_node_with_a_pending_release_cannot_receive_that_partition_again() {
    let mut c = joined(&["a", "b", "c", "d"]);
    assert!(!c.state.releases.is_empty(), "the join of d released partitions");
    let released: Vec<Release> = c.state.releases.clone();
    // Decommissioning d gives its partitions back to the nodes that released them.
    let before = c.clone();
    let e = c
        .begin(ChangeKind::Decommission { node: id("d") }, settings())
        .expect_err("a receiver still holds a stale copy");
    assert_eq!(e.code(), ErrorCode::MembershipConflict);
    assert!(e.to_string().contains("has not yet released"), "{e}");
    assert_eq!(c, before, "refusals change nothing");
    release_all(&mut c);
    c.begin(ChangeKind::Decommission { node: id("d") }, settings())
        .expect("accepted once released");
    assert!(
        c.state.handoffs.iter().any(|h| released
            .iter()
            .any(|r| r.node == h.to && r.partitions.contains(&h.partition))),
        "the change does give a released partition back"
    );
}

fn beat(node: &str, port: u16, volume: u64) -> Heartbeat {
    Heartbeat {
        node_id: id(node),
        address: format!("http://127.0.0.1:{port}"),
        volume: Some(VolumeId(volume)),
    }
}

#[test]
fn the_first_volume_binds_a_member_and_another_is_refused_and_kept_down() {
    let mut c = joined(&["a", "b", "c"]);
    assert_eq!(c.heartbeat(&beat("b", 7101, 1)).expect("first"), Beat::Binds);
    assert_eq!(c.node(&id("b")).and_then(|n| n.volume), Some(VolumeId(1)));
    assert_eq!(c.heartbeat(&beat("b", 7101, 1)).expect("again"), Beat::Taken);
    let old_node = Heartbeat {
        volume: None,
        ..beat("b", 7101, 0)
    };
    assert_eq!(
        c.heartbeat(&old_node).expect("legacy"),
        Beat::Taken,
        "a node too old to say is taken"
    );

    let ring = c.state.ring.clone();
    assert_eq!(
        c.heartbeat(&beat("b", 7101, 2)).expect("lost volume"),
        Beat::Refused
    );
    let b = c.node(&id("b")).expect("b").clone();
    assert_eq!(
        (b.state, b.volume, b.volume_refused),
        (NodeState::Down, Some(VolumeId(1)), Some(VolumeId(2)))
    );
    assert_eq!(c.state.ring, ring, "a refusal moves no partition");
    assert!(
        c.apply_liveness(&|_| true).is_empty(),
        "beats still within the timeout do not bring the refused volume up"
    );
    assert_eq!(c.heartbeat(&beat("b", 7101, 2)).expect("again"), Beat::Refused);
    assert_eq!(
        c.heartbeat(&beat("b", 7101, 1)).expect("the old disk is back"),
        Beat::Taken,
        "the bound volume is still the member's"
    );
    assert_eq!(c.node(&id("b")).map(|n| n.state), Some(NodeState::Up));
}

#[test]
fn a_replace_in_place_needs_a_refused_volume_refills_the_member_and_binds_the_new_volume() {
    let mut c = joined(&["a", "b", "c", "d"]);
    for (i, n) in ["a", "b", "c", "d"].iter().enumerate() {
        c.heartbeat(&beat(n, 7100 + i as u16, 10 + i as u64))
            .expect("bind");
    }
    let in_place = ChangeKind::Replace {
        old: id("b"),
        new: reg("b", 7101),
    };
    let e = c.begin(in_place.clone(), settings()).expect_err("healthy");
    assert_eq!(e.code(), ErrorCode::MembershipConflict, "{e}");

    assert_eq!(c.heartbeat(&beat("b", 7101, 99)).expect("lost"), Beat::Refused);
    let other_zone = ChangeKind::Replace {
        old: id("b"),
        new: NodeRegistration {
            zone: Some("z9".into()),
            ..reg("b", 7101)
        },
    };
    assert!(
        c.begin(other_zone, settings()).is_err(),
        "a replace in place keeps the zone"
    );
    let taken_address = ChangeKind::Replace {
        old: id("b"),
        new: reg("b", 7100),
    };
    assert!(c.begin(taken_address, settings()).is_err(), "a's address");

    let owners = c.state.ring.as_ref().expect("ring").owners().to_vec();
    let epoch = c.epoch();
    let releases = c.state.releases.clone();
    c.begin(in_place, settings()).expect("refill");
    c.state.version += 1;
    let b = c.node(&id("b")).expect("b").clone();
    assert_eq!(
        (b.state, b.volume, b.volume_refused),
        (NodeState::Joining, Some(VolumeId(99)), None)
    );
    assert!(!c.state.handoffs.is_empty());
    assert!(
        c.state
            .handoffs
            .iter()
            .all(|h| h.to == id("b") && h.from != id("b"))
    );
    assert_eq!(
        c.heartbeat(&beat("b", 7101, 99)).expect("new volume"),
        Beat::Taken
    );
    assert_eq!(
        c.node(&id("b")).map(|n| n.state),
        Some(NodeState::Joining),
        "joining until the refill ends"
    );

    let change = c.change.clone().expect("change").id;
    let done = all_done(&c);
    c.record_progress(change, ChangePhase::Copy, &done, 0)
        .expect("progress");
    assert_eq!(
        c.publish(change, settings()).expect("publish"),
        RingEpoch(epoch.0 + 1)
    );
    catch_up_and_finish(&mut c, change);
    let ring = c.state.ring.as_ref().expect("ring");
    assert_eq!(ring.owners(), owners.as_slice(), "no partition moved");
    assert!(ring.members().contains_key(&id("b")));
    let b = c.node(&id("b")).expect("b stays a member").clone();
    assert_eq!(
        (b.state, b.volume, b.volume_refused),
        (NodeState::Up, Some(VolumeId(99)), None)
    );
    assert_eq!(c.state.releases, releases, "nobody lets anything more go");
    c.check_consistent().expect("consistent");
}

#[test]
fn an_aborted_replace_in_place_refuses_the_new_volume_again() {
    let mut c = joined(&["a", "b", "c"]);
    c.heartbeat(&beat("b", 7101, 1)).expect("bind");
    c.heartbeat(&beat("b", 7101, 2)).expect("lost");
    c.begin(
        ChangeKind::Replace {
            old: id("b"),
            new: reg("b", 7101),
        },
        settings(),
    )
    .expect("refill");
    c.state.version += 1;
    c.abort(&|_| true).expect("abort");
    let b = c.node(&id("b")).expect("b stays a member").clone();
    assert_eq!(
        (b.state, b.volume, b.volume_refused),
        (NodeState::Down, None, Some(VolumeId(2)))
    );
    assert_eq!(c.heartbeat(&beat("b", 7101, 2)).expect("again"), Beat::Refused);
    c.check_consistent().expect("consistent");
}
