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
                    None => NodeId::new(format!("node-{:08x}", rand::random::<u32>()))?,
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

    /// Returns the node's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
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
