//! The state machine: applies committed proposals to the replica's [`Cluster`] and
//! publishes each applied state (readers, long-polls and the leader's own mutations all
//! read the published state), and takes and installs snapshots.
//!
//! A proposal is applied only on its base version and only when it keeps the ring's
//! invariants (the ring never disappears, its epoch never decreases, another ring always
//! has a larger epoch); otherwise it is skipped on every replica alike and counted in
//! `dynamo_invariant_violations_total`. Snapshots are kept in `raft_meta` (`snapshot`).

use std::io::Cursor;
use std::sync::Arc;

use dynamo_server::metrics::invariant;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Applied, Proposal, ReplicaId, TypeConfig};
use crate::cluster::Cluster;
use crate::metrics::RingMetrics;
use crate::store::StateFile;

type StorageResult<T> = Result<T, StorageError<ReplicaId>>;

const SNAPSHOT: &[u8] = b"snapshot";

/// A snapshot as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<ReplicaId, BasicNode>,
    /// JSON of a [`StateFile`].
    data: Vec<u8>,
}

/// The ring group's state machine.
#[derive(Clone)]
pub struct StateMachine {
    db: Database,
    meta: Keyspace,
    /// Where applied states are published (shared with the service).
    published: watch::Sender<Arc<Cluster>>,
    metrics: RingMetrics,
    last_applied: Option<LogId<ReplicaId>>,
    membership: StoredMembership<ReplicaId, BasicNode>,
    /// Counts snapshots built by this process (makes snapshot ids unique).
    built: u64,
}

/// Why a proposal may not replace `current`: the invariant it breaks, if any.
pub fn breach(current: &Cluster, next: &Cluster) -> Option<&'static str> {
    match (&current.state.ring, &next.state.ring) {
        (Some(_), None) => Some(invariant::RING_NEVER_DISAPPEARS),
        (Some(a), Some(b)) if b.epoch() < a.epoch() => Some(invariant::RING_EPOCH_MONOTONIC),
        (Some(a), Some(b)) if b.epoch() == a.epoch() && a != b => Some(invariant::RING_CHANGE_BUMPS_EPOCH),
        _ => None,
    }
}

fn cluster_of(file: StateFile) -> Cluster {
    Cluster {
        state: file.state,
        change: file.change,
    }
}

impl StateMachine {
    /// Opens the state machine over `db`: the stored snapshot, if any, becomes the
    /// published state (the log after it is applied by openraft as it starts).
    ///
    /// # Errors
    /// fjall's, or a stored snapshot that does not decode.
    pub fn open(
        db: &Database,
        published: watch::Sender<Arc<Cluster>>,
        metrics: RingMetrics,
    ) -> Result<StateMachine, String> {
        let meta = db
            .keyspace("raft_meta", KeyspaceCreateOptions::default)
            .map_err(|e| e.to_string())?;
        let mut sm = StateMachine {
            db: db.clone(),
            meta,
            published,
            metrics,
            last_applied: None,
            membership: StoredMembership::default(),
            built: 0,
        };
        if let Some(bytes) = sm.meta.get(SNAPSHOT).map_err(|e| e.to_string())? {
            let stored: StoredSnapshot = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
            sm.load(&stored)?;
        }
        Ok(sm)
    }

    fn load(&mut self, stored: &StoredSnapshot) -> Result<(), String> {
        let file: StateFile = serde_json::from_slice(&stored.data).map_err(|e| e.to_string())?;
        let cluster = cluster_of(file);
        cluster.check_consistent()?;
        self.last_applied = stored.meta.last_log_id;
        self.membership = stored.meta.last_membership.clone();
        self.metrics.observe(&cluster);
        self.published.send_replace(Arc::new(cluster));
        Ok(())
    }

    fn store(&self, stored: &StoredSnapshot) -> StorageResult<()> {
        let sig = Some(stored.meta.signature());
        let bytes =
            serde_json::to_vec(stored).map_err(|e| StorageIOError::write_snapshot(sig.clone(), &e))?;
        let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
        b.insert(&self.meta, SNAPSHOT, bytes);
        b.commit()
            .map_err(|e| StorageIOError::write_snapshot(sig, &e).into())
    }

    /// Applies one proposal to the published state.
    fn apply_proposal(&self, p: Proposal) -> Applied {
        let current = self.published.borrow().clone();
        let version = current.state.version;
        if p.base != version {
            tracing::warn!(base = ?p.base, applied = version, "a proposal computed from another version was skipped");
            return Applied {
                applied: false,
                version,
            };
        }
        let next = cluster_of(p.file);
        if let Some(inv) = breach(&current, &next) {
            self.metrics.invariant_violations.record(inv);
            tracing::error!(invariant = inv, "a proposal that breaks an invariant was skipped");
            return Applied {
                applied: false,
                version,
            };
        }
        if next.epoch() != current.epoch() {
            tracing::info!(
                epoch = next.epoch().0,
                members = next.state.ring.as_ref().map_or(0, |r| r.members().len()),
                "ring published"
            );
        }
        let version = next.state.version;
        self.metrics.observe(&next);
        self.published.send_replace(Arc::new(next));
        Applied {
            applied: true,
            version,
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> StorageResult<Snapshot<TypeConfig>> {
        let current = self.published.borrow().clone();
        let data = serde_json::to_vec(&StateFile::of(&current))
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        self.built += 1;
        let snapshot_id = match self.last_applied {
            Some(l) => format!("{}-{}-{}", l.leader_id, l.index, self.built),
            None => format!("none-{}", self.built),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.membership.clone(),
            snapshot_id,
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: data.clone(),
        };
        self.store(&stored)?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> StorageResult<(Option<LogId<ReplicaId>>, StoredMembership<ReplicaId, BasicNode>)> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> StorageResult<Vec<Applied>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut out = Vec::new();
        for e in entries {
            self.last_applied = Some(e.log_id);
            let applied = match e.payload {
                EntryPayload::Normal(p) => self.apply_proposal(p),
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(e.log_id), m);
                    Applied {
                        applied: true,
                        version: self.published.borrow().state.version,
                    }
                }
                EntryPayload::Blank => Applied {
                    applied: true,
                    version: self.published.borrow().state.version,
                },
            };
            out.push(applied);
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> StorageResult<Box<Cursor<Vec<u8>>>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<ReplicaId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> StorageResult<()> {
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        let sig = Some(meta.signature());
        self.load(&stored)
            .map_err(|e| StorageIOError::read_snapshot(sig, &std::io::Error::other(e)))?;
        self.store(&stored)
    }

    async fn get_current_snapshot(&mut self) -> StorageResult<Option<Snapshot<TypeConfig>>> {
        let Some(bytes) = self
            .meta
            .get(SNAPSHOT)
            .map_err(|e| StorageIOError::read_snapshot(None, &e))?
        else {
            return Ok(None);
        };
        let stored: StoredSnapshot =
            serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_snapshot(None, &e))?;
        Ok(Some(Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
