//! Who this volume is: the node id and incarnation kept in `meta`, a new incarnation
//! after every unclean stop, and the clean-shutdown marker.

use super::*;

impl Engine {
    /// Returns the volume's identity, and whether it was created now.
    pub(super) fn load_identity(
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
                let volume = match meta.get(META_VOLUME)? {
                    Some(v) => {
                        let v: [u8; 8] = v.as_ref().try_into().map_err(|_| codec::CodecError::Truncated)?;
                        VolumeId(u64::from_be_bytes(v))
                    }
                    None => {
                        // A volume from before volume ids: it is this member's own (it
                        // has been serving as it), so it gets an id and no marker.
                        let volume = VolumeId(rand::random::<u64>());
                        let mut b = db.batch().durability(Some(PersistMode::SyncAll));
                        b.insert(meta, META_VOLUME, volume.0.to_be_bytes());
                        b.commit()?;
                        tracing::info!(volume = %volume, "volume id assigned to an existing data directory");
                        volume
                    }
                };
                Ok((
                    Identity {
                        node_id: id,
                        incarnation: Incarnation(u64::from_be_bytes(actor)),
                        volume,
                    },
                    false,
                ))
            }
            _ => {
                let node_id = match configured {
                    Some(id) => id,
                    None => NodeId::new(format!("node-{:08x}", rand::random::<u32>()))?,
                };
                let incarnation = Incarnation(rand::random::<u64>());
                let volume = VolumeId(rand::random::<u64>());
                let mut b = db.batch().durability(Some(PersistMode::SyncAll));
                b.insert(meta, META_NODE_ID, node_id.as_str().as_bytes());
                b.insert(meta, META_INCARNATION, incarnation.0.to_be_bytes());
                b.insert(meta, META_VOLUME, volume.0.to_be_bytes());
                // Until the ring service binds it: it may stand in for a member whose
                // volume was lost, and then holds none of that member's data.
                b.insert(meta, META_VOLUME_UNCONFIRMED, []);
                b.commit()?;
                tracing::info!(node_id = %node_id, incarnation = %incarnation, volume = %volume, "new data directory: identity created");
                Ok((
                    Identity {
                        node_id,
                        incarnation,
                        volume,
                    },
                    true,
                ))
            }
        }
    }

    /// Returns the node's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// True while the volume was never seen bound to this node's member by the ring
    /// service (created since, and not yet confirmed): it may stand in for a lost one.
    pub fn volume_unconfirmed(&self) -> bool {
        self.volume_unconfirmed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records, durably, that the ring service bound this volume to the node's member
    /// (a no-op once recorded).
    ///
    /// # Errors
    /// [`StorageError`] when the marker cannot be removed.
    pub fn confirm_volume(&self) -> Result<(), StorageError> {
        if !self.volume_unconfirmed() {
            return Ok(());
        }
        let mut b = self.db.batch().durability(Some(PersistMode::SyncAll));
        b.remove(&self.meta, META_VOLUME_UNCONFIRMED);
        b.commit()?;
        self.volume_unconfirmed
            .store(false, std::sync::atomic::Ordering::Release);
        tracing::info!(volume = %self.identity.volume, "volume confirmed: the ring binds it to this node");
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
}
