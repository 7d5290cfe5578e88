//! The listing index: every key this node stores a copy of (its own or a hint), by
//! bucket and key byte order, beside the partition-ordered objects.
//!
//! An entry is `listing_key(bucket, key)` with an empty value. It is inserted in the
//! batch that stores a key's first copy here, and removed in the batch that removes the
//! node's last copy of it (a collected tombstone, a released partition, a delivered hint),
//! so the index and the objects change together. A page re-reads each key's copies, so an
//! entry whose copies are gone (only possible if a removal's check raced a crash) is
//! skipped, and removed under the key's lock.

use super::*;

/// Marks a data directory whose listing index is complete (built at first start of a
/// version that keeps one, from the objects and hints already stored).
const META_LISTING_BUILT: &[u8] = b"listing_index_v1";

/// One page of a bucket's keys, as this node holds them.
#[derive(Debug, Clone, Default)]
pub struct ListingPage {
    /// Keys in byte order, each with its versions merged from the node's own copy and its
    /// hints, values left out (tombstones included: the caller merges replicas before it
    /// decides what is live).
    pub entries: Vec<(String, VersionedObject)>,
    /// The last key the scan covered, when it stopped before the end of the range (the
    /// page is full or the scan bound was reached): keys after it were not looked at.
    pub stopped_at: Option<String>,
}

impl Engine {
    /// Builds the listing index from the stored objects and hints, once per data
    /// directory.
    pub(super) fn ensure_listing_index(&self) -> Result<(), StorageError> {
        if self.meta.get(META_LISTING_BUILT)?.is_some() {
            return Ok(());
        }
        let start = Instant::now();
        let mut keys: Vec<Vec<u8>> = Vec::new();
        let mut entries = 0u64;
        // Object keys first, then the object keys inside hint keys; committed in chunks
        // so that a large volume does not build one huge batch. A crash midway leaves no
        // marker, and the next start builds again (inserts are idempotent).
        let objects = self
            .objects
            .iter()
            .map(|kv| -> Result<Vec<u8>, StorageError> { Ok(kv.key()?.to_vec()) });
        let hinted = self.hints.iter().map(|kv| -> Result<Vec<u8>, StorageError> {
            let k = kv.key()?;
            Ok(codec::parse_hint_key(&k)?.1.to_vec())
        });
        for ok in objects.chain(hinted) {
            keys.push(codec::listing_key_of(&ok?)?.to_vec());
            if keys.len() == 10_000 {
                entries += self.insert_listing(&mut keys)?;
            }
        }
        entries += self.insert_listing(&mut keys)?;
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        batch.insert(&self.meta, META_LISTING_BUILT, []);
        batch.commit()?;
        self.db.persist(PersistMode::SyncAll)?;
        tracing::info!(
            entries,
            build_ms = start.elapsed().as_millis() as u64,
            "listing index built"
        );
        Ok(())
    }

    /// Inserts the listing keys in `keys` in one batch, and empties it.
    fn insert_listing(&self, keys: &mut Vec<Vec<u8>>) -> Result<u64, StorageError> {
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        let n = keys.len() as u64;
        for k in keys.drain(..) {
            batch.insert(&self.listing, k, []);
        }
        batch.commit()?;
        Ok(n)
    }

    /// Returns true when this node holds a hint for the key stored at `ok` for a target
    /// other than `except`.
    pub(super) fn holds_hint_besides(&self, ok: &[u8], except: &NodeId) -> Result<bool, StorageError> {
        let targets: Vec<NodeId> = lock(&self.hint_targets).keys().cloned().collect();
        for t in targets.iter().filter(|t| *t != except) {
            if self.hints.contains_key(codec::hint_key(t, ok))? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Reads a page of `bucket`'s keys that start with `prefix`, after `start_after`
    /// (exclusive) when given: at most `limit` keys this node holds a copy of, looking at
    /// no more than `max_scan` index entries.
    ///
    /// # Errors
    /// Engine failures or corrupt data.
    pub fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        max_scan: usize,
    ) -> Result<ListingPage, StorageError> {
        let lower = codec::listing_key(bucket, prefix);
        let iter = match start_after {
            Some(after) if after >= prefix => self.listing.range::<Vec<u8>, _>((
                std::ops::Bound::Excluded(codec::listing_key(bucket, after)),
                std::ops::Bound::Unbounded,
            )),
            _ => self.listing.range::<Vec<u8>, _>(lower.clone()..),
        };
        let mut page = ListingPage::default();
        let mut last: Option<String> = None;
        for (scanned, kv) in iter.enumerate() {
            let k = kv.key()?;
            if !k.starts_with(&lower) {
                return Ok(page);
            }
            if page.entries.len() == limit || scanned == max_scan {
                page.stopped_at = last;
                return Ok(page);
            }
            let (b, key) = codec::parse_listing_key(&k)?;
            let at = KeyRef {
                bucket: &b,
                key: &key,
            };
            match self.get(&at)? {
                Some(obj) => page.entries.push((key.clone(), without_values(obj)?)),
                None => self.drop_stale_listing(&at)?,
            }
            last = Some(key);
        }
        Ok(page)
    }

    /// Removes the listing entry of a key this node holds no copy of, re-checked under
    /// the key's lock (a write may have stored one since the page read).
    fn drop_stale_listing(&self, k: &KeyRef<'_>) -> Result<(), StorageError> {
        let (_, hash, ok) = self.locate(k);
        let _guard = self.stripe(hash);
        if !self.objects.contains_key(&ok)? && !self.holds_hint_for(&ok)? {
            self.listing.remove(codec::listing_key(k.bucket, k.key))?;
        }
        Ok(())
    }
}

/// The object with every value left out: a listing needs only the versions.
fn without_values(obj: VersionedObject) -> Result<VersionedObject, StorageError> {
    let (history, mut siblings) = obj.into_parts();
    for s in &mut siblings {
        s.value = Vec::new();
    }
    VersionedObject::from_parts(history, siblings)
        .map_err(|e| StorageError::Corrupt(codec::CodecError::Invalid(e)))
}
