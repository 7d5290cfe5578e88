//! The engine: one fjall database per node with five keyspaces (`objects`, `hints`,
//! `gc`, `idem`, `meta`), the per-partition Merkle trees kept current on every write, and the
//! replica operations on top.
//!
//! # Layout
//! - this file: the engine, opening it, and what the parts share;
//! - `identity`: node id, incarnations, the clean-shutdown marker;
//! - `journal`: the group commit's fsync;
//! - `objects`: reads, coordinated writes, replicates and idempotency records;
//! - `hints`: hints held for other nodes; `scan`: partition scans and Merkle trees;
//! - `gc`: tombstone collection and record purges; `meta`: the cached cluster state.
//!
//! Every method here blocks (fjall is synchronous). Point operations (get, one-key puts)
//! take microseconds and run inline on the async workers (see `api::replicas`); scans,
//! hint delivery, handoff and persist run in `spawn_blocking`.
//!
//! # Invariants
//! - A key's whole version set is one fjall value, written in one batch: readers never see
//!   half a sibling set.
//! - Read-modify-write of one key is serialised by a striped lock, so two concurrent
//!   writes to a key never both read the old set.
//! - The Merkle tree of a partition reflects every committed object write of that
//!   partition: the tree update happens under the same stripe lock, right after commit.
//! - Hints are kept apart from the node's own objects: they never enter a Merkle tree and
//!   are deleted only after their owner confirmed, and only if unchanged since they were
//!   sent.
//! - A tombstone is collected only with its GC record in the same batch: a node that
//!   removed a tombstone set always remembers it (until the retention) and can tell peers
//!   it collected exactly that set.
//! - A dot is minted once, ever. Each stored copy (a key's object, or one hint) keeps the
//!   actor that mints on it and the node incarnation that chose it (core's
//!   [`StoredCopy`]); the actor is continued only in that incarnation and while the copy
//!   remembers its dots, else a fresh random actor starts. A start that finds no
//!   `clean_shutdown` marker in `meta` (written last by [`Engine::close_clean`], removed at
//!   open) is a new incarnation, so a crash that lost dots others saw is never continued;
//!   a deleted copy (a delivered hint, a collected tombstone) takes its actor with it.
//! - An idempotency record is written in the same batch as the write it records, so a
//!   node never remembers a write it does not hold, nor holds one it would apply again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use dynamo_core::crdt::{CrdtOp, CrdtType};
use dynamo_core::limits::MAX_VALUE_BYTES;
use dynamo_core::merkle::{MerkleItem, MerkleShape, MerkleTree};
use dynamo_core::version::{ConflictRule, NewWrite, PutOutcome, StoredCopy, VersionedObject};
use dynamo_core::wire::internal::{IdempotencyClaim, IdempotencyRecord};
use dynamo_core::{
    ActorId, DotSet, Incarnation, KeyHash, NodeId, PartitionId, Partitioning, VolumeId, key_hash,
};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::codec::{self, ObjectKey};
use crate::error::StorageError;
use crate::metrics::StorageMetrics;

mod feed;
mod gc;
mod hints;
mod identity;
mod journal;
mod listing;
mod meta;
mod objects;
mod scan;
#[cfg(test)]
mod tests;

pub use dynamo_core::wire::internal::HintFor;
pub use feed::FeedPage;
pub use gc::TombstoneStatus;
pub use hints::PendingHint;
use journal::JournalFile;
pub use listing::ListingPage;
pub use meta::CachedClusterState;
pub use objects::{Claim, Coordinated};
pub use scan::merkle_key;

/// Stripes of the per-key write lock: enough that unrelated keys rarely share one.
const LOCK_STRIPES: usize = 1024;

/// How acknowledged writes are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// fsync before acknowledging (group commit: concurrent writers share an fsync). An
    /// acknowledged write survives power loss.
    Sync,
    /// Flush to the OS before acknowledging, fsync in the background. An acknowledged
    /// write survives `kill -9` of the process, not power loss (Dynamo's buffered writes).
    Buffered,
}

/// The node's stable identity, kept on its volume.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Identity {
    /// The node's name in the ring.
    pub node_id: NodeId,
    /// This life of the data directory (new after every unclean stop).
    pub incarnation: Incarnation,
    /// The data directory itself (kept for its whole life).
    pub volume: VolumeId,
}

/// One key, validated.
#[derive(Debug, Clone)]
pub struct KeyRef<'a> {
    /// The bucket.
    pub bucket: &'a str,
    /// The key.
    pub key: &'a str,
}

/// The storage engine.
pub struct Engine {
    db: Database,
    objects: Keyspace,
    hints: Keyspace,
    gc: Keyspace,
    idem: Keyspace,
    meta: Keyspace,
    /// The listing index (`listing`).
    listing: Keyspace,
    /// The change log (`feed`).
    feed_space: Keyspace,
    feed: feed::FeedLog,
    partitioning: Partitioning,
    identity: Identity,
    durability: Durability,
    stripes: Box<[Mutex<()>]>,
    merkle: Box<[Mutex<MerkleTree>]>,
    /// Intended owners with hints pending, and their addresses.
    hint_targets: Mutex<BTreeMap<NodeId, String>>,
    metrics: StorageMetrics,
    /// The database directory, where fjall keeps its journal files.
    dir: PathBuf,
    /// The active journal file, opened for [`Engine::sync_journal`].
    journal: Mutex<Option<JournalFile>>,
    /// Mirrors the `volume_unconfirmed` marker in `meta`.
    volume_unconfirmed: std::sync::atomic::AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these short locks leaves consistent data behind (the
    // guarded state is only written after fjall succeeded), so poisoning is ignored.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

const META_NODE_ID: &[u8] = b"node_id";
/// The current incarnation (named `actor` on disk since incarnations were actors).
const META_INCARNATION: &[u8] = b"actor";
const META_PARTITIONS: &[u8] = b"partitions";
const META_HINT_ADDR: &[u8] = b"hint_addr/";
const META_RING_EPOCH: &[u8] = b"ring_epoch";
const META_CLUSTER_STATE: &[u8] = b"cluster_state";
/// Present only between a clean shutdown and the next start.
const META_CLEAN: &[u8] = b"clean_shutdown";
/// The volume id ([`VolumeId`]), drawn once when the directory is created.
const META_VOLUME: &[u8] = b"volume";
/// Present from the volume's creation until the ring service is seen binding it to this
/// node's member (`Engine::confirm_volume`).
const META_VOLUME_UNCONFIRMED: &[u8] = b"volume_unconfirmed";

impl Engine {
    /// Opens (or creates) the engine in `dir`.
    ///
    /// The node id is taken from the volume if one is stored there, else from `node_id`,
    /// else generated; a configured id that differs from the stored one is refused (the
    /// volume belongs to another node). The actor id is drawn at random when the volume is
    /// new. All Merkle trees are rebuilt from a scan; the time is reported in the metrics.
    ///
    /// # Errors
    /// [`StorageError`] for engine failures, corrupt data or an identity mismatch.
    pub fn open(
        dir: &Path,
        partitioning: Partitioning,
        durability: Durability,
        node_id: Option<NodeId>,
        metrics: StorageMetrics,
    ) -> Result<Engine, StorageError> {
        std::fs::create_dir_all(dir)?;
        let db = Database::builder(dir).open()?;
        let objects = db.keyspace("objects", KeyspaceCreateOptions::default)?;
        let hints = db.keyspace("hints", KeyspaceCreateOptions::default)?;
        let gc = db.keyspace("gc", KeyspaceCreateOptions::default)?;
        let idem = db.keyspace("idem", KeyspaceCreateOptions::default)?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        let listing = db.keyspace("listing", KeyspaceCreateOptions::default)?;
        let feed_space = db.keyspace("feed", KeyspaceCreateOptions::default)?;
        let feed = feed::FeedLog::open(&db, &meta)?;

        let (mut identity, created) = Self::load_identity(&db, &meta, node_id)?;
        // A node can show a dot before it is on disk: a read between commit and fsync, a
        // hint sent meanwhile, any write in `buffered` mode. After a crash that lost it,
        // minting the same (actor, counter) again for another value would make every
        // replica or client that saw the first one treat the second as already seen and
        // drop it. So each start after an unclean stop is a new incarnation with a new
        // actor id (as Riak's vnodes do); the marker of a clean stop is removed now so
        // that the next crash is noticed.
        // A volume created just now has no marker and a fresh actor: nothing to do.
        if !created {
            let clean = meta.get(META_CLEAN)?.is_some();
            let mut b = db.batch().durability(Some(PersistMode::SyncAll));
            if clean {
                b.remove(&meta, META_CLEAN);
            } else {
                let incarnation = Incarnation(rand::random::<u64>());
                tracing::warn!(old = %identity.incarnation, new = %incarnation, "not stopped cleanly: new incarnation");
                b.insert(&meta, META_INCARNATION, incarnation.0.to_be_bytes());
                identity.incarnation = incarnation;
                metrics.unclean_restarts.inc();
            }
            b.commit()?;
        }
        match meta.get(META_PARTITIONS)? {
            Some(q) if q.as_ref() != partitioning.count().to_be_bytes() => {
                let stored = <[u8; 4]>::try_from(q.as_ref()).map_or(0, u32::from_be_bytes);
                return Err(StorageError::PartitionCountMismatch {
                    stored,
                    configured: partitioning.count(),
                });
            }
            Some(_) => {}
            None => {
                meta.insert(META_PARTITIONS, partitioning.count().to_be_bytes())?;
                db.persist(PersistMode::SyncAll)?;
            }
        }

        let meta_unconfirmed = meta.get(META_VOLUME_UNCONFIRMED)?.is_some();
        let shape = MerkleShape::default();
        let merkle = (0..partitioning.count())
            .map(|p| MerkleTree::new(partitioning, PartitionId(p), shape).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?
            .into_boxed_slice();

        let engine = Engine {
            db,
            objects,
            hints,
            gc,
            idem,
            meta,
            listing,
            feed,
            feed_space,
            partitioning,
            identity,
            durability,
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            merkle,
            hint_targets: Mutex::new(BTreeMap::new()),
            metrics,
            dir: dir.to_path_buf(),
            journal: Mutex::new(None),
            volume_unconfirmed: std::sync::atomic::AtomicBool::new(meta_unconfirmed),
        };
        engine.rebuild_merkle()?;
        engine.load_hint_targets()?;
        engine.ensure_listing_index()?;
        Ok(engine)
    }

    /// Returns the durability mode.
    pub fn durability(&self) -> Durability {
        self.durability
    }

    /// Returns the partitioning.
    pub fn partitioning(&self) -> Partitioning {
        self.partitioning
    }

    /// Returns the metrics.
    pub fn metrics(&self) -> &StorageMetrics {
        &self.metrics
    }
}
