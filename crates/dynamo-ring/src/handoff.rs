//! The handoff worker: drives one membership change through its plan.
//!
//! 1. **Copy:** every handoff of the plan is a pull request to the receiving storage node
//!    (`POST {to}/internal/v1/partitions/{p}/pull` with `{"source": from}`), at most
//!    `--handoff-concurrency` at once, each with `--handoff-timeout-ms` and up to
//!    `--handoff-max-attempts` attempts with exponential backoff. When the receiver says
//!    the *source* did not answer (`quorum_unavailable`), the next holder of the partition
//!    becomes the source. Progress is committed to the state at most every
//!    [`PROGRESS_FLUSH`].
//! 2. **Publish:** the new ring (epoch + 1) is committed; long-pollers see it.
//! 3. **Catch-up:** the same pulls once more, for writes that reached the old replicas
//!    while the copy ran (the pulls merge idempotently, so repeating is harmless).
//! 4. **Finish:** the leaver leaves, the newcomer is `up`/`down` by liveness.
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
use dynamo_core::{ErrorBody, ErrorCode, NodeId};
use dynamo_server::metrics::invariant;
use dynamo_server::worker::{Next, Worker};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::cluster::Cluster;
use crate::plan::{ChangePhase, ChangeStatus, sources};
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
    handoff: Handoff,
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
    // The set owns the pull tasks: dropping it (on stop) aborts them.
    let mut pulls = JoinSet::new();
    for h in todo {
        let (svc, permits, stop) = (svc.clone(), permits.clone(), stop.clone());
        pulls.spawn(async move {
            let Ok(_permit) = permits.acquire_owned().await else {
                return None;
            };
            Some(pull(&svc, phase, h, &stop).await)
        });
    }
    let mut updates: Vec<Handoff> = Vec::new();
    let mut failure: Option<String> = None;
    let mut flush = tokio::time::interval(PROGRESS_FLUSH);
    loop {
        tokio::select! {
            () = stop.cancelled() => return RoundEnd::Stopped,
            _ = flush.tick(), if !updates.is_empty() => {
                if flush_progress(svc, id, phase, std::mem::take(&mut updates), *failed_attempts).await.is_err() {
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
                    updates.push(o.handoff);
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
    if flush_progress(svc, id, phase, updates, *failed_attempts)
        .await
        .is_err()
    {
        return RoundEnd::Stopped;
    }
    match failure {
        Some(reason) => RoundEnd::Failed(reason),
        None => RoundEnd::Done,
    }
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

/// Pulls one handoff to completion or until its attempts run out.
async fn pull(
    svc: &Arc<Service>,
    phase: ChangePhase,
    mut h: Handoff,
    stop: &CancellationToken,
) -> PullOutcome {
    let max_attempts = svc.config.handoff_max_attempts;
    let mut attempts = 0u32;
    let mut continuations = 0u32;
    let mut cursor: Option<String> = None;
    loop {
        let snap = svc.snapshot();
        let result = match (address_of(&snap, &h.to), address_of(&snap, &h.from)) {
            (Some(to), Some(from)) => pull_once(svc, &to, &h, &from, cursor.clone()).await,
            _ => Err(PullError::Other(format!(
                "{} or {} is no longer known",
                h.to, h.from
            ))),
        };
        let error = match result {
            Ok(reply) => {
                h.objects += reply.objects;
                if reply.done {
                    h.done = true;
                    svc.metrics.pulls.with_label_values(&["ok"]).inc();
                    return PullOutcome {
                        handoff: h,
                        failed_attempts: u64::from(attempts),
                        error: None,
                    };
                }
                continuations += 1;
                if reply.cursor.is_some() && reply.cursor != cursor && continuations < MAX_CONTINUATIONS {
                    cursor = reply.cursor;
                    continue;
                }
                "the receiver stopped without progress".to_owned()
            }
            Err(PullError::SourceUnavailable(msg)) => {
                // Only the copy phase still has the old ring, whose holders are the
                // alternatives; in catch-up the source stays.
                if phase == ChangePhase::Copy
                    && let Some(next) = next_source(&snap, &h, usize::from(svc.settings.n))
                {
                    tracing::info!(partition = h.partition.0, from = %h.from, to = %next, "switching handoff source");
                    h.from = next;
                    cursor = None;
                }
                msg
            }
            Err(PullError::Other(msg)) => msg,
        };
        attempts += 1;
        if attempts >= max_attempts {
            svc.metrics.pulls.with_label_values(&["failed"]).inc();
            return PullOutcome {
                error: Some(format!(
                    "pull of partition {} into {} from {} failed {attempts} times: {error}",
                    h.partition.0, h.to, h.from
                )),
                handoff: h,
                failed_attempts: u64::from(attempts),
            };
        }
        svc.metrics.pulls.with_label_values(&["retry"]).inc();
        tracing::debug!(partition = h.partition.0, to = %h.to, attempt = attempts, error = %error, "pull failed; retrying");
        let delay = BACKOFF.delay(attempts, rand::random());
        tokio::select! {
            () = stop.cancelled() => {
                return PullOutcome { handoff: h, failed_attempts: u64::from(attempts), error: None };
            }
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// Returns the holder after the current source in the order a receiver should try them
/// (available holders of the current ring first), wrapping around.
fn next_source(c: &Cluster, h: &Handoff, n: usize) -> Option<NodeId> {
    let ring = c.state.ring.as_ref()?;
    let holders = ring.preference_list(h.partition, n).preference_list;
    let unavailable = c
        .state
        .nodes
        .iter()
        .filter(|n| matches!(n.state, NodeState::Down | NodeState::Leaving))
        .map(|n| n.node_id.clone())
        .collect();
    let order = sources(&holders, &h.to, &unavailable);
    let at = order.iter().position(|n| *n == h.from)?;
    order
        .get((at + 1) % order.len())
        .filter(|n| **n != h.from)
        .cloned()
}

/// The backoff of failed pulls: so pulls failing together do not retry in lockstep.
const BACKOFF: Backoff = Backoff::new(BACKOFF_BASE, BACKOFF_MAX);

async fn pull_once(
    svc: &Service,
    to: &str,
    h: &Handoff,
    from: &str,
    cursor: Option<String>,
) -> Result<PullProgress, PullError> {
    let url = routes::url(to, &routes::storage::partition_pull(h.partition));
    let body = PullRequest {
        source: from.trim_end_matches('/').to_owned(),
        cursor,
        budget_ms: None,
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
