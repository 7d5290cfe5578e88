//! Partition scans and the Merkle trees kept current over them.

use super::*;

/// The bytes a key contributes to its Merkle item hash: `bucket ‖ "/" ‖ key`, the same
/// bytes the key hash is computed over.
pub fn merkle_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(bucket.len() + 1 + key.len());
    v.extend_from_slice(bucket.as_bytes());
    v.push(b'/');
    v.extend_from_slice(key.as_bytes());
    v
}

impl Engine {
    pub(super) fn rebuild_merkle(&self) -> Result<(), StorageError> {
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

    pub(super) fn rebuild_tree(
        &self,
        p: PartitionId,
        items: &mut Vec<MerkleItem<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let tree = self.merkle.get(p.0 as usize).ok_or(codec::CodecError::Key)?;
        Ok(lock(tree).rebuild(items.drain(..))?)
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
        self.scan_with(p, start, end, after, limit, |v| Ok(codec::decode_object(v)?))
    }

    /// As [`Engine::scan`], but reads only each object's digest (anti-entropy compares
    /// these before it moves any value).
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    #[allow(clippy::type_complexity)]
    pub fn scan_digests(
        &self,
        p: PartitionId,
        start: u64,
        end: u64,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<(Vec<(ObjectKey, u128)>, Option<Vec<u8>>), StorageError> {
        self.scan_with(p, start, end, after, limit, |v| Ok(codec::stored_digest(v)?))
    }

    #[allow(clippy::type_complexity)]
    fn scan_with<T>(
        &self,
        p: PartitionId,
        start: u64,
        end: u64,
        after: Option<&[u8]>,
        limit: usize,
        read: impl Fn(&[u8]) -> Result<T, StorageError>,
    ) -> Result<(Vec<(ObjectKey, T)>, Option<Vec<u8>>), StorageError> {
        let lo = codec::range_start(p, start);
        let hi = codec::range_end(p, end);
        let iter = match after {
            Some(a) => self.objects.range::<Vec<u8>, _>((
                std::ops::Bound::Excluded(a.to_vec()),
                std::ops::Bound::Excluded(hi),
            )),
            None => self.objects.range::<Vec<u8>, _>(lo..hi),
        };
        page(iter, limit, usize::MAX, read)
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
        self.remove_own_copy(&ok, k.bucket, k.key)?;
        self.metrics.keys.dec();
        lock(&self.merkle[p.0 as usize]).update(hash, &merkle_key(k.bucket, k.key), Some(digest), None)?;
        Ok(true)
    }

    /// Removes the node's own copy of a key stored at `ok` (the caller holds its stripe
    /// lock), with its listing entry in the same batch unless a hint still holds a copy.
    fn remove_own_copy(&self, ok: &[u8], bucket: &str, key: &str) -> Result<(), StorageError> {
        let mut batch = self.db.batch();
        batch.remove(&self.objects, ok.to_vec());
        if !self.holds_hint_for(ok)? {
            batch.remove(&self.listing, codec::listing_key(bucket, key));
        }
        batch.commit()?;
        Ok(())
    }

    /// Deletes up to `limit` objects of partition `p` (a release: after a membership
    /// change the node no longer holds it). Each key goes under its stripe lock with its
    /// Merkle entry, so the partition's tree stays exact. Returns how many were deleted:
    /// fewer than `limit` means the partition is now empty.
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    pub fn drop_partition_page(&self, p: PartitionId, limit: usize) -> Result<usize, StorageError> {
        let (start, end) = (self.partitioning.start_of(p), self.partitioning.end_of(p));
        let (keys, _) = self.scan_with(p, start, end, None, limit, |_| Ok(()))?;
        for (k, ()) in &keys {
            let ok = codec::object_key(k.partition, k.hash, &k.bucket, &k.key);
            let _guard = self.stripe(k.hash);
            let Some(v) = self.objects.get(&ok)? else {
                continue;
            };
            let digest = codec::stored_digest(&v)?;
            self.remove_own_copy(&ok, &k.bucket, &k.key)?;
            self.metrics.keys.dec();
            lock(&self.merkle[p.0 as usize]).update(
                k.hash,
                &merkle_key(&k.bucket, &k.key),
                Some(digest),
                None,
            )?;
        }
        Ok(keys.len())
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
        page(iter, limit, max_bytes, |v| Ok(codec::decode_object(v)?))
    }
}

/// Reads a page of objects from `iter` (in storage order), each value through `read`: at
/// most `limit` of them, and no more once `max_bytes` of stored values were read (a page
/// holds at least one). Returns them with the storage key to resume after when more
/// remain.
#[allow(clippy::type_complexity)]
fn page<T>(
    iter: fjall::Iter,
    limit: usize,
    max_bytes: usize,
    read: impl Fn(&[u8]) -> Result<T, StorageError>,
) -> Result<(Vec<(ObjectKey, T)>, Option<Vec<u8>>), StorageError> {
    let mut out = Vec::new();
    let mut last = None;
    let mut bytes = 0usize;
    for kv in iter {
        if out.len() == limit || bytes >= max_bytes {
            return Ok((out, last));
        }
        let (k, v) = kv.into_inner()?;
        bytes = bytes.saturating_add(v.len());
        out.push((codec::parse_object_key(&k)?, read(&v)?));
        last = Some(k.to_vec());
    }
    Ok((out, None))
}
