//! Growing the group to the configured replica list: the `raft-grow` worker.
//!
//! The group's voters are in its log, fixed when it was initialized; `--replicas` may
//! later name more (a chart upgrade from 1 to 3 ring pods, or 3 to 5). The leader adds
//! each new replica as a learner, waits until its log caught up with the leader's, and
//! only then makes it a voter (openraft's joint consensus): a voter that is down or far
//! behind would otherwise count toward majorities it cannot answer, and every commit
//! would wait for it.
//!
//! The group never shrinks here. A list without a current voter is a mistake more often
//! than a wish (a typo would remove a replica holding the log), so it is refused with a
//! warning and the group keeps its voters.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::BasicNode;
use tokio_util::sync::CancellationToken;

use super::{ReplicaId, progress};
use crate::service::Service;

/// How often a growth waiting for a learner to catch up looks again.
const RETRY: Duration = Duration::from_secs(1);

/// What the leader has to do to reach the configured voters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The voters are the configured replicas: nothing.
    Done,
    /// A current voter is not configured: the group does not shrink.
    Refused(BTreeSet<ReplicaId>),
    /// Add these configured replicas as learners.
    AddLearners(BTreeSet<ReplicaId>),
    /// Wait for these learners to catch up.
    CatchUp(BTreeSet<ReplicaId>),
    /// Make the configured replicas the voters.
    Promote(BTreeSet<ReplicaId>),
}

/// The next step from `voters` (every voter, both halves of a joint configuration),
/// `joint` (a configuration change is half done), `learners`, the `wanted` replicas and
/// which learners `caught_up` (hold the entry of the configuration that added them).
pub fn step(
    voters: &BTreeSet<ReplicaId>,
    joint: bool,
    learners: &BTreeSet<ReplicaId>,
    wanted: &BTreeSet<ReplicaId>,
    caught_up: impl Fn(ReplicaId) -> bool,
) -> Step {
    let extra: BTreeSet<_> = voters.difference(wanted).copied().collect();
    if !extra.is_empty() {
        return Step::Refused(extra);
    }
    if voters == wanted && !joint {
        return Step::Done;
    }
    let missing: BTreeSet<_> = wanted
        .difference(voters)
        .filter(|id| !learners.contains(id))
        .copied()
        .collect();
    if !missing.is_empty() {
        return Step::AddLearners(missing);
    }
    let behind: BTreeSet<_> = wanted
        .difference(voters)
        .filter(|id| !caught_up(**id))
        .copied()
        .collect();
    if !behind.is_empty() {
        return Step::CatchUp(behind);
    }
    Step::Promote(wanted.clone())
}

/// The `raft-grow` worker (module doc).
pub(crate) struct Grow {
    svc: Arc<Service>,
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<ReplicaId, BasicNode>>,
    /// The refusal already logged, so it is said once per leadership, not per metric.
    refused: Option<BTreeSet<ReplicaId>>,
}

impl Grow {
    /// The worker for `svc`.
    pub fn new(svc: Arc<Service>) -> Grow {
        Grow {
            metrics: svc.raft.metrics(),
            svc,
            refused: None,
        }
    }
}

impl dynamo_server::worker::Worker for Grow {
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "raft-grow"
    }

    async fn work(&mut self, stop: &CancellationToken) -> Result<dynamo_server::worker::Next, Self::Error> {
        use dynamo_server::worker::Next;
        let m = self.metrics.borrow_and_update().clone();
        let me = self.svc.group.me;
        if m.current_leader != Some(me) {
            self.refused = None;
            return Ok(Next::Idle);
        }
        let membership = m.membership_config.membership();
        let voters: BTreeSet<_> = membership.voter_ids().collect();
        let learners: BTreeSet<_> = membership.learner_ids().collect();
        let joint = membership.get_joint_config().len() > 1;
        let wanted: BTreeSet<_> = self.svc.group.replicas.keys().copied().collect();
        // As openraft's own blocking `add_learner`: a learner is caught up once it holds
        // the entry that added it (and so every state before it).
        let added_at = m.membership_config.log_id().map(|l| l.index);
        let caught_up = |id| matches!((progress(&m, me, id).0, added_at), (Some(h), Some(a)) if h >= a);
        let raft = &self.svc.raft;
        match step(&voters, joint, &learners, &wanted, caught_up) {
            Step::Done => Ok(Next::Idle),
            Step::Refused(extra) => {
                if self.refused.as_ref() != Some(&extra) {
                    tracing::warn!(
                        ?extra,
                        "--replicas leaves out voters of the ring group; the group never shrinks, so it keeps them"
                    );
                    self.refused = Some(extra);
                }
                Ok(Next::Idle)
            }
            Step::AddLearners(ids) => {
                for id in ids {
                    let Some(url) = self.svc.group.replicas.get(&id) else {
                        continue;
                    };
                    let node = BasicNode { addr: url.clone() };
                    tracing::info!(replica = id, url = %url, "adding a replica to the ring group as a learner");
                    let added = tokio::select! {
                        () = stop.cancelled() => return Ok(Next::Done),
                        r = raft.add_learner(id, node, false) => r,
                    };
                    if let Err(e) = added {
                        tracing::warn!(replica = id, error = %e, "cannot add the learner yet");
                        return Ok(Next::Throttled(RETRY));
                    }
                }
                Ok(Next::Busy)
            }
            // Replication progress shows in the metrics, which wake this worker; the
            // pause bounds how often a learner far behind is looked at.
            Step::CatchUp(_) => Ok(Next::Throttled(RETRY)),
            Step::Promote(ids) => {
                tracing::info!(voters = ?ids, "the new replicas caught up: making them voters");
                let changed = tokio::select! {
                    () = stop.cancelled() => return Ok(Next::Done),
                    r = raft.change_membership(ids, false) => r,
                };
                match changed {
                    Ok(_) => {
                        tracing::info!("the ring group grew");
                        Ok(Next::Idle)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "the ring group could not grow yet");
                        Ok(Next::Throttled(RETRY))
                    }
                }
            }
        }
    }

    async fn wait_for_work(&mut self) {
        if self.metrics.changed().await.is_err() {
            // The consensus stopped: nothing more will change.
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[ReplicaId]) -> BTreeSet<ReplicaId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_group_grows_through_learners_that_caught_up_and_never_shrinks() {
        let wanted = set(&[0, 1, 2]);
        let none = set(&[]);
        assert_eq!(step(&wanted, false, &none, &wanted, |_| false), Step::Done);
        assert_eq!(
            step(&set(&[0]), false, &none, &wanted, |_| true),
            Step::AddLearners(set(&[1, 2]))
        );
        assert_eq!(
            step(&set(&[0]), false, &set(&[1]), &wanted, |_| true),
            Step::AddLearners(set(&[2])),
            "only the learner not yet added"
        );
        assert_eq!(
            step(&set(&[0]), false, &set(&[1, 2]), &wanted, |id| id == 1),
            Step::CatchUp(set(&[2])),
            "no promotion while one new replica is behind"
        );
        assert_eq!(
            step(&set(&[0]), false, &set(&[1, 2]), &wanted, |_| true),
            Step::Promote(wanted.clone())
        );
        // A leader elected in the middle of the joint change finishes it.
        assert_eq!(
            step(&wanted, true, &none, &wanted, |_| true),
            Step::Promote(wanted.clone())
        );
        assert_eq!(
            step(&set(&[0, 1, 2]), false, &none, &set(&[0, 1]), |_| true),
            Step::Refused(set(&[2])),
            "a list without a voter does not remove it"
        );
    }
}
