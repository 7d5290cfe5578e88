//! The cluster state cached on the volume.

use super::*;

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
}
