//! The service core: the current [`Cluster`] behind one writer lock, the published
//! snapshot, liveness, and the one way to change anything ([`Service::mutate`]).
//!
//! **Invariant (persist before publish):** a change becomes visible (to readers,
//! long-pollers and the caller that asked for it) only after `state.json` holds it. A
//! change that cannot be persisted is refused and nothing changes.
//!
//! **Invariant (monotonic versions):** every commit has version = previous + 1, and the
//! ring epoch never decreases; a ring with other content always has a larger epoch.
//! Breaches are counted in `dynamo_invariant_violations_total` and refused.

use std::sync::{Arc, Mutex};

use dynamo_core::ErrorCode;
use dynamo_core::wire::cluster::ClusterView;
use dynamo_server::ApiError;
use dynamo_server::metrics::invariant;
use dynamo_server::worker::Workers;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::cluster::{Cluster, ClusterError, Settings};
use crate::config::Config;
use crate::liveness::SharedLiveness;
use crate::metrics::RingMetrics;
use crate::plan::{ChangeStatus, PendingChange};
use crate::store::{self, StateFile};

/// Everything the handlers and workers share.
pub(crate) struct Service {
    /// The configuration.
    pub config: Arc<Config>,
    /// Q and the ring's N.
    pub settings: Settings,
    /// The current state; only [`Service::mutate`] takes it (a tokio lock, since a
    /// commit awaits the fsync while holding it: commits are serialised in order).
    core: tokio::sync::Mutex<Cluster>,
    /// The last committed state, for readers and long-polls.
    published: watch::Sender<Arc<Cluster>>,
    /// Heartbeats and grace periods.
    pub liveness: SharedLiveness,
    /// The service's metrics.
    pub metrics: RingMetrics,
    /// Mutations; awaited at shutdown.
    pub tasks: TaskTracker,
    /// The background workers (liveness, handoff); stopped at shutdown.
    pub workers: Workers,
    /// Cancelled with the workers: stops long-polls.
    pub shutdown: CancellationToken,
    /// The handoff worker running, with the change it drives.
    worker: Mutex<Option<(u64, CancellationToken)>>,
    /// The client for pull requests to storage nodes.
    pub client: dynamo_server::internal::InternalClient,
}

impl Service {
    /// Builds the service around a loaded (or empty) state.
    pub fn new(
        config: Arc<Config>,
        cluster: Cluster,
        liveness: SharedLiveness,
        metrics: RingMetrics,
        client: dynamo_server::internal::InternalClient,
        workers: Workers,
    ) -> Arc<Service> {
        metrics.observe(&cluster);
        let settings = Settings {
            partitioning: config.partitioning(),
            n: config.n,
            early_release: config.unsafe_early_release,
        };
        let (published, _) = watch::channel(Arc::new(cluster.clone()));
        Arc::new(Service {
            config,
            settings,
            core: tokio::sync::Mutex::new(cluster),
            published,
            liveness,
            metrics,
            tasks: TaskTracker::new(),
            shutdown: workers.child_stop(),
            workers,
            worker: Mutex::new(None),
            client,
        })
    }

    /// Returns the last committed state.
    pub fn snapshot(&self) -> Arc<Cluster> {
        self.published.borrow().clone()
    }

    /// Returns a receiver that sees every commit (for long-polls).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Cluster>> {
        self.published.subscribe()
    }

    /// Returns the cluster view with heartbeat ages as of now.
    pub fn view(&self) -> ClusterView {
        let snap = self.snapshot();
        let now = Instant::now();
        let l = self.liveness.lock();
        snap.view(|n| l.ms_ago(n, now))
    }

    /// Applies `f` to a copy of the current state; if `f` succeeds and changed anything,
    /// persists the copy, makes it current and publishes it, then starts or stops the
    /// handoff worker as the new state asks. If `f` fails, nothing changes.
    ///
    /// Runs in a tracked task, so a caller that hangs up cannot interrupt a commit
    /// between the fsync and the publish.
    ///
    /// # Errors
    /// What `f` returned; `storage_error` when the state cannot be persisted; `internal`
    /// for a breached invariant.
    pub async fn mutate<T, F>(self: &Arc<Self>, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Cluster) -> Result<T, ClusterError> + Send + 'static,
    {
        let me = self.clone();
        let task = self.tasks.spawn(async move {
            let mut current = me.core.lock().await;
            let mut draft = current.clone();
            let out = f(&mut draft)?;
            // Followers see the change as the state carries it; it is derived here, once
            // per commit, so no method can forget it.
            draft.state.change = draft.change.as_ref().map(PendingChange::summary);
            if draft != *current {
                me.commit(&mut current, draft).await?;
                me.steer_worker(&current);
            }
            Ok(out)
        });
        match task.await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "state mutation task failed");
                Err(ApiError::new(ErrorCode::Internal, "the state change failed"))
            }
        }
    }

    /// Starts the handoff worker of a running change that has none, and stops a worker
    /// whose change is gone or failed. Called under the state lock, so it sees commits
    /// in order.
    fn steer_worker(self: &Arc<Self>, current: &Cluster) {
        let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
        let wanted = current
            .change
            .as_ref()
            .filter(|c| c.status == ChangeStatus::Running)
            .map(|c| c.id);
        match (&*worker, wanted) {
            (Some((id, _)), Some(w)) if *id == w => {}
            (_, Some(w)) => {
                if let Some((_, stop)) = worker.take() {
                    stop.cancel();
                }
                let stop = self.workers.child_stop();
                *worker = Some((w, stop.clone()));
                self.workers.spawn_until(
                    crate::handoff::HandoffDriver {
                        svc: self.clone(),
                        id: w,
                    },
                    stop,
                );
            }
            (Some(_), None) => {
                if let Some((_, stop)) = worker.take() {
                    stop.cancel();
                }
            }
            (None, None) => {}
        }
    }

    /// Starts the worker for a change loaded from disk (resume after a restart).
    pub async fn resume(self: &Arc<Self>) {
        let current = self.core.lock().await;
        self.steer_worker(&current);
    }

    async fn commit(&self, current: &mut Cluster, mut next: Cluster) -> Result<(), ApiError> {
        next.state.version = current.state.version + 1;
        self.check_invariants(current, &next)?;
        let file = StateFile::of(&next);
        let dir = self.config.data_dir.clone();
        let saved = tokio::task::spawn_blocking(move || store::save(&dir, &file)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, dir = %self.config.data_dir.display(), "cannot persist the cluster state");
                return Err(ApiError::new(
                    ErrorCode::StorageError,
                    "cannot persist the cluster state; nothing changed",
                ));
            }
            Err(e) => {
                tracing::error!(error = %e, "the persisting task failed");
                return Err(ApiError::new(ErrorCode::Internal, "the state change failed"));
            }
        }
        if next.epoch() != current.epoch() {
            tracing::info!(
                epoch = next.epoch().0,
                members = next.state.ring.as_ref().map_or(0, |r| r.members().len()),
                "ring published"
            );
        }
        *current = next;
        self.metrics.observe(current);
        self.published.send_replace(Arc::new(current.clone()));
        Ok(())
    }

    fn check_invariants(&self, current: &Cluster, next: &Cluster) -> Result<(), ApiError> {
        let breach = match (&current.state.ring, &next.state.ring) {
            (Some(_), None) => Some(invariant::RING_NEVER_DISAPPEARS),
            (Some(a), Some(b)) if b.epoch() < a.epoch() => Some(invariant::RING_EPOCH_MONOTONIC),
            (Some(a), Some(b)) if b.epoch() == a.epoch() && a != b => {
                Some(invariant::RING_CHANGE_BUMPS_EPOCH)
            }
            _ => None,
        };
        match breach {
            None => Ok(()),
            Some(invariant) => {
                self.metrics.invariant_violations.record(invariant);
                tracing::error!(
                    invariant,
                    from = current.epoch().0,
                    to = next.epoch().0,
                    "refusing a state change that breaks an invariant"
                );
                debug_assert!(false, "invariant {invariant} breached");
                Err(ApiError::new(
                    ErrorCode::Internal,
                    format!("invariant {invariant} breached"),
                ))
            }
        }
    }
}
