#!/usr/bin/env python3
"""Checks the Helm chart `helm/dynamo` with the real Helm library and the Kubernetes schemas.

No Kubernetes API server runs on these machines (shared/TESTING.md), so the chart is
tested in the layers that can run here:

1. lint: Helm v4's linter (through `helm-python-sdk`) in strict mode, for the defaults
   and every good values file; any finding, even an informational one, fails;
2. render: the defaults (as an install and as an upgrade) and each
   `values/good-*.yaml`, through Helm's template engine with the chart's
   `values.schema.json`;
3. validate: every rendered manifest with `kubernetes-validate --strict` against two
   Kubernetes versions (custom resources, which it only warns about, get structural
   checks here instead);
4. semantics: small properties no schema states (secrets never in clear, probes,
   resources and a non-root security context on every container, selectors that match,
   a storage PodDisruptionBudget that keeps a quorum, join arguments that match what the
   nodes advertise, a ring group whose replicas, ids and URLs agree everywhere, ...);
5. refusals: each `values/bad-*.yaml` must fail to render with a message naming the bad
   field (its `# expect:` lines).

The chart is checked from a staged copy: when `helm/dynamo/files/alerts.yaml` or
`files/dashboards/*.json` do not exist yet, the minimal placeholders of `fixtures/files/`
stand in for them (only in the copy), so the PrometheusRule and dashboard templates are
rendered either way. The real chart is linted as it is.

Usage: tests/k8s/run.sh (creates the venv), or `.venv-k8s/bin/python tests/k8s/chart.py`.
Prints one line per check and ends with `N passed, M failed`; exits 1 on any failure.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
CHART = ROOT / "helm" / "dynamo"
VALUES_DIR = HERE / "values"
FIXTURES = HERE / "fixtures"
KUBE_VERSIONS = ["1.30.0", "1.33.0"]
RELEASE = "dynamo"
NAMESPACE = "dynamo"
BINARIES = {"dynamo-ring", "dynamo-storage", "dynamo-coordinator", "dynamo", "dynamo-operator"}
# Environment variables that would carry a secret's value: only their `_FILE` forms may
# appear, and never with an inline value.
SECRET_ENV = re.compile(r"^DYNAMO_(ROOT_TOKEN|TOKEN|MEMBER_KEY|CONTROL_KEY|CONTEXT_KEY)$")
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate", "Issuer", "DynamoCluster"}
CRD_FILE = ROOT / "deploy" / "crds" / "dynamo.io_dynamoclusters.yaml"
EXAMPLE = ROOT / "deploy" / "examples" / "dynamocluster.yaml"
# The verbs the operator uses (crates/dynamo-operator), per (apiGroup, resource): the Role
# must grant exactly these, no more.
OPERATOR_VERBS = {
    ("dynamo.io", "dynamoclusters"): {"list", "watch", "patch"},
    ("dynamo.io", "dynamoclusters/status"): {"patch"},
    # Server-side apply of an object that does not exist yet is authorized as `create`.
    ("apps", "statefulsets"): {"get", "list", "watch", "create", "patch"},
    ("apps", "deployments"): {"list", "watch", "create", "patch"},
    ("", "services"): {"create", "patch"},
    ("policy", "poddisruptionbudgets"): {"create", "patch"},
    ("", "pods"): {"list"},
    ("", "secrets"): {"get"},
    ("coordination.k8s.io", "leases"): {"create", "get", "update"},
    ("events.k8s.io", "events"): {"create", "patch"},
}


@dataclass
class Results:
    passed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def check(self, name: str, fn: Callable[[], Any]) -> Any:
        """Runs one check: a returned list of problems (or an exception) fails it."""
        started = time.monotonic()
        try:
            out = fn()
        except Exception as e:  # noqa: BLE001 - any exception is a failed check
            detail = f"{type(e).__name__}: {e}"
            if not isinstance(e, (AssertionError, helm.HelmError)):
                detail += "\n" + traceback.format_exc()
            self.failed.append((name, detail))
            print(f"FAIL {name}\n     {indent(detail)}", flush=True)
            return None
        problems = out if isinstance(out, list) else []
        ms = (time.monotonic() - started) * 1000
        if problems:
            detail = "\n".join(problems)
            self.failed.append((name, detail))
            print(f"FAIL {name} ({ms:.0f} ms)\n     {indent(detail)}", flush=True)
        else:
            self.passed.append(name)
            print(f"ok   {name} ({ms:.0f} ms)", flush=True)
        return out


def indent(text: str) -> str:
    return text.replace("\n", "\n     ")


def load_values(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    return data or {}


def expectations(path: Path) -> list[str]:
    """The `# expect: <text>` lines of a bad values file: each text must be in the error."""
    found = [
        m.group(1).strip()
        for m in re.finditer(r"^#\s*expect:\s*(.+)$", path.read_text(), re.MULTILINE)
    ]
    if not found:
        raise AssertionError(f"{path.name} has no '# expect:' line")
    return found


def stage_chart(tmp: Path) -> tuple[Path, list[str]]:
    """Copies the chart into `tmp`, adding the fixture files the chart does not have yet."""
    staged = tmp / "dynamo"
    shutil.copytree(CHART, staged)
    added = []
    fixture_files = FIXTURES / "files"
    if not (staged / "files" / "alerts.yaml").exists():
        (staged / "files").mkdir(exist_ok=True)
        shutil.copy(fixture_files / "alerts.yaml", staged / "files" / "alerts.yaml")
        added.append("files/alerts.yaml")
    dashboards = staged / "files" / "dashboards"
    if not list(dashboards.glob("*.json")):
        dashboards.mkdir(parents=True, exist_ok=True)
        for f in sorted((fixture_files / "dashboards").glob("*.json")):
            shutil.copy(f, dashboards / f.name)
            added.append(f"files/dashboards/{f.name}")
    return staged, added


@dataclass
class Rendered:
    docs: list[dict[str, Any]]
    notes: str
    values: dict[str, Any]
    by_template: dict[str, str]


def render(chart: helm.Chart, values: dict[str, Any], *, upgrade: bool = False) -> Rendered:
    out = chart.render(
        values,
        name=RELEASE,
        namespace=NAMESPACE,
        is_install=not upgrade,
        is_upgrade=upgrade,
    )
    docs, notes = [], ""
    for name, text in sorted(out.items()):
        if name.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("_template", name)
                docs.append(doc)
    return Rendered(docs=docs, notes=notes, values=chart.merge_values(values), by_template=out)


def lint(path: Path, values: dict[str, Any] | None = None) -> list[str]:
    """Strict lint for both Kubernetes versions; every message is a finding."""
    problems = []
    for kube in KUBE_VERSIONS:
        report = helm.lint(
            str(path),
            values,
            strict=True,
            namespace=NAMESPACE,
            kube_version=f"v{kube}",
        )
        if report.get("total_charts_linted") != 1:
            problems.append(f"[{kube}] linted {report.get('total_charts_linted')} charts, expected 1")
        for m in report.get("messages") or []:
            problems.append(f"[{kube}] severity {m['severity']} {m['path']}: {m['error'].strip()}")
        for e in report.get("errors") or []:
            if not any(e.strip() in p for p in problems):
                problems.append(f"[{kube}] {e.strip()}")
    return problems


# ---------------------------------------------------------------------------------------
# Semantic checks of one rendered value set. Each returns a list of problems.


def clean(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "_template"}


def kn(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") in ("Deployment", "StatefulSet", "Job")]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(doc)
    return list(spec.get("initContainers") or []) + list(spec["containers"])


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env") or []}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d.get("kind") == kind]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def pod_labels(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, str]]]:
    return [(kn(w), w["spec"]["template"]["metadata"].get("labels") or {}) for w in workloads(docs)]


def check_basics(r: Rendered) -> list[str]:
    problems = []
    seen = set()
    for d in r.docs:
        for key in ("apiVersion", "kind", "metadata"):
            if key not in d:
                problems.append(f"{d.get('_template')}: a document without {key}")
        ident = (d.get("kind"), d.get("metadata", {}).get("name"), d.get("metadata", {}).get("namespace"))
        if ident in seen:
            problems.append(f"{kn(d)} is rendered twice")
        seen.add(ident)
        if not d.get("metadata", {}).get("namespace") and d.get("kind") != "CustomResourceDefinition":
            problems.append(f"{kn(d)} has no namespace")
        labels = d.get("metadata", {}).get("labels") or {}
        if labels.get("app.kubernetes.io/instance") != RELEASE:
            problems.append(f"{kn(d)} lacks the app.kubernetes.io/instance label")
    kinds = {d["kind"] for d in r.docs}
    operator = r.values["operator"]["enabled"]
    required = ("CustomResourceDefinition", "DynamoCluster", "Deployment", "Role", "RoleBinding") if operator else ("StatefulSet", "Deployment", "Service")
    for kind in required:
        if kind not in kinds:
            problems.append(f"no {kind} rendered")
    generated = [k for k, s in r.values["secrets"].items() if isinstance(s, dict) and not s["existingSecret"]]
    if len(by_kind(r.docs, "Secret")) != len(generated):
        problems.append(f"{len(by_kind(r.docs, 'Secret'))} Secrets rendered for {len(generated)} generated secrets")
    pdbs = [] if operator else [c for c in ("ring", "storage", "coordinator") if r.values[c]["pdb"]["enabled"]]
    if len(by_kind(r.docs, "PodDisruptionBudget")) != len(pdbs):
        problems.append(f"PodDisruptionBudgets rendered for {len(by_kind(r.docs, 'PodDisruptionBudget'))} components, enabled for {pdbs}")
    if "kubectl" not in r.notes or "root" not in r.notes:
        problems.append("NOTES.txt does not say how to get the root token")
    if "issue 16" not in r.notes:
        problems.append("NOTES.txt does not warn that scaling down needs the operator (issue 16)")
    return problems


def check_secrets_never_in_clear(r: Rendered, raw_values: dict[str, Any]) -> list[str]:
    """No Secret takes its value from the values; no container gets a secret inline."""
    problems = []
    leaves: set[str] = set()

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str) and len(v) >= 8:
            leaves.add(v)

    walk(raw_values)
    for s in by_kind(r.docs, "Secret"):
        if "stringData" in s:
            problems.append(f"{kn(s)} uses stringData (a value in clear)")
        for key, b64 in (s.get("data") or {}).items():
            text = base64.b64decode(b64).decode()
            if any(leaf in text for leaf in leaves):
                problems.append(f"{kn(s)} key {key} holds a string from the values")
            if key != "root-token" and not re.fullmatch(r"(\d{1,3}:[A-Za-z0-9_-]{43,86}\n?)+", text):
                problems.append(f"{kn(s)} key {key} is not a key file (<id>:<base64url>)")
            if key == "root-token" and len(text.strip()) < 16:
                problems.append(f"{kn(s)} root token shorter than 16 characters")
    for w in workloads(r.docs):
        for c in containers(w):
            for e in c.get("env") or []:
                if SECRET_ENV.match(e["name"]):
                    problems.append(f"{kn(w)}/{c['name']} sets {e['name']}: secrets go in files (*_FILE)")
                if e["name"].endswith("_FILE") and "value" in e:
                    mounts = [m["mountPath"] for m in c.get("volumeMounts") or []]
                    if not any(e["value"].startswith(m.rstrip("/") + "/") for m in mounts):
                        problems.append(f"{kn(w)}/{c['name']} {e['name']}={e['value']} is not under a mount")
    return problems


def check_containers(r: Rendered) -> list[str]:
    """Probes, resources, image, command and a locked-down security context everywhere."""
    problems = []
    for w in workloads(r.docs):
        spec = pod_spec(w)
        psc = spec.get("securityContext") or {}
        is_operator = any((c.get("command") or []) == ["dynamo-operator"] for c in containers(w))
        if spec.get("automountServiceAccountToken") is not False and not is_operator:
            problems.append(f"{kn(w)} mounts a service account token it never uses")
        for c in containers(w):
            where = f"{kn(w)}/{c['name']}"
            sc = c.get("securityContext") or {}
            if not (sc.get("runAsNonRoot") or psc.get("runAsNonRoot")):
                problems.append(f"{where}: not runAsNonRoot")
            if (sc.get("runAsUser") or psc.get("runAsUser")) in (None, 0):
                problems.append(f"{where}: no non-zero runAsUser")
            if sc.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{where}: root filesystem not read-only")
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}: privilege escalation allowed")
            if (sc.get("capabilities") or {}).get("drop") != ["ALL"]:
                problems.append(f"{where}: capabilities not dropped (ALL)")
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp != "RuntimeDefault":
                problems.append(f"{where}: seccomp profile {seccomp!r}, not RuntimeDefault")
            res = c.get("resources") or {}
            for part, keys in (("requests", ("cpu", "memory")), ("limits", ("memory",))):
                for k in keys:
                    if k not in (res.get(part) or {}):
                        problems.append(f"{where}: no resources.{part}.{k}")
            cmd = c.get("command") or []
            if len(cmd) != 1 or cmd[0] not in BINARIES:
                problems.append(f"{where}: command {cmd} is not one of the image's binaries")
            if not str(c.get("image", "")).startswith(r.values["image"]["repository"] + ":"):
                problems.append(f"{where}: image {c.get('image')} is not the chart's image")
            if w["kind"] == "Job":
                continue
            ports = {p["name"]: p["containerPort"] for p in c.get("ports") or []}
            for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
                get = (c.get(probe) or {}).get("httpGet") or {}
                if get.get("path") != path:
                    problems.append(f"{where}: {probe} is not an httpGet of {path}")
                elif get.get("port") not in ports:
                    problems.append(f"{where}: {probe} port {get.get('port')} is not a container port")
                # The operator's own port serves only health and metrics, in clear.
                expected = "HTTPS" if r.values["tls"]["enabled"] and not is_operator else "HTTP"
                if get.get("scheme") != expected:
                    problems.append(f"{where}: {probe} scheme {get.get('scheme')}, expected {expected}")
            env = env_of(c)
            listen = (env.get("DYNAMO_LISTEN") or {}).get("value", "")
            if not listen.startswith("0.0.0.0:") or int(listen.split(":")[1]) not in ports.values():
                problems.append(f"{where}: DYNAMO_LISTEN {listen!r} does not bind the container port")
            if is_operator:
                # It holds no member or control key: it talks only to the public API.
                if any(k in env for k in ("DYNAMO_MEMBER_KEY_FILE", "DYNAMO_CONTROL_KEY_FILE")):
                    problems.append(f"{where}: the operator holds no member or control key")
                continue
            if "DYNAMO_MEMBER_KEY_FILE" not in env:
                problems.append(f"{where}: no member key")
            has_control = "DYNAMO_CONTROL_KEY_FILE" in env
            if (cmd == ["dynamo-storage"]) == has_control:
                problems.append(f"{where}: the control key goes to the ring and coordinators only")
    return problems


def check_selectors(r: Rendered) -> list[str]:
    """Workload selectors match their pods; Services, PDBs and NetworkPolicies select pods."""
    problems = []
    pods = pod_labels(r.docs)
    for w in workloads(r.docs):
        if w["kind"] == "Job":
            continue
        sel = w["spec"]["selector"]["matchLabels"]
        if not selects(sel, w["spec"]["template"]["metadata"]["labels"]):
            problems.append(f"{kn(w)}: selector {sel} does not match its pod labels")
        others = [n for n, labels in pods if n != kn(w) and selects(sel, labels)]
        if others:
            problems.append(f"{kn(w)}: selector also matches {others}")
    for s in by_kind(r.docs, "Service"):
        sel = s["spec"].get("selector") or {}
        if not any(selects(sel, labels) for _, labels in pods):
            problems.append(f"{kn(s)}: selector {sel} matches no pod")
    for p in by_kind(r.docs, "PodDisruptionBudget"):
        sel = p["spec"]["selector"]["matchLabels"]
        if not any(selects(sel, labels) for _, labels in pods):
            problems.append(f"{kn(p)}: selector matches no pod")
    for n in [] if r.values["operator"]["enabled"] else by_kind(r.docs, "NetworkPolicy"):
        # With the operator the pods are the operator's, labelled alike (resources.rs).
        sel = n["spec"]["podSelector"]["matchLabels"]
        if not any(selects(sel, labels) for _, labels in pods):
            problems.append(f"{kn(n)}: podSelector matches no pod")
    for sts in by_kind(r.docs, "StatefulSet"):
        svc = [s for s in by_kind(r.docs, "Service") if s["metadata"]["name"] == sts["spec"]["serviceName"]]
        if not svc or svc[0]["spec"].get("clusterIP") != "None":
            problems.append(f"{kn(sts)}: serviceName {sts['spec']['serviceName']} is not a headless Service")
    return problems


def storage_sets(r: Rendered) -> list[dict[str, Any]]:
    return [
        s for s in by_kind(r.docs, "StatefulSet")
        if s["metadata"]["labels"]["app.kubernetes.io/component"] == "storage"
    ]


def of_component(docs: list[dict[str, Any]], kind: str, component: str) -> list[dict[str, Any]]:
    return [d for d in by_kind(docs, kind) if d["metadata"]["labels"]["app.kubernetes.io/component"] == component]


def check_ring(r: Rendered) -> list[str]:
    """The ring group: `ring.replicas` pods started together, each with its ordinal as its
    replica id and the same list of every replica's per-pod URL; a headless Service that
    names pods before they are ready; spread over machines; a PodDisruptionBudget that
    keeps a majority; storage nodes and coordinators given every replica."""
    problems = []
    v = r.values
    if v["operator"]["enabled"]:
        return []
    n = v["ring"]["replicas"]
    rings = of_component(r.docs, "StatefulSet", "ring")
    if len(rings) != 1:
        return [f"{len(rings)} ring StatefulSets"]
    sts = rings[0]
    if sts["spec"]["replicas"] != n:
        problems.append(f"the ring StatefulSet has {sts['spec']['replicas']} replicas, ring.replicas is {n}")
    if sts["spec"].get("podManagementPolicy") != "Parallel":
        problems.append("the ring StatefulSet is not podManagementPolicy Parallel")
    svc = [s for s in by_kind(r.docs, "Service") if s["metadata"]["name"] == sts["spec"]["serviceName"]]
    if not svc or svc[0]["spec"].get("publishNotReadyAddresses") is not True:
        problems.append("the ring's headless Service does not publish not-ready addresses")
    spread = [
        c for c in pod_spec(sts).get("topologySpreadConstraints") or []
        if c.get("topologyKey") == "kubernetes.io/hostname"
        and c.get("whenUnsatisfiable") == "ScheduleAnyway"
        and selects(c["labelSelector"]["matchLabels"], sts["spec"]["template"]["metadata"]["labels"])
    ]
    if not spread:
        problems.append("the ring pods are not spread over hosts (ScheduleAnyway)")
    env = env_of(containers(sts)[0])
    field_path = (((env.get("DYNAMO_REPLICA_ID") or {}).get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
    if field_path != "metadata.labels['apps.kubernetes.io/pod-index']":
        problems.append(f"DYNAMO_REPLICA_ID comes from {field_path!r}, not the pod-index label")
    # Replica i is pod i of the StatefulSet, by its own name under the headless Service.
    scheme = "https" if v["tls"]["enabled"] else "http"
    host = f"{sts['spec']['serviceName']}.{NAMESPACE}.svc.{v['cluster']['domain']}"
    expected = [f"{scheme}://{sts['metadata']['name']}-{i}.{host}:{v['ring']['port']}" for i in range(n)]
    replicas = (env.get("DYNAMO_REPLICAS") or {}).get("value", "")
    items = [x.split("=", 1) for x in replicas.split(",") if x]
    if [x[0] for x in items] != [str(i) for i in range(n)]:
        problems.append(f"DYNAMO_REPLICAS {replicas!r} does not list ids 0..{n - 1}")
    urls = [x[1] if len(x) == 2 else "" for x in items]
    if urls != expected:
        problems.append(f"DYNAMO_REPLICAS URLs {urls} are not the pods' own names {expected}")
    for kind, component in (("StatefulSet", "storage"), ("Deployment", "coordinator")):
        for w in of_component(r.docs, kind, component):
            got = (env_of(containers(w)[0]).get("DYNAMO_RING_URL") or {}).get("value", "")
            if got.split(",") != expected:
                problems.append(f"{kn(w)}: DYNAMO_RING_URL {got!r} does not list the {n} ring replicas {expected}")
    pdbs = of_component(r.docs, "PodDisruptionBudget", "ring")
    if v["ring"]["pdb"]["enabled"]:
        allowed = max(1, (n - 1) // 2)
        if len(pdbs) != 1 or pdbs[0]["spec"].get("maxUnavailable") != allowed:
            got = pdbs[0]["spec"] if pdbs else None
            problems.append(f"the ring PDB {got} is not maxUnavailable {allowed} (a majority of {n} stays)")
    return problems


def check_cluster_shape(r: Rendered) -> list[str]:
    """Storage: parallel, a PVC each, zones as asked; quorum-safe PDB (the ring: check_ring)."""
    problems = []
    v = r.values
    if v["operator"]["enabled"]:
        return check_operator(r)
    rings = of_component(r.docs, "StatefulSet", "ring")
    sets = storage_sets(r)
    zones = v["storage"]["zones"]
    if len(sets) != max(1, len(zones)):
        problems.append(f"{len(sets)} storage StatefulSets for zones {zones}")
    for s in sets + rings:
        if not s["spec"].get("volumeClaimTemplates"):
            problems.append(f"{kn(s)} has no PersistentVolumeClaim template")
        mounts = {m["mountPath"]: m["name"] for m in containers(s)[0].get("volumeMounts") or []}
        env = env_of(containers(s)[0])
        data_dir = env.get("DYNAMO_DATA_DIR", {}).get("value")
        if mounts.get(data_dir) != "data":
            problems.append(f"{kn(s)}: DYNAMO_DATA_DIR {data_dir} is not the data volume")
    for s in sets:
        if s["spec"].get("podManagementPolicy") != "Parallel":
            problems.append(f"{kn(s)} is not podManagementPolicy Parallel")
        zone = s["metadata"]["labels"].get("dynamo.io/zone")
        spec = pod_spec(s)
        if zones:
            terms = (
                spec.get("affinity", {}).get("nodeAffinity", {})
                .get("requiredDuringSchedulingIgnoredDuringExecution", {}).get("nodeSelectorTerms", [])
            )
            ok = any(
                e.get("values") == [zone] and e.get("operator") == "In"
                for t in terms for e in t.get("matchExpressions", [])
            )
            if zone not in zones or not ok:
                problems.append(f"{kn(s)} is not pinned to a listed zone ({zone})")
        else:
            keys = [c["topologyKey"] for c in spec.get("topologySpreadConstraints") or []]
            if "topology.kubernetes.io/zone" not in keys:
                problems.append(f"{kn(s)} does not spread over zones")
    # The quorum: N - max(R, W) nodes may be down and every key still has R and W replicas.
    n, rq, wq = (v["cluster"][k] for k in ("replicas", "readQuorum", "writeQuorum"))
    pdbs = [p for p in by_kind(r.docs, "PodDisruptionBudget") if p["metadata"]["labels"]["app.kubernetes.io/component"] == "storage"]
    if v["storage"]["pdb"]["enabled"]:
        if len(pdbs) != 1:
            problems.append("no storage PodDisruptionBudget")
        else:
            spec = pdbs[0]["spec"]
            allowed = max(1, n - max(rq, wq))
            if "maxUnavailable" not in spec or int(spec["maxUnavailable"]) > allowed:
                problems.append(f"storage PDB {spec} lets more than {allowed} node(s) go (N={n} R={rq} W={wq})")
            total = sum(s["spec"]["replicas"] for s in sets)
            if int(spec.get("maxUnavailable", 0)) >= total:
                problems.append("the storage PDB allows every node to go")
    coord = [d for d in by_kind(r.docs, "Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"] == "coordinator"]
    if len(coord) != 1:
        problems.append("no coordinator Deployment")
    else:
        env = env_of(containers(coord[0])[0])
        got = tuple(int(env[f"DYNAMO_DEFAULT_{k}"]["value"]) for k in "NRW")
        if got != (n, rq, wq):
            problems.append(f"coordinator N/R/W {got} != values {(n, rq, wq)}")
        for k in ("DYNAMO_ROOT_TOKEN_FILE", "DYNAMO_CONTEXT_KEY_FILE", "DYNAMO_CONTROL_KEY_FILE"):
            if k not in env:
                problems.append(f"the coordinator lacks {k}")
    parts = {int(env_of(containers(s)[0]).get("DYNAMO_PARTITIONS", {}).get("value", 0)) for s in sets + rings}
    if parts != {v["cluster"]["partitions"]}:
        problems.append(f"services disagree on the partition count: {parts}")
    return problems


def crd_schema() -> dict[str, Any]:
    """The DynamoCluster CRD's openAPIV3Schema, made strict: an unknown field is refused
    (as `kubectl apply --validate=strict` does) rather than pruned."""
    crd = yaml.safe_load(CRD_FILE.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]

    def strict(node: Any) -> None:
        if isinstance(node, dict):
            if "properties" in node and "additionalProperties" not in node:
                node["additionalProperties"] = False
            for v in node.values():
                strict(v)
        elif isinstance(node, list):
            for v in node:
                strict(v)

    strict(schema)
    schema["properties"]["metadata"] = {"type": "object"}
    schema["properties"]["apiVersion"] = {"const": "dynamo.io/v1alpha1"}
    schema["properties"]["kind"] = {"const": "DynamoCluster"}
    return schema


def validate_dynamo_cluster(doc: dict[str, Any]) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(crd_schema())
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def check_operator(r: Rendered) -> list[str]:
    """The operator mode: no workloads of the chart's own, a DynamoCluster valid against the
    CRD and equal to the values, the chart's CRD equal to deploy/crds/, a Role with exactly
    the operator's verbs."""
    problems = []
    v = r.values
    for kind in ("StatefulSet", "PodDisruptionBudget", "Job"):
        if by_kind(r.docs, kind):
            problems.append(f"a {kind} rendered beside the operator, which owns them")
    crds = by_kind(r.docs, "CustomResourceDefinition")
    committed = yaml.safe_load(CRD_FILE.read_text())
    if len(crds) != 1 or crds[0]["spec"] != committed["spec"]:
        problems.append("the chart's CRD differs from deploy/crds/dynamo.io_dynamoclusters.yaml")
    elif crds[0]["metadata"].get("annotations", {}).get("helm.sh/resource-policy") != "keep":
        problems.append("the CRD is not kept on uninstall (deleting it deletes every DynamoCluster)")
    dcs = by_kind(r.docs, "DynamoCluster")
    if len(dcs) != 1:
        return problems + [f"{len(dcs)} DynamoClusters"]
    dc = clean(dcs[0])
    problems += [f"DynamoCluster: {p}" for p in validate_dynamo_cluster(dc)]
    spec = dc["spec"]
    if spec["storage"]["replicas"] != v["storage"]["replicas"] or spec["partitions"] != v["cluster"]["partitions"]:
        problems.append("the DynamoCluster's storage replicas or partitions differ from the values")
    got = (spec["defaults"]["replicas"], spec["defaults"]["readQuorum"], spec["defaults"]["writeQuorum"])
    if got != (v["cluster"]["replicas"], v["cluster"]["readQuorum"], v["cluster"]["writeQuorum"]):
        problems.append(f"the DynamoCluster's N/R/W {got} differ from the values")
    if spec["ring"]["replicas"] != v["ring"]["replicas"]:
        problems.append(f"the DynamoCluster's ring replicas {spec['ring']['replicas']} differ from the values")
    secrets = {s["metadata"]["name"] for s in by_kind(r.docs, "Secret")}
    for which, ref in spec["secrets"].items():
        if not v["secrets"][which]["existingSecret"] and ref["name"] not in secrets:
            problems.append(f"the DynamoCluster names Secret {ref['name']}, which the chart does not make")
    roles = by_kind(r.docs, "Role")
    if len(roles) != 1 or by_kind(r.docs, "ClusterRole"):
        return problems + [f"{len(roles)} Roles (and no ClusterRole) expected one Role"]
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in roles[0]["rules"]:
        for g in rule["apiGroups"]:
            for res in rule["resources"]:
                granted.setdefault((g, res), set()).update(rule["verbs"])
        if "*" in rule["verbs"] or "*" in rule["resources"]:
            problems.append(f"a wildcard rule: {rule}")
        if rule["resources"] == ["secrets"] and rule.get("resourceNames") != [spec["secrets"]["rootToken"]["name"]]:
            problems.append("the operator may read Secrets other than the root token's")
    if granted != OPERATOR_VERBS:
        problems.append(f"the Role grants {granted}, the operator uses {OPERATOR_VERBS}")
    binding = by_kind(r.docs, "RoleBinding")
    deploy = [d for d in by_kind(r.docs, "Deployment") if d["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"]
    if len(deploy) != 1 or not binding:
        return problems + ["no operator Deployment or RoleBinding"]
    sa = pod_spec(deploy[0])["serviceAccountName"]
    if binding[0]["subjects"][0]["name"] != sa or binding[0]["roleRef"]["name"] != roles[0]["metadata"]["name"]:
        problems.append("the RoleBinding does not bind the operator's ServiceAccount to its Role")
    return problems


def check_example() -> list[str]:
    """deploy/examples/dynamocluster.yaml against the CRD's schema, with a negative control."""
    import copy

    example = yaml.safe_load(EXAMPLE.read_text())
    problems = [f"example: {p}" for p in validate_dynamo_cluster(example)]
    for label, breaker in (
        ("a string count", lambda d: d["spec"]["storage"].__setitem__("replicas", "three")),
        ("an unknown field", lambda d: d["spec"].__setitem__("storageNodes", 3)),
        ("a bad retention policy", lambda d: d["spec"]["storage"]["pvcRetentionPolicy"].__setitem__("whenScaled", "Forget")),
        # An even count is refused by a CEL rule, which only the API server evaluates.
        ("eight ring replicas", lambda d: d["spec"]["ring"].__setitem__("replicas", 8)),
    ):
        broken = copy.deepcopy(example)
        breaker(broken)
        if not validate_dynamo_cluster(broken):
            problems.append(f"the schema accepted {label}")
    return problems


def check_join(r: Rendered) -> list[str]:
    """The join Job registers every storage pod with the address it advertises."""
    problems = []
    jobs = by_kind(r.docs, "Job")
    if not r.values["join"]["enabled"] or r.values["operator"]["enabled"]:
        return [f"{kn(j)} rendered with join.enabled false" for j in jobs]
    if len(jobs) != 1:
        return [f"{len(jobs)} join Jobs"]
    job = jobs[0]
    hooks = set(job["metadata"]["annotations"]["helm.sh/hook"].split(","))
    if hooks != {"post-install", "post-upgrade"}:
        problems.append(f"the join Job runs on {hooks}")
    c = containers(job)[0]
    args = c.get("args") or []
    if args[:2] != ["cluster", "bootstrap"]:
        problems.append(f"the join Job runs {args[:2]}")
    specs = [a for a in args if "=" in a]
    expected = []
    for s in storage_sets(r):
        env = env_of(containers(s)[0])
        advertise = env["DYNAMO_ADVERTISE_ADDRESS"]["value"]
        zone = s["metadata"]["labels"].get("dynamo.io/zone")
        for i in range(s["spec"]["replicas"]):
            pod = f"{s['metadata']['name']}-{i}"
            if len(pod) > 63:
                problems.append(f"node id {pod} is longer than 63 bytes")
            spec = f"{pod}={advertise.replace('$(POD_NAME)', pod)}"
            if zone:
                spec += f"@{zone}"
            expected.append(spec)
    if sorted(specs) != sorted(expected):
        problems.append(f"join arguments {specs} != advertised nodes {expected}")
    env = env_of(c)
    if "DYNAMO_TOKEN_FILE" not in env or "DYNAMO_TOKEN" in env:
        problems.append("the join Job must read the root token from a file")
    coord_svc = [s for s in by_kind(r.docs, "Service") if s["metadata"]["labels"]["app.kubernetes.io/component"] == "coordinator"][0]
    if f"{coord_svc['metadata']['name']}.{NAMESPACE}.svc" not in env["DYNAMO_ENDPOINT"]["value"]:
        problems.append(f"DYNAMO_ENDPOINT {env['DYNAMO_ENDPOINT']['value']} is not the coordinator Service")
    return problems


def check_network_policies(r: Rendered) -> list[str]:
    problems = []
    pols = by_kind(r.docs, "NetworkPolicy")
    if not r.values["networkPolicy"]["enabled"]:
        return [f"{kn(p)} rendered with networkPolicy.enabled false" for p in pols]
    by_component = {p["metadata"]["labels"]["app.kubernetes.io/component"]: p for p in pols}
    # Ring replicas reach each other on the ring's port (Raft votes and replication).
    allowed = {"storage": {"coordinator", "storage", "ring"}, "ring": {"storage", "coordinator", "ring"}}
    for component, peers in allowed.items():
        if component not in by_component:
            problems.append(f"no NetworkPolicy for {component}")
            continue
        got = set()
        for rule in by_component[component]["spec"]["ingress"]:
            for peer in rule.get("from") or [{}]:
                if not peer:
                    problems.append(f"{component}: a rule open to anyone")
                labels = (peer.get("podSelector") or {}).get("matchLabels") or {}
                if "namespaceSelector" in peer:
                    continue  # Prometheus
                got.add(labels.get("app.kubernetes.io/component"))
        if got != peers:
            problems.append(f"{component} is reached by {sorted(got)}, expected {sorted(peers)}")
    if "coordinator" not in by_component:
        problems.append("no NetworkPolicy for the coordinators")
    elif r.values["networkPolicy"]["coordinatorFrom"]:
        text = json.dumps(by_component["coordinator"]["spec"])
        if '"app.kubernetes.io/component": "join"' not in text:
            problems.append("a restricted coordinator policy must still admit the join Job")
        if '"app.kubernetes.io/component": "operator"' not in text:
            problems.append("a restricted coordinator policy must still admit the operator")
    return problems


def check_custom_resources(r: Rendered, staged: Path) -> list[str]:
    """Structural checks of what kubernetes-validate cannot check (no CRD schemas)."""
    problems = []
    v = r.values
    sm = by_kind(r.docs, "ServiceMonitor")
    if v["metrics"]["serviceMonitor"]["enabled"]:
        if len(sm) != 3:
            problems.append(f"{len(sm)} ServiceMonitors, expected 3")
        services = by_kind(r.docs, "Service")
        if v["operator"]["enabled"]:
            # The operator makes the Services (crates/dynamo-operator/src/resources.rs,
            # whose tests pin these labels): stand-ins with the labels it gives them.
            services = [
                {
                    "metadata": {
                        "name": f"{RELEASE}-{c}",
                        "labels": {
                            "app.kubernetes.io/name": "dynamo",
                            "app.kubernetes.io/instance": RELEASE,
                            "app.kubernetes.io/component": c,
                            "dynamo.io/scrape-job": f"dynamo-{c}",
                        },
                    },
                    "spec": {"ports": [{"name": "api"}]},
                }
                for c in ("ring", "storage", "coordinator")
            ]
        for m in sm:
            if m["apiVersion"] != "monitoring.coreos.com/v1":
                problems.append(f"{kn(m)}: apiVersion {m['apiVersion']}")
            sel = m["spec"]["selector"]["matchLabels"]
            matched = [s for s in services if selects(sel, s["metadata"]["labels"])]
            if len(matched) != 1:
                problems.append(f"{kn(m)} selects {len(matched)} Services")
            # files/alerts.yaml finds the targets by job name (`up{job=~".*dynamo.*"}`).
            job = matched[0]["metadata"]["labels"].get(m["spec"].get("jobLabel", ""), "") if matched else ""
            if "dynamo" not in job:
                problems.append(f"{kn(m)}: scrape job {job!r} would not match the alerts' job=~\".*dynamo.*\"")
            for ep in m["spec"]["endpoints"]:
                ports = [p["name"] for s in matched for p in s["spec"]["ports"]]
                if ep["port"] not in ports or ep["path"] != "/metrics":
                    problems.append(f"{kn(m)}: endpoint {ep} is not a /metrics port")
                if v["tls"]["enabled"] and (ep.get("scheme") != "https" or "tlsConfig" not in ep):
                    problems.append(f"{kn(m)}: TLS is on but the scrape is not https")
    elif sm:
        problems.append("ServiceMonitors rendered while disabled")
    rules = by_kind(r.docs, "PrometheusRule")
    if v["metrics"]["prometheusRule"]["enabled"]:
        source = yaml.safe_load((staged / "files" / "alerts.yaml").read_text())
        if len(rules) != 1:
            problems.append(f"{len(rules)} PrometheusRules")
        elif rules[0]["spec"]["groups"] != source["groups"]:
            problems.append("the PrometheusRule's groups differ from files/alerts.yaml")
        else:
            for g in rules[0]["spec"]["groups"]:
                for rule in g.get("rules") or []:
                    if "expr" not in rule or not ({"alert", "record"} & rule.keys()):
                        problems.append(f"group {g.get('name')}: a rule without expr and alert/record")
    elif rules:
        problems.append("a PrometheusRule rendered while disabled")
    dashboards = [c for c in by_kind(r.docs, "ConfigMap") if c["metadata"]["labels"]["app.kubernetes.io/component"] == "dashboards"]
    d = v["metrics"]["dashboards"]
    files = sorted((staged / "files" / "dashboards").glob("*.json"))
    if d["enabled"]:
        if len(dashboards) != len(files):
            problems.append(f"{len(dashboards)} dashboard ConfigMaps for {len(files)} files")
        for c in dashboards:
            if c["metadata"]["labels"].get(d["label"]) != d["labelValue"]:
                problems.append(f"{kn(c)} lacks the Grafana sidecar label {d['label']}")
            for name, text in c["data"].items():
                json.loads(text)
                if not (staged / "files" / "dashboards" / name).exists():
                    problems.append(f"{kn(c)}: {name} is not a dashboard file")
    elif dashboards:
        problems.append("dashboards rendered while disabled")
    certs = by_kind(r.docs, "Certificate")
    tls = v["tls"]
    if tls["enabled"] and tls["certManager"]["enabled"]:
        leaf = [c for c in certs if not c["spec"].get("isCA")]
        if len(leaf) != 1:
            problems.append(f"{len(leaf)} service Certificates")
        else:
            names = leaf[0]["spec"]["dnsNames"]
            for w in by_kind(r.docs, "StatefulSet") + by_kind(r.docs, "Deployment"):
                for c in containers(w):
                    for var in ("DYNAMO_RING_URL", "DYNAMO_ADVERTISE_ADDRESS", "DYNAMO_REPLICAS"):
                        value = env_of(c).get(var, {}).get("value")
                        if not value:
                            continue
                        # A list: comma-separated URLs, or `id=url` items.
                        for url in value.split(","):
                            host = url.split("://")[1].rsplit(":", 1)[0].replace("$(POD_NAME)", "x")
                            ok = host in names or any(
                                n.startswith("*.") and host.split(".", 1)[1] == n[2:] for n in names
                            )
                            if not ok:
                                problems.append(f"the certificate does not name {host} ({var})")
            if leaf[0]["spec"]["secretName"] not in json.dumps([pod_spec(w) for w in workloads(r.docs)]):
                problems.append("no pod mounts the certificate's Secret")
        for c in certs:
            if not c["spec"].get("issuerRef", {}).get("name"):
                problems.append(f"{kn(c)} has no issuer")
    elif certs:
        problems.append("Certificates rendered without tls.certManager")
    if tls["enabled"]:
        for w in workloads(r.docs):
            for c in containers(w):
                env = env_of(c)
                for var in ("DYNAMO_RING_URL", "DYNAMO_ADVERTISE_ADDRESS", "DYNAMO_ENDPOINT", "DYNAMO_REPLICAS"):
                    for url in env[var]["value"].split(",") if var in env else []:
                        if not url.split("=", 1)[-1].startswith("https://"):
                            problems.append(f"{kn(w)}: {var} {url} is not https with TLS on")
    return problems


def semantic_checks(r: Rendered, raw: dict[str, Any], staged: Path) -> list[str]:
    problems = []
    for fn in (check_basics, check_containers, check_selectors, check_cluster_shape, check_ring, check_join, check_network_policies):
        problems += [f"{fn.__name__}: {p}" for p in fn(r)]
    problems += [f"check_secrets_never_in_clear: {p}" for p in check_secrets_never_in_clear(r, raw)]
    problems += [f"check_custom_resources: {p}" for p in check_custom_resources(r, staged)]
    return problems


def checks_notice_breakage(chart: helm.Chart, staged: Path) -> list[str]:
    """A negative control: each semantic check must object to a manifest broken on purpose."""
    import copy

    base = render(chart, {})

    def first(docs: list[dict[str, Any]], kind: str, component: str) -> dict[str, Any]:
        return next(d for d in docs if d["kind"] == kind and d["metadata"]["labels"]["app.kubernetes.io/component"] == component)

    def drop_probe(docs):
        del containers(first(docs, "Deployment", "coordinator"))[0]["readinessProbe"]

    def writable_root(docs):
        containers(first(docs, "StatefulSet", "storage"))[0]["securityContext"]["readOnlyRootFilesystem"] = False

    def wrong_selector(docs):
        first(docs, "StatefulSet", "storage")["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = "x"

    def greedy_pdb(docs):
        first(docs, "PodDisruptionBudget", "storage")["spec"]["maxUnavailable"] = 2

    def secret_in_env(docs):
        containers(first(docs, "Deployment", "coordinator"))[0]["env"].append({"name": "DYNAMO_ROOT_TOKEN", "value": "x" * 20})

    def string_data(docs):
        next(d for d in docs if d["kind"] == "Secret")["stringData"] = {"root-token": "y" * 20}

    def wrong_join(docs):
        containers(first(docs, "Job", "join"))[0]["args"][-1] += "x"

    def open_storage(docs):
        first(docs, "NetworkPolicy", "storage")["spec"]["ingress"][0]["from"].append({"podSelector": {"matchLabels": {"app.kubernetes.io/component": "join"}}})

    def storage_control_key(docs):
        containers(first(docs, "StatefulSet", "storage"))[0]["env"].append({"name": "DYNAMO_CONTROL_KEY_FILE", "value": "/etc/dynamo/secrets/control-key"})

    def ring_ordered(docs):
        first(docs, "StatefulSet", "ring")["spec"]["podManagementPolicy"] = "OrderedReady"

    def ring_ready_names_only(docs):
        del first(docs, "Service", "ring")["spec"]["publishNotReadyAddresses"]

    def ring_replica_missing(docs):
        env = env_of(containers(first(docs, "StatefulSet", "ring"))[0])
        env["DYNAMO_REPLICAS"]["value"] = env["DYNAMO_REPLICAS"]["value"].rsplit(",", 1)[0]

    def ring_id_from_name(docs):
        env = env_of(containers(first(docs, "StatefulSet", "ring"))[0])
        env["DYNAMO_REPLICA_ID"]["valueFrom"]["fieldRef"]["fieldPath"] = "metadata.name"

    def ring_service_url(docs):
        env = env_of(containers(first(docs, "Deployment", "coordinator"))[0])
        env["DYNAMO_RING_URL"]["value"] = f"http://{RELEASE}-ring.{NAMESPACE}.svc.cluster.local:7000"

    def ring_peers_shut_out(docs):
        rule = first(docs, "NetworkPolicy", "ring")["spec"]["ingress"][0]
        rule["from"] = [p for p in rule["from"] if (p.get("podSelector") or {}).get("matchLabels", {}).get("app.kubernetes.io/component") != "ring"]

    def ring_pdb_takes_majority(docs):
        first(docs, "PodDisruptionBudget", "ring")["spec"]["maxUnavailable"] = 2

    def ring_unspread(docs):
        del pod_spec(first(docs, "StatefulSet", "ring"))["topologySpreadConstraints"]

    problems = []
    for breaker in (
        drop_probe, writable_root, wrong_selector, greedy_pdb, secret_in_env, string_data, wrong_join, open_storage,
        storage_control_key, ring_ordered, ring_ready_names_only, ring_replica_missing, ring_id_from_name,
        ring_service_url, ring_peers_shut_out, ring_pdb_takes_majority, ring_unspread,
    ):
        broken = copy.deepcopy(base)
        breaker(broken.docs)
        if not semantic_checks(broken, {}, staged):
            problems.append(f"no check noticed {breaker.__name__}")
    if semantic_checks(base, {}, staged):
        problems.append("the unbroken defaults fail")
    return problems


# ---------------------------------------------------------------------------------------


def kubernetes_validate(files: list[Path], venv_bin: Path) -> list[str]:
    """Runs the real `kubernetes-validate --strict` for every version over every file."""
    exe = venv_bin / "kubernetes-validate"
    cmd = [str(exe) if exe.exists() else "kubernetes-validate", "--strict", "--quiet"]
    for k in KUBE_VERSIONS:
        cmd += ["-k", k]
    proc = subprocess.run(cmd + [str(f) for f in files], capture_output=True, text=True, timeout=300)
    problems = []
    # A negative control: the same command must refuse a field Kubernetes does not have.
    broken = files[0].parent / "negative-control.yaml"
    broken.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80}], "clusterIPz": "None"},
    }))
    control = subprocess.run(cmd + [str(broken)], capture_output=True, text=True, timeout=60)
    if control.returncode == 0 or "clusterIPz" not in control.stdout:
        problems.append(f"kubernetes-validate --strict accepted an unknown field: {control.stdout}")
    broken.unlink()
    for line in (proc.stdout + proc.stderr).splitlines():
        if not line.strip():
            continue
        if line.startswith("WARN") and any(f"kind {k} " in line for k in CUSTOM_KINDS):
            continue  # custom resources: checked structurally in check_custom_resources
        problems.append(line)
    if proc.returncode != 0 and not problems:
        problems.append(f"kubernetes-validate exited {proc.returncode}")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", help="write the rendered manifests to this directory")
    args = parser.parse_args()
    started = time.monotonic()
    results = Results()
    print(f"helm-python-sdk {helm.__version__} (Helm SDK {helm.helm_sdk_version()}), kube {KUBE_VERSIONS}")

    good_files = sorted(VALUES_DIR.glob("good-*.yaml"))
    bad_files = sorted(VALUES_DIR.glob("bad-*.yaml"))
    results.check("values: at least 4 good and 6 bad values files", lambda: [
        p for p in [
            f"only {len(good_files)} good-*.yaml" if len(good_files) < 4 else "",
            f"only {len(bad_files)} bad-*.yaml" if len(bad_files) < 6 else "",
        ] if p
    ])

    with tempfile.TemporaryDirectory(prefix="dynamo-chart-") as tmp_name:
        tmp = Path(tmp_name)
        out_dir = Path(args.keep) if args.keep else tmp / "rendered"
        out_dir.mkdir(parents=True, exist_ok=True)
        staged, added = stage_chart(tmp)
        if added:
            print(f"placeholders from tests/k8s/fixtures stand in for the chart's missing {', '.join(added)}")

        results.check("example: deploy/examples/dynamocluster.yaml against the CRD schema", check_example)
        results.check("lint: helm/dynamo as it is, defaults, strict", lambda: lint(CHART))
        for f in good_files:
            results.check(f"lint: {f.name}, strict", lambda f=f: lint(staged, load_values(f)))

        rendered_files: list[Path] = []
        with helm.Chart.load(str(staged)) as chart:
            sets = [("defaults", {}, False), ("defaults (upgrade)", {}, True)]
            sets += [(f.name, load_values(f), False) for f in good_files]
            for label, values, upgrade in sets:
                def one(label=label, values=values, upgrade=upgrade) -> list[str]:
                    r = render(chart, values, upgrade=upgrade)
                    slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
                    path = out_dir / f"{slug}.yaml"
                    path.write_text(yaml.safe_dump_all([clean(d) for d in r.docs], sort_keys=False))
                    rendered_files.append(path)
                    return semantic_checks(r, values, staged)
                results.check(f"render + semantics: {label}", one)

            results.check("semantics: every check notices a manifest broken on purpose",
                          lambda: checks_notice_breakage(chart, staged))

            # The chart renders whether files/ holds the dashboards and alerts or not.
            def bare() -> list[str]:
                problems = []
                empty = tmp / "empty" / "dynamo"
                shutil.copytree(CHART, empty, ignore=shutil.ignore_patterns("files"))
                for path in (CHART, empty):
                    with helm.Chart.load(str(path)) as c:
                        r = render(c, {"metrics": {"dashboards": {"enabled": True}}})
                        if not by_kind(r.docs, "StatefulSet"):
                            problems.append(f"{path}: nothing rendered")
                        try:
                            render(c, {"metrics": {"prometheusRule": {"enabled": True}}})
                            if path == empty:
                                problems.append("a PrometheusRule without files/alerts.yaml rendered")
                        except helm.HelmError as e:
                            if path == empty and "files/alerts.yaml" not in str(e):
                                problems.append(f"unclear refusal without files/alerts.yaml: {e}")
                            elif path == CHART and (CHART / "files" / "alerts.yaml").exists():
                                problems.append(f"the chart's own files/alerts.yaml is refused: {e}")
                return problems
            results.check("render: with files/ as found, and with no files/ at all", bare)

            results.check(
                f"kubernetes-validate --strict {' '.join(KUBE_VERSIONS)}: {len(rendered_files)} value sets",
                lambda: kubernetes_validate(rendered_files, Path(sys.executable).parent),
            )

            for f in bad_files:
                def refused(f=f) -> list[str]:
                    wanted = expectations(f)
                    try:
                        render(chart, load_values(f))
                    except helm.HelmError as e:
                        message = str(e)
                        missing = [w for w in wanted if w not in message]
                        print(f"     refused with: {indent(message.strip())}")
                        return [f"the error does not name {missing}: {message.strip()}"] if missing else []
                    return ["rendered without an error"]
                results.check(f"refused: {f.name}", refused)

    elapsed = time.monotonic() - started
    print()
    for name, detail in results.failed:
        print(f"failed: {name}")
    print(f"chart checks took {elapsed:.1f} s")
    print(f"{len(results.passed)} passed, {len(results.failed)} failed")
    return 1 if results.failed else 0


if __name__ == "__main__":
    sys.exit(main())
