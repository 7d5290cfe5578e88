//! The change log behind the change feed: one entry per change of a key's copy here (a
//! coordinated write, a replica merge, a repair, a handoff), per bucket in log order.
//!
//! An entry is written in the batch that stores the copy, so the log and the objects
//! change together. Positions are `(run, seq)` ([`FeedPos`]): `run` counts the node's
//! starts (persisted before the first entry of a run), `seq` is handed out in memory, so
//! entries lost with an unclean stop never have their numbers reused. Batches commit out
//! of order, so a reader is only shown entries below the smallest sequence number still
//! being committed ([`FeedLog::stable`]): a reader's position never passes an entry that
//! commits after it read.
//!
//! Retention: entries older than `--feed-retention-ms` are purged with the GC records;
//! the greatest purged position of each bucket is kept (`feed_floor/<bucket>` in `meta`),
//! and a reader whose position is below it missed entries: [`StorageError::CursorExpired`].

use std::collections::BTreeSet;

use dynamo_core::wire::internal::{FeedEntry, FeedPos};

use super::*;

/// The number of the node's latest start (u32 BE).
const META_FEED_RUN: &[u8] = b"feed_run";
/// Prefix of each bucket's greatest purged position (`run u32 BE ‖ seq u64 BE`).
const META_FEED_FLOOR: &[u8] = b"feed_floor/";

/// The node's change log state: this run, the next sequence number, the ones being
/// committed, and a signal for readers waiting for new entries.
pub(super) struct FeedLog {
    run: u32,
    next: Mutex<(u64, BTreeSet<u64>)>,
    committed: tokio::sync::watch::Sender<u64>,
}

/// A sequence number handed out for one batch; dropping it (after the commit, or after
/// a failure) lets readers past it.
pub(super) struct Reserved<'a> {
    log: &'a FeedLog,
    pub(super) pos: FeedPos,
}

impl Drop for Reserved<'_> {
    fn drop(&mut self) {
        lock(&self.log.next).1.remove(&self.pos.seq);
        self.log.committed.send_modify(|n| *n += 1);
    }
}

impl FeedLog {
    /// Starts a new run after the one recorded in `meta` (persisted before any entry).
    pub(super) fn open(db: &Database, meta: &Keyspace) -> Result<FeedLog, StorageError> {
        let last = match meta.get(META_FEED_RUN)? {
            Some(v) => <[u8; 4]>::try_from(v.as_ref())
                .map(u32::from_be_bytes)
                .map_err(|_| codec::CodecError::Key)?,
            None => 0,
        };
        let run = last.checked_add(1).ok_or(codec::CodecError::Key)?;
        let mut b = db.batch().durability(Some(PersistMode::SyncAll));
        b.insert(meta, META_FEED_RUN, run.to_be_bytes());
        b.commit()?;
        Ok(FeedLog {
            run,
            next: Mutex::new((1, BTreeSet::new())),
            committed: tokio::sync::watch::channel(0).0,
        })
    }

    /// Hands out the next position, marked in flight until the returned guard drops.
    pub(super) fn reserve(&self) -> Reserved<'_> {
        let mut next = lock(&self.next);
        let seq = next.0;
        next.0 += 1;
        next.1.insert(seq);
        Reserved {
            log: self,
            pos: FeedPos { run: self.run, seq },
        }
    }

    /// The first sequence number of this run not known to be committed: every entry of
    /// this run below it is on disk (or its batch failed).
    fn stable(&self) -> u64 {
        let next = lock(&self.next);
        next.1.first().copied().unwrap_or(next.0)
    }
}

/// Returns the log key of `pos` in `bucket`: `len(bucket) ‖ bucket ‖ run ‖ seq`.
fn feed_key(bucket: &str, pos: FeedPos) -> Vec<u8> {
    let mut k = codec::listing_key(bucket, "");
    k.extend_from_slice(&pos.run.to_be_bytes());
    k.extend_from_slice(&pos.seq.to_be_bytes());
    k
}

/// Splits a log key into its bucket and position.
fn parse_feed_key(k: &[u8]) -> Result<(String, FeedPos), StorageError> {
    let split = k.len().checked_sub(12).ok_or(codec::CodecError::Key)?;
    let (bucket, _) = codec::parse_listing_key(&k[..split])?;
    let run = <[u8; 4]>::try_from(&k[split..split + 4]).map_err(|_| codec::CodecError::Key)?;
    let seq = <[u8; 8]>::try_from(&k[split + 4..]).map_err(|_| codec::CodecError::Key)?;
    Ok((
        bucket,
        FeedPos {
            run: u32::from_be_bytes(run),
            seq: u64::from_be_bytes(seq),
        },
    ))
}

/// An entry as stored (its position is its key).
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredEntry {
    key: String,
    context: DotSet,
    deleted: bool,
    at_ms: u64,
}

/// A page of a bucket's log.
#[derive(Debug, Clone, Default)]
pub struct FeedPage {
    /// Entries after the asked position, in log order.
    pub entries: Vec<FeedEntry>,
    /// The newest committed position of the node: a reader starting "from now" starts
    /// here.
    pub head: FeedPos,
}

impl Engine {
    /// Adds the log entry of `copy`'s change to `batch`; the returned guard must live
    /// until the batch committed.
    pub(super) fn log_change<'a>(
        &'a self,
        batch: &mut fjall::OwnedWriteBatch,
        k: &KeyRef<'_>,
        object: &VersionedObject,
        now_ms: u64,
    ) -> Result<Reserved<'a>, StorageError> {
        let reserved = self.feed.reserve();
        let entry = StoredEntry {
            key: k.key.to_owned(),
            context: object.context().clone(),
            deleted: object.is_deleted(),
            at_ms: now_ms,
        };
        let value = serde_json::to_vec(&entry).map_err(codec::CodecError::Document)?;
        batch.insert(&self.feed_space, feed_key(k.bucket, reserved.pos), value);
        Ok(reserved)
    }

    /// Subscribes to commits of log entries (any bucket): a reader waits on it for news.
    pub fn feed_signal(&self) -> tokio::sync::watch::Receiver<u64> {
        self.feed.committed.subscribe()
    }

    /// The newest committed position: a reader starting "from now" starts here.
    pub fn feed_head(&self) -> FeedPos {
        FeedPos {
            run: self.feed.run,
            seq: self.feed.stable() - 1,
        }
    }

    /// Reads up to `limit` entries of `bucket`'s log after `after` (from the oldest
    /// retained one when `None`), only committed ones.
    ///
    /// # Errors
    /// [`StorageError::CursorExpired`] when entries after `after` were purged; engine
    /// failures or corrupt data.
    pub fn feed_page(
        &self,
        bucket: &str,
        after: Option<FeedPos>,
        limit: usize,
    ) -> Result<FeedPage, StorageError> {
        let head = self.feed_head();
        if let Some(a) = after
            && let Some(floor) = self.feed_floor(bucket)?
            && a < floor
        {
            return Err(StorageError::CursorExpired {
                position: a.to_string(),
                floor: floor.to_string(),
            });
        }
        let prefix = codec::listing_key(bucket, "");
        let iter = match after {
            Some(a) => self.feed_space.range::<Vec<u8>, _>((
                std::ops::Bound::Excluded(feed_key(bucket, a)),
                std::ops::Bound::Unbounded,
            )),
            None => self.feed_space.range::<Vec<u8>, _>(prefix.clone()..),
        };
        let mut page = FeedPage {
            entries: Vec::new(),
            head,
        };
        for kv in iter {
            if page.entries.len() == limit {
                break;
            }
            let (k, v) = kv.into_inner()?;
            if !k.starts_with(&prefix) || k.len() != prefix.len() + 12 {
                break;
            }
            let (_, pos) = parse_feed_key(&k)?;
            if pos > head {
                break;
            }
            let e: StoredEntry = serde_json::from_slice(&v).map_err(codec::CodecError::Document)?;
            page.entries.push(FeedEntry {
                pos,
                key: e.key,
                context: e.context,
                deleted: e.deleted,
                at_ms: e.at_ms,
            });
        }
        Ok(page)
    }

    fn feed_floor(&self, bucket: &str) -> Result<Option<FeedPos>, StorageError> {
        let mut mk = META_FEED_FLOOR.to_vec();
        mk.extend_from_slice(bucket.as_bytes());
        let Some(v) = self.meta.get(mk)? else {
            return Ok(None);
        };
        let run = <[u8; 4]>::try_from(v.get(..4).ok_or(codec::CodecError::Key)?)
            .map_err(|_| codec::CodecError::Key)?;
        let seq = <[u8; 8]>::try_from(v.get(4..12).ok_or(codec::CodecError::Key)?)
            .map_err(|_| codec::CodecError::Key)?;
        Ok(Some(FeedPos {
            run: u32::from_be_bytes(run),
            seq: u64::from_be_bytes(seq),
        }))
    }

    /// Purges log entries logged before `before_ms`, reading at most `limit` from `after`
    /// (exclusive) on, and raises each bucket's floor to the greatest position purged, in
    /// the same batch. Returns how many were purged and where to resume.
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    pub fn purge_feed(
        &self,
        before_ms: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(usize, Option<Vec<u8>>), StorageError> {
        let iter = match after {
            Some(a) => self
                .feed_space
                .range::<Vec<u8>, _>((std::ops::Bound::Excluded(a.to_vec()), std::ops::Bound::Unbounded)),
            None => self.feed_space.range::<Vec<u8>, _>(..),
        };
        let mut old = Vec::new();
        let mut floors: BTreeMap<String, FeedPos> = BTreeMap::new();
        let mut read = 0;
        let mut last = None;
        for kv in iter {
            if read == limit {
                break;
            }
            let (k, v) = kv.into_inner()?;
            read += 1;
            let e: StoredEntry = serde_json::from_slice(&v).map_err(codec::CodecError::Document)?;
            if e.at_ms < before_ms {
                let (bucket, pos) = parse_feed_key(&k)?;
                let f = floors.entry(bucket).or_default();
                *f = (*f).max(pos);
                old.push(k.to_vec());
            }
            last = Some(k.to_vec());
        }
        let more = read == limit;
        let purged = old.len();
        if !old.is_empty() {
            let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
            for (bucket, pos) in floors {
                let floor = match self.feed_floor(&bucket)? {
                    Some(cur) => cur.max(pos),
                    None => pos,
                };
                let mut mk = META_FEED_FLOOR.to_vec();
                mk.extend_from_slice(bucket.as_bytes());
                let mut v = floor.run.to_be_bytes().to_vec();
                v.extend_from_slice(&floor.seq.to_be_bytes());
                batch.insert(&self.meta, mk, v);
            }
            for k in old {
                batch.remove(&self.feed_space, k);
            }
            batch.commit()?;
        }
        Ok((purged, if more { last } else { None }))
    }
}
