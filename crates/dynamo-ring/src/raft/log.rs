//! The log store: entries, the vote and the committed id in fjall, each write fsynced
//! before openraft is told it is durable (a vote or an entry acknowledged and then lost
//! would let a replica vote twice in a term or forget an entry a majority counted).
//!
//! Keyspaces: `raft_log` (index, u64 big-endian → JSON entry), `raft_meta` (`vote`,
//! `committed`, `last_purged`: JSON).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{ReplicaId, TypeConfig};

type StorageResult<T> = Result<T, StorageError<ReplicaId>>;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// The log store (cheap to clone: fjall handles are shared).
#[derive(Clone)]
pub struct LogStore {
    db: Database,
    log: Keyspace,
    meta: Keyspace,
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError<ReplicaId> {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError<ReplicaId> {
    StorageIOError::write_logs(&e).into()
}

impl LogStore {
    /// Opens the log keyspaces of `db`.
    ///
    /// # Errors
    /// fjall's.
    pub fn open(db: &Database) -> Result<LogStore, fjall::Error> {
        Ok(LogStore {
            db: db.clone(),
            log: db.keyspace("raft_log", KeyspaceCreateOptions::default)?,
            meta: db.keyspace("raft_meta", KeyspaceCreateOptions::default)?,
        })
    }

    fn get_meta<T: DeserializeOwned>(&self, k: &[u8]) -> StorageResult<Option<T>> {
        match self.meta.get(k).map_err(read_err)? {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v).map(Some).map_err(read_err),
        }
    }

    fn put_meta<T: Serialize>(&self, k: &[u8], v: &T) -> StorageResult<()> {
        let bytes = serde_json::to_vec(v).map_err(write_err)?;
        let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
        b.insert(&self.meta, k, bytes);
        b.commit().map_err(write_err)
    }

    /// True when nothing was ever written (no entry, no vote): a pristine replica.
    ///
    /// # Errors
    /// fjall's.
    pub fn is_pristine(&self) -> Result<bool, fjall::Error> {
        Ok(self.log.is_empty()? && self.meta.get(VOTE)?.is_none() && self.meta.get(LAST_PURGED)?.is_none())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry<TypeConfig>>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let mut out = Vec::new();
        for kv in self.log.range(key(start)..) {
            let (k, v) = kv.into_inner().map_err(read_err)?;
            let index = u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                StorageIOError::read_logs(&std::io::Error::other("a log key is not 8 bytes"))
            })?);
            if !range.contains(&index) {
                break;
            }
            out.push(serde_json::from_slice(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let last_purged: Option<LogId<ReplicaId>> = self.get_meta(LAST_PURGED)?;
        let last = match self.log.last_key_value() {
            None => None,
            Some(kv) => {
                let v = kv.value().map_err(read_err)?;
                let e: Entry<TypeConfig> = serde_json::from_slice(&v).map_err(read_err)?;
                Some(e.log_id)
            }
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last.or(last_purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<ReplicaId>) -> StorageResult<()> {
        self.put_meta(VOTE, vote)
            .map_err(|_| StorageIOError::write_vote(&std::io::Error::other("cannot persist the vote")).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<ReplicaId>>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<ReplicaId>>) -> StorageResult<()> {
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> StorageResult<Option<LogId<ReplicaId>>> {
        Ok(self.get_meta::<Option<LogId<ReplicaId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
        for e in entries {
            let bytes = serde_json::to_vec(&e).map_err(write_err)?;
            b.insert(&self.log, key(e.log_id.index), bytes);
        }
        let result = b.commit();
        let flushed = result
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(flushed);
        result.map_err(write_err)
    }

    async fn truncate(&mut self, log_id: LogId<ReplicaId>) -> StorageResult<()> {
        let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
        for kv in self.log.range(key(log_id.index)..) {
            let k = kv.key().map_err(read_err)?;
            b.remove(&self.log, k);
        }
        b.commit().map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId<ReplicaId>) -> StorageResult<()> {
        // The purge mark first: a crash between the two leaves entries the state says
        // are gone, which a later purge removes; never the other way round.
        self.put_meta(LAST_PURGED, &log_id)?;
        let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
        for kv in self.log.range(..=key(log_id.index)) {
            let k = kv.key().map_err(read_err)?;
            b.remove(&self.log, k);
        }
        b.commit().map_err(write_err)
    }
}
