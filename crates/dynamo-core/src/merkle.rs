//! Per-partition Merkle trees for anti-entropy (Dynamo §4.7).
//!
//! A storage node keeps one [`MerkleTree`] per partition it holds and updates it on every
//! write. Two replicas of a partition compare roots and walk down only the branches that
//! differ, so the cost of a comparison follows the size of the difference, not the data.
//! This module owns the tree, its update rule, its snapshot format and the comparison
//! protocol ([`DiffWalk`], [`diff`]). It does not own the exchange itself: the storage
//! service sends the [`MerkleSummary`] and the children replies over HTTP, range-reads
//! the keys under each differing leaf and repairs them.
//!
//! # Shape
//! A tree has a fixed [`MerkleShape`]: fanout F = 2^`fanout_bits` and depth D, so F^D
//! leaves. Level 0 is the root, level D the leaves; node `(level, index)` has the children
//! `(level + 1, index·F .. index·F + F)`. A leaf is a contiguous range of key hashes
//! inside the partition: the `fanout_bits · depth` bits of the 64-bit key hash just below
//! the partition bits pick it, so leaf ranges tile the partition in key-hash order. The
//! default, 16^3 = 4096 leaves, is argued on [`MerkleShape::DEFAULT`].
//!
//! # Values
//! - An *item* is one key: its key hash, its key bytes and a 128-bit digest of its whole
//!   version set, supplied by the caller. Its hash is [`item_hash`]:
//!   `XXH3-128(key ‖ digest as 16 little-endian bytes)`, seed 0. The digest is a fixed-width
//!   suffix, so the encoding is unambiguous without a length prefix.
//! - A leaf is the XOR of the hashes of its items, so adding and removing an item are the
//!   same O(1) operation and the order of updates cannot matter.
//! - An inner node is `XXH3-128` over its F children, each as 16 little-endian bytes,
//!   except that a node whose children are all 0 is 0. With an empty leaf being 0 too,
//!   an empty subtree has the canonical value 0 at every level and a fresh tree needs no
//!   hashing.
//!
//! Inner nodes are recomputed eagerly along the path on every update rather than marked
//! dirty: at O(F·D) (three hashes of 256 bytes by default) an update is cheap enough, and
//! every `&self` read (root, children for a peer) is then always current and free.
//!
//! # Invariants
//! - **Same item set ⇒ same nodes.** Every node is a pure function of the set of items
//!   under it, so two trees holding the same items are equal node for node, whatever the
//!   order or history of the updates that built them (property-tested against
//!   [`MerkleTree::rebuild`]).
//! - Incremental updates are only as right as the `old` digest the caller passes: it must
//!   be the digest the tree last saw for that key (`None` if absent). The storage service
//!   reads the old version set under the same write it applies, and rebuilds trees it
//!   cannot trust (e.g. after an unclean shutdown).
//! - XOR leaves and XXH3 make the tree a checksum against accidental divergence, not a
//!   defence against an adversary who crafts keys to collide.
//!
//! # Cost
//! - [`MerkleTree::update`]: one item hash and D inner hashes over F·16 bytes: O(F·D).
//! - [`MerkleTree::rebuild`]: O(items + nodes).
//! - [`diff`] / [`DiffWalk`]: identical trees cost one root comparison. Otherwise, with
//!   k differing leaves, at most `1 + F · Σ_{l<D} min(k, F^l) ≤ 1 + k·D·F` node values
//!   are compared, fetched in at most D batched rounds (one per level).
//! - Memory: `16 · (F^(D+1) − 1) / (F − 1)` bytes per tree (70 KiB by default).

use std::fmt;

use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::{Xxh3Default, xxh3_128};

use crate::error::ErrorCode;
use crate::hash::{KeyHash, Partitioning};
use crate::ids::PartitionId;

/// Largest `fanout_bits` a shape may have (fanout 64). Wider nodes make every children
/// reply larger for no gain in round trips that a deeper tree would not give.
pub const MAX_FANOUT_BITS: u8 = 6;

/// Most leaf bits (`fanout_bits · depth`) a shape may have: 65 536 leaves, about 1 MiB of
/// nodes per partition.
pub const MAX_LEAF_BITS: u8 = 16;

/// The format version written in every [`MerkleSnapshot`]. A layout change is a new
/// version; loading refuses versions it does not know.
pub const MERKLE_SNAPSHOT_FORMAT: u32 = 1;

/// Size in bytes of one node value in the inner-node hash input.
const NODE_BYTES: usize = 16;

/// The fixed shape of a Merkle tree: fanout 2^`fanout_bits` and depth (levels below the
/// root), hence 2^(`fanout_bits` · depth) leaves.
///
/// Valid shapes have `1 ≤ fanout_bits ≤` [`MAX_FANOUT_BITS`], `depth ≥ 1` and
/// `fanout_bits · depth ≤` [`MAX_LEAF_BITS`]; deserializing checks the same rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "ShapeRepr")]
pub struct MerkleShape {
    fanout_bits: u8,
    depth: u8,
}

/// The unchecked wire form of a [`MerkleShape`].
#[derive(Deserialize)]
struct ShapeRepr {
    fanout_bits: u8,
    depth: u8,
}

/// One item of a tree: a key with the digest of its whole version set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MerkleItem<K> {
    /// The key's hash; it must lie in the tree's partition.
    pub key_hash: KeyHash,
    /// The key bytes that [`item_hash`] covers (the caller's choice, e.g. `bucket/key`,
    /// the same on every replica).
    pub key: K,
    /// The caller's digest of the key's whole version set.
    pub digest: u128,
}

/// The Merkle tree of one partition. See the [module docs](self) for shape, values,
/// invariants and cost.
#[derive(Clone, PartialEq, Eq)]
pub struct MerkleTree {
    partitioning: Partitioning,
    partition: PartitionId,
    shape: MerkleShape,
    /// Every node, level by level from the root: level `l` starts at
    /// [`MerkleShape::level_offset`]`(l)` and holds F^l nodes.
    nodes: Vec<u128>,
}

/// Addresses one node of a tree: level 0 is the root, the shape's depth is the leaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TreeNode {
    /// The level, 0 (root) to depth (leaves).
    pub level: u8,
    /// The index within the level, 0 to F^level − 1.
    pub index: u32,
}

/// An inclusive range of key hashes, `[start, end]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HashRange {
    /// The first key hash in the range.
    pub start: u64,
    /// The last key hash in the range (inclusive).
    pub end: u64,
}

/// What a replica tells a peer to open a comparison: which tree it holds and its root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleSummary {
    /// The cluster's partitioning.
    pub partitioning: Partitioning,
    /// The partition the tree covers.
    pub partition: PartitionId,
    /// The tree's shape.
    pub shape: MerkleShape,
    /// The root value.
    pub root: u128,
}

/// A leaf whose item sets differ between the two trees compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DifferingLeaf {
    /// The leaf's index, 0 to F^D − 1.
    pub leaf: u32,
    /// The key hashes the leaf covers: range-read these to repair it.
    pub hashes: HashRange,
}

/// The outcome of a comparison.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MerkleDiff {
    /// The differing leaves, in increasing leaf (and key-hash) order.
    pub leaves: Vec<DifferingLeaf>,
    /// Node values compared, which is also the number fetched from the peer: 1 for the
    /// root plus F per children reply.
    pub nodes_compared: u64,
    /// Children rounds exchanged after the root (at most the depth).
    pub rounds: u32,
}

/// A peer's tree, as the comparison sees it: a summary and children on request.
///
/// Implemented by [`MerkleTree`] for in-process comparisons and tests. A service that
/// fetches over the network would rather drive a [`DiffWalk`] itself, asynchronously,
/// but can implement this trait and override [`MerkleSource::children_many`] to send
/// one batched request per round.
pub trait MerkleSource {
    /// The source's failure; a malformed reply becomes one through `From<MerkleError>`.
    type Error: From<MerkleError>;

    /// Returns the summary of the source's tree.
    ///
    /// # Errors
    /// Whatever fetching it can fail with.
    fn summary(&self) -> Result<MerkleSummary, Self::Error>;

    /// Returns the F children values of node `(level, index)`.
    ///
    /// # Errors
    /// Whatever fetching them can fail with.
    fn children(&self, level: u8, index: u32) -> Result<Vec<u128>, Self::Error>;

    /// Returns the children of each node in `nodes`, in the same order. The default asks
    /// for one node at a time.
    ///
    /// # Errors
    /// Whatever fetching them can fail with.
    fn children_many(&self, nodes: &[TreeNode]) -> Result<Vec<Vec<u128>>, Self::Error> {
        nodes.iter().map(|n| self.children(n.level, n.index)).collect()
    }
}

/// A step-wise, message-driven comparison of a local tree with a peer's.
///
/// Open it with the peer's [`MerkleSummary`]; while [`DiffWalk::pending`] is not empty,
/// ask the peer for the children of those nodes (one batch per round, one round per
/// level) and [`DiffWalk::feed`] the replies in; then [`DiffWalk::finish`]. The walk does
/// not borrow the local tree between rounds, so writes may go on meanwhile: the result
/// is then approximate in the way any anti-entropy round is, and the next round catches
/// up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiffWalk {
    partitioning: Partitioning,
    partition: PartitionId,
    shape: MerkleShape,
    /// Nodes whose remote children are awaited; all on one level, in index order.
    pending: Vec<TreeNode>,
    leaves: Vec<u32>,
    nodes_compared: u64,
    rounds: u32,
}

/// Why a Merkle operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MerkleError {
    /// The shape breaks the rules on [`MerkleShape`].
    #[error(
        "merkle shape must have 1-{MAX_FANOUT_BITS} fanout bits, depth at least 1 and at most \
         {MAX_LEAF_BITS} leaf bits, got {fanout_bits} fanout bits and depth {depth}"
    )]
    InvalidShape {
        /// The refused fanout bits.
        fanout_bits: u8,
        /// The refused depth.
        depth: u8,
    },
    /// The partition does not exist in the partitioning.
    #[error("partition {partition} does not exist among {count} partitions")]
    NoSuchPartition {
        /// The refused partition.
        partition: PartitionId,
        /// The number of partitions.
        count: u32,
    },
    /// A key hash outside the tree's partition (a caller bug: the key was routed to the
    /// wrong tree).
    #[error("key hash {key_hash:016x} belongs to partition {got}, not to partition {expected}")]
    WrongPartition {
        /// The refused key hash.
        key_hash: u64,
        /// The tree's partition.
        expected: PartitionId,
        /// The partition the key hash belongs to.
        got: PartitionId,
    },
    /// The other tree (a snapshot, a peer, a tree fed to a walk) has another partition
    /// count.
    #[error("merkle tree is for {got} partitions, expected {expected}")]
    PartitioningMismatch {
        /// The expected partition count.
        expected: u32,
        /// The other tree's partition count.
        got: u32,
    },
    /// The other tree covers another partition.
    #[error("merkle tree is for partition {got}, expected partition {expected}")]
    PartitionMismatch {
        /// The expected partition.
        expected: PartitionId,
        /// The other tree's partition.
        got: PartitionId,
    },
    /// The other tree has another shape.
    #[error("merkle tree has shape {got}, expected {expected}")]
    ShapeMismatch {
        /// The expected shape.
        expected: MerkleShape,
        /// The other tree's shape.
        got: MerkleShape,
    },
    /// A snapshot of a format version this build does not know.
    #[error("merkle snapshot format {got} is not supported (this build reads {MERKLE_SNAPSHOT_FORMAT})")]
    UnsupportedFormat {
        /// The refused format version.
        got: u32,
    },
    /// A snapshot whose leaf count does not match its shape.
    #[error("merkle snapshot has {got} leaves, its shape has {expected}")]
    LeafCount {
        /// The shape's leaf count.
        expected: u64,
        /// The snapshot's leaf count.
        got: u64,
    },
    /// A node address outside the tree (or a leaf, asked for its children).
    #[error("merkle tree has no node {index} on level {level}")]
    NoSuchNode {
        /// The refused level.
        level: u8,
        /// The refused index.
        index: u32,
    },
    /// A children reply of the wrong size: not one list per pending node, or a list that
    /// is not F values long.
    #[error("merkle children reply has {got} entries, expected {expected}")]
    BadReply {
        /// The expected number of entries.
        expected: u64,
        /// The number received.
        got: u64,
    },
    /// [`DiffWalk::finish`] before the walk was done.
    #[error("merkle diff walk still awaits {pending} replies")]
    WalkNotDone {
        /// Nodes still awaiting their children.
        pending: u64,
    },
}

impl MerkleShape {
    /// The default shape: fanout 16, depth 3, 4096 leaves per partition.
    ///
    /// With the default 256 partitions, a store of 10 million keys has about 40 000 keys
    /// per partition and 10 per leaf, so a differing leaf is a small range read. One
    /// differing key costs at most 1 + 3·16 = 49 node values over 3 rounds, and a tree
    /// is 4369 nodes (70 KiB). Fanout 16 keeps each children reply at 256 bytes while a
    /// binary tree would need 12 rounds.
    pub const DEFAULT: MerkleShape = MerkleShape {
        fanout_bits: 4,
        depth: 3,
    };

    /// Builds a shape with fanout 2^`fanout_bits` and `depth` levels below the root.
    ///
    /// # Errors
    /// [`MerkleError::InvalidShape`] unless `1 ≤ fanout_bits ≤` [`MAX_FANOUT_BITS`],
    /// `depth ≥ 1` and `fanout_bits · depth ≤` [`MAX_LEAF_BITS`].
    pub fn new(fanout_bits: u8, depth: u8) -> Result<Self, MerkleError> {
        let leaf_bits = u32::from(fanout_bits) * u32::from(depth);
        if fanout_bits == 0
            || fanout_bits > MAX_FANOUT_BITS
            || depth == 0
            || leaf_bits > u32::from(MAX_LEAF_BITS)
        {
            return Err(MerkleError::InvalidShape { fanout_bits, depth });
        }
        Ok(MerkleShape { fanout_bits, depth })
    }

    /// Returns k where the fanout is 2^k.
    pub fn fanout_bits(self) -> u8 {
        self.fanout_bits
    }

    /// Returns the fanout F, the number of children of an inner node.
    pub fn fanout(self) -> u32 {
        1 << self.fanout_bits
    }

    /// Returns the depth D: the level of the leaves (the root is level 0).
    pub fn depth(self) -> u8 {
        self.depth
    }

    /// Returns the number of key-hash bits that pick a leaf, `fanout_bits · depth`.
    pub fn leaf_bits(self) -> u8 {
        // Invariant: at most MAX_LEAF_BITS (checked by `new`), so this fits.
        self.fanout_bits * self.depth
    }

    /// Returns the number of leaves, F^D.
    pub fn leaf_count(self) -> u32 {
        1 << self.leaf_bits()
    }

    /// Returns the number of nodes on `level` (F^level), or 0 below the leaves.
    pub fn level_width(self, level: u8) -> u32 {
        if level > self.depth {
            return 0;
        }
        1 << (u32::from(self.fanout_bits) * u32::from(level))
    }

    /// Returns the number of nodes in the tree, `(F^(D+1) − 1) / (F − 1)`.
    pub fn node_count(self) -> usize {
        self.level_offset(self.depth + 1)
    }

    /// Returns where `level` starts in the level-by-level node array.
    fn level_offset(self, level: u8) -> usize {
        // Σ_{i<level} F^i = (F^level − 1) / (F − 1), with F ≥ 2.
        let fanout = 1usize << self.fanout_bits;
        ((1usize << (usize::from(self.fanout_bits) * usize::from(level))) - 1) / (fanout - 1)
    }
}

impl Default for MerkleShape {
    fn default() -> Self {
        MerkleShape::DEFAULT
    }
}

impl fmt::Display for MerkleShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fanout {} depth {}", self.fanout(), self.depth)
    }
}

impl TryFrom<ShapeRepr> for MerkleShape {
    type Error = MerkleError;
    fn try_from(r: ShapeRepr) -> Result<Self, MerkleError> {
        MerkleShape::new(r.fanout_bits, r.depth)
    }
}

impl HashRange {
    /// Returns true if `hash` lies in the range.
    pub fn contains(self, hash: KeyHash) -> bool {
        self.start <= hash.0 && hash.0 <= self.end
    }
}

impl MerkleDiff {
    /// Returns true if no leaf differs.
    pub fn is_empty(&self) -> bool {
        self.leaves.is_empty()
    }
}

impl MerkleError {
    /// Returns the wire error code for this error: a peer's malformed request or reply is
    /// `invalid_request`, a snapshot that cannot be loaded is `storage_error`, and a key
    /// routed to the wrong tree is `internal`.
    pub fn code(&self) -> ErrorCode {
        match self {
            MerkleError::InvalidShape { .. }
            | MerkleError::NoSuchPartition { .. }
            | MerkleError::PartitioningMismatch { .. }
            | MerkleError::PartitionMismatch { .. }
            | MerkleError::ShapeMismatch { .. }
            | MerkleError::NoSuchNode { .. }
            | MerkleError::BadReply { .. } => ErrorCode::InvalidRequest,
            MerkleError::UnsupportedFormat { .. } | MerkleError::LeafCount { .. } => ErrorCode::StorageError,
            MerkleError::WrongPartition { .. } | MerkleError::WalkNotDone { .. } => ErrorCode::Internal,
        }
    }
}

/// Returns the hash of one item: `XXH3-128(key ‖ digest.to_le_bytes())`, seed 0.
///
/// This is part of the anti-entropy protocol: replicas that computed it differently would
/// see every leaf differ, so the golden vector in the tests pins it.
pub fn item_hash(key: &[u8], digest: u128) -> u128 {
    // One-shot hashing of a stack copy is about twice as fast as the streaming state for
    // the short keys that dominate; both give the same value.
    const STACK_BYTES: usize = 256;
    if key.len() + NODE_BYTES <= STACK_BYTES {
        let mut buf = [0u8; STACK_BYTES];
        buf[..key.len()].copy_from_slice(key);
        buf[key.len()..key.len() + NODE_BYTES].copy_from_slice(&digest.to_le_bytes());
        return xxh3_128(&buf[..key.len() + NODE_BYTES]);
    }
    let mut h = Xxh3Default::new();
    h.update(key);
    h.update(&digest.to_le_bytes());
    h.digest128()
}

/// Returns the value of an inner node from its children: 0 if they are all 0, else
/// XXH3-128 over the children as 16 little-endian bytes each.
fn inner_hash(children: &[u128]) -> u128 {
    if children.iter().all(|&c| c == 0) {
        return 0;
    }
    let mut buf = [0u8; NODE_BYTES << MAX_FANOUT_BITS];
    debug_assert!(children.len() <= 1 << MAX_FANOUT_BITS);
    for (chunk, child) in buf.chunks_exact_mut(NODE_BYTES).zip(children) {
        chunk.copy_from_slice(&child.to_le_bytes());
    }
    xxh3_128(&buf[..children.len() * NODE_BYTES])
}

/// Recomputes every inner node of `nodes` bottom-up from the leaves.
fn recompute_inner(shape: MerkleShape, nodes: &mut [u128]) {
    let fanout = shape.fanout() as usize;
    for level in (0..shape.depth).rev() {
        let (upper, lower) = nodes.split_at_mut(shape.level_offset(level + 1));
        let this_level = &mut upper[shape.level_offset(level)..];
        for (node, children) in this_level.iter_mut().zip(lower.chunks_exact(fanout)) {
            *node = inner_hash(children);
        }
    }
}

impl MerkleTree {
    /// Builds the empty tree of `partition` with the given shape (all nodes 0).
    ///
    /// # Errors
    /// [`MerkleError::NoSuchPartition`] when `partition` is not below the partition count.
    pub fn new(
        partitioning: Partitioning,
        partition: PartitionId,
        shape: MerkleShape,
    ) -> Result<Self, MerkleError> {
        if partition.0 >= partitioning.count() {
            return Err(MerkleError::NoSuchPartition {
                partition,
                count: partitioning.count(),
            });
        }
        // Invariant: partition bits + leaf bits ≤ 16 + 16 < 64, so every leaf covers at
        // least one key hash and the shifts in `leaf_of` and `range_of` are in range.
        debug_assert!(u32::from(partitioning.bits()) + u32::from(shape.leaf_bits()) < 64);
        Ok(MerkleTree {
            partitioning,
            partition,
            shape,
            nodes: vec![0; shape.node_count()],
        })
    }

    /// Builds the tree of `partition` holding exactly `items` (see [`MerkleTree::rebuild`]).
    ///
    /// # Errors
    /// As [`MerkleTree::new`] and [`MerkleTree::rebuild`].
    pub fn from_items<K: AsRef<[u8]>>(
        partitioning: Partitioning,
        partition: PartitionId,
        shape: MerkleShape,
        items: impl IntoIterator<Item = MerkleItem<K>>,
    ) -> Result<Self, MerkleError> {
        let mut tree = MerkleTree::new(partitioning, partition, shape)?;
        tree.rebuild(items)?;
        Ok(tree)
    }

    /// Returns the partitioning the tree was built for.
    pub fn partitioning(&self) -> Partitioning {
        self.partitioning
    }

    /// Returns the partition the tree covers.
    pub fn partition(&self) -> PartitionId {
        self.partition
    }

    /// Returns the tree's shape.
    pub fn shape(&self) -> MerkleShape {
        self.shape
    }

    /// Returns the root value (0 for an empty partition).
    pub fn root(&self) -> u128 {
        self.nodes[0]
    }

    /// Returns what a peer needs to open a comparison with this tree.
    pub fn summary(&self) -> MerkleSummary {
        MerkleSummary {
            partitioning: self.partitioning,
            partition: self.partition,
            shape: self.shape,
            root: self.root(),
        }
    }

    /// Returns the value of node `(level, index)`.
    ///
    /// # Errors
    /// [`MerkleError::NoSuchNode`] when the level is below the leaves or the index is not
    /// below F^level.
    pub fn node(&self, level: u8, index: u32) -> Result<u128, MerkleError> {
        if index >= self.shape.level_width(level) {
            return Err(MerkleError::NoSuchNode { level, index });
        }
        Ok(self.nodes[self.shape.level_offset(level) + index as usize])
    }

    /// Returns the F children values of node `(level, index)`, in index order.
    ///
    /// # Errors
    /// [`MerkleError::NoSuchNode`] when the node does not exist or is a leaf.
    pub fn children(&self, level: u8, index: u32) -> Result<&[u128], MerkleError> {
        if level >= self.shape.depth || index >= self.shape.level_width(level) {
            return Err(MerkleError::NoSuchNode { level, index });
        }
        let fanout = self.shape.fanout() as usize;
        let first = self.shape.level_offset(level + 1) + index as usize * fanout;
        Ok(&self.nodes[first..first + fanout])
    }

    /// Returns the leaf values, in leaf order.
    pub fn leaves(&self) -> &[u128] {
        &self.nodes[self.shape.level_offset(self.shape.depth)..]
    }

    /// Returns the leaf that holds `key_hash`.
    ///
    /// # Errors
    /// [`MerkleError::WrongPartition`] when the key hash is not in the tree's partition.
    pub fn leaf_of(&self, key_hash: KeyHash) -> Result<u32, MerkleError> {
        let got = self.partitioning.partition_of(key_hash);
        if got != self.partition {
            return Err(MerkleError::WrongPartition {
                key_hash: key_hash.0,
                expected: self.partition,
                got,
            });
        }
        // Drop the partition bits, then keep the leaf bits just below them.
        let below_partition = key_hash.0 << self.partitioning.bits();
        Ok((below_partition >> (64 - u32::from(self.shape.leaf_bits()))) as u32)
    }

    /// Returns the key hashes that node `(level, index)` covers; for a leaf, the range to
    /// read to repair it.
    ///
    /// # Errors
    /// [`MerkleError::NoSuchNode`] when the node does not exist.
    pub fn key_range(&self, level: u8, index: u32) -> Result<HashRange, MerkleError> {
        if index >= self.shape.level_width(level) {
            return Err(MerkleError::NoSuchNode { level, index });
        }
        Ok(range_of(
            self.partitioning,
            self.partition,
            self.shape,
            level,
            index,
        ))
    }

    /// Replaces `key`'s item: removes it with digest `old` and adds it with digest `new`
    /// (`None` = the key is absent), then recomputes the path to the root. O(F·D).
    ///
    /// `old` must be the digest this tree last saw for the key; with a wrong one the tree
    /// silently stops matching its data until the next rebuild.
    ///
    /// # Errors
    /// [`MerkleError::WrongPartition`] when `key_hash` is not in the tree's partition; the
    /// tree is then unchanged.
    pub fn update(
        &mut self,
        key_hash: KeyHash,
        key: &[u8],
        old: Option<u128>,
        new: Option<u128>,
    ) -> Result<(), MerkleError> {
        let leaf = self.leaf_of(key_hash)?;
        if old == new {
            return Ok(());
        }
        let mut delta = 0;
        for digest in [old, new].into_iter().flatten() {
            delta ^= item_hash(key, digest);
        }
        let shape = self.shape;
        let fanout = shape.fanout() as usize;
        let mut index = leaf as usize;
        self.nodes[shape.level_offset(shape.depth) + index] ^= delta;
        for level in (0..shape.depth).rev() {
            index >>= shape.fanout_bits;
            let first_child = shape.level_offset(level + 1) + index * fanout;
            let value = inner_hash(&self.nodes[first_child..first_child + fanout]);
            self.nodes[shape.level_offset(level) + index] = value;
        }
        Ok(())
    }

    /// Replaces the tree's content with exactly `items` (a start-up rebuild from a scan
    /// of the partition). O(items + nodes).
    ///
    /// Items must be distinct keys: a key given twice with the same digest cancels out.
    ///
    /// # Errors
    /// [`MerkleError::WrongPartition`] for the first item outside the partition; the tree
    /// is then unchanged.
    pub fn rebuild<K: AsRef<[u8]>>(
        &mut self,
        items: impl IntoIterator<Item = MerkleItem<K>>,
    ) -> Result<(), MerkleError> {
        let mut nodes = vec![0; self.shape.node_count()];
        let leaf_offset = self.shape.level_offset(self.shape.depth);
        for item in items {
            let leaf = self.leaf_of(item.key_hash)?;
            nodes[leaf_offset + leaf as usize] ^= item_hash(item.key.as_ref(), item.digest);
        }
        recompute_inner(self.shape, &mut nodes);
        self.nodes = nodes;
        Ok(())
    }

    /// Returns the persistable form of the tree (its leaves and what it covers).
    pub fn to_snapshot(&self) -> MerkleSnapshot {
        MerkleSnapshot {
            format: MERKLE_SNAPSHOT_FORMAT,
            partitioning: self.partitioning,
            partition: self.partition,
            shape: self.shape,
            leaves: self.leaves().to_vec(),
        }
    }

    /// Restores a tree from a snapshot, checking that it is the tree the caller expects
    /// (the same partitioning, partition and shape) and recomputing the inner nodes from
    /// the leaves. O(nodes).
    ///
    /// # Errors
    /// [`MerkleError::UnsupportedFormat`], [`MerkleError::PartitioningMismatch`],
    /// [`MerkleError::PartitionMismatch`], [`MerkleError::ShapeMismatch`] or
    /// [`MerkleError::LeafCount`]: the service should then rebuild the tree from its data.
    pub fn from_snapshot(
        snapshot: MerkleSnapshot,
        partitioning: Partitioning,
        partition: PartitionId,
        shape: MerkleShape,
    ) -> Result<Self, MerkleError> {
        if snapshot.format != MERKLE_SNAPSHOT_FORMAT {
            return Err(MerkleError::UnsupportedFormat { got: snapshot.format });
        }
        check_same_tree(
            partitioning,
            partition,
            shape,
            snapshot.partitioning,
            snapshot.partition,
            snapshot.shape,
        )?;
        let expected = u64::from(shape.leaf_count());
        let got = snapshot.leaves.len() as u64;
        if got != expected {
            return Err(MerkleError::LeafCount { expected, got });
        }
        let mut tree = MerkleTree::new(partitioning, partition, shape)?;
        let leaf_offset = shape.level_offset(shape.depth);
        tree.nodes[leaf_offset..].copy_from_slice(&snapshot.leaves);
        recompute_inner(shape, &mut tree.nodes);
        Ok(tree)
    }
}

impl fmt::Debug for MerkleTree {
    // Thousands of node values help nobody; the root identifies the content.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MerkleTree")
            .field("partition", &self.partition)
            .field("partition_count", &self.partitioning.count())
            .field("shape", &self.shape)
            .field("root", &format_args!("{:032x}", self.root()))
            .field(
                "non_empty_leaves",
                &self.leaves().iter().filter(|&&l| l != 0).count(),
            )
            .finish()
    }
}

impl MerkleSource for MerkleTree {
    type Error = MerkleError;

    fn summary(&self) -> Result<MerkleSummary, MerkleError> {
        Ok(MerkleTree::summary(self))
    }

    fn children(&self, level: u8, index: u32) -> Result<Vec<u128>, MerkleError> {
        MerkleTree::children(self, level, index).map(<[u128]>::to_vec)
    }
}

/// The persisted form of a [`MerkleTree`]: a versioned record of what the tree covers
/// and its leaves. Inner nodes are not stored: they are recomputed on load, so a snapshot
/// cannot carry inner nodes that disagree with its leaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MerkleSnapshot {
    format: u32,
    partitioning: Partitioning,
    partition: PartitionId,
    shape: MerkleShape,
    leaves: Vec<u128>,
}

/// Returns the key hashes under node `(level, index)`, which must exist.
fn range_of(
    partitioning: Partitioning,
    partition: PartitionId,
    shape: MerkleShape,
    level: u8,
    index: u32,
) -> HashRange {
    // Bits of the key hash below this node's prefix: 64 − partition bits − level bits,
    // between 64 − 32 and 63 by the invariant on `MerkleTree::new`.
    let span_bits = 64 - u32::from(partitioning.bits()) - u32::from(shape.fanout_bits) * u32::from(level);
    let start = partitioning.start_of(partition) | (u64::from(index) << span_bits);
    HashRange {
        start,
        end: start | (u64::MAX >> (64 - span_bits)),
    }
}

/// Checks that the other tree (`got_*`) is the expected one.
fn check_same_tree(
    partitioning: Partitioning,
    partition: PartitionId,
    shape: MerkleShape,
    got_partitioning: Partitioning,
    got_partition: PartitionId,
    got_shape: MerkleShape,
) -> Result<(), MerkleError> {
    if got_partitioning != partitioning {
        return Err(MerkleError::PartitioningMismatch {
            expected: partitioning.count(),
            // A snapshot's partitioning is not validated on decode; don't shift by it.
            got: 1u32.checked_shl(u32::from(got_partitioning.bits())).unwrap_or(0),
        });
    }
    if got_partition != partition {
        return Err(MerkleError::PartitionMismatch {
            expected: partition,
            got: got_partition,
        });
    }
    if got_shape != shape {
        return Err(MerkleError::ShapeMismatch {
            expected: shape,
            got: got_shape,
        });
    }
    Ok(())
}

impl DiffWalk {
    /// Opens a comparison of `local` with the peer whose summary is `remote`: compares the
    /// roots (one node) and, if they differ, asks for the root's children.
    ///
    /// # Errors
    /// [`MerkleError::PartitioningMismatch`], [`MerkleError::PartitionMismatch`] or
    /// [`MerkleError::ShapeMismatch`] when the peer's tree is not comparable.
    pub fn new(local: &MerkleTree, remote: MerkleSummary) -> Result<Self, MerkleError> {
        check_same_tree(
            local.partitioning,
            local.partition,
            local.shape,
            remote.partitioning,
            remote.partition,
            remote.shape,
        )?;
        let pending = if local.root() == remote.root {
            Vec::new()
        } else {
            vec![TreeNode { level: 0, index: 0 }]
        };
        Ok(DiffWalk {
            partitioning: local.partitioning,
            partition: local.partition,
            shape: local.shape,
            pending,
            leaves: Vec::new(),
            nodes_compared: 1,
            rounds: 0,
        })
    }

    /// Returns the nodes whose children the peer must send next, all on one level, in
    /// index order. Empty when the walk is done.
    pub fn pending(&self) -> &[TreeNode] {
        &self.pending
    }

    /// Returns true when no more replies are needed.
    pub fn is_done(&self) -> bool {
        self.pending.is_empty()
    }

    /// Feeds the peer's reply to [`DiffWalk::pending`]: one list of F children values per
    /// pending node, in the same order. Compares them with `local`'s and queues the
    /// differing children (or records them, on the leaf level).
    ///
    /// # Errors
    /// [`MerkleError::BadReply`] when the reply does not have the expected sizes (including
    /// a reply when nothing is pending), or a mismatch error when `local` is not the tree
    /// the walk was opened with. The walk is then unchanged.
    pub fn feed(&mut self, local: &MerkleTree, replies: &[Vec<u128>]) -> Result<(), MerkleError> {
        check_same_tree(
            self.partitioning,
            self.partition,
            self.shape,
            local.partitioning,
            local.partition,
            local.shape,
        )?;
        if replies.len() != self.pending.len() || self.pending.is_empty() {
            return Err(MerkleError::BadReply {
                expected: self.pending.len() as u64,
                got: replies.len() as u64,
            });
        }
        let fanout = self.shape.fanout();
        if let Some(bad) = replies.iter().find(|r| r.len() != fanout as usize) {
            return Err(MerkleError::BadReply {
                expected: u64::from(fanout),
                got: bad.len() as u64,
            });
        }
        // Collect first and commit at the end, so an error leaves the walk unchanged.
        let mut next = Vec::new();
        let mut leaves = Vec::new();
        for (node, remote_children) in self.pending.iter().zip(replies) {
            let local_children = local.children(node.level, node.index)?;
            let child_level = node.level + 1;
            for (offset, (l, r)) in (0..fanout).zip(local_children.iter().zip(remote_children)) {
                if l == r {
                    continue;
                }
                let index = (node.index << self.shape.fanout_bits) | offset;
                if child_level == self.shape.depth {
                    leaves.push(index);
                } else {
                    next.push(TreeNode {
                        level: child_level,
                        index,
                    });
                }
            }
        }
        self.leaves.extend(leaves);
        self.nodes_compared += u64::from(fanout) * replies.len() as u64;
        self.rounds += 1;
        self.pending = next;
        Ok(())
    }

    /// Ends the walk and returns the differing leaves with their key-hash ranges.
    ///
    /// # Errors
    /// [`MerkleError::WalkNotDone`] while replies are still pending.
    pub fn finish(self) -> Result<MerkleDiff, MerkleError> {
        if !self.pending.is_empty() {
            return Err(MerkleError::WalkNotDone {
                pending: self.pending.len() as u64,
            });
        }
        let depth = self.shape.depth;
        let leaves = self
            .leaves
            .iter()
            .map(|&leaf| DifferingLeaf {
                leaf,
                hashes: range_of(self.partitioning, self.partition, self.shape, depth, leaf),
            })
            .collect();
        Ok(MerkleDiff {
            leaves,
            nodes_compared: self.nodes_compared,
            rounds: self.rounds,
        })
    }
}

/// Compares `local` with `remote` by driving a [`DiffWalk`] to the end, one batched
/// [`MerkleSource::children_many`] call per level.
///
/// # Errors
/// The source's errors, and the [`MerkleError`]s of [`DiffWalk`] (a peer with another
/// tree, a malformed reply) converted into the source's error type.
pub fn diff<S: MerkleSource>(local: &MerkleTree, remote: &S) -> Result<MerkleDiff, S::Error> {
    let mut walk = DiffWalk::new(local, remote.summary()?)?;
    while !walk.is_done() {
        let replies = remote.children_many(walk.pending())?;
        walk.feed(local, &replies)?;
    }
    Ok(walk.finish()?)
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use xxhash_rust::xxh3::xxh3_64;

    use super::*;

    /// Where a test tree lives: the cluster's partitioning, the partition and the shape.
    #[derive(Debug, Clone, Copy)]
    struct Layout {
        partitioning: Partitioning,
        partition: PartitionId,
        shape: MerkleShape,
    }

    impl Layout {
        fn new(partition_count: u64, partition: u32, fanout_bits: u8, depth: u8) -> Self {
            Layout {
                partitioning: Partitioning::with_count(partition_count).expect("valid count"),
                partition: PartitionId(partition),
                shape: MerkleShape::new(fanout_bits, depth).expect("valid shape"),
            }
        }

        fn default_shape() -> Self {
            let mut layout = Layout::new(256, 5, 4, 3);
            layout.shape = MerkleShape::DEFAULT;
            layout
        }

        fn empty(self) -> MerkleTree {
            MerkleTree::new(self.partitioning, self.partition, self.shape).expect("valid layout")
        }

        fn key(id: u32) -> Vec<u8> {
            format!("bucket/key-{id}").into_bytes()
        }

        /// A stable key hash for key `id` inside the partition: the key's XXH3-64 with the
        /// partition bits overwritten, so keys spread over the partition's leaves.
        fn hash(self, id: u32) -> KeyHash {
            let below = u64::MAX >> self.partitioning.bits();
            KeyHash(self.partitioning.start_of(self.partition) | (xxh3_64(&Layout::key(id)) & below))
        }

        fn item(self, id: u32, digest: u128) -> MerkleItem<Vec<u8>> {
            MerkleItem {
                key_hash: self.hash(id),
                key: Layout::key(id),
                digest,
            }
        }

        fn tree(self, items: &BTreeMap<u32, u128>) -> MerkleTree {
            MerkleTree::from_items(
                self.partitioning,
                self.partition,
                self.shape,
                items.iter().map(|(&id, &digest)| self.item(id, digest)),
            )
            .expect("items are in the partition")
        }

        /// The oracle's leaf of key `id`, by arithmetic on the partition's range rather
        /// than through `MerkleTree::leaf_of`.
        fn naive_leaf(self, id: u32) -> u32 {
            let offset = self.hash(id).0 - self.partitioning.start_of(self.partition);
            let span = self.naive_leaf_span();
            (u128::from(offset) / span) as u32
        }

        fn naive_leaf_span(self) -> u128 {
            let partition_size = 1u128 << (64 - u32::from(self.partitioning.bits()));
            partition_size / u128::from(self.shape.leaf_count())
        }
    }

    fn layouts() -> impl Strategy<Value = Layout> {
        (1u64..=4, 1u8..=3, 1u8..=3).prop_flat_map(|(bits, fanout_bits, depth)| {
            (0..(1u32 << bits))
                .prop_map(move |partition| Layout::new(1 << bits, partition, fanout_bits, depth))
        })
    }

    fn apply(
        layout: Layout,
        tree: &mut MerkleTree,
        model: &mut BTreeMap<u32, u128>,
        id: u32,
        new: Option<u128>,
    ) {
        let old = match new {
            Some(digest) => model.insert(id, digest),
            None => model.remove(&id),
        };
        tree.update(layout.hash(id), &Layout::key(id), old, new)
            .expect("key in partition");
    }

    /// The bound on nodes compared for `k` differing leaves: the root, then at most
    /// min(k, F^l) differing nodes on each level l < D, each costing F children.
    fn node_bound(shape: MerkleShape, k: u64) -> u64 {
        let fanout = u64::from(shape.fanout());
        1 + fanout
            * (0..shape.depth())
                .map(|level| k.min(u64::from(shape.level_width(level))))
                .sum::<u64>()
    }

    fn diff_trees(a: &MerkleTree, b: &MerkleTree) -> MerkleDiff {
        diff(a, b).expect("trees of one layout compare")
    }

    // Goal: pin the item hash, which is protocol. Method: values cross-checked against
    // the reference implementation (Python `xxhash.xxh3_128` 4.1, which binds the C
    // library) over `key ‖ digest.to_bytes(16, "little")`.
    #[test]
    fn item_hash_golden_vectors() {
        assert_eq!(
            item_hash(b"users/alice", 1),
            0x59de_0ebd_9a23_3f2e_7ad1_e2c0_8de3_2f96
        );
        assert_eq!(item_hash(b"", 0), 0xe518_9a95_99e3_f862_05ea_23ef_06e2_8b2d);
        assert_eq!(
            item_hash("b/clé".as_bytes(), u128::MAX),
            0x2dec_0370_c762_c2c9_9e83_1584_6195_4b07
        );
        assert_eq!(
            item_hash(&[b'k'; 300], 7),
            0xf815_9b99_ca5e_789b_db83_eda0_6e84_5dc9
        );
        // Keys around the stack buffer's edge take either path: one function.
        for len in [239, 240, 241, 1088] {
            let key = vec![b'k'; len];
            let whole = [key.as_slice(), &7u128.to_le_bytes()].concat();
            assert_eq!(item_hash(&key, 7), xxh3_128(&whole), "key of {len} bytes");
        }
    }

    // Goal: the default shape is the documented one. Method: check its numbers.
    #[test]
    fn default_shape_is_fanout_16_depth_3() {
        let shape = MerkleShape::default();
        assert_eq!(shape, MerkleShape::DEFAULT);
        assert_eq!((shape.fanout(), shape.depth(), shape.leaf_count()), (16, 3, 4096));
        assert_eq!(shape.node_count(), 1 + 16 + 256 + 4096);
        assert_eq!(shape.level_width(2), 256);
        assert_eq!(shape.level_width(4), 0);
    }

    // Goal: an empty subtree is 0 at every level, and undoing an update restores it.
    // Method: build, update, undo, and look at every node.
    #[test]
    fn empty_tree_is_all_zero_and_undo_restores_it() {
        let layout = Layout::default_shape();
        let empty = layout.empty();
        assert_eq!(empty.root(), 0);
        assert!(empty.nodes.iter().all(|&n| n == 0));

        let mut tree = layout.empty();
        let (hash, key) = (layout.hash(1), Layout::key(1));
        tree.update(hash, &key, None, Some(7)).expect("in partition");
        assert_ne!(tree.root(), 0);
        let leaf = tree.leaf_of(hash).expect("in partition");
        assert_eq!(tree.node(3, leaf), Ok(item_hash(&key, 7)));
        assert_eq!(tree.leaves().iter().filter(|&&l| l != 0).count(), 1);
        tree.update(hash, &key, Some(7), Some(8)).expect("in partition");
        assert_eq!(tree.node(3, leaf), Ok(item_hash(&key, 8)));
        tree.update(hash, &key, Some(8), None).expect("in partition");
        assert_eq!(tree, empty);
    }

    // Goal: leaves tile the partition in key-hash order and each node covers exactly its
    // children. Method: walk every node of small shapes and compare ranges.
    #[test]
    fn key_ranges_tile_the_partition() {
        for layout in [
            Layout::new(4, 2, 2, 2),
            Layout::new(2, 0, 1, 3),
            Layout::new(256, 255, 4, 3),
        ] {
            let tree = layout.empty();
            let shape = layout.shape;
            let root = tree.key_range(0, 0).expect("root");
            assert_eq!(root.start, layout.partitioning.start_of(layout.partition));
            assert_eq!(root.end, layout.partitioning.end_of(layout.partition));
            for level in 0..shape.depth() {
                for index in 0..shape.level_width(level) {
                    let parent = tree.key_range(level, index).expect("node");
                    let first = index * shape.fanout();
                    let mut next_start = parent.start;
                    for child in first..first + shape.fanout() {
                        let range = tree.key_range(level + 1, child).expect("child");
                        assert_eq!(range.start, next_start);
                        assert!(range.end >= range.start);
                        next_start = range.end.wrapping_add(1);
                    }
                    assert_eq!(next_start, parent.end.wrapping_add(1));
                }
            }
            for leaf in 0..shape.leaf_count() {
                let range = tree.key_range(shape.depth(), leaf).expect("leaf");
                assert_eq!(tree.leaf_of(KeyHash(range.start)), Ok(leaf));
                assert_eq!(tree.leaf_of(KeyHash(range.end)), Ok(leaf));
            }
        }
    }

    proptest! {
        // Goal: same item set ⇒ same nodes, whatever the history. Method: apply random
        // inserts, overwrites and deletes to a tree and to a model map, then compare with
        // `rebuild` of the model and with the final items inserted in reverse order.
        #[test]
        fn prop_any_update_order_equals_rebuild(
            layout in layouts(),
            ops in prop::collection::vec((0u32..40, prop::option::of(0u128..4)), 0..120),
        ) {
            let mut tree = layout.empty();
            let mut model = BTreeMap::new();
            for (id, new) in ops {
                apply(layout, &mut tree, &mut model, id, new);
            }
            prop_assert_eq!(&tree, &layout.tree(&model));

            let mut reversed = layout.empty();
            for (&id, &digest) in model.iter().rev() {
                reversed
                    .update(layout.hash(id), &Layout::key(id), None, Some(digest))
                    .expect("key in partition");
            }
            prop_assert_eq!(&tree, &reversed);
        }

        // Goal: insertion order is irrelevant. Method: insert one item set in a random
        // permutation and in key order; both equal `from_items`.
        #[test]
        fn prop_insert_order_is_irrelevant(
            (layout, items) in layouts().prop_flat_map(|layout| {
                let items = prop::collection::btree_map(0u32..10_000, any::<u128>(), 0..80)
                    .prop_map(|m| m.into_iter().collect::<Vec<_>>())
                    .prop_shuffle();
                (Just(layout), items)
            }),
        ) {
            let mut shuffled = layout.empty();
            for &(id, digest) in &items {
                shuffled
                    .update(layout.hash(id), &Layout::key(id), None, Some(digest))
                    .expect("key in partition");
            }
            let model: BTreeMap<u32, u128> = items.into_iter().collect();
            prop_assert_eq!(&shuffled, &layout.tree(&model));
        }

        // Goal: a diff returns exactly the leaves whose item sets differ, with ranges that
        // cover every differing key, at the documented cost. Method: derive two item sets
        // from one base by random edits, and compare `diff` with a naive oracle that
        // places every item of both sets in its leaf by arithmetic.
        #[test]
        fn prop_diff_equals_naive_leaf_oracle(
            layout in layouts(),
            base in prop::collection::btree_map(0u32..60, 0u128..4, 0..40),
            edits_a in prop::collection::btree_map(0u32..60, prop::option::of(0u128..4), 0..8),
            edits_b in prop::collection::btree_map(0u32..60, prop::option::of(0u128..4), 0..8),
        ) {
            let edit = |edits: &BTreeMap<u32, Option<u128>>| {
                let mut items = base.clone();
                for (&id, &digest) in edits {
                    match digest {
                        Some(d) => items.insert(id, d),
                        None => items.remove(&id),
                    };
                }
                items
            };
            let (items_a, items_b) = (edit(&edits_a), edit(&edits_b));
            let (a, b) = (layout.tree(&items_a), layout.tree(&items_b));

            let leaf_sets = |items: &BTreeMap<u32, u128>| {
                let mut leaves: BTreeMap<u32, BTreeSet<(u32, u128)>> = BTreeMap::new();
                for (&id, &digest) in items {
                    leaves.entry(layout.naive_leaf(id)).or_default().insert((id, digest));
                }
                leaves
            };
            let (leaves_a, leaves_b) = (leaf_sets(&items_a), leaf_sets(&items_b));
            let expected: Vec<u32> = (0..layout.shape.leaf_count())
                .filter(|leaf| leaves_a.get(leaf) != leaves_b.get(leaf))
                .collect();

            let result = diff_trees(&a, &b);
            let got: Vec<u32> = result.leaves.iter().map(|l| l.leaf).collect();
            prop_assert_eq!(&got, &expected);
            let back: Vec<u32> = diff_trees(&b, &a).leaves.iter().map(|l| l.leaf).collect();
            prop_assert_eq!(&back, &expected);

            let span = layout.naive_leaf_span();
            let start = u128::from(layout.partitioning.start_of(layout.partition));
            for leaf in &result.leaves {
                let naive_start = start + u128::from(leaf.leaf) * span;
                prop_assert_eq!(u128::from(leaf.hashes.start), naive_start);
                prop_assert_eq!(u128::from(leaf.hashes.end), naive_start + span - 1);
            }
            let differing_keys = items_a
                .keys()
                .chain(items_b.keys())
                .filter(|&id| items_a.get(id) != items_b.get(id));
            for &id in differing_keys {
                let hash = layout.hash(id);
                prop_assert!(
                    result.leaves.iter().any(|l| l.hashes.contains(hash)),
                    "key {} not covered", id
                );
            }

            let k = expected.len() as u64;
            prop_assert!(result.nodes_compared <= node_bound(layout.shape, k));
            if k == 0 {
                prop_assert_eq!((result.nodes_compared, result.rounds), (1, 0));
            } else {
                prop_assert_eq!(result.rounds, u32::from(layout.shape.depth()));
            }
        }

        // Goal: a snapshot restores the same tree through both encodings a service may
        // use. Method: JSON and postcard round trips of random trees.
        #[test]
        fn prop_snapshot_round_trips(
            layout in layouts(),
            items in prop::collection::btree_map(0u32..1000, any::<u128>(), 0..50),
        ) {
            let tree = layout.tree(&items);
            let restore = |snapshot: MerkleSnapshot| {
                MerkleTree::from_snapshot(snapshot, layout.partitioning, layout.partition, layout.shape)
            };
            let json = serde_json::to_string(&tree.to_snapshot()).expect("serialize");
            let from_json = serde_json::from_str(&json).expect("deserialize");
            prop_assert_eq!(restore(from_json), Ok(tree.clone()));
            let bytes = postcard::to_allocvec(&tree.to_snapshot()).expect("serialize");
            let from_bytes = postcard::from_bytes(&bytes).expect("deserialize");
            prop_assert_eq!(restore(from_bytes), Ok(tree));
        }
    }

    // Goal: the cost of a diff follows the difference, not the data (ARCHITECTURE §3).
    // Method: two default-shape trees over 10 000 identical keys, then k = 1, 4, 16 keys
    // changed in one; the nodes compared stay within 1 + F·Σ min(k, F^l) ≤ k·D·F + 1,
    // far below the 4096 leaves (let alone the 10 000 keys).
    #[test]
    fn diff_cost_follows_difference_not_size() {
        let layout = Layout::default_shape();
        let shape = layout.shape;
        let items: BTreeMap<u32, u128> = (0..10_000).map(|id| (id, u128::from(id))).collect();
        let a = layout.tree(&items);
        for k in [1u32, 4, 16] {
            let mut b = a.clone();
            let mut model = items.clone();
            let changed: Vec<u32> = (0..k).map(|i| i * (10_000 / k) + 7).collect();
            for &id in &changed {
                apply(layout, &mut b, &mut model, id, Some(1_000_000 + u128::from(id)));
            }
            let result = diff_trees(&a, &b);

            let expected: BTreeSet<u32> = changed.iter().map(|&id| layout.naive_leaf(id)).collect();
            let got: BTreeSet<u32> = result.leaves.iter().map(|l| l.leaf).collect();
            assert_eq!(got, expected, "k = {k}");
            let bound = u64::from(k) * u64::from(shape.depth()) * u64::from(shape.fanout()) + 1;
            assert!(result.nodes_compared <= node_bound(shape, expected.len() as u64));
            assert!(
                result.nodes_compared <= bound,
                "k = {k}: {} > {bound}",
                result.nodes_compared
            );
            assert!(
                result.nodes_compared * 4 < u64::from(shape.leaf_count()),
                "k = {k}: {} nodes",
                result.nodes_compared
            );
            assert_eq!(result.rounds, 3);
        }
    }

    // Goal: identical trees cost one comparison. Method: the same items inserted in
    // opposite orders, and two empty trees; the diff stops at the root.
    #[test]
    fn identical_trees_compare_root_only() {
        let layout = Layout::default_shape();
        let mut forward = layout.empty();
        let mut backward = layout.empty();
        for id in 0..1000 {
            forward
                .update(layout.hash(id), &Layout::key(id), None, Some(9))
                .expect("in partition");
        }
        for id in (0..1000).rev() {
            backward
                .update(layout.hash(id), &Layout::key(id), None, Some(9))
                .expect("in partition");
        }
        for (a, b) in [(&forward, &backward), (&layout.empty(), &layout.empty())] {
            let result = diff_trees(a, b);
            assert!(result.is_empty());
            assert_eq!((result.nodes_compared, result.rounds), (1, 0));
        }
    }

    // Goal: the walk works when the two sides only exchange messages. Method: every
    // message (summary, pending nodes, children replies) goes through JSON, and the
    // result equals the in-process `diff`.
    #[test]
    fn diff_walk_over_json_messages_equals_diff() {
        let layout = Layout::new(16, 3, 2, 4);
        let items: BTreeMap<u32, u128> = (0..500).map(|id| (id, 1)).collect();
        let local = layout.tree(&items);
        let mut remote_items = items.clone();
        remote_items.insert(3, 2);
        remote_items.remove(&100);
        remote_items.insert(9999, 1);
        let remote = layout.tree(&remote_items);

        let wire_summary = serde_json::to_string(&remote.summary()).expect("serialize");
        let summary = serde_json::from_str(&wire_summary).expect("deserialize");
        let mut walk = DiffWalk::new(&local, summary).expect("same layout");
        while !walk.is_done() {
            let request = serde_json::to_string(walk.pending()).expect("serialize");
            let asked: Vec<TreeNode> = serde_json::from_str(&request).expect("deserialize");
            let answer: Vec<Vec<u128>> = asked
                .iter()
                .map(|n| remote.children(n.level, n.index).map(<[u128]>::to_vec))
                .collect::<Result<_, _>>()
                .expect("nodes exist");
            let reply = serde_json::to_string(&answer).expect("serialize");
            let replies: Vec<Vec<u128>> = serde_json::from_str(&reply).expect("deserialize");
            walk.feed(&local, &replies).expect("well-formed reply");
        }
        let result = walk.finish().expect("done");
        assert_eq!(result, diff_trees(&local, &remote));
        assert!(!result.is_empty() && result.leaves.len() <= 3);
    }

    // Goal: a key hash outside the partition is a typed error that changes nothing.
    // Method: update, rebuild and leaf_of with a hash of the next partition.
    #[test]
    fn wrong_partition_key_hash_is_refused() {
        let layout = Layout::default_shape();
        let mut tree = layout.tree(&(0..10).map(|id| (id, 1)).collect());
        let before = tree.clone();
        let stranger = KeyHash(layout.partitioning.start_of(PartitionId(6)));
        let expected = MerkleError::WrongPartition {
            key_hash: stranger.0,
            expected: PartitionId(5),
            got: PartitionId(6),
        };

        assert_eq!(tree.update(stranger, b"x", None, Some(1)), Err(expected.clone()));
        assert_eq!(
            tree.update(stranger, b"x", Some(1), Some(1)),
            Err(expected.clone())
        );
        assert_eq!(tree.leaf_of(stranger), Err(expected.clone()));
        let items = vec![
            layout.item(1, 5),
            MerkleItem {
                key_hash: stranger,
                key: b"x".to_vec(),
                digest: 1,
            },
        ];
        assert_eq!(tree.rebuild(items), Err(expected.clone()));
        assert_eq!(tree, before);
        assert_eq!(expected.code(), ErrorCode::Internal);
        assert_eq!(
            MerkleTree::new(layout.partitioning, PartitionId(256), layout.shape),
            Err(MerkleError::NoSuchPartition {
                partition: PartitionId(256),
                count: 256
            })
        );
    }

    // Goal: shapes outside the rules are refused, in code and on decode.
    // Method: the edges of each rule.
    #[test]
    fn invalid_shapes_are_refused() {
        for (fanout_bits, depth) in [(0, 3), (7, 1), (4, 0), (4, 5), (1, 17), (6, 3)] {
            assert_eq!(
                MerkleShape::new(fanout_bits, depth),
                Err(MerkleError::InvalidShape { fanout_bits, depth })
            );
        }
        for (fanout_bits, depth) in [(1, 1), (1, 16), (6, 2), (4, 4), (2, 8)] {
            assert!(MerkleShape::new(fanout_bits, depth).is_ok());
        }
        assert!(serde_json::from_str::<MerkleShape>(r#"{"fanout_bits":0,"depth":3}"#).is_err());
        assert_eq!(
            serde_json::from_str::<MerkleShape>(r#"{"fanout_bits":4,"depth":3}"#).ok(),
            Some(MerkleShape::DEFAULT)
        );
    }

    // Goal: a snapshot of another tree, of an unknown format or of the wrong size is a
    // typed error. Method: load one snapshot with each expectation wrong in turn.
    #[test]
    fn snapshot_of_another_tree_is_refused() {
        let layout = Layout::new(16, 3, 2, 3);
        let snapshot = layout.tree(&(0..50).map(|id| (id, 1)).collect()).to_snapshot();
        let load =
            |s: MerkleSnapshot, l: Layout| MerkleTree::from_snapshot(s, l.partitioning, l.partition, l.shape);
        assert!(load(snapshot.clone(), layout).is_ok());

        let other_shape = Layout::new(16, 3, 3, 2);
        assert_eq!(
            load(snapshot.clone(), other_shape),
            Err(MerkleError::ShapeMismatch {
                expected: other_shape.shape,
                got: layout.shape
            })
        );
        assert_eq!(
            load(snapshot.clone(), Layout::new(16, 4, 2, 3)),
            Err(MerkleError::PartitionMismatch {
                expected: PartitionId(4),
                got: PartitionId(3)
            })
        );
        assert_eq!(
            load(snapshot.clone(), Layout::new(32, 3, 2, 3)),
            Err(MerkleError::PartitioningMismatch {
                expected: 32,
                got: 16
            })
        );
        let future = MerkleSnapshot {
            format: 2,
            ..snapshot.clone()
        };
        assert_eq!(
            load(future, layout),
            Err(MerkleError::UnsupportedFormat { got: 2 })
        );
        let mut short = snapshot.clone();
        short.leaves.pop();
        let err = load(short, layout).expect_err("short snapshot");
        assert_eq!(
            err,
            MerkleError::LeafCount {
                expected: 64,
                got: 63
            }
        );
        assert_eq!(err.code(), ErrorCode::StorageError);
    }

    // Goal: pin the snapshot's JSON, a persisted format. Method: a one-item tree of the
    // smallest shape (two leaves).
    #[test]
    fn snapshot_golden_json() {
        let layout = Layout::new(2, 1, 1, 1);
        let tree = layout.tree(&BTreeMap::from([(1, 1)]));
        let json = serde_json::to_string(&tree.to_snapshot()).expect("serialize");
        assert_eq!(
            json,
            r#"{"format":1,"partitioning":{"bits":1},"partition":1,"shape":{"fanout_bits":1,"depth":1},"leaves":[280050671662980697221339783944753014075,0]}"#
        );
    }

    // Goal: node addresses from a peer are checked, never trusted. Method: addresses
    // just past each edge.
    #[test]
    fn node_access_out_of_range_is_refused() {
        let tree = Layout::default_shape().empty();
        assert_eq!(tree.node(0, 0), Ok(0));
        assert_eq!(tree.node(3, 4095), Ok(0));
        assert_eq!(
            tree.node(3, 4096),
            Err(MerkleError::NoSuchNode {
                level: 3,
                index: 4096
            })
        );
        assert_eq!(
            tree.node(4, 0),
            Err(MerkleError::NoSuchNode { level: 4, index: 0 })
        );
        assert_eq!(
            tree.node(0, 1),
            Err(MerkleError::NoSuchNode { level: 0, index: 1 })
        );
        assert_eq!(tree.children(2, 255).map(<[u128]>::len), Ok(16));
        assert_eq!(
            tree.children(2, 256),
            Err(MerkleError::NoSuchNode { level: 2, index: 256 })
        );
        assert_eq!(
            tree.children(3, 0),
            Err(MerkleError::NoSuchNode { level: 3, index: 0 })
        );
        assert_eq!(
            tree.key_range(4, 0),
            Err(MerkleError::NoSuchNode { level: 4, index: 0 })
        );
        assert_eq!(
            MerkleError::NoSuchNode { level: 4, index: 0 }.code(),
            ErrorCode::InvalidRequest
        );
    }

    // Goal: a peer with another tree or a malformed reply is a typed error and leaves the
    // walk as it was. Method: feed replies of the wrong count and length, feed after the
    // end, finish early, and compare with a peer of another shape.
    #[test]
    fn diff_walk_refuses_malformed_replies() {
        let layout = Layout::new(4, 1, 2, 2);
        let local = layout.tree(&BTreeMap::from([(1, 1)]));
        let remote = layout.empty();
        let mut walk = DiffWalk::new(&local, remote.summary()).expect("same layout");
        let before = walk.clone();
        assert_eq!(walk.pending(), &[TreeNode { level: 0, index: 0 }]);
        assert_eq!(
            walk.feed(&local, &[]),
            Err(MerkleError::BadReply { expected: 1, got: 0 })
        );
        assert_eq!(
            walk.feed(&local, &[vec![0; 3]]),
            Err(MerkleError::BadReply { expected: 4, got: 3 })
        );
        let other = Layout::new(4, 2, 2, 2).empty();
        assert_eq!(
            walk.feed(&other, &[vec![0; 4]]),
            Err(MerkleError::PartitionMismatch {
                expected: PartitionId(1),
                got: PartitionId(2)
            })
        );
        assert_eq!(walk, before);
        assert_eq!(
            walk.clone().finish(),
            Err(MerkleError::WalkNotDone { pending: 1 })
        );

        walk.feed(&local, &[vec![0; 4]]).expect("well-formed");
        walk.feed(&local, &[vec![0; 4]]).expect("well-formed");
        assert!(walk.is_done());
        assert_eq!(
            walk.feed(&local, &[vec![0; 4]]),
            Err(MerkleError::BadReply { expected: 0, got: 1 })
        );
        let result = walk.finish().expect("done");
        assert_eq!(result.leaves.len(), 1);
        assert_eq!(result.nodes_compared, 1 + 4 + 4);

        let reshaped = Layout::new(4, 1, 1, 4).empty();
        assert_eq!(
            diff(&local, &reshaped),
            Err(MerkleError::ShapeMismatch {
                expected: layout.shape,
                got: reshaped.shape()
            })
        );
    }
}
