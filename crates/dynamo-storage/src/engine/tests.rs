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
