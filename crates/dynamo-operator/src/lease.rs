//! Leader election on a `coordination.k8s.io/v1` Lease, so two operator replicas never
//! both act: only the holder reconciles; the others wait, and take over once the
//! holder has not renewed for the lease's duration.
//!
//! [`decide`] is the pure rule (who may write the Lease, given what it holds and the
//! time); [`try_acquire`] does one round against the API, with the Lease's
//! `resourceVersion` as the guard, so of two replicas racing for an expired Lease one
//! write succeeds and the other gets `409 Conflict` and stays a follower.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::Api;
use kube::api::PostParams;
use tokio_util::sync::CancellationToken;

/// Whether this replica holds the Lease; shared by the election loop and reconcile.
#[derive(Clone, Debug, Default)]
pub struct Leadership(Arc<AtomicBool>);

impl Leadership {
    /// Returns true while this replica holds the Lease.
    pub fn is_leader(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Sets it (the election loop; tests).
    pub fn set(&self, leader: bool) {
        self.0.store(leader, Ordering::SeqCst);
    }
}

/// The election's settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// The Lease's name.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease not renewed stays its holder's.
    pub duration: Duration,
    /// How often the holder renews (and a follower looks again).
    pub renew_every: Duration,
}

/// What one round does with the Lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No Lease: create it, held by us.
    Create,
    /// Ours: renew it.
    Renew,
    /// Free or expired: take it over.
    TakeOver,
    /// Someone else's, still valid: stay a follower.
    Follow,
}

/// Decides what to do with `lease` (absent: none exists) at `now`. Pure.
pub fn decide(lease: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = lease else {
        return Decision::Create;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == identity => Decision::Renew,
        None | Some("") => Decision::TakeOver,
        Some(_) => {
            let seconds = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let renewed = spec
                .renew_time
                .as_ref()
                .or(spec.acquire_time.as_ref())
                .map(|t| t.0);
            match renewed {
                Some(t) if t + SignedDuration::from_secs(seconds) > now => Decision::Follow,
                _ => Decision::TakeOver,
            }
        }
    }
}

/// One election round: reads the Lease, and creates, renews or takes it over as
/// [`decide`] says. Returns whether this replica holds it afterwards.
///
/// # Errors
/// A Kubernetes API error other than the `409 Conflict` of a lost race (which is
/// `Ok(false)`).
pub async fn try_acquire(api: &Api<Lease>, cfg: &LeaseConfig, now: Timestamp) -> Result<bool, kube::Error> {
    let current = api.get_opt(&cfg.name).await?;
    let decision = decide(current.as_ref().and_then(|l| l.spec.as_ref()), &cfg.identity, now);
    let seconds = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX);
    let result = match (decision, current) {
        (Decision::Follow, _) => return Ok(false),
        (Decision::Create, _) | (_, None) => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await.map(|_| ())
        }
        (decision, Some(mut lease)) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if decision == Decision::TakeOver {
                spec.holder_identity = Some(cfg.identity.clone());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(seconds);
            spec.renew_time = Some(MicroTime(now));
            // `replace` carries the resourceVersion read above: a concurrent writer
            // makes it fail with 409 instead of both believing they hold it.
            api.replace(&cfg.name, &PostParams::default(), &lease)
                .await
                .map(|_| ())
        }
    };
    match result {
        Ok(()) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Runs the election until `shutdown`: a round every `renew_every`, `leadership` set
/// from its outcome. A replica that cannot renew for the lease's duration stops
/// counting itself leader (another may have taken over meanwhile).
///
/// Cancel-safe: stopping it between rounds loses nothing.
pub async fn run(api: Api<Lease>, cfg: LeaseConfig, leadership: Leadership, shutdown: CancellationToken) {
    let mut last_held: Option<tokio::time::Instant> = None;
    loop {
        match try_acquire(&api, &cfg, Timestamp::now()).await {
            Ok(true) => {
                if !leadership.is_leader() {
                    tracing::info!(identity = %cfg.identity, lease = %cfg.name, "became the leader");
                }
                last_held = Some(tokio::time::Instant::now());
                leadership.set(true);
            }
            Ok(false) => {
                if leadership.is_leader() {
                    tracing::warn!(identity = %cfg.identity, "lost the leader lease");
                }
                leadership.set(false);
            }
            Err(e) => {
                tracing::warn!(error = %e, "leader lease round failed");
                // Keep acting only while the lease we last renewed is surely still ours;
                // a margin of one renew interval covers clock skew and this round.
                let safe = cfg.duration.saturating_sub(cfg.renew_every);
                if last_held.is_none_or(|t| t.elapsed() >= safe) {
                    leadership.set(false);
                }
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(cfg.renew_every) => {}
        }
    }
    leadership.set(false);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: Option<&str>, renewed_secs_ago: i64, duration: i32, now: Timestamp) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(duration),
            renew_time: Some(MicroTime(now - SignedDuration::from_secs(renewed_secs_ago))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn the_lease_goes_to_whoever_finds_it_free_or_expired() {
        let now = Timestamp::from_second(1_800_000_000).expect("time");
        assert_eq!(decide(None, "a", now), Decision::Create);
        assert_eq!(
            decide(Some(&spec(Some("a"), 1, 15, now)), "a", now),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 1, 15, now)), "a", now),
            Decision::Follow
        );
        assert_eq!(
            decide(Some(&spec(Some("b"), 16, 15, now)), "a", now),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&spec(None, 1, 15, now)), "a", now),
            Decision::TakeOver
        );
        // A holder that never renewed and never acquired: treated as expired.
        let bare = LeaseSpec {
            holder_identity: Some("b".into()),
            ..LeaseSpec::default()
        };
        assert_eq!(decide(Some(&bare), "a", now), Decision::TakeOver);
    }
}
