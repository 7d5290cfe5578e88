//! The handoff worker: drives one membership change through its plan.
//!
//! 1. **Copy:** every handoff of the plan (a partition into a new holder, from one of its
//!    current holders: each receiver copies from every holder, the leaver included) is a
//!    pull request to the receiving storage node (`POST {to}/internal/v1/partitions/{p}/pull`
//!    with `{"source": from}`), at most `--handoff-concurrency` at once, each with
//!    `--handoff-timeout-ms` and up to `--handoff-max-attempts` attempts with exponential
//!    backoff. A source that the receiver cannot reach and that liveness calls down is
//!    skipped, as long as another source of the same partition copied into the same
//!    receiver: a write acknowledged by W ≥ 2 replicas reaches it through that one.
//!    Progress (and, while a pull retries, its last error) is committed to the state at
//!    most every [`PROGRESS_FLUSH`].
//! 2. **Publish:** the new ring (epoch + 1) is committed; long-pollers see it. From then
//!    on, storage nodes refuse operations planned with the old ring on partitions they
//!    no longer hold (fencing).
//! 3. **Catch-up:** the same pulls once more, each only once its source knows the new
//!    ring and has finished what it admitted under the old one (`min_epoch`), so no
//!    write can reach an old holder behind the copy.
//! 4. **Finish:** the leaver leaves, the newcomer is `up`/`down` by liveness, and the old
//!    holders are told to let their partitions go (the state's releases; each node
//!    deletes its copy and acknowledges).
//!
//! A pull that exhausts its attempts marks the change failed; it then waits for
//! `POST /internal/v1/change/retry` (done handoffs are not repeated) or, before the
//! publish, `POST /internal/v1/change/abort`. The plan is persisted, so after a restart
//! the worker resumes where the last committed progress left it.

use std::sync::Arc;
use std::time::Duration;

use dynamo_core::backoff::Backoff;
use dynamo_core::wire::cluster::{Handoff, NodeState};
use dynamo_core::wire::internal::{PullProgress, PullRequest};
use dynamo_core::wire::routes;
use dynamo_core::{ErrorBody, ErrorCode, NodeId, RingEpoch};
use dynamo_server::metrics::invariant;
use dynamo_server::worker::{Next, Worker};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::plan::{ChangePhase, ChangeStatus};
use crate::service::Service;

/// How often pull progress is committed to the state (each commit is an fsync and wakes
/// every long-poller, so per-pull commits would be wasteful).
pub const PROGRESS_FLUSH: Duration = Duration::from_millis(500);
/// First retry delay of a failed pull; doubles per attempt.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Most continuation requests for one pull that the receiver answers with `done: false`
/// (it stopped early, e.g. shutting down) before that counts as a failed attempt.
pub const MAX_CONTINUATIONS: u32 = 1000;

enum PullError {
    /// The receiver could not reach the source: try another holder.
    SourceUnavailable(String),
    /// Anything else (the receiver is away, refused, answered garbage).
    Other(String),
}

enum RoundEnd {
    Done,
    Stopped,
    Failed(String),
}

struct PullOutcome {
    failed_attempts: u64,
    error: Option<String>,
}

/// The `handoff` worker of change `id`: one round of pulls and the step after it per
/// unit of work, until the change completes, fails or is superseded (or its stop token,
/// cancelled when the change is, fires).
pub(crate) struct HandoffDriver {
    /// The service.
    pub svc: Arc<Service>,
    /// The change it drives.
    pub id: u64,
}

impl Worker for HandoffDriver {
    type Error = std::convert::Infallible;

    fn name(&self) -> &'static str {
        "handoff"
    }

    async fn work(&mut self, stop: &CancellationToken) -> Result<Next, Self::Error> {
        let id = self.id;
        let snap = self.svc.snapshot();
        let Some(change) = snap
            .change
            .clone()
            .filter(|c| c.id == id && c.status == ChangeStatus::Running)
        else {
            return Ok(Next::Done);
        };
        let todo: Vec<Handoff> = snap.state.handoffs.iter().filter(|h| !h.done).cloned().collect();
        tracing::info!(
            change = id,
            kind = change.kind.name(),
            phase = ?change.phase,
            pending = todo.len(),
            "handoff round starting"
        );
        let mut failed_attempts = change.failed_attempts;
        match round(&self.svc, id, change.phase, todo, &mut failed_attempts, stop).await {
            RoundEnd::Stopped => return Ok(Next::Done),
            RoundEnd::Failed(reason) => {
                tracing::warn!(change = id, reason = %reason, "membership change failed; retry or abort it");
                let r = self
                    .svc
                    .mutate(move |c| {
                        c.fail(id, reason, failed_attempts);
                        Ok(())
                    })
                    .await;
                if let Err(e) = r {
                    tracing::error!(error = %e, "cannot record the failed change");
                }
                return Ok(Next::Done);
            }
            RoundEnd::Done => {}
        }
        let settings = self.svc.settings;
        let step = match change.phase {
            ChangePhase::Copy => {
                self.svc
                    .mutate(move |c| c.publish(id, settings).map(|_| ()))
                    .await
            }
            ChangePhase::CatchUp => {
                let liveness = self.svc.liveness.clone();
                self.svc
                    .mutate(move |c| c.finish(id, &|n| liveness.is_live_now(n)))
                    .await
            }
        };
        match step {
            Ok(()) if change.phase == ChangePhase::CatchUp => {
                tracing::info!(
                    change = id,
                    kind = change.kind.name(),
                    "membership change complete"
                );
                return Ok(Next::Done);
            }
            Ok(()) => {}
            Err(e) if e.code == ErrorCode::Internal => {
                self.svc
                    .metrics
                    .invariant_violations
                    .record(invariant::PLAN_MATCHES_PUBLISHED_RING);
                let reason = e.message.clone();
                let _ = self
                    .svc
                    .mutate(move |c| {
                        c.fail(id, reason, failed_attempts);
                        Ok(())
                    })
                    .await;
                return Ok(Next::Done);
            }
            // Superseded (aborted meanwhile) or not persisted: a restart or retry resumes.
            Err(e) => {
                tracing::warn!(change = id, error = %e, "handoff step not taken");
                return Ok(Next::Done);
            }
        }
        Ok(Next::Busy)
    }

    async fn wait_for_work(&mut self) {}
}

/// Runs one round of pulls; commits progress as it goes.
async fn round(
    svc: &Arc<Service>,
    id: u64,
    phase: ChangePhase,
    todo: Vec<Handoff>,
    failed_attempts: &mut u64,
    stop: &CancellationToken,
) -> RoundEnd {
    let permits = Arc::new(Semaphore::new(svc.config.handoff_concurrency));
    // Pulls report here as they go (a retry's error included), so the state shows why a
    // change is stuck while it is.
    let reports: Reports = Arc::default();
    // The set owns the pull tasks: dropping it (on stop) aborts them.
    let mut pulls = JoinSet::new();
    for h in todo {
        let (svc, permits, stop, reports) = (svc.clone(), permits.clone(), stop.clone(), reports.clone());
        pulls.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return None;
            };
            Some(pull(&svc, phase, h, &reports, &stop).await)
        });
    }
    let mut failure: Option<String> = None;
    let mut flush = tokio::time::interval(PROGRESS_FLUSH);
    loop {
        tokio::select! {
            () = stop.cancelled() => return RoundEnd::Stopped,
            _ = flush.tick() => {
                let updates = take_reports(&reports);
                if flush_progress(svc, id, phase, updates, *failed_attempts).await.is_err() {
                    return RoundEnd::Stopped;
                }
            }
            next = pulls.join_next() => match next {
                None => break,
                Some(Ok(Some(o))) => {
                    *failed_attempts += o.failed_attempts;
                    if let Some(e) = o.error {
                        failure.get_or_insert(e);
                    }
                }
                Some(Ok(None)) => return RoundEnd::Stopped,
                Some(Err(e)) => {
                    failure.get_or_insert(format!("a pull task failed: {e}"));
                }
            }
        }
    }
    if stop.is_cancelled() {
        return RoundEnd::Stopped;
    }
    if flush_progress(svc, id, phase, take_reports(&reports), *failed_attempts)
        .await
        .is_err()
    {
        return RoundEnd::Stopped;
    }
    if failure.is_none() {
        failure = uncovered(svc, id, phase, *failed_attempts).await;
    }
    match failure {
        Some(reason) => RoundEnd::Failed(reason),
        None => RoundEnd::Done,
    }
}

/// Handoff states reported by running pulls, latest per handoff, not yet committed.
type Reports = Arc<std::sync::Mutex<Vec<Handoff>>>;

fn report(reports: &Reports, h: &Handoff) {
    let mut r = reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    match r
        .iter_mut()
        .find(|x| x.partition == h.partition && x.to == h.to && x.from == h.from)
    {
        Some(x) => *x = h.clone(),
        None => r.push(h.clone()),
    }
}

fn take_reports(reports: &Reports) -> Vec<Handoff> {
    std::mem::take(&mut *reports.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// After a round in which every pull ended: a partition copied into a receiver only
/// from skipped sources has no copy at all. Those handoffs go back to pending (a retry
/// pulls them again) and the change fails with the reason.
async fn uncovered(svc: &Arc<Service>, id: u64, phase: ChangePhase, failed_attempts: u64) -> Option<String> {
    let snap = svc.snapshot();
    let mut covered: std::collections::BTreeMap<(u32, &NodeId), bool> = std::collections::BTreeMap::new();
    for h in &snap.state.handoffs {
        *covered.entry((h.partition.0, &h.to)).or_default() |= h.done && !h.skipped;
    }
    let (p, to) = covered.iter().find(|(_, ok)| !**ok).map(|(k, _)| *k)?;
    let reason = format!("no holder of partition {p} could be reached to copy it into {to}");
    let reset: Vec<Handoff> = snap
        .state
        .handoffs
        .iter()
        .filter(|h| h.skipped)
        .map(|h| Handoff::new(h.partition, h.from.clone(), h.to.clone()))
        .collect();
    let _ = flush_progress(svc, id, phase, reset, failed_attempts).await;
    Some(reason)
}

async fn flush_progress(
    svc: &Arc<Service>,
    id: u64,
    phase: ChangePhase,
    updates: Vec<Handoff>,
    failed_attempts: u64,
) -> Result<(), ()> {
    if updates.is_empty() {
        return Ok(());
    }
    svc.mutate(move |c| c.record_progress(id, phase, &updates, failed_attempts))
        .await
        .map_err(|e| tracing::warn!(change = id, error = %e, "handoff progress not recorded"))
}

fn address_of(c: &Cluster, node: &NodeId) -> Option<String> {
    c.node(node).map(|n| n.address.clone())
}

/// Pulls one handoff to completion, until its attempts run out, or (a source that is
/// down) until it is skipped; reports its state on every step.
async fn pull(
    svc: &Arc<Service>,
    phase: ChangePhase,
    mut h: Handoff,
    reports: &Reports,
    stop: &CancellationToken,
) -> PullOutcome {
    let max_attempts = svc.config.handoff_max_attempts;
    // The catch-up copies only once the source fences the old ring (module docs).
    let min_epoch = match phase {
        ChangePhase::Copy => None,
        ChangePhase::CatchUp => svc.snapshot().change.as_ref().map(|c| c.planned_epoch),
    };
    let mut attempts = 0u32;
    let mut continuations = 0u32;
    let mut cursor: Option<String> = None;
    loop {
        let snap = svc.snapshot();
        let result = match (address_of(&snap, &h.to), address_of(&snap, &h.from)) {
            (Some(to), Some(from)) => pull_once(svc, &to, &h, &from, cursor.clone(), min_epoch).await,
            (Some(_), None) => Err(PullError::SourceUnavailable(format!(
                "source {} is no longer known",
                h.from
            ))),
            (None, _) => Err(PullError::Other(format!("receiver {} is no longer known", h.to))),
        };
        let (error, source_down) = match result {
            Ok(reply) => {
                h.objects += reply.objects;
                h.bytes += reply.bytes;
                h.error = None;
                if reply.done {
                    h.done = true;
                    report(reports, &h);
                    svc.metrics.pulls.with_label_values(&["ok"]).inc();
                    return PullOutcome {
                        failed_attempts: u64::from(attempts),
                        error: None,
                    };
                }
                report(reports, &h);
                continuations += 1;
                if reply.cursor.is_some() && reply.cursor != cursor && continuations < MAX_CONTINUATIONS {
                    cursor = reply.cursor;
                    continue;
                }
                ("the receiver stopped without progress".to_owned(), false)
            }
            Err(PullError::SourceUnavailable(msg)) => {
                let down = !svc.liveness.is_live_now(&h.from)
                    || snap.node(&h.from).is_none_or(|n| n.state == NodeState::Down);
                (msg, down)
            }
            Err(PullError::Other(msg)) => (msg, false),
        };
        attempts += 1;
        if source_down {
            // Every other holder is a source of the same copy; whether one of them covered
            // it is checked when the round ends.
            tracing::info!(partition = h.partition.0, from = %h.from, to = %h.to, "source is down; skipping it");
            h.done = true;
            h.skipped = true;
            h.error = Some(format!("skipped: {error}"));
            report(reports, &h);
            svc.metrics.pulls.with_label_values(&["skipped"]).inc();
            return PullOutcome {
                failed_attempts: u64::from(attempts),
                error: None,
            };
        }
        h.error = Some(error.clone());
        report(reports, &h);
        if attempts >= max_attempts {
            svc.metrics.pulls.with_label_values(&["failed"]).inc();
            return PullOutcome {
                error: Some(format!(
                    "pull of partition {} into {} from {} failed {attempts} times: {error}",
                    h.partition.0, h.to, h.from
                )),
                failed_attempts: u64::from(attempts),
            };
        }
        svc.metrics.pulls.with_label_values(&["retry"]).inc();
        tracing::debug!(partition = h.partition.0, to = %h.to, attempt = attempts, error = %error, "pull failed; retrying");
        let delay = BACKOFF.delay(attempts, rand::random());
        tokio::select! {
            () = stop.cancelled() => {
                return PullOutcome { failed_attempts: u64::from(attempts), error: None };
            }
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// The backoff of failed pulls: so pulls failing together do not retry in lockstep.
const BACKOFF: Backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);

async fn pull_once(
    svc: &Service,
    to: &str,
    h: &Handoff,
    from: &str,
    cursor: Option<String>,
    min_epoch: Option<RingEpoch>,
) -> Result<PullProgress, PullError> {
    let url = routes::url(to, &routes::storage::partition_pull(h.partition));
    let body = PullRequest {
        source: from.trim_end_matches('/').to_owned(),
        cursor,
        budget_ms: None,
        min_epoch,
    };
    let resp = svc
        .client
        .post(url)
        .timeout(svc.config.handoff_timeout())
        .header(
            dynamo_server::serve::REQUEST_ID_HEADER,
            format!("ring-handoff-p{}-{}", h.partition.0, h.to),
        )
        .json(&body)
        .send()
        .await
        .map_err(|e| PullError::Other(format!("receiver {} did not answer: {e}", h.to)))?;
    let status = resp.status();
    if status.is_success() {
        return resp
            .json::<PullProgress>()
            .await
            .map_err(|e| PullError::Other(format!("receiver {} answered an unreadable reply: {e}", h.to)));
    }
    match resp.json::<ErrorBody>().await {
        Ok(b) if b.error.code == ErrorCode::SourceUnavailable => Err(PullError::SourceUnavailable(format!(
            "receiver {} could not reach source {}: {}",
            h.to, h.from, b.error.message
        ))),
        Ok(b) => Err(PullError::Other(format!(
            "receiver {} answered {status} {}: {}",
            h.to, b.error.code, b.error.message
        ))),
        Err(_) => Err(PullError::Other(format!("receiver {} answered {status}", h.to))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_bodies_match_the_storage_api() {
        let body = PullRequest {
            source: "http://127.0.0.1:7100".into(),
            cursor: None,
            budget_ms: None,
            min_epoch: None,
        };
        assert_eq!(
            serde_json::to_string(&body).expect("serialize"),
            r#"{"source":"http://127.0.0.1:7100"}"#
        );
        let reply: PullProgress =
            serde_json::from_str(r#"{"objects":3,"pages":1,"cursor":null,"done":true}"#).expect("parse");
        assert!(reply.done && reply.objects == 3);
    }
}
