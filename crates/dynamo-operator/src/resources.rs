//! The objects the operator owns for a `DynamoCluster`, built as server-side-apply
//! bodies: the ring StatefulSet (one pod per replica of the ring's Raft group) and its
//! headless Service, the storage StatefulSet(s) and their headless Service, the
//! coordinator Deployment and Service, and the PodDisruptionBudgets.
//!
//! They mirror what the Helm chart renders (`helm/dynamo/templates/`): the same names
//! (`<cluster>-ring`, `<cluster>-storage[-<zone>]`, `<cluster>-coordinator`), ports,
//! `DYNAMO_*` variables, secrets mounted as files under `/etc/dynamo/secrets` and passed
//! with `*_FILE` variables, uid 10001, a read-only root filesystem and the binary's name
//! as the command. Pure: no client, so every field is unit-tested.

use std::collections::BTreeMap;

use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::crd::{DynamoCluster, SecretKind, StorageSet};

/// The ring service's port.
pub const RING_PORT: u16 = 7000;
/// The storage nodes' port.
pub const STORAGE_PORT: u16 = 7100;
/// The coordinators' port (container and Service).
pub const COORDINATOR_PORT: u16 = 8080;
/// Where secrets are mounted.
pub const SECRETS_DIR: &str = "/etc/dynamo/secrets";
/// The field manager of the operator's server-side applies.
pub const FIELD_MANAGER: &str = "dynamo-operator";
/// The uid (and gid) every container runs as.
const UID: i64 = 10001;
/// The downward API path of a StatefulSet pod's ordinal (the label Kubernetes 1.30+ sets).
const POD_INDEX_FIELD: &str = "metadata.labels['apps.kubernetes.io/pod-index']";

/// One object to apply: its kind (for the API path) and body.
#[derive(Clone, Debug, PartialEq)]
pub struct Owned {
    /// `StatefulSet`, `Deployment`, `Service` or `PodDisruptionBudget`.
    pub kind: &'static str,
    /// Its name.
    pub name: String,
    /// The apply body, `apiVersion` and `kind` included.
    pub body: Value,
}

/// Names and addresses of one cluster's objects.
#[derive(Clone, Debug)]
pub struct Names {
    /// The `DynamoCluster`'s name.
    pub cluster: String,
    /// Its namespace.
    pub namespace: String,
    /// The `app.kubernetes.io/instance` label: the cluster's own label when it has one
    /// (the Helm chart sets its release's, so its NetworkPolicies select these pods),
    /// else its name.
    pub instance: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The DNS domain.
    pub domain: String,
}

impl Names {
    /// The names of `dc`'s objects.
    pub fn of(dc: &DynamoCluster) -> Names {
        let cluster = dc.name_any();
        Names {
            instance: dc
                .labels()
                .get("app.kubernetes.io/instance")
                .cloned()
                .unwrap_or_else(|| cluster.clone()),
            namespace: dc.namespace().unwrap_or_else(|| "default".into()),
            scheme: if dc.spec.tls.is_some() { "https" } else { "http" },
            domain: dc.spec.cluster_domain.clone(),
            cluster,
        }
    }

    /// `<cluster>-ring`.
    pub fn ring(&self) -> String {
        format!("{}-ring", self.cluster)
    }

    /// `<cluster>-storage`: the headless Service of every storage pod.
    pub fn storage(&self) -> String {
        format!("{}-storage", self.cluster)
    }

    /// `<cluster>-coordinator`.
    pub fn coordinator(&self) -> String {
        format!("{}-coordinator", self.cluster)
    }

    fn host(&self, service: &str) -> String {
        format!("{service}.{}.svc.{}", self.namespace, self.domain)
    }

    /// The URLs of a ring group of `replicas` replicas, in id order: replica `i` is pod
    /// `<cluster>-ring-<i>`, reached by its own name under the headless Service (a Raft
    /// peer must reach that one replica, not whichever pod the Service name resolves to).
    pub fn ring_replica_urls(&self, replicas: i32) -> Vec<String> {
        let ring = self.ring();
        let host = self.host(&ring);
        (0..replicas)
            .map(|i| format!("{}://{ring}-{i}.{host}:{RING_PORT}", self.scheme))
            .collect()
    }

    /// `DYNAMO_REPLICAS` of every ring replica: `0=<url>,1=<url>,...`, the same list for
    /// all of them (a replica's id is its pod's ordinal).
    pub fn ring_replicas(&self, replicas: i32) -> String {
        self.ring_replica_urls(replicas)
            .iter()
            .enumerate()
            .map(|(i, url)| format!("{i}={url}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The ring service's URLs for storage nodes and coordinators (`DYNAMO_RING_URL`):
    /// every replica's, comma-separated; they fail over from one to the next, and any
    /// replica answers reads and forwards writes to its leader.
    pub fn ring_url(&self, replicas: i32) -> String {
        self.ring_replica_urls(replicas).join(",")
    }

    /// The coordinators' URL: where the operator joins and decommissions nodes.
    pub fn coordinator_url(&self) -> String {
        format!(
            "{}://{}:{COORDINATOR_PORT}",
            self.scheme,
            self.host(&self.coordinator())
        )
    }

    /// What follows `<pod>.` in a storage pod's address.
    pub fn storage_address_suffix(&self) -> String {
        format!("{}:{STORAGE_PORT}", self.host(&self.storage()))
    }

    /// The selector labels of a component.
    pub fn selector(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "dynamo".into()),
            ("app.kubernetes.io/instance".into(), self.instance.clone()),
            ("app.kubernetes.io/component".into(), component.into()),
        ])
    }

    /// Every label of a component's objects.
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut l = self.selector(component);
        l.insert("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into());
        l.insert("app.kubernetes.io/part-of".into(), "dynamo".into());
        l.insert("dynamo.io/cluster".into(), self.cluster.clone());
        l
    }
}

/// What the live ring StatefulSet already fixes, if it exists.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveRing {
    /// Its replica count.
    pub replicas: Option<i32>,
    /// Its `podManagementPolicy`, which a StatefulSet never changes.
    pub pod_management_policy: Option<String>,
}

impl LiveRing {
    /// The ring group's size to apply: the spec's, but never fewer than the live
    /// StatefulSet's pods. The group only grows: the leader adds replicas, nothing removes
    /// one, so a shrunk StatefulSet would leave the group counting votes of pods that are
    /// gone. The CRD refuses a lower `spec.ring.replicas` (a CEL rule); this holds even
    /// under a CRD that predates the rule.
    pub fn replicas(&self, dc: &DynamoCluster) -> i32 {
        dc.spec.ring.replicas.max(self.replicas.unwrap_or(0))
    }

    /// Why the spec's ring size is not applied, when it is below the live one.
    pub fn refusal(&self, dc: &DynamoCluster) -> Option<String> {
        let live = self.replicas?;
        (dc.spec.ring.replicas < live).then(|| {
            format!(
                "the ring group only grows: spec.ring.replicas {} is below its {live} replicas, which are kept",
                dc.spec.ring.replicas
            )
        })
    }
}

/// Every object of `dc`, with `storage_replicas[i]` pods in storage set `i` and its
/// rolling update's partition at `storage_partitions[i]` (the plan's, never derived from
/// the spec directly: see `plan`), and the ring StatefulSet shaped by what `ring`
/// already fixes.
pub fn owned(
    dc: &DynamoCluster,
    storage_replicas: &[i32],
    storage_partitions: &[i32],
    ring: &LiveRing,
) -> Vec<Owned> {
    let names = Names::of(dc);
    let ring_replicas = ring.replicas(dc);
    let mut out = vec![
        // Replicas vote and replicate by their pods' names from the moment they start,
        // before they are ready.
        headless(dc, &names, &names.ring(), "ring", RING_PORT, true),
        ring_statefulset(dc, &names, ring_replicas, ring),
        // Peers and the ring service reach a node by name while it starts (a handoff
        // pulls into a node before it is a member).
        headless(dc, &names, &names.storage(), "storage", STORAGE_PORT, true),
    ];
    for ((set, replicas), partition) in dc
        .spec
        .storage_sets(&names.cluster)
        .iter()
        .zip(storage_replicas)
        .zip(storage_partitions)
    {
        out.push(storage_statefulset(
            dc,
            &names,
            set,
            *replicas,
            *partition,
            ring_replicas,
        ));
    }
    out.push(coordinator_service(dc, &names));
    out.push(coordinator_deployment(dc, &names, ring_replicas));
    // A majority of the ring group always stays up: 1 of 3, 2 of 5 may go. A group of one
    // may still be moved; the data path serves from its cached rings meanwhile.
    out.push(pdb(
        dc,
        &names,
        "ring",
        i64::from(((ring_replicas - 1) / 2).max(1)),
    ));
    let n = i64::from(dc.spec.defaults.replicas);
    let quorum = i64::from(dc.spec.defaults.read_quorum.max(dc.spec.defaults.write_quorum));
    // N - max(R, W) nodes down still leave every key a read and a write quorum.
    out.push(pdb(dc, &names, "storage", (n - quorum).max(1)));
    out.push(pdb(dc, &names, "coordinator", 1));
    out
}

/// The owner reference every owned object carries: deleting the cluster deletes them
/// (PVCs follow the retention policy).
fn owner(dc: &DynamoCluster) -> Value {
    let oref = dc
        .controller_owner_ref(&())
        .map(|o| serde_json::to_value(o).unwrap_or(Value::Null));
    json!([oref.unwrap_or(Value::Null)])
}

/// The metadata of a component's Service: its labels and `dynamo.io/scrape-job`, the
/// scrape job's name a ServiceMonitor takes (`jobLabel`), `dynamo-<component>` whatever
/// the cluster is called, as the chart's Services have it (its alerts match jobs on
/// `dynamo`).
fn service_metadata(dc: &DynamoCluster, names: &Names, name: &str, component: &str) -> Value {
    let mut m = metadata(dc, names, name, component);
    m["labels"]["dynamo.io/scrape-job"] = json!(format!("dynamo-{component}"));
    m
}

fn metadata(dc: &DynamoCluster, names: &Names, name: &str, component: &str) -> Value {
    json!({
        "name": name,
        "namespace": names.namespace,
        "labels": names.labels(component),
        "ownerReferences": owner(dc),
    })
}

fn headless(
    dc: &DynamoCluster,
    names: &Names,
    name: &str,
    component: &str,
    port: u16,
    not_ready: bool,
) -> Owned {
    let mut spec = json!({
        "clusterIP": "None",
        "selector": names.selector(component),
        "ports": [{"name": "api", "port": port, "targetPort": "api", "protocol": "TCP"}],
    });
    if not_ready {
        // Each pod's name resolves before the pod is ready (the callers say why).
        spec["publishNotReadyAddresses"] = json!(true);
    }
    Owned {
        kind: "Service",
        name: name.into(),
        body: json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": service_metadata(dc, names, name, component),
            "spec": spec,
        }),
    }
}

fn coordinator_service(dc: &DynamoCluster, names: &Names) -> Owned {
    let name = names.coordinator();
    Owned {
        kind: "Service",
        name: name.clone(),
        body: json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": service_metadata(dc, names, &name, "coordinator"),
            "spec": {
                "type": "ClusterIP",
                "selector": names.selector("coordinator"),
                "ports": [{"name": "api", "port": COORDINATOR_PORT, "targetPort": "api", "protocol": "TCP"}],
            },
        }),
    }
}

fn pdb(dc: &DynamoCluster, names: &Names, component: &str, max_unavailable: i64) -> Owned {
    let name = format!("{}-{component}", names.cluster);
    Owned {
        kind: "PodDisruptionBudget",
        name: name.clone(),
        body: json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata(dc, names, &name, component),
            "spec": {
                "maxUnavailable": max_unavailable,
                "selector": {"matchLabels": names.selector(component)},
            },
        }),
    }
}

fn env(name: &str, value: impl Into<Value>) -> Value {
    json!({"name": name, "value": value.into()})
}

/// Variables every service shares: listening, logs, the member key, TLS.
fn common_env(dc: &DynamoCluster, port: u16) -> Vec<Value> {
    let mut e = vec![
        env("DYNAMO_LISTEN", format!("0.0.0.0:{port}")),
        env("DYNAMO_LOG_JSON", "true"),
        env("DYNAMO_MEMBER_KEY_FILE", format!("{SECRETS_DIR}/member-key")),
    ];
    if dc.spec.tls.is_some() {
        e.push(env("DYNAMO_TLS_CERT_FILE", "/etc/dynamo/tls/tls.crt"));
        e.push(env("DYNAMO_TLS_KEY_FILE", "/etc/dynamo/tls/tls.key"));
        e.push(env("DYNAMO_TLS_CA_FILE", "/etc/dynamo/tls/ca.crt"));
    }
    e
}

/// The pod's volumes: a projected volume with one file per secret, the TLS Secret, /tmp.
fn volumes(dc: &DynamoCluster, names: &Names, secrets: &[SecretKind]) -> Vec<Value> {
    let sources: Vec<Value> = secrets
        .iter()
        .map(|which| {
            let r = dc.spec.secret(&names.cluster, *which);
            json!({"secret": {"name": r.name, "items": [{"key": r.key, "path": which.file()}]}})
        })
        .collect();
    let mut v = vec![json!({"name": "secrets", "projected": {"defaultMode": 0o440, "sources": sources}})];
    if let Some(tls) = &dc.spec.tls {
        v.push(json!({"name": "tls", "secret": {"secretName": tls.secret_name, "defaultMode": 0o440}}));
    }
    v.push(json!({"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}));
    v
}

fn mounts(dc: &DynamoCluster, data: bool) -> Vec<Value> {
    let mut m = Vec::new();
    if data {
        m.push(json!({"name": "data", "mountPath": "/var/lib/dynamo"}));
    }
    m.push(json!({"name": "secrets", "mountPath": SECRETS_DIR, "readOnly": true}));
    if dc.spec.tls.is_some() {
        m.push(json!({"name": "tls", "mountPath": "/etc/dynamo/tls", "readOnly": true}));
    }
    m.push(json!({"name": "tmp", "mountPath": "/tmp"}));
    m
}

fn probes(dc: &DynamoCluster, startup_seconds: i64) -> Value {
    let scheme = if dc.spec.tls.is_some() { "HTTPS" } else { "HTTP" };
    let get = |path: &str| json!({"path": path, "port": "api", "scheme": scheme});
    json!({
        "startupProbe": {"httpGet": get("/healthz"), "periodSeconds": 2, "failureThreshold": startup_seconds / 2},
        "livenessProbe": {"httpGet": get("/healthz"), "periodSeconds": 10, "timeoutSeconds": 3, "failureThreshold": 3},
        "readinessProbe": {"httpGet": get("/readyz"), "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 2},
    })
}

fn container_security() -> Value {
    json!({
        "runAsNonRoot": true,
        "runAsUser": UID,
        "runAsGroup": UID,
        "allowPrivilegeEscalation": false,
        "readOnlyRootFilesystem": true,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    })
}

fn resources_or(
    given: &Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    cpu: &str,
    memory: &str,
    limit: &str,
) -> Value {
    given.as_ref().map_or_else(
        || json!({"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": limit}}),
        |r| serde_json::to_value(r).unwrap_or(Value::Null),
    )
}

#[allow(clippy::too_many_arguments)]
fn container(
    dc: &DynamoCluster,
    name: &str,
    binary: &str,
    port: u16,
    env: Vec<Value>,
    mounts: Vec<Value>,
    resources: Value,
    startup_seconds: i64,
) -> Value {
    let mut c = json!({
        "name": name,
        "image": format!("{}:{}", dc.spec.image.repository, dc.spec.image.tag),
        "imagePullPolicy": dc.spec.image.pull_policy,
        "command": [binary],
        "ports": [{"name": "api", "containerPort": port, "protocol": "TCP"}],
        "env": env,
        "resources": resources,
        "securityContext": container_security(),
        "volumeMounts": mounts,
    });
    if let (Some(c), Value::Object(p)) = (c.as_object_mut(), probes(dc, startup_seconds)) {
        c.extend(p);
    }
    c
}

fn pod_spec(containers: Value, volumes: Vec<Value>) -> Value {
    json!({
        // No pod of the cluster calls the Kubernetes API.
        "automountServiceAccountToken": false,
        "enableServiceLinks": false,
        "terminationGracePeriodSeconds": 30,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": UID,
            "runAsGroup": UID,
            "fsGroup": UID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": containers,
        "volumes": volumes,
    })
}

fn claim(names: &Names, component: &str, size: &str, class: &Option<String>) -> Value {
    let mut spec = json!({"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}});
    if let Some(class) = class {
        spec["storageClassName"] = json!(class);
    }
    json!([{
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data", "labels": names.selector(component)},
        "spec": spec,
    }])
}

/// The ring StatefulSet: `replicas` pods, pod `i` replica `i` of the group.
fn ring_statefulset(dc: &DynamoCluster, names: &Names, replicas: i32, live: &LiveRing) -> Owned {
    let name = names.ring();
    let mut env = common_env(dc, RING_PORT);
    env.extend([
        env_var("DYNAMO_CONTROL_KEY_FILE", format!("{SECRETS_DIR}/control-key")),
        // The replica's id is its pod's ordinal (Kubernetes 1.30+ sets this label).
        json!({"name": "DYNAMO_REPLICA_ID", "valueFrom": {"fieldRef": {"fieldPath": POD_INDEX_FIELD}}}),
        env_var("DYNAMO_REPLICAS", names.ring_replicas(replicas)),
        env_var("DYNAMO_DATA_DIR", "/var/lib/dynamo"),
        env_var("DYNAMO_PARTITIONS", dc.spec.partitions.to_string()),
        env_var("DYNAMO_N", dc.spec.defaults.replicas.to_string()),
    ]);
    let c = container(
        dc,
        "ring",
        "dynamo-ring",
        RING_PORT,
        env,
        mounts(dc, true),
        resources_or(&dc.spec.ring.resources, "100m", "128Mi", "512Mi"),
        60,
    );
    let p = &dc.spec.ring.persistence;
    let mut pod = pod_spec(
        json!([c]),
        volumes(dc, names, &[SecretKind::MemberKey, SecretKind::ControlKey]),
    );
    // One machine's loss should not take a majority of the group with it.
    pod["topologySpreadConstraints"] = json!([{
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": names.selector("ring")},
    }]);
    // All replicas start together, so the group forms in one election (OrderedReady
    // would start each only once the previous one is ready). The field is immutable: a
    // StatefulSet made by an older operator keeps its policy, or every apply would fail.
    let policy = live.pod_management_policy.as_deref().unwrap_or("Parallel");
    Owned {
        kind: "StatefulSet",
        name: name.clone(),
        body: json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": metadata(dc, names, &name, "ring"),
            "spec": {
                "replicas": replicas,
                "serviceName": name,
                "podManagementPolicy": policy,
                // Still one pod at a time, whatever the policy.
                "updateStrategy": {"type": "RollingUpdate"},
                "persistentVolumeClaimRetentionPolicy": {"whenDeleted": "Retain", "whenScaled": "Retain"},
                "selector": {"matchLabels": names.selector("ring")},
                "template": {"metadata": {"labels": names.labels("ring")}, "spec": pod},
                "volumeClaimTemplates": claim(names, "ring", &p.size, &p.storage_class),
            },
        }),
    }
}

fn env_var(name: &str, value: impl Into<String>) -> Value {
    env(name, value.into())
}

fn storage_statefulset(
    dc: &DynamoCluster,
    names: &Names,
    set: &StorageSet,
    replicas: i32,
    partition: i32,
    ring_replicas: i32,
) -> Owned {
    let mut env =
        vec![json!({"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})];
    env.extend(common_env(dc, STORAGE_PORT));
    env.extend([
        env_var("DYNAMO_DATA_DIR", "/var/lib/dynamo"),
        env_var("DYNAMO_PARTITIONS", dc.spec.partitions.to_string()),
        env_var("DYNAMO_DURABILITY", dc.spec.storage.durability.clone()),
        env_var("DYNAMO_RING_URL", names.ring_url(ring_replicas)),
        env_var(
            "DYNAMO_ADVERTISE_ADDRESS",
            format!(
                "{}://$(POD_NAME).{}",
                names.scheme,
                names.storage_address_suffix()
            ),
        ),
    ]);
    let c = container(
        dc,
        "storage",
        "dynamo-storage",
        STORAGE_PORT,
        env,
        mounts(dc, true),
        resources_or(&dc.spec.storage.resources, "500m", "1Gi", "2Gi"),
        600,
    );
    let mut selector = names.selector("storage");
    selector.insert("dynamo.io/storage-set".into(), set.name.clone());
    let mut labels = names.labels("storage");
    labels.insert("dynamo.io/storage-set".into(), set.name.clone());
    let mut meta = metadata(dc, names, &set.name, "storage");
    if let Some(zone) = &set.zone {
        labels.insert("dynamo.io/zone".into(), zone.clone());
        meta["labels"]["dynamo.io/zone"] = json!(zone);
    }
    let mut pod = pod_spec(json!([c]), volumes(dc, names, &[SecretKind::MemberKey]));
    pod["topologySpreadConstraints"] = json!([{
        "maxSkew": 1,
        "topologyKey": "kubernetes.io/hostname",
        "whenUnsatisfiable": "ScheduleAnyway",
        "labelSelector": {"matchLabels": names.selector("storage")},
    }]);
    if let Some(zone) = &set.zone {
        pod["affinity"] = json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "topology.kubernetes.io/zone", "operator": "In", "values": [zone]}]}
        ]}}});
    }
    let p = &dc.spec.storage.persistence;
    let retention = &dc.spec.storage.pvc_retention_policy;
    Owned {
        kind: "StatefulSet",
        name: set.name.clone(),
        body: json!({
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": meta,
            "spec": {
                "replicas": replicas,
                "serviceName": names.storage(),
                // Nodes start together; the operator orders the membership changes.
                "podManagementPolicy": "Parallel",
                // Pods below the partition keep their template: the operator lowers it
                // one ordinal at a time, each pod back in the ring before the next.
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": partition}},
                // Scaled-away volumes go only after the node's decommission finished
                // (the plan shrinks no earlier), and only on the spec's opt-in.
                "persistentVolumeClaimRetentionPolicy": {
                    "whenDeleted": retention.when_deleted.as_str(),
                    "whenScaled": retention.when_scaled.as_str(),
                },
                "selector": {"matchLabels": selector},
                "template": {"metadata": {"labels": labels}, "spec": pod},
                "volumeClaimTemplates": claim(names, "storage", &p.size, &p.storage_class),
            },
        }),
    }
}

fn coordinator_deployment(dc: &DynamoCluster, names: &Names, ring_replicas: i32) -> Owned {
    let name = names.coordinator();
    let mut env = common_env(dc, COORDINATOR_PORT);
    let d = &dc.spec.defaults;
    env.extend([
        env_var("DYNAMO_CONTROL_KEY_FILE", format!("{SECRETS_DIR}/control-key")),
        env_var("DYNAMO_CONTEXT_KEY_FILE", format!("{SECRETS_DIR}/context-key")),
        env_var("DYNAMO_ROOT_TOKEN_FILE", format!("{SECRETS_DIR}/root-token")),
        env_var("DYNAMO_RING_URL", names.ring_url(ring_replicas)),
        env_var("DYNAMO_DEFAULT_N", d.replicas.to_string()),
        env_var("DYNAMO_DEFAULT_R", d.read_quorum.to_string()),
        env_var("DYNAMO_DEFAULT_W", d.write_quorum.to_string()),
    ]);
    let c = container(
        dc,
        "coordinator",
        "dynamo-coordinator",
        COORDINATOR_PORT,
        env,
        mounts(dc, false),
        resources_or(&dc.spec.coordinator.resources, "250m", "256Mi", "1Gi"),
        60,
    );
    let all = [
        SecretKind::RootToken,
        SecretKind::MemberKey,
        SecretKind::ControlKey,
        SecretKind::ContextKey,
    ];
    Owned {
        kind: "Deployment",
        name: name.clone(),
        body: json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(dc, names, &name, "coordinator"),
            "spec": {
                "replicas": dc.spec.coordinator.replicas,
                "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                "selector": {"matchLabels": names.selector("coordinator")},
                "template": {
                    "metadata": {"labels": names.labels("coordinator")},
                    "spec": pod_spec(json!([c]), volumes(dc, names, &all)),
                },
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;

    pub(crate) fn cluster(spec: Value) -> DynamoCluster {
        serde_json::from_value(json!({
            "apiVersion": "dynamo.io/v1alpha1",
            "kind": "DynamoCluster",
            "metadata": {"name": "dc", "namespace": "ns", "uid": "u-1", "generation": 1},
            "spec": spec,
        }))
        .expect("a valid DynamoCluster")
    }

    /// Each body survives a round trip through its typed Kubernetes object unchanged: a
    /// misspelt field (which the typed object drops) fails here, not in a cluster.
    fn round_trips<T: serde::de::DeserializeOwned + serde::Serialize>(o: &Owned) {
        let typed: T = serde_json::from_value(o.body.clone()).unwrap_or_else(|e| panic!("{}: {e}", o.name));
        let back = serde_json::to_value(typed).expect("serializes");
        assert_eq!(
            back, o.body,
            "{} {} has a field Kubernetes does not know",
            o.kind, o.name
        );
    }

    #[test]
    fn every_object_is_a_valid_kubernetes_object() {
        // Goal: the apply bodies use only real fields (typos would be dropped silently by
        // the API server's pruning of the typed object).
        for spec in [
            json!({}),
            json!({"zones": ["a", "b"], "tls": {"secretName": "t"}}),
        ] {
            let dc = cluster(spec);
            let sets = dc.spec.storage_sets("dc").len();
            for o in owned(&dc, &vec![3; sets], &vec![2; sets], &LiveRing::default()) {
                match o.kind {
                    "StatefulSet" => round_trips::<StatefulSet>(&o),
                    "Deployment" => round_trips::<Deployment>(&o),
                    "Service" => round_trips::<Service>(&o),
                    "PodDisruptionBudget" => round_trips::<PodDisruptionBudget>(&o),
                    other => panic!("unexpected kind {other}"),
                }
                assert_eq!(
                    o.body["metadata"]["ownerReferences"][0]["uid"], "u-1",
                    "{} has no owner",
                    o.name
                );
                assert_eq!(o.body["metadata"]["ownerReferences"][0]["controller"], true);
            }
        }
    }

    #[test]
    fn the_objects_mirror_the_chart() {
        let dc = cluster(
            json!({"storage": {"replicas": 5}, "defaults": {"replicas": 3, "readQuorum": 2, "writeQuorum": 2}}),
        );
        let all = owned(&dc, &[4], &[3], &LiveRing::default());
        let by = |name: &str, kind: &str| {
            all.iter()
                .find(|o| o.name == name && o.kind == kind)
                .unwrap_or_else(|| panic!("no {kind} {name}"))
                .body
                .clone()
        };
        let sts = by("dc-storage", "StatefulSet");
        assert_eq!(sts["spec"]["replicas"], 4, "the plan's count, not the spec's");
        assert_eq!(
            sts["spec"]["updateStrategy"],
            json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 3}}),
            "the plan's partition"
        );
        assert_eq!(
            sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"],
            "Retain"
        );
        let c = &sts["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["command"], json!(["dynamo-storage"]));
        assert_eq!(c["securityContext"]["runAsUser"], 10001);
        let env: BTreeMap<String, Value> = c["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_owned(),
                    e["value"].clone(),
                )
            })
            .collect();
        assert_eq!(
            env["DYNAMO_ADVERTISE_ADDRESS"],
            "http://$(POD_NAME).dc-storage.ns.svc.cluster.local:7100"
        );
        assert_eq!(
            env["DYNAMO_RING_URL"],
            "http://dc-ring-0.dc-ring.ns.svc.cluster.local:7000,\
             http://dc-ring-1.dc-ring.ns.svc.cluster.local:7000,\
             http://dc-ring-2.dc-ring.ns.svc.cluster.local:7000"
        );
        assert!(
            !env.contains_key("DYNAMO_CONTROL_KEY_FILE"),
            "storage nodes never get the control key"
        );
        assert!(
            env.keys().all(|k| !k.ends_with("KEY") && !k.ends_with("TOKEN")),
            "secrets only as files"
        );
        let coord = by("dc-coordinator", "Deployment");
        let text = coord.to_string();
        for var in [
            "DYNAMO_ROOT_TOKEN_FILE",
            "DYNAMO_CONTEXT_KEY_FILE",
            "DYNAMO_DEFAULT_N",
        ] {
            assert!(text.contains(var), "coordinator lacks {var}");
        }
        assert_eq!(
            by("dc-storage", "PodDisruptionBudget")["spec"]["maxUnavailable"],
            1
        );
        assert_eq!(
            by("dc-storage", "Service")["spec"]["publishNotReadyAddresses"],
            true
        );
        assert_eq!(by("dc-ring", "StatefulSet")["spec"]["replicas"], 3);
        // The chart's ServiceMonitors name each scrape job by this label.
        for (service, job) in [
            ("dc-ring", "dynamo-ring"),
            ("dc-storage", "dynamo-storage"),
            ("dc-coordinator", "dynamo-coordinator"),
        ] {
            let labels = &by(service, "Service")["metadata"]["labels"];
            assert_eq!(labels["dynamo.io/scrape-job"], job, "{service}");
            assert_eq!(
                labels["app.kubernetes.io/component"],
                job.trim_start_matches("dynamo-")
            );
        }
        assert!(
            by("dc-storage", "StatefulSet")["metadata"]["labels"]
                .get("dynamo.io/scrape-job")
                .is_none(),
            "only Services are scrape targets"
        );
    }

    /// The apply body of `kind` `name` among `all`.
    fn body(all: &[Owned], name: &str, kind: &str) -> Value {
        all.iter()
            .find(|o| o.name == name && o.kind == kind)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
            .body
            .clone()
    }

    /// The env of the first container of a workload's body, by name.
    fn env_of(workload: &Value) -> BTreeMap<String, Value> {
        workload["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .expect("env")
            .iter()
            .map(|e| (e["name"].as_str().unwrap_or_default().to_owned(), e.clone()))
            .collect()
    }

    #[test]
    fn the_ring_runs_as_a_group_of_replicas_named_by_their_pods() {
        // Goal: each ring pod gets its ordinal as its replica id and the same list of
        // every replica's per-pod URL; storage nodes and coordinators get those URLs; the
        // pods start together, spread over machines, resolve before they are ready, and a
        // drain keeps a majority. Method: build the objects for groups of 1, 3 and 5.
        for (replicas, max_unavailable) in [(1, 1), (3, 1), (5, 2)] {
            let dc = cluster(json!({"ring": {"replicas": replicas}}));
            let all = owned(&dc, &[3], &[3], &LiveRing::default());
            let sts = body(&all, "dc-ring", "StatefulSet");
            assert_eq!(sts["spec"]["replicas"], replicas);
            assert_eq!(sts["spec"]["podManagementPolicy"], "Parallel");
            assert_eq!(sts["spec"]["updateStrategy"], json!({"type": "RollingUpdate"}));
            let spread = &sts["spec"]["template"]["spec"]["topologySpreadConstraints"];
            assert_eq!(
                spread,
                &json!([{
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": {
                        "app.kubernetes.io/name": "dynamo",
                        "app.kubernetes.io/instance": "dc",
                        "app.kubernetes.io/component": "ring",
                    }},
                }])
            );
            let env = env_of(&sts);
            assert_eq!(
                env["DYNAMO_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"],
                "metadata.labels['apps.kubernetes.io/pod-index']"
            );
            let urls: Vec<String> = (0..replicas)
                .map(|i| format!("http://dc-ring-{i}.dc-ring.ns.svc.cluster.local:7000"))
                .collect();
            let listed: Vec<String> = urls.iter().enumerate().map(|(i, u)| format!("{i}={u}")).collect();
            assert_eq!(env["DYNAMO_REPLICAS"]["value"], listed.join(","));
            for (name, kind) in [("dc-storage", "StatefulSet"), ("dc-coordinator", "Deployment")] {
                assert_eq!(
                    env_of(&body(&all, name, kind))["DYNAMO_RING_URL"]["value"],
                    urls.join(","),
                    "{name}"
                );
            }
            let svc = body(&all, "dc-ring", "Service");
            assert_eq!(svc["spec"]["clusterIP"], "None");
            assert_eq!(svc["spec"]["publishNotReadyAddresses"], true);
            assert_eq!(
                body(&all, "dc-ring", "PodDisruptionBudget")["spec"]["maxUnavailable"],
                max_unavailable,
                "{replicas} replicas"
            );
        }
    }

    #[test]
    fn ring_urls_follow_tls() {
        let dc = cluster(json!({"tls": {"secretName": "t"}}));
        let names = Names::of(&dc);
        assert_eq!(
            names.ring_replicas(2),
            "0=https://dc-ring-0.dc-ring.ns.svc.cluster.local:7000,\
             1=https://dc-ring-1.dc-ring.ns.svc.cluster.local:7000"
        );
        assert!(
            names
                .ring_url(3)
                .split(',')
                .all(|u| u.starts_with("https://dc-ring-"))
        );
    }

    #[test]
    fn a_live_ring_keeps_its_policy_and_never_shrinks() {
        // Goal: a ring StatefulSet made by an older operator (OrderedReady, immutable) is
        // applied with its own policy, not refused by the API server on every reconcile;
        // and a spec below the live group's size never shrinks it (the group only grows).
        let dc = cluster(json!({"ring": {"replicas": 3}}));
        let older = LiveRing {
            replicas: Some(1),
            pod_management_policy: Some("OrderedReady".into()),
        };
        let all = owned(&dc, &[3], &[3], &older);
        let sts = body(&all, "dc-ring", "StatefulSet");
        assert_eq!(sts["spec"]["podManagementPolicy"], "OrderedReady");
        assert_eq!(sts["spec"]["replicas"], 3, "growing 1 -> 3 goes ahead");
        assert_eq!(older.refusal(&dc), None);

        let bigger = LiveRing {
            replicas: Some(5),
            pod_management_policy: Some("Parallel".into()),
        };
        let all = owned(&dc, &[3], &[3], &bigger);
        assert_eq!(body(&all, "dc-ring", "StatefulSet")["spec"]["replicas"], 5);
        assert_eq!(
            env_of(&body(&all, "dc-coordinator", "Deployment"))["DYNAMO_RING_URL"]["value"]
                .as_str()
                .map(|v| v.split(',').count()),
            Some(5)
        );
        assert_eq!(
            body(&all, "dc-ring", "PodDisruptionBudget")["spec"]["maxUnavailable"],
            2
        );
        let why = bigger.refusal(&dc).expect("a refusal");
        assert!(why.contains("only grows") && why.contains('5'), "{why}");
    }
}
