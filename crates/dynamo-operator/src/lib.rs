//! `dynamo-operator`: the kube-rs controller of the `DynamoCluster` custom resource.
//!
//! It owns, for each `DynamoCluster` in its namespace, the ring-service StatefulSet, the
//! storage StatefulSet(s), the coordinator Deployment, their Services and
//! PodDisruptionBudgets (server-side applied, with owner references), and it changes
//! the cluster's membership through the coordinators' public API (the Rust SDK, with the
//! root token from the cluster's Secret): it joins a new storage pod once it is ready,
//! and decommissions a node, waiting for its handoff to be confirmed, before its pod
//! goes. It rolls a changed storage pod template out one pod at a time, each back in
//! the ring and caught up before the next (a partitioned StatefulSet update).
//!
//! # Layout
//! - [`crd`]: the custom resource's spec and status; the CRD YAML (`dynamo-operator crd`).
//! - [`plan`]: **start here.** The pure decision: observed state → replica counts,
//!   rolling-update partitions and at most one membership change. Every safety rule of
//!   scaling and updating lives there.
//! - [`resources`]: the owned objects as apply bodies, mirroring the Helm chart (pure).
//! - [`reconcile`]: the thin kube plumbing: observe, [`plan::plan`], apply, begin the
//!   change, write the status and Events; finalizer and backoff.
//! - [`lease`]: leader election on a `coordination.k8s.io/v1` Lease.
//! - [`metrics`], [`config`], [`error`].
//!
//! # Invariants
//! - **Decommission before shrink.** A storage StatefulSet never shrinks below a pod the
//!   cluster view still lists, so a node's partitions are handed off and confirmed
//!   before its pod goes; volumes of removed pods are kept unless the spec opts in.
//! - **No view, no unsafe step.** When the coordinators or the ring service fail,
//!   nothing shrinks, no membership change begins and no storage pod is updated.
//! - **One storage pod down for an update at a time**, released only when the one
//!   before it is ready, up in the ring and caught up.
//! - **One actor.** Only the replica holding the Lease reconciles; one that loses it
//!   stops its controller and exits.
//! - **One change at a time**, each followed to its end (as `dynamo cluster bootstrap`).
//!
//! # It is not
//! - a data path: it never reads or writes keys;
//! - a member: it holds no member or control key, only the root token, and talks only
//!   to the public API;
//! - yet: a `replace` of a pod whose volume was lost (a storage node with an empty
//!   volume rejoins under its old id today, and nothing in the cluster view tells the
//!   operator so), or a cluster-wide operator (it watches its own namespace).

pub mod config;
pub mod crd;
pub mod error;
pub mod lease;
pub mod metrics;
pub mod plan;
pub mod reconcile;
pub mod resources;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
use crd::DynamoCluster;
use lease::Leadership;
use reconcile::Context;

/// How often a follower looks whether it became the leader, and a leader whether it
/// still is.
const LEADERSHIP_POLL: Duration = Duration::from_millis(500);

/// Why the operator stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// No Kubernetes client (no in-cluster config, no kubeconfig).
    #[error("no kubernetes client")]
    Client(#[source] kube::Error),
    /// Metrics could not be registered.
    #[error("metrics registration failed")]
    Metrics(#[from] prometheus::Error),
    /// The health and metrics listener failed.
    #[error("health listener failed")]
    Listener(#[from] std::io::Error),
    /// Another replica took the Lease over: this one stops (and is restarted as a
    /// follower) rather than risk acting beside the new leader.
    #[error("lost the leader lease")]
    LostLease,
}

/// Runs the operator until `shutdown`: health and metrics on `listener`, the leader
/// election, and, while leader, the controller of the namespace's `DynamoCluster`s.
///
/// # Errors
/// [`RunError`]: no Kubernetes client, the listener failing, or a lost Lease.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<(), RunError> {
    let client = kube::Client::try_default().await.map_err(RunError::Client)?;
    let registry = Arc::new(Registry::new());
    let metrics = metrics::Metrics::new(&registry)?;
    let readiness = dynamo_server::serve::Readiness::new();
    let app = dynamo_server::serve::health_routes(readiness.clone(), registry.clone());
    let tasks = TaskTracker::new();
    let http = tasks.spawn(dynamo_server::serve::serve(
        listener,
        app,
        shutdown.child_token(),
        readiness,
        config.serve.clone(),
    ));
    let leadership = Leadership::default();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.namespace);
    tasks.spawn(lease::run(
        leases,
        config.lease(),
        leadership.clone(),
        shutdown.child_token(),
    ));

    let outcome = lead(&config, client, metrics, leadership, &shutdown).await;
    shutdown.cancel();
    tasks.close();
    tasks.wait().await;
    outcome?;
    match http.await {
        Ok(served) => served.map_err(RunError::Listener),
        Err(e) => Err(RunError::Listener(std::io::Error::other(e))),
    }
}

/// Waits for the Lease, then runs the controller until shutdown or the Lease is lost.
async fn lead(
    config: &Config,
    client: kube::Client,
    metrics: metrics::Metrics,
    leadership: Leadership,
    shutdown: &CancellationToken,
) -> Result<(), RunError> {
    while !leadership.is_leader() {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = tokio::time::sleep(LEADERSHIP_POLL) => {}
        }
    }
    metrics.leader.set(1);
    tracing::info!(namespace = %config.namespace, "managing DynamoClusters");
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "dynamo-operator".into(),
            instance: Some(config.identity.clone()),
        },
    );
    let ctx = Arc::new(Context::new(
        client.clone(),
        recorder,
        metrics.clone(),
        leadership.clone(),
        config.settings(),
    ));
    let ns = &config.namespace;
    let owned = watcher::Config::default().labels("app.kubernetes.io/managed-by=dynamo-operator");
    let stop = shutdown.clone();
    let held = leadership.clone();
    let lost = CancellationToken::new();
    let lost_trigger = lost.clone();
    Controller::new(
        Api::<DynamoCluster>::namespaced(client.clone(), ns),
        watcher::Config::default(),
    )
    .owns(Api::<StatefulSet>::namespaced(client.clone(), ns), owned.clone())
    .owns(Api::<Deployment>::namespaced(client, ns), owned)
    .graceful_shutdown_on(async move {
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(LEADERSHIP_POLL) => {
                    if !held.is_leader() {
                        lost_trigger.cancel();
                        return;
                    }
                }
            }
        }
    })
    .run(reconcile::reconcile, reconcile::error_policy, ctx)
    .for_each(|r| {
        if let Err(e) = r {
            tracing::debug!(error = %e, "controller event");
        }
        futures::future::ready(())
    })
    .await;
    metrics.leader.set(0);
    if lost.is_cancelled() {
        Err(RunError::LostLease)
    } else {
        Ok(())
    }
}
