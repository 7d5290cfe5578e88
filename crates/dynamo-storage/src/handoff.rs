//! Partition handoff, receiving side: pull a partition's objects from a node that holds
//! them, page by page, and merge each into the local store.
//!
//! The source serves pages of `GET /internal/v1/partitions/{p}/objects` in storage order
//! with a cursor, so a pull that stops (a timeout, a restart) resumes from the last cursor
//! instead of starting over. Merging is `replicate`, which is idempotent: a page received
//! twice changes nothing, and writes arriving meanwhile through the normal path merge
//! with the streamed copies in any order.

use dynamo_server::internal::{InternalClient, SendError};
use std::sync::Arc;

use dynamo_core::PartitionId;
use dynamo_core::version::ConflictRule;
use dynamo_core::wire::internal::{PullProgress, PullRequest};
use dynamo_core::wire::routes;
use tokio_util::sync::CancellationToken;

use crate::api::ScanPage;
use crate::engine::{Engine, KeyRef};
use crate::error::StorageError;

/// Objects per page asked of the source.
pub const PAGE: usize = 256;

/// Why a pull stopped.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The source did not answer or refused.
    #[error("source unreachable")]
    Source(#[from] SendError),
    /// The local engine failed.
    #[error("local storage failed")]
    Storage(#[from] StorageError),
}

impl From<reqwest::Error> for PullError {
    fn from(e: reqwest::Error) -> Self {
        PullError::Source(e.into())
    }
}

/// Pulls partition `p` from `req.source` (an internal API address) into `engine`,
/// starting after `req.cursor` (None = from the start), until the source has no more,
/// `budget` has passed (then `done` is false and `cursor` resumes), or `stop` is
/// cancelled. Returns the progress, whose cursor resumes an interrupted pull. With
/// `req.min_epoch`, the source serves pages only once it fences ring epochs older than
/// that (a catch-up copy).
///
/// # Errors
/// [`PullError`]; the progress made before the error is kept on disk, and the caller can
/// resume from the last cursor it saw.
pub async fn pull_partition(
    engine: &Arc<Engine>,
    client: &InternalClient,
    p: PartitionId,
    req: PullRequest,
    budget: std::time::Duration,
    stop: &CancellationToken,
) -> Result<PullProgress, PullError> {
    let PullRequest {
        source,
        cursor,
        min_epoch,
        ..
    } = req;
    let started = std::time::Instant::now();
    let mut progress = PullProgress {
        cursor,
        ..PullProgress::default()
    };
    let base = routes::url(&source, &routes::storage::partition_objects(p));
    while !stop.is_cancelled() {
        let mut req = client.get(&base).query(&[("limit", PAGE.to_string())]);
        if let Some(c) = &progress.cursor {
            req = req.query(&[("after", c)]);
        }
        if let Some(e) = min_epoch {
            req = req.query(&[("min_epoch", e.0)]);
        }
        let page: ScanPage = req.send().await?.error_for_status()?.json().await?;
        let n = page.objects.len() as u64;
        let bytes: u64 = page
            .objects
            .iter()
            .flat_map(|o| o.object.siblings())
            .map(|s| s.value.len() as u64)
            .sum();
        let e = engine.clone();
        let objects = page.objects;
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            for o in &objects {
                let k = KeyRef {
                    bucket: o.bucket.as_str(),
                    key: &o.key,
                };
                // A pure merge: the source's copy may be of any bucket mode, and a union
                // never loses a version; LWW narrowing happens on the next write.
                e.replicate(
                    &k,
                    &o.object,
                    ConflictRule::Siblings {
                        max_siblings: u32::MAX,
                    },
                    None,
                )?;
            }
            Ok(())
        })
        .await
        .map_err(StorageError::from)??;
        progress.objects += n;
        progress.bytes += bytes;
        progress.pages += 1;
        match page.next {
            Some(next) => progress.cursor = Some(next),
            None => {
                progress.done = true;
                progress.cursor = None;
                break;
            }
        }
        // A bounded request: a large partition is copied over several calls, each
        // resuming from the cursor this one answers.
        if started.elapsed() >= budget {
            break;
        }
    }
    Ok(progress)
}
