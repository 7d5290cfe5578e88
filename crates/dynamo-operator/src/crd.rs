//! The `DynamoCluster` custom resource (`dynamo.io/v1alpha1`): what a user asks for
//! (spec) and what the operator reports (status).
//!
//! The CRD committed at `deploy/crds/dynamo.io_dynamoclusters.yaml` is generated from
//! these types (`dynamo-operator crd`); a test fails when the two differ. Defaults mirror
//! the Helm chart's `values.yaml`, so a cluster made by the chart and one made by the
//! operator look the same.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use serde::{Deserialize, Serialize};

/// The finalizer the operator puts on every `DynamoCluster` it manages.
pub const FINALIZER: &str = "dynamo.io/finalizer";

/// A Dynamo cluster: the ring service, the storage nodes and the coordinators.
// kube-derive takes one `printcolumn(...)` per column, which clippy reads as repeats.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "dynamo.io",
    version = "v1alpha1",
    kind = "DynamoCluster",
    namespaced,
    shortname = "dc",
    category = "dynamo",
    status = "DynamoClusterStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.storage.replicas",
        status_replicas_path = ".status.storageReady"
    ),
    printcolumn(
        name = "Storage",
        type_ = "string",
        json_path = ".status.storage",
        description = "storage nodes ready / desired"
    ),
    printcolumn(
        name = "Coordinators",
        type_ = "integer",
        json_path = ".spec.coordinator.replicas",
        priority = "1"
    ),
    printcolumn(
        name = "Epoch",
        type_ = "integer",
        json_path = ".status.ringEpoch",
        description = "the ring epoch"
    ),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Waiting For",
        type_ = "string",
        json_path = ".status.waitingFor",
        priority = "1"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct DynamoClusterSpec {
    /// The image holding every binary; each container's command picks one.
    #[serde(default)]
    pub image: ImageSpec,
    /// Q, the number of partitions: a power of two fixed when the cluster is made (the
    /// ring service refuses its state with another Q), so a change is refused.
    #[serde(default = "default_partitions")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("partitions (Q) is fixed when the cluster is made"))]
    #[x_kube(validation = Rule::new("self >= 2 && self <= 65536 && (self & (self - 1)) == 0").message("partitions must be a power of two from 2 to 65536"))]
    pub partitions: u32,
    /// N, R and W of buckets without their own properties; N is also the ring's N.
    #[serde(default)]
    pub defaults: QuorumSpec,
    /// The ring service (membership), a Raft group of replicas.
    #[serde(default)]
    pub ring: RingSpec,
    /// The storage nodes.
    #[serde(default)]
    pub storage: StorageSpec,
    /// The coordinators (the public API).
    #[serde(default)]
    pub coordinator: CoordinatorSpec,
    /// Failure domains: one storage StatefulSet per zone, `storage.replicas` nodes each,
    /// pinned to it and joined with it (empty: one StatefulSet, nodes without a zone).
    /// Chosen when the cluster is made: moving a node to another zone is a replace.
    #[serde(default)]
    #[schemars(length(max = 8))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("zones are fixed when the cluster is made"))]
    pub zones: Vec<String>,
    /// The Secrets the services read their keys from (files under
    /// `/etc/dynamo/secrets`, never environment values).
    #[serde(default)]
    pub secrets: SecretsSpec,
    /// TLS on every hop, from a Secret with `tls.crt`, `tls.key` and `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsSpec>,
    /// The Kubernetes DNS domain in the services' addresses.
    #[serde(default = "default_domain")]
    pub cluster_domain: String,
}

/// The image and how it is pulled.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Repository, e.g. `dynamo` or `registry.example.com/dynamo`.
    pub repository: String,
    /// Tag.
    pub tag: String,
    /// `Always`, `IfNotPresent` or `Never`.
    #[serde(default = "default_pull_policy")]
    #[schemars(regex(pattern = "^(Always|IfNotPresent|Never)$"))]
    pub pull_policy: String,
}

/// N, R and W.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.readQuorum <= self.replicas && self.writeQuorum <= self.replicas").message("readQuorum and writeQuorum must not exceed replicas"))]
pub struct QuorumSpec {
    /// N: replicas of each key.
    #[schemars(range(min = 1, max = 7))]
    pub replicas: u8,
    /// R: replicas a read waits for.
    #[schemars(range(min = 1, max = 7))]
    pub read_quorum: u8,
    /// W: replicas a write waits for.
    #[schemars(range(min = 1, max = 7))]
    pub write_quorum: u8,
}

/// The ring service: one Raft group, a pod and a volume per replica.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RingSpec {
    /// Replicas of the ring group, odd (1, 3, 5 or 7): a majority must be up for
    /// membership, token and bucket changes, so 3 survive the loss of one pod and 5 of
    /// two, while an even count survives no more than the odd one below it. The group
    /// only grows (the leader adds new replicas; nothing removes one), so a lower count
    /// is refused.
    #[serde(default = "three")]
    #[schemars(range(min = 1, max = 7))]
    #[x_kube(validation = Rule::new("self % 2 == 1").message("ring replicas must be odd (1, 3, 5 or 7)"))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("the ring group only grows"))]
    pub replicas: i32,
    /// Each replica's volume (`raft/`: the group's log and snapshots).
    #[serde(default = "default_ring_volume")]
    pub persistence: PersistenceSpec,
    /// Its container's resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// The storage nodes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Nodes per StatefulSet (per zone with zones). The operator joins new nodes once
    /// ready and decommissions the highest ordinals before shrinking.
    #[serde(default = "three")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// Each node's volume.
    #[serde(default = "default_storage_volume")]
    pub persistence: PersistenceSpec,
    /// What happens to the storage volumes when nodes go (after their decommission) or
    /// the cluster is deleted.
    #[serde(default)]
    pub pvc_retention_policy: PvcRetentionPolicy,
    /// `sync` (fsync, group commit) or `buffered`.
    #[serde(default = "default_durability")]
    #[schemars(regex(pattern = "^(sync|buffered)$"))]
    pub durability: String,
    /// Its containers' resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// The coordinators.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CoordinatorSpec {
    /// How many; any number, up or down, at any time.
    #[serde(default = "two")]
    #[schemars(range(min = 1, max = 1000))]
    pub replicas: i32,
    /// Their containers' resources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// A PersistentVolumeClaim template's size and class.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PersistenceSpec {
    /// Requested size, e.g. `10Gi`.
    pub size: String,
    /// The StorageClass; absent: the cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
}

/// What happens to PersistentVolumeClaims. `Retain` by default: a volume may hold the
/// last copy of a write, so deleting it is an explicit opt-in.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcRetentionPolicy {
    /// When a node goes by a scale-down (only ever after its decommission finished).
    #[serde(default)]
    pub when_scaled: Retention,
    /// When the `DynamoCluster` is deleted.
    #[serde(default)]
    pub when_deleted: Retention,
}

/// Keep or delete a volume.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, schemars::JsonSchema)]
pub enum Retention {
    /// Keep it (the default).
    #[default]
    Retain,
    /// Delete it.
    Delete,
}

impl Retention {
    /// The StatefulSet's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Retention::Retain => "Retain",
            Retention::Delete => "Delete",
        }
    }
}

/// A key of a Secret in the cluster's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// The Secret.
    pub name: String,
    /// The key in it.
    pub key: String,
}

/// The four secrets (`docs/security.md`). Absent: `<cluster>-root-token` with key
/// `root-token`, and so on, as the Helm chart names the ones it generates.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretsSpec {
    /// The root token: coordinators, and the operator (which reads it to join and
    /// decommission nodes through the public API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_token: Option<SecretKeyRef>,
    /// The member key: every service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_key: Option<SecretKeyRef>,
    /// The control key: the ring service and coordinators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_key: Option<SecretKeyRef>,
    /// The context keys: coordinators.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context_key: Option<SecretKeyRef>,
}

/// TLS on every hop.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// A Secret with `tls.crt`, `tls.key` and `ca.crt`, naming every service.
    pub secret_name: String,
}

/// What the operator saw and did, for `kubectl get dc` and `kubectl describe`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DynamoClusterStatus {
    /// The spec generation this status answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Creating`, `Running`, `Scaling`, `Degraded` or `Deleting`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// `Ready`, `Scaling`, `Degraded`, `Upgrading`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Storage nodes ready and members, as a count (the scale subresource's).
    #[serde(default)]
    pub storage_ready: i32,
    /// `ready/desired` storage nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<String>,
    /// The ring epoch the cluster is at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring_epoch: Option<u64>,
    /// The members as the ring service sees them.
    #[serde(default)]
    pub members: Vec<MemberStatus>,
    /// The membership change in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handoff: Option<HandoffStatus>,
    /// What the operator waits for, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_for: Option<String>,
}

/// One member.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Its node id (its pod name).
    pub node_id: String,
    /// `joining`, `up`, `down` or `leaving`.
    pub state: String,
    /// Its zone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

/// The membership change in progress and its handoff.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HandoffStatus {
    /// `join`, `decommission` or `replace`.
    pub kind: String,
    /// The node that joins, leaves or is replaced.
    pub node: String,
    /// Partition copies done.
    pub partitions_done: u64,
    /// Partition copies in this phase.
    pub partitions_total: u64,
    /// Why it is stuck, when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stuck: Option<String>,
}

impl DynamoClusterSpec {
    /// The Secret and key holding `which` secret, named as the Helm chart names the
    /// ones it generates when the spec does not say.
    pub fn secret(&self, cluster: &str, which: SecretKind) -> SecretKeyRef {
        let given = match which {
            SecretKind::RootToken => &self.secrets.root_token,
            SecretKind::MemberKey => &self.secrets.member_key,
            SecretKind::ControlKey => &self.secrets.control_key,
            SecretKind::ContextKey => &self.secrets.context_key,
        };
        given.clone().unwrap_or_else(|| SecretKeyRef {
            name: format!("{cluster}-{}", which.file()),
            key: which.file().to_owned(),
        })
    }

    /// The storage StatefulSets: one per zone, or one without a zone.
    pub fn storage_sets(&self, cluster: &str) -> Vec<StorageSet> {
        let base = format!("{cluster}-storage");
        if self.zones.is_empty() {
            return vec![StorageSet {
                name: base,
                zone: None,
            }];
        }
        self.zones
            .iter()
            .map(|z| StorageSet {
                name: format!("{base}-{z}"),
                zone: Some(z.clone()),
            })
            .collect()
    }
}

/// One storage StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageSet {
    /// Its name, the prefix of its pods' names (the node ids).
    pub name: String,
    /// The zone its nodes join with.
    pub zone: Option<String>,
}

/// The four secrets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretKind {
    /// The root token.
    RootToken,
    /// The member key.
    MemberKey,
    /// The control key.
    ControlKey,
    /// The context keys.
    ContextKey,
}

impl SecretKind {
    /// Its file name under `/etc/dynamo/secrets` (and the chart's Secret suffix and key).
    pub fn file(self) -> &'static str {
        match self {
            SecretKind::RootToken => "root-token",
            SecretKind::MemberKey => "member-key",
            SecretKind::ControlKey => "control-key",
            SecretKind::ContextKey => "context-key",
        }
    }
}

/// Returns the CRD as YAML, as committed under `deploy/crds/`.
///
/// # Panics
/// Never in practice: the CRD is plain data that always serializes.
pub fn crd_yaml() -> String {
    let crd = DynamoCluster::crd();
    let yaml = serde_saphyr::to_string(&crd).expect("a CRD always serializes");
    format!(
        "# Generated by `cargo run -p dynamo-operator -- crd` from crates/dynamo-operator/src/crd.rs;\n# do not edit (a test compares it with the types).\n{yaml}"
    )
}

impl Default for ImageSpec {
    fn default() -> Self {
        ImageSpec {
            repository: "dynamo".into(),
            tag: env!("CARGO_PKG_VERSION").into(),
            pull_policy: default_pull_policy(),
        }
    }
}

impl Default for QuorumSpec {
    fn default() -> Self {
        QuorumSpec {
            replicas: 3,
            read_quorum: 2,
            write_quorum: 2,
        }
    }
}

impl Default for RingSpec {
    fn default() -> Self {
        RingSpec {
            replicas: 3,
            persistence: default_ring_volume(),
            resources: None,
        }
    }
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            replicas: 3,
            persistence: default_storage_volume(),
            pvc_retention_policy: PvcRetentionPolicy::default(),
            durability: default_durability(),
            resources: None,
        }
    }
}

impl Default for CoordinatorSpec {
    fn default() -> Self {
        CoordinatorSpec {
            replicas: 2,
            resources: None,
        }
    }
}

fn default_partitions() -> u32 {
    256
}

fn default_domain() -> String {
    "cluster.local".into()
}

fn default_pull_policy() -> String {
    "IfNotPresent".into()
}

fn default_durability() -> String {
    "sync".into()
}

fn default_ring_volume() -> PersistenceSpec {
    PersistenceSpec {
        size: "1Gi".into(),
        storage_class: None,
    }
}

fn default_storage_volume() -> PersistenceSpec {
    PersistenceSpec {
        size: "10Gi".into(),
        storage_class: None,
    }
}

fn two() -> i32 {
    2
}

fn three() -> i32 {
    3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_immutable_by_a_cel_rule() {
        // Goal: Q cannot change after creation; the API server enforces the rule.
        let crd = serde_json::to_value(DynamoCluster::crd()).expect("json");
        let q = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["partitions"];
        let rules = q["x-kubernetes-validations"]
            .as_array()
            .expect("rules on partitions");
        assert!(rules.iter().any(|r| r["rule"] == "self == oldSelf"), "{q}");
    }

    #[test]
    fn ring_replicas_are_odd_and_only_grow_by_cel_rules() {
        // Goal: the API server refuses an even ring group and a smaller one (the group
        // only grows); the schema alone bounds the count to 1..=7.
        let crd = serde_json::to_value(DynamoCluster::crd()).expect("json");
        let r = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["ring"]["properties"]["replicas"];
        let rules = r["x-kubernetes-validations"]
            .as_array()
            .expect("rules on ring replicas");
        assert!(
            rules
                .iter()
                .any(|x| x["rule"] == "self % 2 == 1"
                    && x["message"].as_str().is_some_and(|m| m.contains("odd"))),
            "{r}"
        );
        assert!(
            rules
                .iter()
                .any(|x| x["rule"] == "self >= oldSelf" && x["message"] == "the ring group only grows"),
            "{r}"
        );
        assert_eq!(
            (r["minimum"].as_f64(), r["maximum"].as_f64()),
            (Some(1.0), Some(7.0)),
            "{r}"
        );
    }

    #[test]
    fn a_minimal_spec_takes_the_charts_defaults() {
        let spec: DynamoClusterSpec = serde_json::from_value(serde_json::json!({})).expect("empty spec");
        assert_eq!(spec.partitions, 256);
        assert_eq!(
            (
                spec.defaults.replicas,
                spec.defaults.read_quorum,
                spec.defaults.write_quorum
            ),
            (3, 2, 2)
        );
        assert_eq!(
            (
                spec.storage.replicas,
                spec.coordinator.replicas,
                spec.ring.replicas
            ),
            (3, 2, 3)
        );
        assert_eq!(spec.storage.pvc_retention_policy.when_scaled, Retention::Retain);
        assert_eq!(spec.secret("dc", SecretKind::RootToken).name, "dc-root-token");
        assert_eq!(spec.storage_sets("dc")[0].name, "dc-storage");
    }
}
