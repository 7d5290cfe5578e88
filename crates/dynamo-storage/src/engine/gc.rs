//! Tombstone collection with its GC records, and the purges of old records.

use super::*;

/// What a node knows about one tombstone set (answer to `tombstone_status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TombstoneStatus {
    /// The node's own copy has exactly this digest, and it holds no hint for the key.
    pub holds: bool,
    /// The node collected exactly this digest and still has the record.
    pub collected: bool,
}

impl Engine {
    /// Returns true when this node holds a hint for the key stored at `ok`: a hint may
    /// carry an older value that would come back if the tombstone were collected.
    pub(super) fn holds_hint_for(&self, ok: &[u8]) -> Result<bool, StorageError> {
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
        // No hint is held (checked above): this was the node's last copy.
        batch.remove(&self.listing, codec::listing_key(k.bucket, k.key));
        batch.insert(&self.gc, ok, record);
        batch.commit()?;
        self.metrics.keys.dec();
        lock(&self.merkle[p.0 as usize]).update(hash, &merkle_key(k.bucket, k.key), Some(digest), None)?;
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
    pub(super) fn purge_older(
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
}
