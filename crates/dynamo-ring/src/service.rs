//! The service core: the applied [`Cluster`] (published by the replica's state machine),
//! liveness, the ring group's openraft handle, and the one way to change anything
//! ([`Service::mutate`]).
//!
//! **Invariant (replicate before publish):** a change becomes visible (to readers,
//! long-pollers and the caller that asked for it) only once the group committed it: a
//! majority of the ring replicas holds it on disk. A change that cannot be committed is
//! refused and nothing changes.
//!
//! **Invariant (monotonic versions):** every applied state has version = previous + 1,
//! and the ring epoch never decreases; a ring with other content always has a larger
//! epoch. Breaches are counted in `dynamo_invariant_violations_total` and refused, by the
//! leader before proposing and by every replica before applying.
//!
//! Only the leader changes anything: mutations, the liveness ticker and the handoff
//! worker run there; a follower forwards every write it receives to the leader
//! ([`crate::api`]).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use dynamo_core::ErrorCode;
use dynamo_core::wire::cluster::{ClusterView, NodeState};
use dynamo_server::ApiError;
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
use crate::raft::{Group, Proposal, Raft, ReplicaId, sm};
use crate::store::StateFile;

/// How long a mutation waits for the group to have a leader before it is refused.
pub const LEADER_WAIT: Duration = Duration::from_secs(5);

/// Everything the handlers and workers share.
pub(crate) struct Service {
    /// The configuration.
    pub config: Arc<Config>,
    /// Q and the ring's N.
    pub settings: Settings,
    /// Serialises this replica's proposals (each is computed from the applied state, and
    /// the next one only after it was applied).
    propose: tokio::sync::Mutex<()>,
    /// The applied state, for readers and long-polls; written by the state machine.
    published: watch::Sender<Arc<Cluster>>,
    /// The ring group's consensus.
    pub raft: Raft,
    /// The ring group.
    pub group: Group,
    /// A plain client (no signing) to forward a request to the leader with its caller's
    /// own signature.
    pub forward: reqwest::Client,
    /// True once this replica, as leader, gave every node its liveness grace period
    /// (the liveness ticker judges nobody before: it would mark down nodes whose beats
    /// went to the previous leader).
    in_office: std::sync::atomic::AtomicBool,
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
    /// Builds the service around the replica's state machine's `published` state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        published: watch::Sender<Arc<Cluster>>,
        raft: Raft,
        group: Group,
        forward: reqwest::Client,
        liveness: SharedLiveness,
        metrics: RingMetrics,
        client: dynamo_server::internal::InternalClient,
        workers: Workers,
    ) -> Arc<Service> {
        let settings = Settings {
            partitioning: config.partitioning(),
            n: config.n,
            early_release: config.unsafe_early_release,
        };
        Arc::new(Service {
            config,
            settings,
            propose: tokio::sync::Mutex::new(()),
            published,
            raft,
            group,
            forward,
            in_office: std::sync::atomic::AtomicBool::new(false),
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

    /// The leader's id, as this replica knows it.
    pub fn leader(&self) -> Option<ReplicaId> {
        self.raft.metrics().borrow().current_leader
    }

    /// True while this replica leads the group.
    pub fn is_leader(&self) -> bool {
        self.leader() == Some(self.group.me)
    }

    /// True while this replica leads and has taken office ([`Service::take_office`]).
    pub fn in_office(&self) -> bool {
        self.in_office.load(std::sync::atomic::Ordering::Acquire) && self.is_leader()
    }

    /// Called when this replica starts or stops leading: a new leader gives every node a
    /// liveness grace period (their beats went elsewhere until now) before it judges
    /// liveness, and drives a running change; a follower drives nothing.
    pub fn take_office(self: &Arc<Self>, leading: bool) {
        if leading {
            self.grace_all();
        }
        self.in_office
            .store(leading, std::sync::atomic::Ordering::Release);
        self.lead_or_follow();
    }

    /// The leader's base URL, waiting up to [`LEADER_WAIT`] for the group to have one.
    pub async fn leader_url(&self) -> Option<(ReplicaId, String)> {
        let mut m = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            let leader = m.borrow().current_leader;
            if let Some(id) = leader
                && let Some(url) = self.group.replicas.get(&id)
            {
                return Some((id, url.clone()));
            }
            if tokio::time::timeout_at(deadline, m.changed()).await.is_err() {
                return None;
            }
        }
    }

    /// Applies `f` to a copy of the applied state; if `f` succeeds and changed anything,
    /// proposes the copy (version + 1) to the group and returns once it is committed and
    /// applied here, then starts or stops the handoff worker as the new state asks. If `f`
    /// fails, nothing changes. Only the leader proposes; elsewhere this is refused with
    /// `503 ring_unavailable` (requests are forwarded to the leader before they get here).
    ///
    /// Runs in a tracked task, so a caller that hangs up cannot interrupt a proposal.
    ///
    /// # Errors
    /// What `f` returned; `ring_unavailable` when this replica does not lead or the group
    /// could not commit; `internal` for a breached invariant.
    pub async fn mutate<T, F>(self: &Arc<Self>, f: F) -> Result<T, ApiError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Cluster) -> Result<T, ClusterError> + Send + 'static,
    {
        let me = self.clone();
        let task = self.tasks.spawn(async move {
            let _turn = me.propose.lock().await;
            // Every entry committed before this replica's leadership is applied here first,
            // so the draft is computed from the latest state.
            if let Err(e) = me.raft.ensure_linearizable().await {
                return Err(not_leader(&e.to_string()));
            }
            let current = me.snapshot();
            let mut draft = (*current).clone();
            let out = f(&mut draft)?;
            // Followers see the change as the state carries it; it is derived here, once
            // per commit, so no method can forget it.
            draft.state.change = draft.change.as_ref().map(PendingChange::summary);
            if draft != *current {
                me.commit(&current, draft).await?;
                me.steer_worker(&me.snapshot());
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

    /// Steers the handoff worker after a change of leadership: the leader drives a
    /// running change (resumed from the applied plan), a follower drives none.
    pub fn lead_or_follow(self: &Arc<Self>) {
        if self.is_leader() {
            self.steer_worker(&self.snapshot());
        } else {
            let mut worker = self.worker.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((_, stop)) = worker.take() {
                stop.cancel();
            }
        }
    }

    async fn commit(&self, current: &Cluster, mut next: Cluster) -> Result<(), ApiError> {
        next.state.version = current.state.version + 1;
        if let Some(inv) = sm::breach(current, &next) {
            self.metrics.invariant_violations.record(inv);
            tracing::error!(
                invariant = inv,
                from = current.epoch().0,
                to = next.epoch().0,
                "refusing a state change that breaks an invariant"
            );
            debug_assert!(false, "invariant {inv} breached");
            return Err(ApiError::new(
                ErrorCode::Internal,
                format!("invariant {inv} breached"),
            ));
        }
        let proposal = Proposal {
            base: current.state.version,
            file: StateFile::of(&next),
        };
        match self.raft.client_write(proposal).await {
            Ok(r) if r.data.applied => Ok(()),
            // Another proposal was applied in between (one of a deposed leader): nothing
            // of this one changed; the caller may retry on the new state.
            Ok(_) => Err(not_leader("the state changed under this proposal; retry")),
            Err(e) => {
                tracing::warn!(error = %e, "the ring group did not commit a change");
                Err(not_leader(&e.to_string()))
            }
        }
    }

    /// Gives every node not known to be down a liveness grace period from now: a new
    /// leader has seen no heartbeat yet, and must not mark the cluster down before its
    /// nodes had a chance to beat (their beats now come to it).
    pub fn grace_all(&self) {
        let now = Instant::now();
        let snap = self.snapshot();
        let mut l = self.liveness.lock();
        for n in snap.state.nodes.iter().filter(|n| n.state != NodeState::Down) {
            l.grace(&n.node_id, now);
        }
    }
}

/// `503 ring_unavailable`: this replica cannot change the state now.
fn not_leader(why: &str) -> ApiError {
    ApiError::new(
        ErrorCode::RingUnavailable,
        format!("the ring group cannot commit a change now ({why}); retry shortly"),
    )
}
