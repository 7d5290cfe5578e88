//! Letting partitions go: after a membership change moved a partition away from this
//! node, and every new holder confirmed its copy, the ring service lists the partition
//! in the state's releases for this node; this worker deletes the node's copy and tells
//! the ring service it did (`POST /internal/v1/releases`).
//!
//! Deleting matters: a copy kept would come back if the partition ever returned to this
//! node (a later join or replace), holding values whose deletes were collected meanwhile
//! everywhere else: resurrected data. A node that was down when its release was written
//! finds it in the state when it returns, and deletes before it acknowledges.
//!
//! A partition the node holds again under its current ring (a later change gave it
//! back) is not deleted; the release is still acknowledged, as it no longer applies.

use std::sync::Arc;
use std::time::Duration;

use dynamo_core::wire::cluster::ReleaseDone;
use dynamo_core::wire::routes;
use dynamo_server::internal::{InternalClient, SendError};
use dynamo_server::ring_urls::RingUrls;
use dynamo_server::worker::{Next, Worker};
use tokio_util::sync::CancellationToken;

use crate::cluster::ClusterCache;
use crate::engine::Engine;
use crate::error::StorageError;

/// Objects deleted per blocking call (the worker checks for shutdown between calls).
pub const DROP_PAGE: usize = 1024;
/// How often the worker looks for a release of its own.
pub const CHECK_EVERY: Duration = Duration::from_secs(1);

/// Why a release was not carried out (it is tried again on the next look).
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    /// The local engine failed.
    #[error("local storage failed")]
    Storage(#[from] StorageError),
    /// The ring service did not take the acknowledgement.
    #[error("the ring service did not take the acknowledgement")]
    Ack(#[from] SendError),
}

impl From<reqwest::Error> for ReleaseError {
    fn from(e: reqwest::Error) -> Self {
        ReleaseError::Ack(e.into())
    }
}

impl ReleaseError {
    /// Returns whether the next ring-service replica may take the acknowledgement: this
    /// one did not answer, or answered a `5xx`. The acknowledgement is idempotent (the
    /// ring service drops the releases up to its epoch), so one a replica may have taken
    /// can be sent again.
    fn moves_on(&self) -> bool {
        match self {
            ReleaseError::Ack(e) => !e.is_middleware() && e.status().is_none_or(|s| s.is_server_error()),
            ReleaseError::Storage(_) => false,
        }
    }
}

/// The `release` worker.
pub struct Releaser {
    /// The node's engine.
    pub engine: Arc<Engine>,
    /// The node's view of the cluster (where its releases are listed).
    pub cluster: Arc<ClusterCache>,
    /// The client for the ring service.
    pub client: InternalClient,
    /// The ring service's replicas (shared with the node's other callers).
    pub ring: RingUrls,
}

impl Worker for Releaser {
    type Error = ReleaseError;

    fn name(&self) -> &'static str {
        "release"
    }

    async fn work(&mut self, stop: &CancellationToken) -> Result<Next, ReleaseError> {
        match release_once(&self.engine, &self.cluster, &self.client, &self.ring, stop).await? {
            Some(deleted) => {
                tracing::info!(deleted, "released partitions a membership change moved away");
                Ok(Next::Busy)
            }
            None => Ok(Next::Idle),
        }
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(CHECK_EVERY).await;
    }
}

/// Carries out this node's release, if the state lists one and the node's ring is at
/// least its epoch: deletes the partitions it no longer holds, then acknowledges to a
/// replica of `ring` (the next ones, each at most once, when one does not answer).
/// Returns the objects deleted, or `None` when there was nothing to do (or `stop` fired).
///
/// # Errors
/// [`ReleaseError`]; what was deleted stays deleted, and the next look finishes the rest.
pub async fn release_once(
    engine: &Arc<Engine>,
    cluster: &ClusterCache,
    client: &InternalClient,
    ring: &RingUrls,
    stop: &CancellationToken,
) -> Result<Option<u64>, ReleaseError> {
    let Some(state) = cluster.current() else {
        return Ok(None);
    };
    let me = engine.identity().node_id.clone();
    let Some(release) = state.release_for(&me).cloned() else {
        return Ok(None);
    };
    // The release was planned under its epoch: a node whose ring is older could still
    // be a holder in its own view and serve the partition.
    if cluster.ring_epoch() < release.epoch {
        return Ok(None);
    }
    let mut deleted = 0u64;
    for &p in &release.partitions {
        if state.holds(&me, p) || p.0 >= engine.partitioning().count() {
            continue;
        }
        loop {
            if stop.is_cancelled() {
                return Ok(None);
            }
            let e = engine.clone();
            let n = tokio::task::spawn_blocking(move || e.drop_partition_page(p, DROP_PAGE))
                .await
                .map_err(StorageError::from)??;
            deleted += n as u64;
            engine.metrics().released_objects.inc_by(n as u64);
            if n < DROP_PAGE {
                break;
            }
        }
    }
    // Deletes are made durable before the ring service forgets the release.
    let e = engine.clone();
    tokio::task::spawn_blocking(move || e.persist())
        .await
        .map_err(StorageError::from)??;
    let done = ReleaseDone {
        node: me,
        epoch: release.epoch,
    };
    ring.call(
        |base| {
            let ack = client.post(routes::url(base, routes::ring::RELEASES)).json(&done);
            async move {
                ack.send().await?.error_for_status()?;
                Ok::<(), ReleaseError>(())
            }
        },
        ReleaseError::moves_on,
    )
    .await?;
    Ok(Some(deleted))
}
