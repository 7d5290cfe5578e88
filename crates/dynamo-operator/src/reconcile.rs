//! The kube plumbing around [`crate::plan`]: observe, decide, act, report.
//!
//! One reconcile of a `DynamoCluster`:
//! 1. skip unless this replica holds the leader Lease;
//! 2. make sure the finalizer is on (or, when the cluster is being deleted, clean up and
//!    take it off);
//! 3. observe: the storage StatefulSets, their pods' readiness, the ring StatefulSet (its
//!    size and immutable pod management policy), the cluster view through the
//!    coordinators' public API (with the root token read from its Secret);
//! 4. decide with [`plan::plan`];
//! 5. server-side apply every owned object, the storage StatefulSets with the plan's
//!    replica counts and rolling-update partitions (an Event when a lowered partition
//!    releases a pod to a new template);
//! 6. begin at most one membership change (join, decommission, retry), with an Event;
//! 7. write the status (conditions, members, handoff progress, what it waits for).
//!
//! Every step is idempotent: applying the same objects again is a no-op, and a change
//! is begun only when the view shows none running.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dynamo_client::{ClientError, ClusterView, ErrorCode, NodeState};
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use crate::crd::{
    DynamoCluster, DynamoClusterStatus, FINALIZER, HandoffStatus, MemberStatus, Retention, SecretKind,
};
use crate::error::Error;
use crate::lease::Leadership;
use crate::metrics::Metrics;
use crate::plan::{self, Observed, Plan, Revisions, SetObserved, Step};
use crate::resources::{self, FIELD_MANAGER, LiveRing, Names, Owned};

/// Requeue while something is under way (pods starting, a handoff running).
pub const BUSY_REQUEUE: Duration = Duration::from_secs(10);
/// Requeue of a settled cluster: a periodic look, besides the watches.
pub const IDLE_REQUEUE: Duration = Duration::from_secs(300);
/// Requeue of a replica that does not hold the Lease.
pub const FOLLOWER_REQUEUE: Duration = Duration::from_secs(15);

/// How the operator reaches each cluster's coordinators.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Use this URL instead of the coordinator Service's (an operator run outside the
    /// cluster, through a port-forward; the tests' fake API).
    pub coordinator_url: Option<String>,
    /// The CA that signs the coordinators' certificate, for clusters with TLS.
    pub ca_file: Option<PathBuf>,
    /// Timeout of each call to the coordinators.
    pub api_timeout: Duration,
}

/// What every reconcile shares.
pub struct Context {
    /// The Kubernetes client.
    pub client: kube::Client,
    /// Publishes Events.
    pub recorder: Recorder,
    /// Metrics.
    pub metrics: Metrics,
    /// Whether this replica holds the Lease.
    pub leadership: Leadership,
    /// See [`Settings`].
    pub settings: Settings,
    /// Failed reconciles in a row, per cluster, for the backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    /// Returns a context.
    pub fn new(
        client: kube::Client,
        recorder: Recorder,
        metrics: Metrics,
        leadership: Leadership,
        settings: Settings,
    ) -> Context {
        Context {
            client,
            recorder,
            metrics,
            leadership,
            settings,
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.failures
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Reconciles one `DynamoCluster` (the controller's reconcile function).
///
/// # Errors
/// [`Error`] when a Kubernetes call fails; the controller retries with
/// [`error_policy`]'s backoff.
pub async fn reconcile(dc: Arc<DynamoCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    if !ctx.leadership.is_leader() {
        ctx.metrics.reconciles.with_label_values(&["not_leader"]).inc();
        return Ok(Action::requeue(FOLLOWER_REQUEUE));
    }
    let timer = ctx.metrics.duration.start_timer();
    let ns = dc
        .namespace()
        .ok_or_else(|| Error::Invalid("a DynamoCluster must be namespaced".into()))?;
    let api: Api<DynamoCluster> = Api::namespaced(ctx.client.clone(), &ns);
    let key = format!("{ns}/{}", dc.name_any());
    let result = finalizer(&api, FINALIZER, dc, |event| async {
        match event {
            Finalizer::Apply(dc) => apply(&dc, &ctx).await,
            Finalizer::Cleanup(dc) => cleanup(&dc, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    timer.observe_duration();
    match &result {
        Ok(_) => {
            ctx.failures().remove(&key);
            ctx.metrics.reconciles.with_label_values(&["ok"]).inc();
        }
        Err(e) => {
            ctx.metrics.reconciles.with_label_values(&["error"]).inc();
            ctx.metrics.errors.with_label_values(&[e.metric_label()]).inc();
        }
    }
    result
}

/// The controller's error policy: requeue with [`plan::backoff`] (5 s doubling to 5
/// minutes) per cluster.
pub fn error_policy(dc: Arc<DynamoCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = format!("{}/{}", dc.namespace().unwrap_or_default(), dc.name_any());
    let failures = {
        let mut f = ctx.failures();
        let n = f.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    tracing::warn!(cluster = %dc.name_any(), error = %error, failures, "reconcile failed");
    Action::requeue(plan::backoff(failures - 1))
}

async fn apply(dc: &DynamoCluster, ctx: &Context) -> Result<Action, Error> {
    let names = Names::of(dc);
    let ns = names.namespace.clone();
    let client = &ctx.client;
    let sets = dc.spec.storage_sets(&names.cluster);

    // Observe the storage StatefulSets and their pods.
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
    let mut live: Vec<Option<StatefulSet>> = Vec::new();
    for set in &sets {
        live.push(
            sts_api
                .get_opt(&set.name)
                .await
                .map_err(Error::kube(format!("get statefulset {}", set.name)))?,
        );
    }
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let selector = format!(
        "app.kubernetes.io/component=storage,dynamo.io/cluster={}",
        names.cluster
    );
    let pod_list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(Error::kube("list storage pods"))?;
    let observed_sets: Vec<SetObserved> = sets
        .iter()
        .zip(&live)
        .map(|(set, sts)| {
            let spec = sts.as_ref().and_then(|s| s.spec.as_ref());
            let revisions = sts.as_ref().and_then(revisions);
            let update = revisions.as_ref().map(|r| r.update.as_str());
            let ordinals = |keep: &dyn Fn(&Pod) -> bool| {
                pod_list
                    .items
                    .iter()
                    .filter(|p| keep(p))
                    .filter_map(|p| plan::ordinal_of(&set.name, &p.name_any()))
                    .collect()
            };
            SetObserved {
                name: set.name.clone(),
                zone: set.zone.clone(),
                desired: dc.spec.storage.replicas,
                current: spec.and_then(|s| s.replicas),
                ready: ordinals(&is_ready),
                partition: spec
                    .and_then(|s| s.update_strategy.as_ref())
                    .and_then(|u| u.rolling_update.as_ref())
                    .and_then(|r| r.partition),
                updated: ordinals(&|p: &Pod| update.is_some() && pod_revision(p) == update),
                revisions,
            }
        })
        .collect();

    // Observe the ring StatefulSet: the group never shrinks, and its pod management
    // policy cannot change.
    let ring_sts = sts_api
        .get_opt(&names.ring())
        .await
        .map_err(Error::kube(format!("get statefulset {}", names.ring())))?;
    let ring_spec = ring_sts.as_ref().and_then(|s| s.spec.as_ref());
    let ring = LiveRing {
        replicas: ring_spec.and_then(|s| s.replicas),
        pod_management_policy: ring_spec.and_then(|s| s.pod_management_policy.clone()),
    };
    let ring_refused = ring.refusal(dc);
    if ring_refused.is_some() {
        tracing::warn!(
            cluster = %names.cluster,
            spec = dc.spec.ring.replicas,
            live = ?ring.replicas,
            "ring group shrink refused: its replicas are kept"
        );
    }

    // Observe the membership (an answer or why not: never a reconcile error).
    let membership = membership_client(dc, &names, ctx).await;
    let view = match &membership {
        Ok(c) => c.cluster().await.map_err(|e| describe(&e)),
        Err(why) => Err(why.clone()),
    };
    let observed = Observed {
        sets: observed_sets,
        n: dc.spec.defaults.replicas,
        view,
        scheme: names.scheme,
        address_suffix: names.storage_address_suffix(),
    };
    let plan = plan::plan(&observed);
    tracing::debug!(cluster = %names.cluster, ?plan, "plan");

    // Apply every owned object.
    for o in resources::owned(dc, &plan.replicas, &plan.partitions, &ring) {
        apply_owned(client, &ns, &o).await?;
    }
    if let Some(pod) = plan.upgrade.as_ref().and_then(|u| u.updating.as_ref()) {
        ctx.metrics.updates.inc();
        let note = format!(
            "updating {pod}: its pod is recreated with the new template; the next waits until it is ready, up in the ring and caught up"
        );
        tracing::info!(cluster = %names.cluster, pod = %pod, "updating a storage pod");
        publish(
            ctx,
            dc,
            EventType::Normal,
            "UpdatingPod",
            Some(note),
            Some(pod.as_str()),
        )
        .await;
    }

    // Begin at most one membership change.
    let mut step_error = None;
    if let Ok(c) = &membership {
        step_error = begin(dc, ctx, c, &plan.step).await;
    }
    // A refused ring shrink is reported as Degraded with whatever else went wrong.
    let step_error = match (step_error, ring_refused) {
        (Some(e), Some(r)) => Some(format!("{e}; {r}")),
        (e, r) => e.or(r),
    };

    // Report.
    let old = dc.status.clone().unwrap_or_default();
    let status = status(
        dc,
        &observed,
        &plan,
        step_error.as_deref(),
        &old,
        Timestamp::now(),
    );
    if plan.refused.is_some() && !has_condition(&old, "ScaleDownRefused") {
        publish(
            ctx,
            dc,
            EventType::Warning,
            "ScaleDownRefused",
            plan.refused.clone(),
            None,
        )
        .await;
    }
    let api: Api<DynamoCluster> = Api::namespaced(client.clone(), &ns);
    if dc.status.as_ref() != Some(&status) {
        api.patch_status(
            &names.cluster,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": status})),
        )
        .await
        .map_err(Error::kube("patch status"))?;
    }
    // An update waits on the cluster view (a node up, its anti-entropy pass), which no
    // watch reports: look again soon.
    let busy = plan.scaling || plan.degraded.is_some() || plan.step != Step::None || plan.upgrade.is_some();
    Ok(Action::requeue(if busy { BUSY_REQUEUE } else { IDLE_REQUEUE }))
}

/// Begins the plan's membership change; returns why it could not begin, if it failed.
async fn begin(
    dc: &DynamoCluster,
    ctx: &Context,
    client: &dynamo_client::Client,
    step: &Step,
) -> Option<String> {
    let node = match step {
        Step::None => return None,
        Step::Join(reg) | Step::ReplaceInPlace(reg) => &reg.node_id,
        Step::Decommission(node) | Step::RetryChange(node) => node,
    };
    let (kind, reason, note, result) = match step {
        Step::None => return None,
        Step::Join(reg) => (
            "join",
            "Joining",
            format!("joining {} at {}", reg.node_id, reg.address),
            client.join_node(reg).await,
        ),
        Step::Decommission(node) => (
            "decommission",
            "Decommissioning",
            format!("decommissioning {node}: its partitions are handed off before its pod goes"),
            client.decommission(node).await,
        ),
        Step::RetryChange(node) => (
            "retry",
            "RetryingChange",
            format!("running the failed change of {node} again"),
            client.retry_change().await,
        ),
        Step::ReplaceInPlace(reg) => (
            "replace",
            "ReplacingInPlace",
            format!(
                "replacing {} in place: its volume was lost, the new one is refilled from the other replicas",
                reg.node_id
            ),
            client.replace_node(&reg.node_id, reg).await,
        ),
    };
    match result {
        Ok(_) => {
            ctx.metrics.changes.with_label_values(&[kind, "ok"]).inc();
            tracing::info!(cluster = %dc.name_any(), kind, "{note}");
            publish(
                ctx,
                dc,
                EventType::Normal,
                reason,
                Some(note),
                Some(node.as_str()),
            )
            .await;
            None
        }
        // Someone else's change began in between: the next reconcile follows it.
        Err(e) if e.code() == Some(ErrorCode::MembershipConflict) => None,
        Err(e) => {
            ctx.metrics.changes.with_label_values(&[kind, "error"]).inc();
            let why = format!("{note} failed: {}", describe(&e));
            tracing::warn!(cluster = %dc.name_any(), kind, error = %e, "membership change failed to begin");
            publish(
                ctx,
                dc,
                EventType::Warning,
                "MembershipChangeFailed",
                Some(why.clone()),
                Some(node.as_str()),
            )
            .await;
            Some(why)
        }
    }
}

async fn cleanup(dc: &DynamoCluster, ctx: &Context) -> Result<Action, Error> {
    // The owned objects go with the cluster (owner references); the storage volumes
    // follow `pvcRetentionPolicy.whenDeleted` (the StatefulSets carry it).
    let kept = dc.spec.storage.pvc_retention_policy.when_deleted == Retention::Retain;
    let note = if kept {
        "deleting the cluster; its storage volumes are kept (pvcRetentionPolicy.whenDeleted: Retain)"
    } else {
        "deleting the cluster and, as pvcRetentionPolicy.whenDeleted asks, its storage volumes"
    };
    publish(ctx, dc, EventType::Normal, "Deleting", Some(note.into()), None).await;
    Ok(Action::await_change())
}

/// Server-side applies one owned object, forcing the operator's ownership of its fields.
async fn apply_owned(client: &kube::Client, ns: &str, o: &Owned) -> Result<(), Error> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let patch = Patch::Apply(&o.body);
    let what = || format!("apply {} {}", o.kind, o.name);
    match o.kind {
        "StatefulSet" => Api::<StatefulSet>::namespaced(client.clone(), ns)
            .patch(&o.name, &params, &patch)
            .await
            .map(drop),
        "Deployment" => Api::<Deployment>::namespaced(client.clone(), ns)
            .patch(&o.name, &params, &patch)
            .await
            .map(drop),
        "Service" => Api::<Service>::namespaced(client.clone(), ns)
            .patch(&o.name, &params, &patch)
            .await
            .map(drop),
        "PodDisruptionBudget" => Api::<PodDisruptionBudget>::namespaced(client.clone(), ns)
            .patch(&o.name, &params, &patch)
            .await
            .map(drop),
        other => return Err(Error::Invalid(format!("no API for kind {other}"))),
    }
    .map_err(Error::kube(what()))
}

/// A client of the cluster's coordinators with the root token from its Secret, or why
/// there is none.
async fn membership_client(
    dc: &DynamoCluster,
    names: &Names,
    ctx: &Context,
) -> Result<dynamo_client::Client, String> {
    let r = dc.spec.secret(&names.cluster, SecretKind::RootToken);
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &names.namespace);
    let secret = secrets
        .get_opt(&r.name)
        .await
        .map_err(|e| format!("reading Secret {}: {e}", r.name))?
        .ok_or_else(|| format!("the root token Secret {} does not exist", r.name))?;
    let bytes = secret
        .data
        .as_ref()
        .and_then(|d| d.get(&r.key))
        .ok_or_else(|| format!("Secret {} has no key {}", r.name, r.key))?;
    // The file may hold a second line while the token rotates: the first is current.
    let token = String::from_utf8_lossy(&bytes.0)
        .lines()
        .next()
        .unwrap_or_default()
        .trim()
        .to_owned();
    let url = ctx
        .settings
        .coordinator_url
        .clone()
        .unwrap_or_else(|| names.coordinator_url());
    let mut builder = dynamo_client::Client::builder(url)
        .token(token)
        .timeout(ctx.settings.api_timeout)
        // No retries inside a reconcile: the next reconcile asks again, from a fresh view.
        .retry(dynamo_client::RetryPolicy::none());
    if let Some(ca) = &ctx.settings.ca_file {
        builder = builder.ca_file(ca.clone());
    }
    builder.build().map_err(|e| format!("coordinator client: {e}"))
}

fn describe(e: &ClientError) -> String {
    match e.code() {
        Some(code) => format!("{e} ({code:?})"),
        None => e.to_string(),
    }
}

/// A StatefulSet's revisions, once its controller reported both.
fn revisions(sts: &StatefulSet) -> Option<Revisions> {
    let status = sts.status.as_ref()?;
    // Before the controller saw the latest spec, its revisions describe an older one.
    let observed = match (sts.metadata.generation, status.observed_generation) {
        (Some(generation), Some(seen)) => seen >= generation,
        (Some(_), None) => false,
        (None, _) => true,
    };
    Some(Revisions {
        current: status.current_revision.clone()?,
        update: status.update_revision.clone()?,
        observed,
    })
}

/// The StatefulSet revision a pod runs (`controller-revision-hash`).
fn pod_revision(p: &Pod) -> Option<&str> {
    p.labels().get("controller-revision-hash").map(String::as_str)
}

fn is_ready(p: &Pod) -> bool {
    p.metadata.deletion_timestamp.is_none()
        && p.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Publishes an Event about `dc` and, if given, the storage pod (`pod`, a node id) it
/// concerns.
///
/// The pod is the Event's related object on purpose: kube's recorder folds an Event
/// into the series of an earlier one with the same reason and objects (for 6 minutes),
/// keeping the earlier one's note, so "joining dc-storage-4" right after "joining
/// dc-storage-3" would otherwise read as a second "joining dc-storage-3".
async fn publish(
    ctx: &Context,
    dc: &DynamoCluster,
    type_: EventType,
    reason: &str,
    note: Option<String>,
    pod: Option<&str>,
) {
    let event = Event {
        type_,
        reason: reason.into(),
        note,
        action: reason.into(),
        secondary: pod.map(|name| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            name: Some(name.into()),
            namespace: dc.namespace(),
            ..ObjectReference::default()
        }),
    };
    // An Event is for humans: failing to write one never fails the reconcile.
    if let Err(e) = ctx.recorder.publish(&event, &dc.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "publishing an event failed");
    }
}

fn has_condition(status: &DynamoClusterStatus, type_: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == type_ && c.status == "True")
}

/// The status for this observation and plan. Pure; a condition keeps its
/// `lastTransitionTime` while its status does not change.
fn status(
    dc: &DynamoCluster,
    obs: &Observed,
    plan: &Plan,
    step_error: Option<&str>,
    old: &DynamoClusterStatus,
    now: Timestamp,
) -> DynamoClusterStatus {
    let view: Option<&ClusterView> = obs.view.as_ref().ok();
    let members: BTreeSet<&str> = view
        .map(|v| {
            v.nodes
                .iter()
                .filter(|n| matches!(n.state, NodeState::Up))
                .map(|n| n.node_id.as_str())
                .collect()
        })
        .unwrap_or_default();
    // Ready and a member that is up: what "ready" means for a storage node.
    let ready = obs
        .sets
        .iter()
        .map(|s| {
            s.ready
                .iter()
                .filter(|i| **i < s.desired && members.contains(plan::pod_name(&s.name, **i).as_str()))
                .count()
        })
        .sum::<usize>();
    let ready = i32::try_from(ready).unwrap_or(i32::MAX);
    let desired: i32 = obs.sets.iter().map(|s| s.desired).sum();
    let upgrading = plan.upgrade.as_ref();
    let degraded = match (&plan.degraded, step_error) {
        (Some(d), Some(e)) => Some(format!("{d}; {e}")),
        (Some(d), None) => Some(d.clone()),
        (None, Some(e)) => Some(e.to_owned()),
        (None, None) => None,
    };
    let is_ready = !plan.scaling && degraded.is_none() && ready == desired;
    let generation = dc.metadata.generation;
    let cond = |type_: &str, on: bool, reason: &str, message: String| {
        let status = if on { "True" } else { "False" };
        let since = old
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map_or_else(|| Time(now), |c| c.last_transition_time.clone());
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: generation,
        }
    };
    let waiting = plan.waiting_for.clone().unwrap_or_default();
    let mut conditions = vec![
        cond(
            "Ready",
            is_ready,
            if is_ready { "ClusterReady" } else { "NotReady" },
            format!("{ready}/{desired} storage nodes ready and up"),
        ),
        cond(
            "Scaling",
            plan.scaling,
            if plan.scaling {
                "MembershipChanging"
            } else {
                "Settled"
            },
            waiting.clone(),
        ),
        cond(
            "Degraded",
            degraded.is_some(),
            if degraded.is_some() { "Degraded" } else { "Healthy" },
            degraded.clone().unwrap_or_default(),
        ),
        cond(
            "Upgrading",
            upgrading.is_some(),
            if upgrading.is_some() {
                "RollingUpdate"
            } else {
                "UpToDate"
            },
            upgrading.map(|u| u.waiting_for.clone()).unwrap_or_default(),
        ),
    ];
    if let Some(r) = &plan.refused {
        conditions.push(cond(
            "ScaleDownRefused",
            true,
            "BelowReplicationFactor",
            r.clone(),
        ));
    }
    let phase = if dc.metadata.deletion_timestamp.is_some() {
        "Deleting"
    } else if degraded.is_some() {
        "Degraded"
    } else if plan.scaling
        && (view.is_some_and(|v| v.nodes.is_empty()) || obs.sets.iter().any(|s| s.current.is_none()))
    {
        // Nothing is a member yet, or the StatefulSets are being made.
        "Creating"
    } else if plan.scaling {
        "Scaling"
    } else {
        "Running"
    };
    DynamoClusterStatus {
        observed_generation: generation,
        phase: Some(phase.into()),
        conditions,
        storage_ready: ready,
        storage: Some(format!("{ready}/{desired}")),
        ring_epoch: view.map(|v| v.epoch.0),
        members: view
            .map(|v| {
                v.nodes
                    .iter()
                    .map(|n| MemberStatus {
                        node_id: n.node_id.to_string(),
                        state: serde_json::to_value(n.state)
                            .ok()
                            .and_then(|s| s.as_str().map(str::to_owned))
                            .unwrap_or_default(),
                        zone: n.zone.clone(),
                    })
                    .collect()
            })
            .unwrap_or_else(|| old.members.clone()),
        handoff: view.and_then(|v| v.change.as_ref()).map(|c| HandoffStatus {
            kind: serde_json::to_value(c.change.kind)
                .ok()
                .and_then(|s| s.as_str().map(str::to_owned))
                .unwrap_or_default(),
            node: c.change.node.to_string(),
            partitions_done: c.partitions_done,
            partitions_total: c.partitions_total,
            stuck: c.stuck.clone(),
        }),
        waiting_for: plan.waiting_for.clone(),
    }
}
