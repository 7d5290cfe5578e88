//! Benchmarks of the per-partition Merkle tree: one update, a diff, a full rebuild.
//!
//! Run with `cargo bench -p dynamo-core --bench merkle`. Numbers are for reading, never
//! asserted (ARCHITECTURE §5).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use dynamo_core::merkle::{MerkleItem, MerkleShape, MerkleTree, diff};
use dynamo_core::{KeyHash, PartitionId, Partitioning};
use xxhash_rust::xxh3::xxh3_64;

const PARTITION: PartitionId = PartitionId(5);

fn partitioning() -> Partitioning {
    Partitioning::with_count(256).expect("256 is a valid partition count")
}

/// Returns `count` items of partition 5 with keys like real ones (`bucket/key-N`) and
/// their hashes spread over the partition.
fn items(count: u32) -> Vec<MerkleItem<Vec<u8>>> {
    let partitioning = partitioning();
    let below = u64::MAX >> partitioning.bits();
    (0..count)
        .map(|id| {
            let key = format!("bucket/key-{id}").into_bytes();
            let key_hash = KeyHash(partitioning.start_of(PARTITION) | (xxh3_64(&key) & below));
            MerkleItem {
                key_hash,
                key,
                digest: u128::from(id),
            }
        })
        .collect()
}

fn tree_of(items: &[MerkleItem<Vec<u8>>]) -> MerkleTree {
    let borrowed = items.iter().map(|i| MerkleItem {
        key_hash: i.key_hash,
        key: i.key.as_slice(),
        digest: i.digest,
    });
    MerkleTree::from_items(partitioning(), PARTITION, MerkleShape::DEFAULT, borrowed)
        .expect("items are in the partition")
}

fn merkle_update(c: &mut Criterion) {
    let mut items = items(100_000);
    let mut tree = tree_of(&items);
    let mut next = 0;
    c.bench_function("merkle_update", |b| {
        b.iter(|| {
            // Overwrite one key's version set, moving through the keys.
            let item = &mut items[next % 100_000];
            next += 1;
            let new = item.digest.wrapping_add(1 << 64);
            tree.update(item.key_hash, &item.key, Some(item.digest), Some(new))
                .expect("key in partition");
            item.digest = new;
            black_box(tree.root())
        })
    });
}

fn merkle_diff(c: &mut Criterion) {
    let items = items(10_000);
    let local = tree_of(&items);
    let mut remote = local.clone();
    let changed = &items[4242];
    remote
        .update(
            changed.key_hash,
            &changed.key,
            Some(changed.digest),
            Some(u128::MAX),
        )
        .expect("key in partition");
    c.bench_function("merkle_diff", |b| {
        b.iter(|| diff(black_box(&local), black_box(&remote)).expect("same layout"))
    });
}

fn merkle_rebuild_100k(c: &mut Criterion) {
    let items = items(100_000);
    let mut tree =
        MerkleTree::new(partitioning(), PARTITION, MerkleShape::DEFAULT).expect("partition exists");
    c.bench_function("merkle_rebuild_100k", |b| {
        b.iter(|| {
            let borrowed = items.iter().map(|i| MerkleItem {
                key_hash: i.key_hash,
                key: i.key.as_slice(),
                digest: i.digest,
            });
            tree.rebuild(borrowed).expect("items are in the partition");
            black_box(tree.root())
        })
    });
}

criterion_group!(benches, merkle_update, merkle_diff, merkle_rebuild_100k);
criterion_main!(benches);
