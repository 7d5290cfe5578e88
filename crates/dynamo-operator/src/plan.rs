//! The operator's decisions, as a pure function: from what it observed (the storage
//! StatefulSets, their pods' readiness, the cluster view of the ring service) to what it
//! does next (how many pods each StatefulSet gets, how far its rolling update may go, and
//! at most one membership change).
//!
//! No I/O here, no clock: `reconcile` gathers an [`Observed`], calls [`plan`] and carries
//! out the [`Plan`]. Every safety rule of scaling and updating lives in this one function:
//!
//! - **Join after ready.** A new pod is joined only once Kubernetes reports it ready, one
//!   node at a time, in ordinal order (zones interleaved), each change followed to its end
//!   before the next begins.
//! - **Decommission before shrink.** A StatefulSet never shrinks below a pod that is still
//!   in the cluster view: its decommission must have finished (every partition handed off
//!   and confirmed, the node gone from the view) first. Highest ordinals go first.
//! - **No view, no unsafe step.** Without the cluster view (the coordinators or the ring
//!   service failing) nothing shrinks and no change begins; only growing, which loses
//!   nothing, goes on.
//! - **Never below the largest `n`.** A scale-down that would leave fewer storage nodes
//!   than the cluster's N, or than the largest `n` the cluster view reports
//!   ([`ClusterView::max_n`]: the ring's, the default bucket's and every bucket's), is
//!   refused, and said so in the status.
//! - **One storage pod updated at a time.** A changed pod template (image, config) does
//!   not roll by itself: each storage StatefulSet's `rollingUpdate.partition` stays at
//!   its replica count, so no pod is recreated, until the plan lowers it by one ordinal,
//!   highest first. It is lowered again only once every pod it released runs the new
//!   revision, is ready, is `up` in the cluster view and is caught up (no membership
//!   change or handoff running, and one anti-entropy pass finished since it restarted,
//!   when the node runs anti-entropy), and every other storage pod is ready and up.
//!   Sets roll one after the other, in the spec's zone order; no pod is released while
//!   the membership changes, without the view, or before the StatefulSet controller
//!   has observed the spec.
//!
//! Invariants: for every set, `Plan::replicas >= 1 + the highest ordinal of that set
//! still in the cluster view` whenever a view was observed, and `>= current` otherwise.
//! While a set's update runs, `Plan::partitions` never rises and falls by at most one
//! per plan.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use dynamo_client::{ChangeKindName, ClusterView, NodeId, NodeRegistration, NodeState, NodeStatus};

/// The revisions a storage StatefulSet's controller reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revisions {
    /// `status.currentRevision`: what the pods below the partition run.
    pub current: String,
    /// `status.updateRevision`: the pod template the spec asks for.
    pub update: String,
    /// True when the status describes the live spec (`status.observedGeneration` has
    /// caught up with `metadata.generation`).
    pub observed: bool,
}

impl Revisions {
    /// True while some pod is to run another template than the current one.
    pub fn is_rolling(&self) -> bool {
        self.current != self.update
    }
}

/// A storage StatefulSet as observed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SetObserved {
    /// The StatefulSet's name; its pods are `<name>-<ordinal>`, each pod's name its node id.
    pub name: String,
    /// The zone its nodes join with.
    pub zone: Option<String>,
    /// The replicas the spec asks for.
    pub desired: i32,
    /// The live StatefulSet's `spec.replicas` (`None` before it exists).
    pub current: Option<i32>,
    /// Ordinals of its pods that are ready.
    pub ready: BTreeSet<i32>,
    /// The live StatefulSet's `updateStrategy.rollingUpdate.partition`, if set.
    pub partition: Option<i32>,
    /// The live StatefulSet's revisions, once its controller reported them.
    pub revisions: Option<Revisions>,
    /// Ordinals of its pods that run the update revision (their
    /// `controller-revision-hash` label).
    pub updated: BTreeSet<i32>,
}

/// Everything [`plan`] decides from.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The storage StatefulSets, in the spec's zone order.
    pub sets: Vec<SetObserved>,
    /// The cluster's N: the fewest storage nodes it may have.
    pub n: u8,
    /// The cluster view, or why it could not be read.
    pub view: Result<ClusterView, String>,
    /// A pod's address is `<scheme>://<pod>.<address_suffix>`.
    pub scheme: &'static str,
    /// See `scheme`: `<headless service>.<namespace>.svc.<domain>:<port>`.
    pub address_suffix: String,
}

impl Observed {
    /// The address a storage pod advertises (and is joined with).
    pub fn address(&self, pod: &str) -> String {
        format!("{}://{pod}.{}", self.scheme, self.address_suffix)
    }
}

/// The one membership change to begin now, if any.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing to begin.
    None,
    /// Join this ready pod.
    Join(NodeRegistration),
    /// Decommission this member (the highest ordinal beyond the desired count).
    Decommission(NodeId),
    /// Run the failed change of one of the cluster's own nodes again.
    RetryChange(NodeId),
    /// Replace this member in place: its pod came back with a new, empty volume (the
    /// ring refuses its heartbeats), which the replace refills from the other replicas.
    ReplaceInPlace(NodeRegistration),
}

/// The rolling update of the storage pods, while one runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Upgrade {
    /// The pod released now (its set's partition lowered to its ordinal): the
    /// StatefulSet controller recreates it with the new template.
    pub updating: Option<String>,
    /// What the update waits for, in words.
    pub waiting_for: String,
}

/// What to do now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// The replicas each storage StatefulSet gets, in [`Observed::sets`] order.
    pub replicas: Vec<i32>,
    /// The `rollingUpdate.partition` each storage StatefulSet gets: its pods at or above
    /// that ordinal run the new template.
    pub partitions: Vec<i32>,
    /// The membership change to begin.
    pub step: Step,
    /// True while the cluster is not yet what the spec asks for (pods to start, nodes to
    /// join or decommission).
    pub scaling: bool,
    /// Why the cluster is degraded (no view, a failed change, a member at an unexpected
    /// address), if it is.
    pub degraded: Option<String>,
    /// Why a scale-down is refused, if it is.
    pub refused: Option<String>,
    /// What the operator waits for, in words.
    pub waiting_for: Option<String>,
    /// The rolling update of the storage pods, while one runs.
    pub upgrade: Option<Upgrade>,
}

/// Decides the next step. Pure: the same observation always gives the same plan.
pub fn plan(obs: &Observed) -> Plan {
    let mut plan = plan_membership(obs);
    plan_update(obs, &mut plan);
    if plan.waiting_for.is_none() {
        plan.waiting_for = plan.upgrade.as_ref().map(|u| u.waiting_for.clone());
    }
    plan
}

/// The replica counts and the membership change (every rule but the rolling update).
fn plan_membership(obs: &Observed) -> Plan {
    let total_desired: i64 = obs.sets.iter().map(|s| i64::from(s.desired.max(0))).sum();
    let shrinking = obs.sets.iter().any(|s| s.current.is_some_and(|c| s.desired < c));
    // The cluster's own N, or the largest `n` the view reports when it is larger (a
    // bucket created with more replicas than the default).
    let max_n = obs.view.as_ref().ok().and_then(|v| v.max_n).unwrap_or(0);
    let refused = if total_desired < i64::from(max_n.max(obs.n)) {
        Some(if max_n > obs.n {
            format!(
                "{total_desired} storage node(s) cannot hold n = {max_n} replicas of each key on distinct nodes (the largest n of a bucket); the scale-down is refused"
            )
        } else {
            format!(
                "{total_desired} storage node(s) cannot hold N = {} replicas of each key on distinct nodes; the scale-down is refused",
                obs.n
            )
        })
    } else {
        None
    };
    // A refused scale-down keeps what runs: only a count that grows is taken.
    let target: Vec<i32> = obs
        .sets
        .iter()
        .map(|s| match (refused.is_some(), s.current) {
            (true, Some(c)) => s.desired.max(c),
            _ => s.desired.max(0),
        })
        .collect();

    let view = match &obs.view {
        Ok(v) => v,
        Err(why) => {
            // Growing loses nothing; shrinking or a membership change needs the view.
            let replicas = obs
                .sets
                .iter()
                .zip(&target)
                .map(|(s, t)| s.current.map_or(*t, |c| c.max(*t)))
                .collect();
            let degraded =
                format!("the cluster view is unavailable ({why}); no membership change until it answers");
            return Plan {
                replicas,
                partitions: Vec::new(),
                step: Step::None,
                scaling: shrinking || obs.sets.iter().any(|s| s.current != Some(s.desired)),
                degraded: Some(degraded.clone()),
                refused,
                waiting_for: Some(degraded),
                upgrade: None,
            };
        }
    };

    let members: BTreeMap<&str, &NodeStatus> = view.nodes.iter().map(|n| (n.node_id.as_str(), n)).collect();
    let change_node = view.change.as_ref().map(|c| c.change.node.as_str());
    let replacement = view
        .change
        .as_ref()
        .and_then(|c| c.change.replacement.as_ref().map(NodeId::as_str));
    // Invariant (module doc): never shrink below a pod the cluster still knows.
    let replicas: Vec<i32> = obs
        .sets
        .iter()
        .zip(&target)
        .map(|(s, t)| {
            let current = s.current.unwrap_or(0);
            if *t >= current {
                return *t;
            }
            let still_known = (*t..current)
                .rev()
                .find(|i| {
                    let pod = pod_name(&s.name, *i);
                    members.contains_key(pod.as_str())
                        || change_node == Some(pod.as_str())
                        || replacement == Some(pod.as_str())
                })
                .map_or(*t, |i| i + 1);
            still_known.max(*t)
        })
        .collect();

    let mut degraded: Vec<String> = Vec::new();
    let mut plan = Plan {
        replicas,
        partitions: Vec::new(),
        step: Step::None,
        scaling: false,
        degraded: None,
        refused,
        waiting_for: None,
        upgrade: None,
    };

    // One change at a time: a running change is followed to its end first.
    if let Some(progress) = &view.change {
        let c = &progress.change;
        let ours = is_ours(obs, c.node.as_str());
        plan.scaling = true;
        if let Some(failed) = &c.failed {
            degraded.push(format!(
                "the {} of {} failed: {failed}",
                kind_word(c.kind),
                c.node
            ));
            if ours {
                plan.step = Step::RetryChange(c.node.clone());
                plan.waiting_for = Some(format!("retrying the {} of {}", kind_word(c.kind), c.node));
            } else {
                plan.waiting_for = Some(format!(
                    "the failed {} of {}, not this operator's, to be retried or aborted",
                    kind_word(c.kind),
                    c.node
                ));
            }
        } else {
            let verb = match c.kind {
                ChangeKindName::Join => "joining",
                ChangeKindName::Decommission => "decommissioning",
                ChangeKindName::Replace if c.replacement.as_ref() == Some(&c.node) => "refilling (in place)",
                ChangeKindName::Replace => "replacing",
            };
            let mut line = format!(
                "{verb} {}: {}/{} partitions handed off",
                c.node, progress.partitions_done, progress.partitions_total
            );
            if let Some(stuck) = &progress.stuck {
                line.push_str(&format!(" (retrying: {stuck})"));
            }
            plan.waiting_for = Some(line);
        }
        plan.degraded = join_lines(degraded);
        return plan;
    }

    // A member whose pod lost its volume holds nothing and is kept down: refilling it
    // comes before growing, as it restores copies the cluster already counts on. Not for
    // a pod about to be decommissioned: its partitions are handed off from the others.
    let lost = obs.sets.iter().zip(&target).find_map(|(s, t)| {
        (0..(*t).min(s.current.unwrap_or(0))).find_map(|i| {
            let pod = pod_name(&s.name, i);
            let m = members.get(pod.as_str())?;
            m.volume_refused.is_some().then_some((s, pod, *m))
        })
    });
    if let Some((s, pod, m)) = lost {
        let address = obs.address(&pod);
        plan.scaling = true;
        if m.address != address {
            degraded.push(format!(
                "{pod} lost its volume but is a member at {}, not at {address}; replace it by hand",
                m.address
            ));
        } else {
            plan.step = Step::ReplaceInPlace(NodeRegistration {
                node_id: m.node_id.clone(),
                address,
                zone: s.zone.clone(),
            });
            plan.waiting_for = Some(format!(
                "replacing {pod} in place: it came back with a new, empty volume"
            ));
        }
        plan.degraded = join_lines(degraded);
        return plan;
    }

    // Joins first: more holders before fewer. Ordinal-major, so zones interleave.
    let width = target.iter().copied().max().unwrap_or(0);
    'join: for i in 0..width {
        for (s, t) in obs.sets.iter().zip(&target) {
            if i >= *t {
                continue;
            }
            let pod = pod_name(&s.name, i);
            let address = obs.address(&pod);
            match members.get(pod.as_str()) {
                Some(m) if m.address != address => degraded.push(format!(
                    "{pod} is a member at {}, not at {address}; it is not re-pointed (a replace is)",
                    m.address
                )),
                Some(_) => {}
                None if s.ready.contains(&i) => match NodeId::new(&pod) {
                    Ok(node_id) => {
                        plan.step = Step::Join(NodeRegistration {
                            node_id,
                            address,
                            zone: s.zone.clone(),
                        });
                        plan.waiting_for = Some(format!("joining {pod}"));
                        plan.scaling = true;
                        break 'join;
                    }
                    Err(e) => degraded.push(format!("{pod} is not a valid node id: {e}")),
                },
                None => {
                    plan.waiting_for = Some(format!("pod {pod} to be ready"));
                    plan.scaling = true;
                    break 'join;
                }
            }
        }
    }

    if plan.step == Step::None && plan.waiting_for.is_none() {
        // The highest ordinal beyond its set's target that is still a member.
        let leaver = obs
            .sets
            .iter()
            .zip(&target)
            .flat_map(|(s, t)| {
                let current = s.current.unwrap_or(0);
                (*t..current).map(move |i| (i, pod_name(&s.name, i)))
            })
            .filter(|(_, pod)| {
                members
                    .get(pod.as_str())
                    .is_some_and(|m| m.state != NodeState::Leaving)
            })
            .max_by_key(|(i, _)| *i);
        if let Some((_, pod)) = leaver {
            match NodeId::new(&pod) {
                Ok(node) => {
                    plan.waiting_for = Some(format!("decommissioning {pod}"));
                    plan.step = Step::Decommission(node);
                }
                Err(e) => degraded.push(format!("{pod} is not a valid node id: {e}")),
            }
            plan.scaling = true;
        }
    }

    if plan
        .replicas
        .iter()
        .zip(&obs.sets)
        .any(|(r, s)| s.current != Some(*r) || *r != s.desired && plan.refused.is_none())
    {
        plan.scaling = true;
    }
    plan.degraded = join_lines(degraded);
    plan
}

/// Sets `plan.partitions` and `plan.upgrade`: the rolling update (module doc).
fn plan_update(obs: &Observed, plan: &mut Plan) {
    let rolling = |s: &SetObserved| s.revisions.as_ref().is_some_and(Revisions::is_rolling);
    // A set whose pods all run one revision keeps its partition at its replica count: a
    // template change applied with it recreates no pod. A rolling set holds its
    // partition until `may_release` lets it go one lower; it never rises during the
    // update (a released pod that restarted would come back with the old template).
    plan.partitions = obs
        .sets
        .iter()
        .zip(&plan.replicas)
        .map(|(s, r)| if rolling(s) { s.partition.unwrap_or(*r) } else { *r })
        .collect();
    // Sets roll one after the other: the first one rolling is the one updated.
    let Some(active) = obs.sets.iter().position(rolling) else {
        return;
    };
    let set = &obs.sets[active];
    // Pods at or above `released` were let go to the new template (none when it is the
    // replica count).
    let released = plan.partitions[active].clamp(0, set.current.unwrap_or(0).max(0));
    plan.upgrade = Some(match may_release(obs, plan, set, released) {
        Ok(()) => {
            let pod = pod_name(&set.name, released - 1);
            plan.partitions[active] = released - 1;
            Upgrade {
                waiting_for: format!("updating {pod}: waiting for it to run the new revision"),
                updating: Some(pod),
            }
        }
        Err(waiting_for) => Upgrade {
            updating: None,
            waiting_for,
        },
    });
}

/// Whether the pod below `released` in `set` may be released to the new template now,
/// or what that waits for.
fn may_release(obs: &Observed, plan: &Plan, set: &SetObserved, released: i32) -> Result<(), String> {
    let top = set.current.unwrap_or(0);
    let view = obs.view.as_ref().map_err(|_| {
        "the cluster view, to update the storage pods (no pod is updated without it)".to_owned()
    })?;
    if !set.revisions.as_ref().is_some_and(|r| r.observed) {
        return Err(format!(
            "the StatefulSet controller to observe {}'s new spec",
            set.name
        ));
    }
    if plan.scaling || plan.step != Step::None {
        return Err(format!(
            "the scaling to finish before the next storage pod is updated ({} of {top} in {} updated)",
            top - released,
            set.name
        ));
    }
    let members: BTreeMap<&str, &NodeStatus> = view.nodes.iter().map(|n| (n.node_id.as_str(), n)).collect();
    let is_up = |pod: &str| members.get(pod).is_some_and(|m| m.state == NodeState::Up);
    // Every pod released so far: on the new revision, ready, up and caught up.
    for i in (released..top).rev() {
        let pod = pod_name(&set.name, i);
        let missing = if !set.updated.contains(&i) {
            Some("it to run the new revision".to_owned())
        } else if !set.ready.contains(&i) {
            Some("it to be ready".to_owned())
        } else if !is_up(&pod) {
            Some("it to be up in the ring".to_owned())
        } else {
            caught_up(view, members.get(pod.as_str()).copied()).err()
        };
        if let Some(what) = missing {
            return Err(format!("updating {pod}: waiting for {what}"));
        }
    }
    if released == 0 {
        return Err(format!(
            "the StatefulSet controller to finish the update of {}",
            set.name
        ));
    }
    // Every other storage pod ready and up: releasing one more takes a node away.
    let next = pod_name(&set.name, released - 1);
    for s in &obs.sets {
        for i in 0..s.current.unwrap_or(0) {
            let pod = pod_name(&s.name, i);
            if !s.ready.contains(&i) || !is_up(&pod) {
                let what = if pod == next { "it" } else { next.as_str() };
                return Err(format!(
                    "{pod} to be ready and up in the ring before {what} is updated"
                ));
            }
        }
    }
    Ok(())
}

/// Whether a member that restarted on the new revision is caught up, or what it still
/// lacks: no membership change or handoff running, and (when it runs anti-entropy) one
/// full pass since it started, which repairs what it missed while down. The view shows
/// no hint backlog, so hints still queued for it elsewhere are not waited for.
fn caught_up(view: &ClusterView, member: Option<&NodeStatus>) -> Result<(), String> {
    if view.change.is_some() || view.handoffs.iter().any(|h| !h.done) {
        return Err("the membership change to finish".into());
    }
    match member.and_then(|m| m.anti_entropy) {
        None => Err("it to report its anti-entropy progress".into()),
        Some(ae) if ae.enabled && ae.passes == 0 => {
            Err("its first anti-entropy pass since it restarted".into())
        }
        Some(_) => Ok(()),
    }
}

/// The pause before the next reconcile after `failures` failed ones in a row: 5 s,
/// doubling, at most 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << failures.min(6));
    Duration::from_secs(secs.min(300))
}

/// A StatefulSet pod's name: `<set>-<ordinal>`.
pub fn pod_name(set: &str, ordinal: i32) -> String {
    format!("{set}-{ordinal}")
}

/// The ordinal of `pod` in `set`, if it is one of its pods.
pub fn ordinal_of(set: &str, pod: &str) -> Option<i32> {
    pod.strip_prefix(set)?.strip_prefix('-')?.parse().ok()
}

fn is_ours(obs: &Observed, node: &str) -> bool {
    obs.sets.iter().any(|s| ordinal_of(&s.name, node).is_some())
}

fn kind_word(kind: ChangeKindName) -> &'static str {
    match kind {
        ChangeKindName::Join => "join",
        ChangeKindName::Decommission => "decommission",
        ChangeKindName::Replace => "replace",
    }
}

fn join_lines(lines: Vec<String>) -> Option<String> {
    (!lines.is_empty()).then(|| lines.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use dynamo_client::{ChangeProgress, ChangeSummary, RingEpoch};

    const SUFFIX: &str = "dc-storage.ns.svc.cluster.local:7100";

    fn set(desired: i32, current: Option<i32>, ready: &[i32]) -> SetObserved {
        SetObserved {
            name: "dc-storage".into(),
            zone: None,
            desired,
            current,
            ready: ready.iter().copied().collect(),
            partition: current,
            revisions: current.map(|_| Revisions {
                current: "r1".into(),
                update: "r1".into(),
                observed: true,
            }),
            updated: BTreeSet::new(),
        }
    }

    /// `set(n, Some(n), ready)` after a template change: revision r2 asked for, the
    /// partition at `partition`, `updated` on r2.
    fn rolling(n: i32, ready: &[i32], partition: i32, updated: &[i32]) -> SetObserved {
        SetObserved {
            partition: Some(partition),
            revisions: Some(Revisions {
                current: "r1".into(),
                update: "r2".into(),
                observed: true,
            }),
            updated: updated.iter().copied().collect(),
            ..set(n, Some(n), ready)
        }
    }

    /// A view of members `0..n`, up, each with one anti-entropy pass done.
    fn caught_up_view(n: i32) -> ClusterView {
        let mut v = view(&(0..n).collect::<Vec<_>>());
        for m in &mut v.nodes {
            m.anti_entropy = Some(dynamo_client::AntiEntropyStatus {
                enabled: true,
                passes: 1,
                ..Default::default()
            });
        }
        v
    }

    fn member(i: i32, state: NodeState) -> NodeStatus {
        let pod = pod_name("dc-storage", i);
        NodeStatus {
            node_id: NodeId::new(&pod).expect("id"),
            address: format!("http://{pod}.{SUFFIX}"),
            zone: None,
            state,
            last_heartbeat_ms_ago: None,
            anti_entropy: None,
            volume: None,
            volume_refused: None,
        }
    }

    fn view(members: &[i32]) -> ClusterView {
        ClusterView {
            epoch: RingEpoch(4),
            nodes: members.iter().map(|i| member(*i, NodeState::Up)).collect(),
            handoffs: Vec::new(),
            change: None,
            max_n: None,
            ring_group: None,
        }
    }

    fn change(kind: ChangeKindName, i: i32, done: u64, failed: Option<&str>) -> ChangeProgress {
        ChangeProgress {
            change: ChangeSummary {
                kind,
                node: NodeId::new(pod_name("dc-storage", i)).expect("id"),
                replacement: None,
                phase: "copy".into(),
                epoch: RingEpoch(5),
                failed: failed.map(str::to_owned),
            },
            partitions_total: 64,
            partitions_done: done,
            objects: 0,
            bytes: 0,
            stuck: None,
        }
    }

    fn observed(sets: Vec<SetObserved>, view: Result<ClusterView, String>) -> Observed {
        Observed {
            sets,
            n: 3,
            view,
            scheme: "http",
            address_suffix: SUFFIX.into(),
        }
    }

    fn node(i: i32) -> NodeId {
        NodeId::new(pod_name("dc-storage", i)).expect("id")
    }

    #[test]
    fn a_new_cluster_gets_its_pods_then_joins_them_in_order() {
        // Goal: creation makes the StatefulSet at the desired size and joins ready pods
        // one at a time, lowest ordinal first; a pod not ready yet is waited for.
        let p = plan(&observed(vec![set(3, None, &[])], Ok(view(&[]))));
        assert_eq!(p.replicas, vec![3]);
        assert_eq!(p.step, Step::None);
        assert_eq!(p.waiting_for.as_deref(), Some("pod dc-storage-0 to be ready"));
        let p = plan(&observed(vec![set(3, Some(3), &[0, 2])], Ok(view(&[]))));
        match &p.step {
            Step::Join(r) => {
                assert_eq!(r.node_id, node(0));
                assert_eq!(r.address, format!("http://dc-storage-0.{SUFFIX}"));
            }
            other => panic!("expected a join, got {other:?}"),
        }
        let p = plan(&observed(vec![set(3, Some(3), &[0, 2])], Ok(view(&[0]))));
        assert_eq!(p.waiting_for.as_deref(), Some("pod dc-storage-1 to be ready"));
        assert!(p.scaling);
    }

    #[test]
    fn a_pod_that_lost_its_volume_is_replaced_in_place_never_silently_rejoined() {
        // Goal: a member whose pod came back with a new volume (the ring refuses it) is
        // replaced in place, before any join; one beyond the desired count is
        // decommissioned instead; a running change is followed first; a member at
        // another address is only reported.
        let lost = |mut v: ClusterView, i: usize| {
            v.nodes[i].volume_refused = Some(dynamo_client::VolumeId(7));
            v.nodes[i].state = NodeState::Down;
            v
        };
        let p = plan(&observed(
            vec![set(4, Some(4), &[0, 1, 2, 3])],
            Ok(lost(view(&[0, 1, 2]), 1)),
        ));
        match &p.step {
            Step::ReplaceInPlace(r) => {
                assert_eq!(r.node_id, node(1));
                assert_eq!(r.address, format!("http://dc-storage-1.{SUFFIX}"));
            }
            other => panic!("expected a replace in place before joining dc-storage-3, got {other:?}"),
        }
        assert!(p.scaling);
        assert!(
            p.waiting_for
                .as_deref()
                .is_some_and(|w| w.contains("dc-storage-1"))
        );

        let p = plan(&observed(
            vec![set(3, Some(4), &[0, 1, 2, 3])],
            Ok(lost(view(&[0, 1, 2, 3]), 3)),
        ));
        assert_eq!(
            p.step,
            Step::Decommission(node(3)),
            "leaving anyway: handed off from the others"
        );

        let mut running = lost(view(&[0, 1, 2]), 1);
        running.change = Some(change(ChangeKindName::Join, 3, 10, None));
        let p = plan(&observed(vec![set(3, Some(3), &[0, 1, 2])], Ok(running)));
        assert_eq!(p.step, Step::None);

        let mut refilling = view(&[0, 1, 2]);
        let mut c = change(ChangeKindName::Replace, 1, 10, None);
        c.change.replacement = Some(node(1));
        refilling.change = Some(c);
        let p = plan(&observed(vec![set(3, Some(3), &[0, 1, 2])], Ok(refilling)));
        assert_eq!(p.step, Step::None);
        assert_eq!(
            p.waiting_for.as_deref(),
            Some("refilling (in place) dc-storage-1: 10/64 partitions handed off")
        );

        let mut moved = lost(view(&[0, 1, 2]), 1);
        moved.nodes[1].address = "http://elsewhere:7100".into();
        let p = plan(&observed(vec![set(3, Some(3), &[0, 1, 2])], Ok(moved)));
        assert_eq!(p.step, Step::None);
        assert!(
            p.degraded
                .as_deref()
                .is_some_and(|d| d.contains("lost its volume"))
        );
    }

    #[test]
    fn a_settled_cluster_does_nothing() {
        // Goal: reconciling a cluster that matches its spec changes nothing.
        let p = plan(&observed(vec![set(3, Some(3), &[0, 1, 2])], Ok(view(&[0, 1, 2]))));
        assert_eq!(
            p,
            Plan {
                replicas: vec![3],
                partitions: vec![3],
                step: Step::None,
                scaling: false,
                degraded: None,
                refused: None,
                waiting_for: None,
                upgrade: None,
            }
        );
    }

    #[test]
    fn scale_up_grows_then_joins_each_new_pod_once_ready() {
        let p = plan(&observed(vec![set(5, Some(3), &[0, 1, 2])], Ok(view(&[0, 1, 2]))));
        assert_eq!(p.replicas, vec![5]);
        assert_eq!(p.waiting_for.as_deref(), Some("pod dc-storage-3 to be ready"));
        let p = plan(&observed(
            vec![set(5, Some(5), &[0, 1, 2, 3])],
            Ok(view(&[0, 1, 2])),
        ));
        assert!(matches!(&p.step, Step::Join(r) if r.node_id == node(3)));
    }

    #[test]
    fn a_running_change_is_followed_before_anything_else() {
        // Goal: one change at a time; the status says how far the handoff got.
        let mut v = view(&[0, 1, 2]);
        v.nodes.push(member(3, NodeState::Joining));
        v.change = Some(change(ChangeKindName::Join, 3, 37, None));
        let p = plan(&observed(vec![set(5, Some(5), &[0, 1, 2, 3, 4])], Ok(v)));
        assert_eq!(p.step, Step::None);
        assert_eq!(
            p.waiting_for.as_deref(),
            Some("joining dc-storage-3: 37/64 partitions handed off")
        );
    }

    #[test]
    fn scale_down_decommissions_the_highest_ordinal_before_shrinking() {
        // Goal: nothing shrinks while the leaving node is a member; highest first.
        let p = plan(&observed(
            vec![set(3, Some(5), &[0, 1, 2, 3, 4])],
            Ok(view(&[0, 1, 2, 3, 4])),
        ));
        assert_eq!(p.replicas, vec![5], "no shrink before the decommission");
        assert_eq!(p.step, Step::Decommission(node(4)));
        // While dc-storage-4 is handed off: still 5 pods, no new change.
        let mut v = view(&[0, 1, 2, 3]);
        v.nodes.push(member(4, NodeState::Leaving));
        v.change = Some(change(ChangeKindName::Decommission, 4, 10, None));
        let p = plan(&observed(vec![set(3, Some(5), &[0, 1, 2, 3, 4])], Ok(v)));
        assert_eq!((p.replicas.clone(), p.step.clone()), (vec![5], Step::None));
        assert_eq!(
            p.waiting_for.as_deref(),
            Some("decommissioning dc-storage-4: 10/64 partitions handed off")
        );
        // dc-storage-4 gone from the view: shrink past it, decommission dc-storage-3.
        let p = plan(&observed(
            vec![set(3, Some(5), &[0, 1, 2, 3, 4])],
            Ok(view(&[0, 1, 2, 3])),
        ));
        assert_eq!(
            (p.replicas.clone(), p.step.clone()),
            (vec![4], Step::Decommission(node(3)))
        );
        // Both gone: shrink to 3.
        let p = plan(&observed(
            vec![set(3, Some(4), &[0, 1, 2, 3])],
            Ok(view(&[0, 1, 2])),
        ));
        assert_eq!((p.replicas.clone(), p.step.clone()), (vec![3], Step::None));
    }

    #[test]
    fn without_the_cluster_view_nothing_shrinks_and_no_change_begins() {
        // Goal: a failing ring service or coordinator means no unsafe step.
        let p = plan(&observed(
            vec![set(3, Some(5), &[0, 1, 2, 3, 4])],
            Err("503 ring_unavailable".into()),
        ));
        assert_eq!((p.replicas.clone(), p.step.clone()), (vec![5], Step::None));
        assert!(
            p.degraded
                .as_deref()
                .is_some_and(|d| d.contains("ring_unavailable"))
        );
        // Growing goes on.
        let p = plan(&observed(
            vec![set(5, Some(3), &[0, 1, 2])],
            Err("connection refused".into()),
        ));
        assert_eq!((p.replicas, p.step), (vec![5], Step::None));
    }

    #[test]
    fn a_scale_down_below_n_is_refused() {
        let p = plan(&observed(vec![set(2, Some(3), &[0, 1, 2])], Ok(view(&[0, 1, 2]))));
        assert_eq!((p.replicas.clone(), p.step.clone()), (vec![3], Step::None));
        assert!(p.refused.as_deref().is_some_and(|r| r.contains("N = 3")), "{p:?}");
    }

    #[test]
    fn a_scale_down_below_the_largest_bucket_n_is_refused() {
        // Goal: a bucket with n = 5 keeps a 6-node cluster from going below 5, though
        // the cluster's N is 3; down to 5 is allowed. Without the field (an older
        // server) only N counts.
        let all = [0, 1, 2, 3, 4, 5];
        let mut v = view(&all);
        v.max_n = Some(5);
        let p = plan(&observed(vec![set(4, Some(6), &all)], Ok(v.clone())));
        assert_eq!((p.replicas.clone(), p.step.clone()), (vec![6], Step::None));
        let why = p.refused.expect("refused");
        assert!(
            why.contains("n = 5") && why.contains("largest n of a bucket"),
            "{why}"
        );
        let p = plan(&observed(vec![set(5, Some(6), &all)], Ok(v)));
        assert_eq!((p.refused, p.step), (None, Step::Decommission(node(5))));
        let p = plan(&observed(vec![set(4, Some(6), &all)], Ok(view(&all))));
        assert_eq!(p.refused, None);
    }

    #[test]
    fn a_steady_set_keeps_its_partition_at_its_replica_count() {
        // Goal: with every pod on one revision the partition is the replica count (a
        // template change applied with it recreates no pod), and it follows the count.
        let p = plan(&observed(vec![set(5, Some(3), &[0, 1, 2])], Ok(view(&[0, 1, 2]))));
        assert_eq!((p.replicas, p.partitions), (vec![5], vec![5]));
        let p = plan(&observed(vec![set(3, None, &[])], Ok(view(&[]))));
        assert_eq!(p.partitions, vec![3]);
        assert_eq!(p.upgrade, None);
    }

    #[test]
    fn a_rolling_update_waits_for_each_pod_before_the_next() {
        // Goal: the partition goes down one ordinal at a time, highest first, and only
        // once the pod released last runs the new revision, is ready, is up in the ring
        // and has finished an anti-entropy pass since it restarted. Method: replay what
        // the StatefulSet controller and the node do, one observation at a time.
        let all = [0, 1, 2];
        let p = plan(&observed(vec![rolling(3, &all, 3, &[])], Ok(caught_up_view(3))));
        assert_eq!(p.partitions, vec![2]);
        let u = p.upgrade.expect("upgrading");
        assert_eq!(u.updating.as_deref(), Some("dc-storage-2"));
        assert_eq!(
            p.waiting_for.as_deref(),
            Some("updating dc-storage-2: waiting for it to run the new revision")
        );
        assert_eq!(p.step, Step::None);

        let waits = |s: SetObserved, v: ClusterView| {
            let p = plan(&observed(vec![s], Ok(v)));
            assert_eq!(
                p.partitions,
                vec![2],
                "no second pod while dc-storage-2 is not back"
            );
            let u = p.upgrade.expect("upgrading");
            assert_eq!(u.updating, None);
            assert_eq!(p.waiting_for.as_deref(), Some(u.waiting_for.as_str()));
            u.waiting_for
        };
        // Not recreated yet; recreated but starting; ready but not up; up, not caught up.
        assert_eq!(
            waits(rolling(3, &all, 2, &[]), caught_up_view(3)),
            "updating dc-storage-2: waiting for it to run the new revision"
        );
        assert_eq!(
            waits(rolling(3, &[0, 1], 2, &[2]), caught_up_view(3)),
            "updating dc-storage-2: waiting for it to be ready"
        );
        let mut v = caught_up_view(3);
        v.nodes[2].state = NodeState::Down;
        assert_eq!(
            waits(rolling(3, &all, 2, &[2]), v.clone()),
            "updating dc-storage-2: waiting for it to be up in the ring"
        );
        v.nodes[2].state = NodeState::Up;
        v.nodes[2].anti_entropy = None;
        assert_eq!(
            waits(rolling(3, &all, 2, &[2]), v.clone()),
            "updating dc-storage-2: waiting for it to report its anti-entropy progress"
        );
        v.nodes[2].anti_entropy = Some(dynamo_client::AntiEntropyStatus {
            enabled: true,
            ..Default::default()
        });
        assert_eq!(
            waits(rolling(3, &all, 2, &[2]), v.clone()),
            "updating dc-storage-2: waiting for its first anti-entropy pass since it restarted"
        );
        // Back and caught up: dc-storage-1 next, then dc-storage-0.
        let p = plan(&observed(vec![rolling(3, &all, 2, &[2])], Ok(caught_up_view(3))));
        assert_eq!(p.partitions, vec![1]);
        assert_eq!(
            p.upgrade.and_then(|u| u.updating).as_deref(),
            Some("dc-storage-1")
        );
        let p = plan(&observed(
            vec![rolling(3, &all, 1, &[1, 2])],
            Ok(caught_up_view(3)),
        ));
        assert_eq!(p.partitions, vec![0]);
        // Every pod released: the StatefulSet controller ends the update.
        let p = plan(&observed(
            vec![rolling(3, &all, 0, &[0, 1, 2])],
            Ok(caught_up_view(3)),
        ));
        assert_eq!(p.partitions, vec![0]);
        assert_eq!(
            p.waiting_for.as_deref(),
            Some("the StatefulSet controller to finish the update of dc-storage")
        );
        // It did (current = update): the partition goes back to the replica count.
        let p = plan(&observed(vec![set(3, Some(3), &all)], Ok(caught_up_view(3))));
        assert_eq!((p.partitions, p.upgrade), (vec![3], None));
    }

    #[test]
    fn a_pod_that_does_not_come_back_stops_the_roll() {
        // Goal: an updated pod that never becomes ready (a bad image) or falls out of the
        // ring later holds the partition where it is, however often the plan runs.
        let all = [0, 1, 2];
        for _ in 0..3 {
            let p = plan(&observed(
                vec![rolling(3, &[0, 2], 1, &[1, 2])],
                Ok(caught_up_view(3)),
            ));
            assert_eq!(p.partitions, vec![1]);
            assert_eq!(
                p.waiting_for.as_deref(),
                Some("updating dc-storage-1: waiting for it to be ready")
            );
        }
        // dc-storage-2, updated before, goes down: the roll stops too.
        let mut v = caught_up_view(3);
        v.nodes[2].state = NodeState::Down;
        let p = plan(&observed(vec![rolling(3, &all, 1, &[1, 2])], Ok(v)));
        assert_eq!(p.partitions, vec![1]);
        assert_eq!(
            p.waiting_for.as_deref(),
            Some("updating dc-storage-2: waiting for it to be up in the ring")
        );
        // A pod not yet released is down: nothing more is released.
        let p = plan(&observed(
            vec![rolling(3, &[1, 2], 1, &[1, 2])],
            Ok(caught_up_view(3)),
        ));
        assert_eq!(p.partitions, vec![1]);
        assert_eq!(
            p.waiting_for.as_deref(),
            Some("dc-storage-0 to be ready and up in the ring before it is updated")
        );
    }

    #[test]
    fn no_pod_is_updated_without_the_view_during_a_change_or_before_the_controller_observed() {
        let all = [0, 1, 2];
        let p = plan(&observed(vec![rolling(3, &all, 3, &[])], Err("503".into())));
        assert_eq!(p.partitions, vec![3]);
        assert!(p.upgrade.is_some_and(|u| u.updating.is_none()));
        let mut v = caught_up_view(3);
        v.change = Some(change(ChangeKindName::Join, 3, 1, None));
        let p = plan(&observed(vec![rolling(3, &all, 3, &[])], Ok(v)));
        assert_eq!(p.partitions, vec![3]);
        assert!(
            p.upgrade
                .is_some_and(|u| u.waiting_for.contains("scaling to finish"))
        );
        let mut s = rolling(3, &all, 3, &[]);
        if let Some(r) = s.revisions.as_mut() {
            r.observed = false;
        }
        let p = plan(&observed(vec![s], Ok(caught_up_view(3))));
        assert_eq!(p.partitions, vec![3]);
    }

    #[test]
    fn zones_roll_one_set_after_the_other() {
        // Goal: with two zone sets both changed, only the first is released; the second
        // holds its partition until the first is done.
        let a = SetObserved {
            name: "dc-storage-a".into(),
            ..rolling(1, &[0], 1, &[])
        };
        let b = SetObserved {
            name: "dc-storage-b".into(),
            ..rolling(1, &[0], 1, &[])
        };
        let mut v = view(&[]);
        for name in ["dc-storage-a-0", "dc-storage-b-0"] {
            v.nodes.push(NodeStatus {
                node_id: NodeId::new(name).expect("id"),
                address: format!("http://{name}.{SUFFIX}"),
                zone: None,
                state: NodeState::Up,
                last_heartbeat_ms_ago: None,
                anti_entropy: Some(dynamo_client::AntiEntropyStatus {
                    enabled: true,
                    passes: 1,
                    ..Default::default()
                }),
                volume: None,
                volume_refused: None,
            });
        }
        let mut obs = observed(vec![a.clone(), b.clone()], Ok(v));
        obs.n = 1;
        let p = plan(&obs);
        assert_eq!(p.partitions, vec![0, 1]);
        // a is done (one revision again): b's turn.
        obs.sets[0] = SetObserved {
            name: "dc-storage-a".into(),
            ..set(1, Some(1), &[0])
        };
        let p = plan(&obs);
        assert_eq!(p.partitions, vec![1, 0]);
        assert_eq!(
            p.upgrade.and_then(|u| u.updating).as_deref(),
            Some("dc-storage-b-0")
        );
    }

    #[test]
    fn a_failed_change_of_our_node_is_retried_one_of_others_only_reported() {
        let mut v = view(&[0, 1, 2]);
        v.change = Some(change(ChangeKindName::Join, 3, 0, Some("copy failed")));
        let p = plan(&observed(vec![set(4, Some(4), &[0, 1, 2, 3])], Ok(v.clone())));
        assert_eq!(p.step, Step::RetryChange(node(3)));
        assert!(p.degraded.is_some());
        if let Some(c) = v.change.as_mut() {
            c.change.node = NodeId::new("someone-else").expect("id");
        }
        let p = plan(&observed(vec![set(4, Some(4), &[0, 1, 2, 3])], Ok(v)));
        assert_eq!(p.step, Step::None);
    }

    #[test]
    fn a_member_at_another_address_is_reported_not_re_pointed() {
        let mut v = view(&[0, 1, 2]);
        v.nodes[1].address = "http://elsewhere:7100".into();
        let p = plan(&observed(vec![set(3, Some(3), &[0, 1, 2])], Ok(v)));
        assert_eq!(p.step, Step::None);
        assert!(p.degraded.as_deref().is_some_and(|d| d.contains("dc-storage-1")));
    }

    #[test]
    fn zones_interleave_joins() {
        let sets = vec![
            SetObserved {
                name: "dc-storage-a".into(),
                zone: Some("a".into()),
                ..set(2, Some(2), &[0, 1])
            },
            SetObserved {
                name: "dc-storage-b".into(),
                zone: Some("b".into()),
                ..set(2, Some(2), &[0, 1])
            },
        ];
        let mut obs = observed(sets, Ok(view(&[])));
        obs.n = 1;
        let mut joined = Vec::new();
        let mut v = view(&[]);
        for _ in 0..4 {
            obs.view = Ok(v.clone());
            let Step::Join(r) = plan(&obs).step else {
                panic!("expected a join")
            };
            joined.push(format!("{}@{}", r.node_id, r.zone.clone().unwrap_or_default()));
            v.nodes.push(NodeStatus {
                node_id: r.node_id,
                address: r.address,
                zone: r.zone,
                state: NodeState::Up,
                last_heartbeat_ms_ago: None,
                anti_entropy: None,
                volume: None,
                volume_refused: None,
            });
        }
        assert_eq!(
            joined,
            [
                "dc-storage-a-0@a",
                "dc-storage-b-0@b",
                "dc-storage-a-1@a",
                "dc-storage-b-1@b"
            ]
        );
        obs.view = Ok(v);
        assert_eq!(plan(&obs).step, Step::None);
    }

    #[test]
    fn backoff_doubles_to_a_cap() {
        assert_eq!(backoff(0), Duration::from_secs(5));
        assert_eq!(backoff(1), Duration::from_secs(10));
        assert_eq!(backoff(30), Duration::from_secs(300));
        assert_eq!(ordinal_of("dc-storage", "dc-storage-12"), Some(12));
        assert_eq!(ordinal_of("dc-storage", "dc-storage-a-1"), None);
    }
}
