//! The engine: one fjall database per node with five keyspaces (`objects`, `hints`,
//! `gc`, `idem`, `meta`), the per-partition Merkle trees kept current on every write, and the
//! replica operations on top.
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

use dynamo_core::merkle::{MerkleItem, MerkleShape, MerkleTree};
use dynamo_core::version::{NewWrite, PutOutcome, Resolution, StoredCopy, VersionedObject};
use dynamo_core::wire::internal::{IdempotencyClaim, IdempotencyRecord};
use dynamo_core::{ActorId, DotSet, Incarnation, KeyHash, NodeId, PartitionId, Partitioning, key_hash};
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};

use crate::codec::{self, ObjectKey};
use crate::error::StorageError;
use crate::metrics::StorageMetrics;

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
}

/// One key, validated.
#[derive(Debug, Clone)]
pub struct KeyRef<'a> {
    /// The bucket.
    pub bucket: &'a str,
    /// The key.
    pub key: &'a str,
}

/// A hinted write's intended owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HintFor {
    /// The owner.
    pub node: NodeId,
    /// The owner's internal address.
    pub address: String,
}

/// A hint read for delivery.
#[derive(Debug, Clone)]
pub struct PendingHint {
    /// The key.
    pub key: ObjectKey,
    /// The stored value bytes, compared before deleting.
    pub raw: Vec<u8>,
    /// The versions to deliver.
    pub object: VersionedObject,
}

/// The storage engine.
pub struct Engine {
    db: Database,
    objects: Keyspace,
    hints: Keyspace,
    gc: Keyspace,
    idem: Keyspace,
    meta: Keyspace,
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
}

/// A handle on fjall's active journal file (`<dir>/<id>.jnl`), used only to fsync it.
struct JournalFile {
    id: u64,
    file: std::fs::File,
}

/// The id of the newest journal file in `dir`, if any has fjall's name (`<id>.jnl`).
/// A key's storage place, locked for a read-modify-write: its stripe lock (held while
/// this lives), where its copy is stored and the bytes read there.
struct Locked<'a> {
    _guard: MutexGuard<'a, ()>,
    p: PartitionId,
    hash: KeyHash,
    /// The object key (also the `idem` and `gc` keys' prefix).
    ok: Vec<u8>,
    space: &'a Keyspace,
    stored_key: Vec<u8>,
    old_raw: Option<fjall::Slice>,
}

/// An idempotency claim as the engine checks it: the claim, how long records count
/// (`--idempotency-window-ms`) and the node's clock now.
#[derive(Debug, Clone, Copy)]
pub struct Claim {
    /// The coordinator's claim.
    pub claim: IdempotencyClaim,
    /// How long after its first write a record answers repeats.
    pub window_ms: u64,
    /// Now, in ms since the Unix epoch.
    pub now_ms: u64,
}

/// What [`Engine::coordinate_idempotent`] did.
#[derive(Debug, Clone)]
pub struct Coordinated {
    /// The copy after the write (or as it is, for a replay).
    pub object: VersionedObject,
    /// The write's dot and the writer's context (the first write's, for a replay).
    pub outcome: PutOutcome,
    /// The write's idempotency record, when it carried a claim.
    pub record: Option<IdempotencyRecord>,
    /// True when nothing was applied: a repeat of a remembered write.
    pub replayed: bool,
}

fn newest_journal(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok());
        newest = newest.max(id);
    }
    Ok(newest)
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

/// What a node knows about one tombstone set (answer to `tombstone_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TombstoneStatus {
    /// The node's own copy has exactly this digest, and it holds no hint for the key.
    pub holds: bool,
    /// The node collected exactly this digest and still has the record.
    pub collected: bool,
}

/// The cluster state cached on the volume.
#[derive(Debug, Clone, Default)]
pub struct CachedClusterState {
    /// The highest ring epoch the node ever adopted (a floor that survives a document
    /// that no longer decodes).
    pub ring_epoch: Option<u64>,
    /// The encoded document, as the cluster module wrote it.
    pub document: Option<Vec<u8>>,
}

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
                return Err(StorageError::Invalid(dynamo_server::ApiError::new(
                    dynamo_core::ErrorCode::InvalidRequest,
                    "the data directory was created with another partition count",
                )));
            }
            Some(_) => {}
            None => {
                meta.insert(META_PARTITIONS, partitioning.count().to_be_bytes())?;
                db.persist(PersistMode::SyncAll)?;
            }
        }

        let shape = MerkleShape::default();
        let merkle = (0..partitioning.count())
            .map(|p| MerkleTree::new(partitioning, PartitionId(p), shape).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()
            .map_err(merkle_error)?
            .into_boxed_slice();

        let engine = Engine {
            db,
            objects,
            hints,
            gc,
            idem,
            meta,
            partitioning,
            identity,
            durability,
            stripes: (0..LOCK_STRIPES).map(|_| Mutex::new(())).collect(),
            merkle,
            hint_targets: Mutex::new(BTreeMap::new()),
            metrics,
            dir: dir.to_path_buf(),
            journal: Mutex::new(None),
        };
        engine.rebuild_merkle()?;
        engine.load_hint_targets()?;
        Ok(engine)
    }

    /// Returns the volume's identity, and whether it was created now.
    fn load_identity(
        db: &Database,
        meta: &Keyspace,
        configured: Option<NodeId>,
    ) -> Result<(Identity, bool), StorageError> {
        let stored_id = meta.get(META_NODE_ID)?;
        let stored_actor = meta.get(META_INCARNATION)?;
        match (stored_id, stored_actor) {
            (Some(id), Some(actor)) => {
                let id = std::str::from_utf8(&id)
                    .ok()
                    .and_then(|s| NodeId::new(s).ok())
                    .ok_or(StorageError::Corrupt(codec::CodecError::Key))?;
                if let Some(c) = configured
                    && c != id
                {
                    return Err(StorageError::IdentityMismatch {
                        stored: id.to_string(),
                        configured: c.to_string(),
                    });
                }
                let actor: [u8; 8] = actor
                    .as_ref()
                    .try_into()
                    .map_err(|_| codec::CodecError::Truncated)?;
                Ok((
                    Identity {
                        node_id: id,
                        incarnation: Incarnation(u64::from_be_bytes(actor)),
                    },
                    false,
                ))
            }
            _ => {
                let node_id = match configured {
                    Some(id) => id,
                    None => NodeId::new(format!("node-{:08x}", rand::random::<u32>()))
                        .map_err(|e| StorageError::Invalid(e.into()))?,
                };
                let incarnation = Incarnation(rand::random::<u64>());
                let mut b = db.batch().durability(Some(PersistMode::SyncAll));
                b.insert(meta, META_NODE_ID, node_id.as_str().as_bytes());
                b.insert(meta, META_INCARNATION, incarnation.0.to_be_bytes());
                b.commit()?;
                tracing::info!(node_id = %node_id, incarnation = %incarnation, "new data directory: identity created");
                Ok((Identity { node_id, incarnation }, true))
            }
        }
    }

    fn rebuild_merkle(&self) -> Result<(), StorageError> {
        let start = Instant::now();
        let mut keys = 0i64;
        // The scan is in key order, so partitions come one after another: rebuild each
        // tree once its items are complete.
        let mut items: Vec<MerkleItem<Vec<u8>>> = Vec::new();
        let mut current: Option<PartitionId> = None;
        for kv in self.objects.iter() {
            let (k, v) = kv.into_inner()?;
            let ok = codec::parse_object_key(&k)?;
            let digest = codec::stored_digest(&v)?;
            if current != Some(ok.partition) {
                if let Some(p) = current {
                    self.rebuild_tree(p, &mut items)?;
                }
                current = Some(ok.partition);
            }
            items.push(MerkleItem {
                key_hash: ok.hash,
                key: merkle_key(&ok.bucket, &ok.key),
                digest,
            });
            keys += 1;
        }
        if let Some(p) = current {
            self.rebuild_tree(p, &mut items)?;
        }
        let secs = start.elapsed().as_secs_f64();
        self.metrics.merkle_rebuilds.inc();
        self.metrics.merkle_rebuild_seconds.set(secs);
        self.metrics.keys.set(keys);
        tracing::info!(keys, rebuild_ms = (secs * 1000.0) as u64, "merkle trees rebuilt");
        Ok(())
    }

    fn rebuild_tree(&self, p: PartitionId, items: &mut Vec<MerkleItem<Vec<u8>>>) -> Result<(), StorageError> {
        let tree = self.merkle.get(p.0 as usize).ok_or(codec::CodecError::Key)?;
        lock(tree).rebuild(items.drain(..)).map_err(merkle_error)
    }

    fn load_hint_targets(&self) -> Result<(), StorageError> {
        let mut targets = BTreeMap::new();
        let mut pending = 0i64;
        for kv in self.meta.prefix(META_HINT_ADDR) {
            let (k, v) = kv.into_inner()?;
            let id = std::str::from_utf8(&k[META_HINT_ADDR.len()..])
                .ok()
                .and_then(|s| NodeId::new(s).ok());
            let addr = String::from_utf8(v.to_vec()).ok();
            if let (Some(id), Some(addr)) = (id, addr) {
                targets.insert(id, addr);
            }
        }
        for kv in self.hints.iter() {
            let _ = kv.key()?;
            pending += 1;
        }
        self.metrics.hints_pending.set(pending);
        *lock(&self.hint_targets) = targets;
        Ok(())
    }

    /// Returns the node's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
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

    /// Makes every write committed before the call durable: the group-commit fsync.
    ///
    /// fjall's own `persist` holds the journal's writer lock through the fsync, so every
    /// commit on the node, and the async worker applying it, would wait out the disk
    /// (profiled: ~90 µs per coordinate-put, and the tails of every read batched on the
    /// same worker). Instead the journal is handed to the OS under the lock (a copy) and
    /// the active journal file is fsynced through a handle of our own, outside it. A
    /// rotation between the two is safe: fjall fsyncs a journal before it seals it, so the
    /// newest file is the only one that can hold unsynced writes. This depends on fjall
    /// 3.1's journal layout (`<dir>/<id>.jnl`, preallocated, hence `fdatasync`); where no
    /// such file is found, or the handle fails, the locked `persist` does the work (and
    /// poisons the database if the disk failed, as fjall does).
    ///
    /// # Errors
    /// Engine or I/O failures; after one, fjall is poisoned and the node stops.
    pub fn sync_journal(&self) -> Result<(), StorageError> {
        self.db.persist(PersistMode::Buffer)?;
        let mut active = lock(&self.journal);
        match self.sync_active(&mut active) {
            Ok(true) => Ok(()),
            Ok(false) => Ok(self.db.persist(PersistMode::SyncData)?),
            Err(e) => {
                tracing::warn!(error = %e, "journal fsync through own handle failed; fsyncing through fjall");
                *active = None;
                Ok(self.db.persist(PersistMode::SyncData)?)
            }
        }
    }

    fn sync_active(&self, active: &mut Option<JournalFile>) -> std::io::Result<bool> {
        let Some(id) = newest_journal(&self.dir)? else {
            return Ok(false);
        };
        let journal = match active.take() {
            Some(j) if j.id == id => j,
            _ => JournalFile {
                id,
                file: std::fs::File::open(self.dir.join(format!("{id}.jnl")))?,
            },
        };
        journal.file.sync_data()?;
        *active = Some(journal);
        Ok(true)
    }

    fn locate(&self, k: &KeyRef<'_>) -> (PartitionId, KeyHash, Vec<u8>) {
        let hash = key_hash(k.bucket, k.key);
        let p = self.partitioning.partition_of(hash);
        (p, hash, codec::object_key(p, hash, k.bucket, k.key))
    }

    fn stripe(&self, hash: KeyHash) -> MutexGuard<'_, ()> {
        lock(&self.stripes[(hash.0 as usize) % LOCK_STRIPES])
    }

    fn persist_mode(&self) -> PersistMode {
        // Both modes hand the journal to the OS before acknowledging (survives kill -9);
        // `sync` adds the group-commit fsync on top, in `Syncer::barrier`.
        PersistMode::Buffer
    }

    /// Reads a key's versions: the node's own copy merged with any hint it holds for the
    /// key (a fallback answers reads for what it holds).
    ///
    /// # Errors
    /// [`StorageError`] for engine failures or corrupt data.
    pub fn get(&self, k: &KeyRef<'_>) -> Result<Option<VersionedObject>, StorageError> {
        let (_, _, ok) = self.locate(k);
        let mut found = match self.objects.get(&ok)? {
            Some(v) => Some(codec::decode_object(&v)?),
            None => None,
        };
        let targets: Vec<NodeId> = lock(&self.hint_targets).keys().cloned().collect();
        for t in targets {
            if let Some(v) = self.hints.get(codec::hint_key(&t, &ok))? {
                let hinted = codec::decode_object(&v)?;
                match &mut found {
                    Some(obj) => obj.sync(
                        &hinted,
                        Resolution::Siblings {
                            max_siblings: u32::MAX,
                        },
                    ),
                    None => found = Some(hinted),
                }
            }
        }
        Ok(found)
    }

    /// Coordinates a client write: mints a dot on the stored copy (the node's own, or the
    /// hint for `hint`'s owner) with that copy's actor or a fresh one (see
    /// [`StoredCopy::coordinate`]), stores the result, and returns it with the outcome.
    ///
    /// # Errors
    /// [`StorageError::Version`] when the write would leave too many siblings (nothing is
    /// stored), or engine failures.
    pub fn coordinate_put(
        &self,
        k: &KeyRef<'_>,
        context: &DotSet,
        write: NewWrite,
        resolution: Resolution,
        hint: Option<&HintFor>,
    ) -> Result<(VersionedObject, PutOutcome), StorageError> {
        let c = self.coordinate_idempotent(k, context, write, resolution, hint, None)?;
        Ok((c.object, c.outcome))
    }

    /// [`Engine::coordinate_put`] for a write that carries an `Idempotency`claim: when
    /// this node remembers a write with the same claim id from within `claim`'s window,
    /// nothing is applied and the first write's outcome is returned (`replayed`), or
    /// [`StorageError::IdempotencyKeyReused`] when that write had another fingerprint.
    /// Otherwise the write is applied and its record stored in the same batch.
    ///
    /// # Errors
    /// As [`Engine::coordinate_put`], and the reuse above.
    pub fn coordinate_idempotent(
        &self,
        k: &KeyRef<'_>,
        context: &DotSet,
        write: NewWrite,
        resolution: Resolution,
        hint: Option<&HintFor>,
        claim: Option<Claim>,
    ) -> Result<Coordinated, StorageError> {
        let (at, mut copy) = self.lock_copy(k, hint)?;
        if let Some(c) = &claim
            && let Some(first) = self.idempotency_record(&at.ok, c)?
        {
            if first.claim.fingerprint != c.claim.fingerprint {
                return Err(StorageError::IdempotencyKeyReused);
            }
            self.metrics.idempotent_replays.inc();
            return Ok(Coordinated {
                object: copy.object,
                outcome: PutOutcome {
                    dot: first.dot,
                    context: first.context.clone(),
                },
                record: Some(first),
                replayed: true,
            });
        }
        let now_ms = write.now_ms;
        let fresh = std::iter::repeat_with(|| ActorId(rand::random::<u64>()));
        let outcome = copy.coordinate(context, self.identity.incarnation, fresh, write, resolution)?;
        let record = claim.map(|c| IdempotencyRecord {
            claim: c.claim,
            dot: outcome.dot,
            context: outcome.context.clone(),
            created_ms: now_ms,
        });
        self.store(&at, k, &copy, hint, record.as_ref())?;
        Ok(Coordinated {
            object: copy.object,
            outcome,
            record,
            replayed: false,
        })
    }

    /// Returns the record this node holds for `claim`'s id on the key stored at `ok`, if
    /// it is still inside the claim's window (an older one is as good as gone: the purge
    /// only reclaims its space).
    fn idempotency_record(
        &self,
        ok: &[u8],
        claim: &Claim,
    ) -> Result<Option<IdempotencyRecord>, StorageError> {
        let Some(v) = self.idem.get(codec::idem_key(ok, claim.claim.id))? else {
            return Ok(None);
        };
        let r = codec::decode_idem_record(&v)?;
        Ok((r.created_ms.saturating_add(claim.window_ms) > claim.now_ms).then_some(r))
    }

    /// Merges a replica's copy of a key (idempotent).
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    pub fn replicate(
        &self,
        k: &KeyRef<'_>,
        incoming: &VersionedObject,
        resolution: Resolution,
        hint: Option<&HintFor>,
    ) -> Result<(), StorageError> {
        self.replicate_with_record(k, incoming, resolution, hint, None)
    }

    /// [`Engine::replicate`] of an idempotent write's copy: the write's record is
    /// remembered too (unless one with its id is already here), in the same batch, so a
    /// repeat coordinated by this replica is answered as the first was.
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    pub fn replicate_with_record(
        &self,
        k: &KeyRef<'_>,
        incoming: &VersionedObject,
        resolution: Resolution,
        hint: Option<&HintFor>,
        record: Option<&IdempotencyRecord>,
    ) -> Result<(), StorageError> {
        // The copy keeps its minter: a merge adds others' dots, never takes ours away.
        let (at, mut copy) = self.lock_copy(k, hint)?;
        let record = match record {
            Some(r) if self.idem.get(codec::idem_key(&at.ok, r.claim.id))?.is_none() => Some(r),
            _ => None,
        };
        let before = copy.object.digest();
        copy.object.sync(incoming, resolution);
        if at.old_raw.is_some() && copy.object.digest() == before {
            // Nothing new: skip the write (replication and anti-entropy resend a lot).
            if let Some(r) = record {
                self.idem
                    .insert(codec::idem_key(&at.ok, r.claim.id), codec::encode_idem_record(r))?;
            }
            return Ok(());
        }
        if at.old_raw.is_none() && copy.object.siblings().is_empty() {
            // Everything it carried was superseded by a collected tombstone: storing the
            // bare history would only be a tombstone GC cannot collect again.
            if !incoming.siblings().is_empty() {
                self.metrics.superseded_after_gc.inc();
            }
            return Ok(());
        }
        self.store(&at, k, &copy, hint, record)
    }

    /// Takes `k`'s stripe lock and reads the stored copy a read-modify-write starts from
    /// (the node's own, or the hint for `hint`'s owner; see [`Engine::absent_copy`] for a
    /// key not held). The lock is held until the returned [`Locked`] is dropped.
    fn lock_copy(
        &self,
        k: &KeyRef<'_>,
        hint: Option<&HintFor>,
    ) -> Result<(Locked<'_>, StoredCopy), StorageError> {
        let (p, hash, ok) = self.locate(k);
        let guard = self.stripe(hash);
        let (space, stored_key) = self.space_for(&ok, hint);
        let old_raw = space.get(&stored_key)?;
        let copy = match &old_raw {
            Some(v) => codec::decode_copy(v)?,
            None => self.absent_copy(&ok, hint)?,
        };
        let at = Locked {
            _guard: guard,
            p,
            hash,
            ok,
            space,
            stored_key,
            old_raw,
        };
        Ok((at, copy))
    }

    /// The copy a write starts from where the node holds none: empty, or, for the node's
    /// own copy of a key whose tombstones it collected, the collected history. Without
    /// that floor a copy older than the delete that arrives after the collection (a
    /// fallback's hint delivered once the owner is reachable again, a replicate or read
    /// repair in flight) would be stored as new and bring the deleted value back; with it,
    /// such a copy merges as superseded, and a new write descends from the delete. The
    /// floor lasts as long as the `gc` record (see `gc::GcSettings::retention`).
    fn absent_copy(&self, ok: &[u8], hint: Option<&HintFor>) -> Result<StoredCopy, StorageError> {
        if hint.is_some() {
            return Ok(StoredCopy::default());
        }
        let Some(v) = self.gc.get(ok)? else {
            return Ok(StoredCopy::default());
        };
        let floor = codec::decode_gc_record(&v)?.history;
        let object = VersionedObject::from_parts(floor, Vec::new())
            .map_err(|e| StorageError::Corrupt(codec::CodecError::Invalid(e)))?;
        Ok(StoredCopy::replica(object))
    }

    fn space_for(&self, ok: &[u8], hint: Option<&HintFor>) -> (&Keyspace, Vec<u8>) {
        match hint {
            Some(h) => (&self.hints, codec::hint_key(&h.node, ok)),
            None => (&self.objects, ok.to_vec()),
        }
    }

    /// Commits `copy` where `at` read it (with `record` in the same batch), then keeps the
    /// bookkeeping in step: hint targets and counts, or the key count and Merkle tree.
    fn store(
        &self,
        at: &Locked<'_>,
        k: &KeyRef<'_>,
        copy: &StoredCopy,
        hint: Option<&HintFor>,
        record: Option<&IdempotencyRecord>,
    ) -> Result<(), StorageError> {
        let obj = &copy.object;
        let encoded = codec::encode_copy(copy);
        let mut batch = self.db.batch().durability(Some(self.persist_mode()));
        if let Some(r) = record {
            batch.insert(
                &self.idem,
                codec::idem_key(&at.ok, r.claim.id),
                codec::encode_idem_record(r),
            );
        }
        batch.insert(at.space, at.stored_key.clone(), encoded);
        // A hinted write holds the targets lock from the check through the commit, so
        // `forget_target_if_done` cannot delete the owner's address record in between
        // (the hint would then be invisible after a restart, which loads targets from
        // those records).
        let mut targets = hint.map(|_| lock(&self.hint_targets));
        if let (Some(h), Some(t)) = (hint, targets.as_ref())
            && t.get(&h.node) != Some(&h.address)
        {
            let mut mk = META_HINT_ADDR.to_vec();
            mk.extend_from_slice(h.node.as_str().as_bytes());
            batch.insert(&self.meta, mk, h.address.as_bytes());
        }
        batch.commit()?;
        match hint {
            Some(h) => {
                if at.old_raw.is_none() {
                    self.metrics.hints_pending.inc();
                }
                if let Some(t) = targets.as_mut() {
                    t.insert(h.node.clone(), h.address.clone());
                }
                drop(targets);
            }
            None => {
                let old_digest = at.old_raw.as_deref().map(codec::stored_digest).transpose()?;
                if at.old_raw.is_none() {
                    self.metrics.keys.inc();
                }
                lock(&self.merkle[at.p.0 as usize])
                    .update(
                        at.hash,
                        &merkle_key(k.bucket, k.key),
                        old_digest,
                        Some(obj.digest()),
                    )
                    .map_err(merkle_error)?;
            }
        }
        Ok(())
    }

    /// Returns the intended owners with hints pending, and their addresses.
    pub fn hint_targets(&self) -> BTreeMap<NodeId, String> {
        lock(&self.hint_targets).clone()
    }

    /// Reads up to `limit` hints for `target`, and no more once their values reach
    /// `max_bytes` as a replica batch would carry them (the first hint always comes).
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    pub fn pending_hints(
        &self,
        target: &NodeId,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<PendingHint>, StorageError> {
        let prefix = codec::hint_prefix(target);
        let mut out = Vec::new();
        let mut bytes = 0;
        for kv in self.hints.prefix(&prefix).take(limit) {
            let (k, v) = kv.into_inner()?;
            // Stored bytes travel as base64: 4/3 of them, plus the framing.
            let len = v.len().div_ceil(3) * 4 + 512;
            if !out.is_empty() && bytes + len > max_bytes {
                break;
            }
            bytes += len;
            let (_, ok) = codec::parse_hint_key(&k)?;
            out.push(PendingHint {
                key: codec::parse_object_key(ok)?,
                object: codec::decode_object(&v)?,
                raw: v.to_vec(),
            });
        }
        Ok(out)
    }

    /// Deletes a delivered hint, but only if it is unchanged since it was read (a write
    /// merged into it meanwhile is delivered next round). Returns whether it was deleted.
    ///
    /// # Errors
    /// Engine failures.
    pub fn remove_delivered_hint(&self, target: &NodeId, hint: &PendingHint) -> Result<bool, StorageError> {
        let ok = codec::object_key(hint.key.partition, hint.key.hash, &hint.key.bucket, &hint.key.key);
        let hk = codec::hint_key(target, &ok);
        let _guard = self.stripe(hint.key.hash);
        match self.hints.get(&hk)? {
            Some(v) if v.as_ref() == hint.raw.as_slice() => {
                self.hints.remove(hk)?;
                self.metrics.hints_pending.dec();
                self.metrics.hints_delivered.inc();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Forgets a target once it has no hints left (its address record goes too).
    ///
    /// # Errors
    /// Engine failures.
    pub fn forget_target_if_done(&self, target: &NodeId) -> Result<(), StorageError> {
        // Under the targets lock, which hinted writes hold through their commit: no hint
        // for `target` can commit between the emptiness check and the removal.
        let mut targets = lock(&self.hint_targets);
        if self.hints.prefix(codec::hint_prefix(target)).next().is_none() {
            let mut mk = META_HINT_ADDR.to_vec();
            mk.extend_from_slice(target.as_str().as_bytes());
            self.meta.remove(mk)?;
            targets.remove(target);
        }
        Ok(())
    }

    /// Returns the Merkle tree of partition `p` (a copy: comparisons do not hold the lock).
    pub fn merkle_tree(&self, p: PartitionId) -> Option<MerkleTree> {
        self.merkle.get(p.0 as usize).map(|m| lock(m).clone())
    }

    /// Runs `f` with the Merkle tree of partition `p` locked (for cheap reads of a node).
    pub fn with_merkle<R>(&self, p: PartitionId, f: impl FnOnce(&MerkleTree) -> R) -> Option<R> {
        self.merkle.get(p.0 as usize).map(|m| f(&lock(m)))
    }

    /// Reads the objects of partition `p` with hashes in `[start, end]`, from `after`
    /// (exclusive, a storage key) on, at most `limit` of them. Returns them with the key to
    /// resume from when more remain.
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    #[allow(clippy::type_complexity)]
    pub fn scan(
        &self,
        p: PartitionId,
        start: u64,
        end: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<(ObjectKey, VersionedObject)>, Option<Vec<u8>>), StorageError> {
        let lo = codec::range_start(p, start);
        let hi = codec::range_end(p, end);
        let iter = match after {
            Some(a) => self.objects.range::<Vec<u8>, _>((
                std::ops::Bound::Excluded(a.to_vec()),
                std::ops::Bound::Excluded(hi),
            )),
            None => self.objects.range::<Vec<u8>, _>(lo..hi),
        };
        let mut out = Vec::new();
        let mut last = None;
        for kv in iter {
            if out.len() == limit {
                return Ok((out, last));
            }
            let (k, v) = kv.into_inner()?;
            out.push((codec::parse_object_key(&k)?, codec::decode_object(&v)?));
            last = Some(k.to_vec());
        }
        Ok((out, None))
    }

    /// Removes a key's object if its stored digest still equals `digest` (tombstone GC:
    /// a write that arrived since the check keeps the key). Returns whether it was removed.
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    pub fn remove_if_unchanged(&self, k: &KeyRef<'_>, digest: u128) -> Result<bool, StorageError> {
        let (p, hash, ok) = self.locate(k);
        let _guard = self.stripe(hash);
        let Some(v) = self.objects.get(&ok)? else {
            return Ok(false);
        };
        if codec::stored_digest(&v)? != digest {
            return Ok(false);
        }
        self.objects.remove(ok)?;
        self.metrics.keys.dec();
        lock(&self.merkle[p.0 as usize])
            .update(hash, &merkle_key(k.bucket, k.key), Some(digest), None)
            .map_err(merkle_error)?;
        Ok(true)
    }

    /// Reads a page of the node's own objects in storage order, from `after` (exclusive, a
    /// storage key) on: at most `limit` objects, and no more once `max_bytes` of stored
    /// values were read (a page holds at least one object). Returns them with the key to
    /// resume from when more remain. Used by tombstone GC, which walks every partition.
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    #[allow(clippy::type_complexity)]
    pub fn objects_page(
        &self,
        after: Option<&[u8]>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(ObjectKey, VersionedObject)>, Option<Vec<u8>>), StorageError> {
        let iter = match after {
            Some(a) => self
                .objects
                .range::<Vec<u8>, _>((std::ops::Bound::Excluded(a.to_vec()), std::ops::Bound::Unbounded)),
            None => self.objects.range::<Vec<u8>, _>(..),
        };
        let mut out = Vec::new();
        let mut last = None;
        let mut bytes = 0;
        for kv in iter {
            if out.len() == limit || bytes >= max_bytes {
                return Ok((out, last));
            }
            let (k, v) = kv.into_inner()?;
            bytes += v.len();
            out.push((codec::parse_object_key(&k)?, codec::decode_object(&v)?));
            last = Some(k.to_vec());
        }
        Ok((out, None))
    }

    /// Returns true when this node holds a hint for the key stored at `ok`: a hint may
    /// carry an older value that would come back if the tombstone were collected.
    fn holds_hint_for(&self, ok: &[u8]) -> Result<bool, StorageError> {
        let targets: Vec<NodeId> = lock(&self.hint_targets).keys().cloned().collect();
        for t in targets {
            if self.hints.contains_key(codec::hint_key(&t, ok))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Answers a peer's tombstone-GC question about the version set with `digest`.
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    pub fn tombstone_status(&self, k: &KeyRef<'_>, digest: u128) -> Result<TombstoneStatus, StorageError> {
        let (_, _, ok) = self.locate(k);
        let holds = match self.objects.get(&ok)? {
            Some(v) => codec::stored_digest(&v)? == digest && !self.holds_hint_for(&ok)?,
            None => false,
        };
        let collected = match self.gc.get(&ok)? {
            Some(v) => codec::decode_gc_record(&v)?.digest == digest,
            None => false,
        };
        Ok(TombstoneStatus { holds, collected })
    }

    /// Collects a tombstone: removes the key's object if its stored digest still equals
    /// `digest` and no hint for the key is held here, and records the collection in the
    /// `gc` keyspace in the same batch. Returns whether it was collected.
    ///
    /// The caller has checked that the set is all tombstones, past the grace, and that
    /// every other replica holds or collected exactly this set (see `gc`).
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    pub fn collect_tombstone(&self, k: &KeyRef<'_>, digest: u128, now_ms: u64) -> Result<bool, StorageError> {
        let (p, hash, ok) = self.locate(k);
        let _guard = self.stripe(hash);
        let Some(v) = self.objects.get(&ok)? else {
            return Ok(false);
        };
        if codec::stored_digest(&v)? != digest || self.holds_hint_for(&ok)? {
            return Ok(false);
        }
        let collected = codec::decode_object(&v)?;
        // Invariant: only a set of tombstones is ever collected (paired with the caller's
        // check, which ran on an earlier read of the same digest).
        debug_assert!(collected.is_deleted());
        let record = codec::encode_gc_record(&codec::GcRecord {
            digest,
            collected_ms: now_ms,
            history: collected.into_parts().0,
        });
        // Buffered is enough: losing this batch in a power cut brings back the tombstone
        // and forgets the record together, which is the state before the collection.
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        batch.remove(&self.objects, ok.clone());
        batch.insert(&self.gc, ok, record);
        batch.commit()?;
        self.metrics.keys.dec();
        lock(&self.merkle[p.0 as usize])
            .update(hash, &merkle_key(k.bucket, k.key), Some(digest), None)
            .map_err(merkle_error)?;
        Ok(true)
    }

    /// Deletes GC records collected before `before_ms`, reading at most `limit` records
    /// from `after` (exclusive) on. Returns how many were deleted and the key to resume
    /// from when more remain.
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    pub fn purge_gc_records(
        &self,
        before_ms: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(usize, Option<Vec<u8>>), StorageError> {
        self.purge_older(&self.gc, before_ms, after, limit, |v| {
            Ok(codec::decode_gc_record(v)?.collected_ms)
        })
    }

    /// Deletes idempotency records created before `before_ms` (out of their window), as
    /// [`Engine::purge_gc_records`] does GC records.
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    pub fn purge_idempotency_records(
        &self,
        before_ms: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(usize, Option<Vec<u8>>), StorageError> {
        self.purge_older(&self.idem, before_ms, after, limit, |v| {
            Ok(codec::decode_idem_record(v)?.created_ms)
        })
    }

    /// Deletes the records of `space` whose time (`at`) is before `before_ms`, reading at
    /// most `limit` of them from `after` (exclusive) on.
    fn purge_older(
        &self,
        space: &Keyspace,
        before_ms: u64,
        after: Option<&[u8]>,
        limit: usize,
        at: impl Fn(&[u8]) -> Result<u64, StorageError>,
    ) -> Result<(usize, Option<Vec<u8>>), StorageError> {
        let iter = match after {
            Some(a) => {
                space.range::<Vec<u8>, _>((std::ops::Bound::Excluded(a.to_vec()), std::ops::Bound::Unbounded))
            }
            None => space.range::<Vec<u8>, _>(..),
        };
        let mut old = Vec::new();
        let mut read = 0;
        let mut last = None;
        for kv in iter {
            if read == limit {
                break;
            }
            let (k, v) = kv.into_inner()?;
            read += 1;
            if at(&v)? < before_ms {
                old.push(k.to_vec());
            }
            last = Some(k.to_vec());
        }
        let more = read == limit;
        let purged = old.len();
        if !old.is_empty() {
            let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
            for k in old {
                batch.remove(space, k);
            }
            batch.commit()?;
        }
        Ok((purged, if more { last } else { None }))
    }

    /// Reads the cluster state cached on the volume.
    ///
    /// # Errors
    /// Engine failures, or a ring epoch record of the wrong size.
    pub fn cached_cluster_state(&self) -> Result<CachedClusterState, StorageError> {
        let ring_epoch = match self.meta.get(META_RING_EPOCH)? {
            Some(v) => {
                let b: [u8; 8] = v.as_ref().try_into().map_err(|_| codec::CodecError::Truncated)?;
                Some(u64::from_be_bytes(b))
            }
            None => None,
        };
        let document = self.meta.get(META_CLUSTER_STATE)?.map(|v| v.to_vec());
        Ok(CachedClusterState { ring_epoch, document })
    }

    /// Stores the cluster state and its ring epoch durably (fsync), in one batch: after a
    /// power cut the node never restarts with a ring older than one it acted on.
    ///
    /// # Errors
    /// Engine failures.
    pub fn store_cluster_state(&self, ring_epoch: u64, document: &[u8]) -> Result<(), StorageError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::SyncAll));
        batch.insert(&self.meta, META_RING_EPOCH, ring_epoch.to_be_bytes());
        batch.insert(&self.meta, META_CLUSTER_STATE, document);
        batch.commit()?;
        Ok(())
    }

    /// Flushes everything to disk and records a clean stop, so the next start keeps the
    /// actor id. Call it last, after every write and background task has stopped.
    ///
    /// # Errors
    /// [`StorageError`] when the flush or the marker cannot be written.
    pub fn close_clean(&self) -> Result<(), StorageError> {
        self.db.persist(PersistMode::SyncAll)?;
        let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
        b.insert(&self.meta, META_CLEAN, []);
        b.commit()?;
        Ok(())
    }

    /// Flushes the journal to stable storage (periodically in buffered mode).
    ///
    /// # Errors
    /// Engine failures.
    pub fn persist(&self) -> Result<(), StorageError> {
        self.sync_journal()?;
        if let Ok(bytes) = self.db.disk_space() {
            self.metrics.disk_bytes.set(bytes as i64);
        }
        Ok(())
    }
}

fn merkle_error(e: dynamo_core::merkle::MerkleError) -> StorageError {
    StorageError::Invalid(dynamo_server::ApiError::new(e.code(), e.to_string()))
}

/// The bytes a key contributes to its Merkle item hash: `bucket ‖ "/" ‖ key`, the same
/// bytes the key hash is computed over.
pub fn merkle_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(bucket.len() + 1 + key.len());
    v.extend_from_slice(bucket.as_bytes());
    v.push(b'/');
    v.extend_from_slice(key.as_bytes());
    v
}
