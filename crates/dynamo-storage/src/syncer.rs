//! Group commit: one thread turns many concurrent "make my write durable" requests into
//! one fsync.
//!
//! A writer commits its batch to the journal (buffered), then calls [`Syncer::barrier`].
//! The syncer thread takes the first waiting request, drains every other request already
//! queued, runs one `fsync`, and answers them all. A request sent after a commit returned
//! is covered by the next fsync, so every acknowledged write is durable; writers that
//! arrive while an fsync runs share the following one.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::engine::Engine;
use crate::error::StorageError;
use crate::metrics::StorageMetrics;

/// Most barrier requests waiting at once; writers beyond it wait for a slot (bounded
/// memory, and natural back-pressure when the disk is slow).
const MAX_WAITING: usize = 4096;

type Reply = oneshot::Sender<Result<(), String>>;

/// Handle to the syncer thread. Dropping every handle stops the thread.
#[derive(Clone)]
pub struct Syncer {
    tx: mpsc::Sender<Reply>,
}

impl Syncer {
    /// Starts the syncer thread for `engine`.
    ///
    /// # Errors
    /// An I/O error if the thread cannot be spawned.
    pub fn start(engine: Arc<Engine>, metrics: StorageMetrics) -> std::io::Result<Syncer> {
        let (tx, mut rx) = mpsc::channel::<Reply>(MAX_WAITING);
        std::thread::Builder::new()
            .name("dynamo-syncer".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut waiting = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        waiting.push(more);
                    }
                    let started = std::time::Instant::now();
                    let result = engine.sync_journal().map_err(|e| e.to_string());
                    metrics.fsync_duration.observe(started.elapsed().as_secs_f64());
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "fsync failed");
                    }
                    metrics.fsyncs.inc();
                    metrics.fsync_batch.observe(waiting.len() as f64);
                    for w in waiting {
                        // A writer that gave up waiting is gone; nothing to tell it.
                        let _ = w.send(result.clone());
                    }
                }
            })?;
        Ok(Syncer { tx })
    }

    /// Waits until every write committed before this call is on stable storage.
    ///
    /// Cancel-safe: dropping the future leaves the fsync to happen anyway.
    ///
    /// # Errors
    /// [`StorageError::SyncerGone`] if the syncer stopped, or the fsync failed.
    pub async fn barrier(&self) -> Result<(), StorageError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(reply).await.map_err(|_| StorageError::SyncerGone)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "durability barrier failed");
                Err(StorageError::SyncerGone)
            }
            Err(_) => Err(StorageError::SyncerGone),
        }
    }
}
