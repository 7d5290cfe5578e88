//! Durability: the group commit's fsync of fjall's active journal file, and what a
//! batch's persist mode is.

use super::*;

/// A handle on fjall's active journal file (`<dir>/<id>.jnl`), used only to fsync it.
pub(super) struct JournalFile {
    pub(super) id: u64,
    pub(super) file: std::fs::File,
}

pub(super) fn newest_journal(dir: &Path) -> std::io::Result<Option<u64>> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let id = name
            .to_str()
            .and_then(|n| n.strip_suffix(".jnl"))
            .and_then(|n| n.parse::<u64>().ok());
        newest = newest.max(id);
    }
    Ok(newest)
}

impl Engine {
    /// Makes every write committed before the call durable: the group-commit fsync.
    ///
    /// fjall's own `persist` holds the journal's writer lock through the fsync, so every
    /// commit on the node, and the async worker applying it, would wait out the disk
    /// (profiled: ~90 µs per coordinate-put, and the tails of every read batched on the
    /// same worker). Instead the journal is handed to the OS under the lock (a copy) and
    /// the active journal file is fsynced through a handle of our own, outside it. A
    /// rotation between the two is safe: fjall fsyncs a journal before it seals it, so the
    /// newest file is the only one that can hold unsynced writes. This depends on fjall
    /// 3.1's journal layout (`<dir>/<id>.jnl`, preallocated, hence `fdatasync`); where no
    /// such file is found, or the handle fails, the locked `persist` does the work (and
    /// poisons the database if the disk failed, as fjall does).
    ///
    /// # Errors
    /// Engine or I/O failures; after one, fjall is poisoned and the node stops.
    pub fn sync_journal(&self) -> Result<(), StorageError> {
        self.db.persist(PersistMode::Buffer)?;
        let mut active = lock(&self.journal);
        match self.sync_active(&mut active) {
            Ok(true) => Ok(()),
            Ok(false) => Ok(self.db.persist(PersistMode::SyncData)?),
            Err(e) => {
                tracing::warn!(error = %e, "journal fsync through own handle failed; fsyncing through fjall");
                *active = None;
                Ok(self.db.persist(PersistMode::SyncData)?)
            }
        }
    }

    pub(super) fn sync_active(&self, active: &mut Option<JournalFile>) -> std::io::Result<bool> {
        let Some(id) = newest_journal(&self.dir)? else {
            return Ok(false);
        };
        let journal = match active.take() {
            Some(j) if j.id == id => j,
            _ => JournalFile {
                id,
                file: std::fs::File::open(self.dir.join(format!("{id}.jnl")))?,
            },
        };
        journal.file.sync_data()?;
        *active = Some(journal);
        Ok(true)
    }

    pub(super) fn persist_mode(&self) -> PersistMode {
        // Both modes hand the journal to the OS before acknowledging (survives kill -9);
        // `sync` adds the group-commit fsync on top, in `Syncer::barrier`.
        PersistMode::Buffer
    }

    /// Flushes the journal to stable storage (periodically in buffered mode).
    ///
    /// # Errors
    /// Engine failures.
    pub fn persist(&self) -> Result<(), StorageError> {
        self.sync_journal()?;
        if let Ok(bytes) = self.db.disk_space() {
            self.metrics.disk_bytes.set(bytes as i64);
        }
        Ok(())
    }
}
