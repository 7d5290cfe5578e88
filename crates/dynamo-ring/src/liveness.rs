//! Liveness: who answered heartbeats lately. Tracked apart from membership (an outage is
//! not a departure, Dynamo §4.8): it only flips members between `up` and `down`, which
//! coordinators use to steer routing. The ring never changes because of it.
//!
//! Rule: a node is live when its last sign of life is within the heartbeat timeout. A
//! sign of life is a heartbeat, or a *grace start*: the moment it was registered, or the
//! moment this service started (for nodes not already `down`), so a restart of the ring
//! service or a fresh join does not mark nodes down before they had a chance to beat.
//! A `down` node comes back only through a real heartbeat.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dynamo_core::NodeId;
use dynamo_core::backoff::Backoff;
use dynamo_core::wire::cluster::NodeState;
use dynamo_server::ApiError;
use dynamo_server::worker::{Next, Worker};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::service::Service;

/// Last signs of life, per node.
#[derive(Debug)]
pub struct Liveness {
    timeout: Duration,
    heartbeats: HashMap<NodeId, Instant>,
    grace: HashMap<NodeId, Instant>,
}

impl Liveness {
    /// Returns an empty tracker with the heartbeat timeout.
    pub fn new(timeout: Duration) -> Liveness {
        Liveness {
            timeout,
            heartbeats: HashMap::new(),
            grace: HashMap::new(),
        }
    }

    /// Records a heartbeat.
    pub fn beat(&mut self, node: &NodeId, now: Instant) {
        self.heartbeats.insert(node.clone(), now);
    }

    /// Starts a grace period for a node that has not beaten yet.
    pub fn grace(&mut self, node: &NodeId, now: Instant) {
        self.grace.insert(node.clone(), now);
    }

    /// Returns true when the node's last sign of life is within the timeout.
    pub fn is_live(&self, node: &NodeId, now: Instant) -> bool {
        let last = self.heartbeats.get(node).max(self.grace.get(node));
        last.is_some_and(|t| now.saturating_duration_since(*t) <= self.timeout)
    }

    /// Returns the milliseconds since the node's last heartbeat, if it ever sent one.
    pub fn ms_ago(&self, node: &NodeId, now: Instant) -> Option<u64> {
        self.heartbeats
            .get(node)
            .map(|t| now.saturating_duration_since(*t).as_millis() as u64)
    }

    /// Forgets nodes that are not `known` and showed no sign of life within the timeout.
    /// (A node registered a moment ago may be missing from an older snapshot, so a
    /// recent entry is kept whatever `known` says.)
    pub fn prune(&mut self, known: impl Fn(&NodeId) -> bool, now: Instant) {
        let timeout = self.timeout;
        let keep = |n: &NodeId, t: &Instant| known(n) || now.saturating_duration_since(*t) <= timeout;
        self.heartbeats.retain(|n, t| keep(n, t));
        self.grace.retain(|n, t| keep(n, t));
    }
}

/// A shared [`Liveness`]; the lock is held only for map look-ups, never across `.await`.
#[derive(Debug, Clone)]
pub struct SharedLiveness(Arc<Mutex<Liveness>>);

impl SharedLiveness {
    /// Wraps a tracker.
    pub fn new(l: Liveness) -> SharedLiveness {
        SharedLiveness(Arc::new(Mutex::new(l)))
    }

    /// Locks the tracker. A poisoned lock is taken over: the maps hold plain instants,
    /// which a panic cannot leave half-updated.
    pub fn lock(&self) -> MutexGuard<'_, Liveness> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns a liveness predicate evaluated now (for [`crate::cluster::Cluster`]).
    pub fn is_live_now(&self, node: &NodeId) -> bool {
        self.lock().is_live(node, Instant::now())
    }
}

/// The `liveness` worker: re-evaluates liveness every quarter timeout (at least every
/// second) and commits the `up`/`down` transitions.
pub(crate) struct LivenessTicker {
    /// The service whose nodes it watches.
    pub svc: Arc<Service>,
}

impl LivenessTicker {
    fn period(&self) -> Duration {
        (self.svc.config.heartbeat_timeout() / 4).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

impl Worker for LivenessTicker {
    type Error = ApiError;

    fn name(&self) -> &'static str {
        "liveness"
    }

    async fn work(&mut self, _stop: &CancellationToken) -> Result<Next, ApiError> {
        let svc = &self.svc;
        // Heartbeats reach the leader (followers forward them): only it can judge, and
        // only once it gave every node its grace period.
        if !svc.in_office() {
            return Ok(Next::Idle);
        }
        let snap = svc.snapshot();
        let now = Instant::now();
        let due = {
            let mut l = svc.liveness.lock();
            l.prune(|n| snap.node(n).is_some(), now);
            snap.state.nodes.iter().any(|n| {
                matches!(n.state, NodeState::Up | NodeState::Down)
                    && (n.state == NodeState::Up) != l.is_live(&n.node_id, now)
            })
        };
        if due {
            let liveness = svc.liveness.clone();
            svc.mutate(move |c| {
                let changed = c.apply_liveness(&|n| liveness.is_live_now(n));
                for (node, state) in &changed {
                    tracing::info!(node = %node, state = ?state, "node liveness changed");
                }
                Ok(())
            })
            .await?;
        }
        Ok(Next::Idle)
    }

    async fn wait_for_work(&mut self) {
        tokio::time::sleep(self.period()).await;
    }

    fn retry(&self) -> Backoff {
        Backoff::new(self.period(), self.period().saturating_mul(4))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeats_and_grace_keep_a_node_live_for_the_timeout() {
        let start = Instant::now();
        let mut l = Liveness::new(Duration::from_millis(100));
        let a = NodeId::new("a").expect("id");
        assert!(!l.is_live(&a, start), "never heard of");
        l.grace(&a, start);
        assert!(l.is_live(&a, start + Duration::from_millis(100)));
        assert!(!l.is_live(&a, start + Duration::from_millis(101)));
        assert_eq!(l.ms_ago(&a, start), None, "grace is not a heartbeat");
        l.beat(&a, start + Duration::from_millis(150));
        assert!(l.is_live(&a, start + Duration::from_millis(200)));
        assert_eq!(l.ms_ago(&a, start + Duration::from_millis(200)), Some(50));
        let later = start + Duration::from_millis(200);
        l.prune(|_| false, later);
        assert!(l.is_live(&a, later), "a recent entry survives pruning");
        let much_later = start + Duration::from_millis(400);
        l.prune(|_| false, much_later);
        l.prune(|_| true, much_later);
        assert_eq!(
            l.ms_ago(&a, much_later),
            None,
            "a stale unknown node is forgotten"
        );
    }
}
