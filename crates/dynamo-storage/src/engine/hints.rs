//! Hints held for other nodes: who they are for, reading them for delivery, deleting
//! what was delivered unchanged.

use super::*;

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

impl Engine {
    pub(super) fn load_hint_targets(&self) -> Result<(), StorageError> {
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
                let mut batch = self.db.batch();
                batch.remove(&self.hints, hk);
                if !self.objects.contains_key(&ok)? && !self.holds_hint_besides(&ok, target)? {
                    batch.remove(&self.listing, codec::listing_key(&hint.key.bucket, &hint.key.key));
                }
                batch.commit()?;
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
}
