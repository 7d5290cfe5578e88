//! Unit tests of the engine's own rules (the services' behaviour on top of it is in
//! `tests/`).

use dynamo_core::version::{ConflictRule, NewWrite};

use super::*;

const SIB: ConflictRule = ConflictRule::Siblings { max_siblings: 8 };

fn open(dir: &Path, id: &str, q: u64) -> Result<Engine, StorageError> {
    let metrics = StorageMetrics::new(&prometheus::Registry::new()).expect("metrics");
    Engine::open(
        dir,
        Partitioning::with_count(q).expect("q"),
        Durability::Sync,
        Some(NodeId::new(id).expect("id")),
        metrics,
    )
}

fn key(k: &str) -> KeyRef<'_> {
    KeyRef { bucket: "b", key: k }
}

fn write(v: &str) -> NewWrite {
    NewWrite::value(v.as_bytes().to_vec(), "text/plain", 1)
}

fn hint_for(node: &str) -> HintFor {
    HintFor {
        node: NodeId::new(node).expect("id"),
        address: "http://127.0.0.1:1".into(),
    }
}

#[test]
fn a_coordinated_write_reads_back_and_a_second_descends_from_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(dir.path(), "n1", 16).expect("open");
    assert_eq!(e.get(&key("k")).expect("get"), None);
    let (_, first) = e
        .coordinate_put(&key("k"), &DotSet::new(), write("a"), SIB, None)
        .expect("put");
    let (obj, second) = e
        .coordinate_put(&key("k"), &first.context, write("b"), SIB, None)
        .expect("put");
    assert_eq!(obj.siblings().len(), 1, "the context saw the first value");
    assert_eq!(obj.siblings()[0].value, b"b");
    assert_ne!(first.dot, second.dot);
    assert_eq!(e.get(&key("k")).expect("get"), Some(obj));
}

#[test]
fn a_replicate_merges_and_the_merkle_tree_follows_every_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = open(&dir.path().join("a"), "na", 16).expect("open");
    let b = open(&dir.path().join("b"), "nb", 16).expect("open");
    let (obj_a, _) = a
        .coordinate_put(&key("k"), &DotSet::new(), write("a"), SIB, None)
        .expect("put");
    let (obj_b, _) = b
        .coordinate_put(&key("k"), &DotSet::new(), write("b"), SIB, None)
        .expect("put");
    let p = a.partitioning().partition_of(key_hash("b", "k"));
    let root_before = a.merkle_tree(p).expect("tree").root();
    a.replicate(&key("k"), &obj_b, SIB, None).expect("replicate");
    b.replicate(&key("k"), &obj_a, SIB, None).expect("replicate");
    let merged = a.get(&key("k")).expect("get").expect("stored");
    assert_eq!(merged.siblings().len(), 2, "concurrent writes are siblings");
    assert_eq!(Some(&merged), b.get(&key("k")).expect("get").as_ref());
    let root_after = a.merkle_tree(p).expect("tree").root();
    assert_ne!(root_before, root_after, "the tree saw the merge");
    assert_eq!(
        root_after,
        b.merkle_tree(p).expect("tree").root(),
        "equal copies, equal trees"
    );
    // Replicating what is already there changes nothing.
    a.replicate(&key("k"), &obj_b, SIB, None).expect("replicate");
    assert_eq!(a.merkle_tree(p).expect("tree").root(), root_after);
}

#[test]
fn a_hint_is_read_but_kept_out_of_the_tree_until_delivered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(dir.path(), "n1", 16).expect("open");
    let p = e.partitioning().partition_of(key_hash("b", "k"));
    let empty_root = e.merkle_tree(p).expect("tree").root();
    let owner = hint_for("n2");
    e.coordinate_put(&key("k"), &DotSet::new(), write("h"), SIB, Some(&owner))
        .expect("hinted put");
    // A fallback answers reads with what it holds, but the hint is not its own copy: it
    // stays out of its Merkle tree (anti-entropy compares owners' copies).
    let read = e.get(&key("k")).expect("get").expect("the hint is read");
    assert_eq!(read.siblings()[0].value, b"h");
    assert_eq!(e.merkle_tree(p).expect("tree").root(), empty_root);
    assert_eq!(e.hint_targets().get(&owner.node), Some(&owner.address));
    let pending = e.pending_hints(&owner.node, 10, 1 << 20).expect("hints");
    assert_eq!(pending.len(), 1);
    assert!(e.remove_delivered_hint(&owner.node, &pending[0]).expect("remove"));
    e.forget_target_if_done(&owner.node).expect("forget");
    assert!(e.hint_targets().is_empty());
}

#[test]
fn a_volume_refuses_another_node_id_and_another_partition_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(dir.path(), "n1", 16).expect("open");
    e.close_clean().expect("close");
    drop(e);
    assert!(matches!(
        open(dir.path(), "n2", 16),
        Err(StorageError::IdentityMismatch { .. })
    ));
    let err = open(dir.path(), "n1", 32).err().expect("refused");
    assert!(
        matches!(
            err,
            StorageError::PartitionCountMismatch {
                stored: 16,
                configured: 32
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), dynamo_core::ErrorCode::InvalidRequest);
}

#[test]
fn a_clean_stop_keeps_the_incarnation_and_an_unclean_one_does_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(dir.path(), "n1", 16).expect("open");
    let first = e.identity().incarnation;
    e.close_clean().expect("close");
    drop(e);
    let e = open(dir.path(), "n1", 16).expect("open");
    assert_eq!(
        e.identity().incarnation,
        first,
        "a clean stop continues the incarnation"
    );
    drop(e); // no close_clean: as a crash
    let e = open(dir.path(), "n1", 16).expect("open");
    assert_ne!(
        e.identity().incarnation,
        first,
        "an unclean stop starts a new one"
    );
}

/// The keys of a listing page.
fn listed(page: &ListingPage) -> Vec<&str> {
    page.entries.iter().map(|(k, _)| k.as_str()).collect()
}

#[test]
fn the_listing_index_follows_every_copy_in_key_order() {
    // Goal: the index holds exactly the keys of which the node keeps a copy (own or
    // hint), in byte order within a bucket, by prefix and after a key, with the values
    // left out; a removed last copy leaves it, a remaining hint keeps it. Method: write,
    // list, collect, release, deliver, list again.
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(dir.path(), "n1", 16).expect("open");
    for k in ["b/2", "a/1", "a/3", "a/2"] {
        e.coordinate_put(&key(k), &DotSet::new(), write(k), SIB, None)
            .expect("put");
    }
    let other = KeyRef {
        bucket: "c",
        key: "a/9",
    };
    e.coordinate_put(&other, &DotSet::new(), write("x"), SIB, None)
        .expect("put");
    let all = e.list_page("b", "", None, 10, 100).expect("list");
    assert_eq!(
        listed(&all),
        vec!["a/1", "a/2", "a/3", "b/2"],
        "one bucket, byte order"
    );
    assert!(all.stopped_at.is_none());
    assert!(
        all.entries
            .iter()
            .all(|(_, o)| o.siblings().iter().all(|s| s.value.is_empty()))
    );
    let page = e.list_page("b", "a/", None, 2, 100).expect("list");
    assert_eq!(
        (listed(&page), page.stopped_at.as_deref()),
        (vec!["a/1", "a/2"], Some("a/2"))
    );
    let rest = e.list_page("b", "a/", Some("a/2"), 2, 100).expect("list");
    assert_eq!((listed(&rest), rest.stopped_at.as_deref()), (vec!["a/3"], None));
    let bounded = e.list_page("b", "", None, 10, 1).expect("list");
    assert_eq!(
        (listed(&bounded), bounded.stopped_at.as_deref()),
        (vec!["a/1"], Some("a/1"))
    );

    // A tombstone stays listed (its delete must win the merge) until it is collected.
    let (obj, _) = e
        .coordinate_put(&key("a/1"), &DotSet::new(), write("a/1"), SIB, None)
        .expect("put");
    let (tomb, _) = e
        .coordinate_put(&key("a/1"), obj.context(), NewWrite::tombstone(2), SIB, None)
        .expect("delete");
    assert!(listed(&e.list_page("b", "a/1", None, 10, 100).expect("list")).contains(&"a/1"));
    assert!(
        e.collect_tombstone(&key("a/1"), tomb.digest(), 3)
            .expect("collect")
    );
    assert!(listed(&e.list_page("b", "a/1", None, 10, 100).expect("list")).is_empty());

    // A hint is a copy too; delivering it removes the entry only when nothing is left.
    let h = hint_for("n9");
    e.coordinate_put(&key("z"), &DotSet::new(), write("z"), SIB, Some(&h))
        .expect("hint");
    assert_eq!(
        listed(&e.list_page("b", "z", None, 10, 100).expect("list")),
        vec!["z"]
    );
    let target = NodeId::new("n9").expect("id");
    let pending = e.pending_hints(&target, 10, usize::MAX).expect("hints");
    assert_eq!(pending.len(), 1);
    assert!(e.remove_delivered_hint(&target, &pending[0]).expect("deliver"));
    assert!(listed(&e.list_page("b", "z", None, 10, 100).expect("list")).is_empty());

    // Released partitions take their keys out of the index.
    let p = e.partitioning().partition_of(key_hash("b", "a/2"));
    while e.drop_partition_page(p, 100).expect("drop") > 0 {}
    assert!(!listed(&e.list_page("b", "", None, 10, 100).expect("list")).contains(&"a/2"));
}

#[test]
fn the_listing_index_is_built_for_a_volume_that_had_none() {
    // Goal: a volume written by a version without the index lists every key after the
    // upgrade. Method: write, remove the index and its marker as that version would
    // have left the volume, reopen, list.
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let e = open(dir.path(), "n1", 16).expect("open");
        for k in ["x", "y"] {
            e.coordinate_put(&key(k), &DotSet::new(), write(k), SIB, None)
                .expect("put");
        }
        e.coordinate_put(&key("w"), &DotSet::new(), write("w"), SIB, Some(&hint_for("n9")))
            .expect("hint");
        let entries: Vec<Vec<u8>> = e
            .listing
            .iter()
            .map(|kv| kv.key().expect("key").to_vec())
            .collect();
        for k in entries {
            e.listing.remove(k).expect("remove");
        }
        e.meta.remove(b"listing_index_v1").expect("remove marker");
        assert!(listed(&e.list_page("b", "", None, 10, 100).expect("list")).is_empty());
        e.close_clean().expect("close");
    }
    let e = open(dir.path(), "n1", 16).expect("reopen");
    assert_eq!(
        listed(&e.list_page("b", "", None, 10, 100).expect("list")),
        vec!["w", "x", "y"]
    );
}

#[test]
fn the_change_log_orders_a_buckets_changes_and_expires_purged_positions() {
    // Goal: every change of a copy is one entry, in log order, per bucket; a reader pages
    // from a position; a merge that changes nothing logs nothing; a restart starts a
    // later run; purged positions answer CursorExpired. Method: write, read, purge,
    // reopen.
    use dynamo_core::wire::internal::FeedPos;
    let dir = tempfile::tempdir().expect("tempdir");
    let e = open(dir.path(), "n1", 16).expect("open");
    let start = e.feed_head();
    let (obj, _) = e
        .coordinate_put(&key("a"), &DotSet::new(), write("1"), SIB, None)
        .expect("put");
    e.coordinate_put(&key("b"), &DotSet::new(), write("2"), SIB, None)
        .expect("put");
    e.coordinate_put(
        &KeyRef {
            bucket: "other",
            key: "x",
        },
        &DotSet::new(),
        write("3"),
        SIB,
        None,
    )
    .expect("put");
    let (tomb, _) = e
        .coordinate_put(&key("a"), obj.context(), NewWrite::tombstone(2), SIB, None)
        .expect("delete");
    e.replicate(&key("a"), &tomb, SIB, None)
        .expect("a merge that changes nothing");
    let page = e.feed_page("b", Some(start), 100).expect("page");
    let seen: Vec<(&str, bool)> = page.entries.iter().map(|x| (x.key.as_str(), x.deleted)).collect();
    assert_eq!(
        seen,
        vec![("a", false), ("b", false), ("a", true)],
        "bucket b only, in order"
    );
    assert!(page.entries.windows(2).all(|w| w[0].pos < w[1].pos));
    assert_eq!(page.entries[2].context, *tomb.context());
    assert_eq!(page.head, e.feed_head());
    let rest = e.feed_page("b", Some(page.entries[0].pos), 1).expect("page");
    assert_eq!(rest.entries.len(), 1);
    assert_eq!(rest.entries[0].key, "b");
    assert!(
        e.feed_page("b", Some(page.head), 10)
            .expect("page")
            .entries
            .is_empty()
    );

    // Purge everything logged so far: a reader before the purge is too late, one at or
    // after the newest purged position is not.
    let (purged, _) = e.purge_feed(u64::MAX, None, 100).expect("purge");
    assert_eq!(purged, 4);
    let err = e.feed_page("b", Some(start), 10).expect_err("expired");
    assert_eq!(err.code(), dynamo_core::ErrorCode::CursorExpired);
    assert!(e.feed_page("b", Some(page.head), 10).is_ok());
    assert!(e.feed_page("b", None, 10).expect("from start").entries.is_empty());

    // A restart is a later run: its entries follow every position of the earlier one.
    let before = e.feed_head();
    e.close_clean().expect("close");
    drop(e);
    let e = open(dir.path(), "n1", 16).expect("reopen");
    e.coordinate_put(&key("c"), &DotSet::new(), write("4"), SIB, None)
        .expect("put");
    let next = e.feed_page("b", Some(before), 10).expect("page");
    assert_eq!(next.entries.len(), 1);
    assert!(next.entries[0].pos > before);
    assert!(next.entries[0].pos.run > before.run);
    assert!(
        FeedPos {
            run: before.run,
            seq: u64::MAX
        } < next.entries[0].pos
    );
}
