#!/usr/bin/env python3
"""Keeps the Grafana dashboards and Prometheus alerts honest against the real services.

Goal: a renamed or removed metric breaks this test, not a dashboard or an alert in
production. Method:

1. The dashboards (deploy/grafana/*.json) are valid Grafana JSON: required keys, unique
   panel ids, a gridPos on every panel, every query on the `${datasource}` variable.
2. The alert rules (deploy/prometheus/alerts.yaml) have a severity, a summary, a
   description and a `for:`.
3. Every PromQL expression (panels, template variables, alerts) parses; the metric names
   and label matchers it uses are collected.
4. A real cluster (`dynamo dev`: ring service, 3 storage nodes, a coordinator) starts on
   free loopback ports in a temporary directory; some traffic goes through it (puts,
   gets, a delete, two concurrent writes that leave siblings); every service's /metrics
   is scraped. Every metric used above must be in a scrape (a histogram's `_bucket`,
   `_sum` and `_count` through its family), with the labels and label values the
   matchers name, except for the few series Prometheus or the kubelet provide
   (EXTERNAL_METRICS).
5. `promtool check metrics` is clean on every scrape; `promtool check rules` and
   `promtool test rules` pass on the alert files, `promtool check config` on
   deploy/prometheus/prometheus.yml.
6. A real Prometheus, with that config pointed at the cluster, scrapes it every second
   and loads the alerts; every expression is then evaluated by it (some errors, such as
   many-to-many vector matching, only show at evaluation) and every rule must be healthy.
7. The Helm chart's copies (helm/dynamo/files/) equal the originals.
8. docs/operations.md names every panel and every alert.

promtool and prometheus come from Debian's `prometheus` package. Without them their
checks are skipped with a note, unless DYNAMO_REQUIRE_TOOLS=1, when that is a failure.
The whole run is bounded (RUN_TIMEOUT_S); the cluster, the Prometheus and their
directory are removed on every exit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import promql_parser
import yaml

# The shared port picker (below the ephemeral range: tests/free_ports.py says why).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from free_ports import free_port, free_port_run  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = [REPO / "deploy/grafana/overview.json", REPO / "deploy/grafana/node.json"]
ALERTS = REPO / "deploy/prometheus/alerts.yaml"
ALERTS_TEST = REPO / "deploy/prometheus/alerts_test.yaml"
PROMETHEUS_CONFIG = REPO / "deploy/prometheus/prometheus.yml"
DOCS = REPO / "docs/operations.md"
# Originals and their copies in the Helm chart (scripts/sync-chart-files.sh writes them).
CHART_COPIES = [
    (ALERTS, REPO / "helm/dynamo/files/alerts.yaml"),
    (DASHBOARDS[0], REPO / "helm/dynamo/files/dashboards/overview.json"),
    (DASHBOARDS[1], REPO / "helm/dynamo/files/dashboards/node.json"),
]

# Series that no Dynamo service exports, with who provides them.
EXTERNAL_METRICS = {
    "up": "Prometheus, for every scrape target",
    "kubelet_volume_stats_available_bytes": "the kubelet, for every mounted PVC",
    "kubelet_volume_stats_capacity_bytes": "the kubelet, for every mounted PVC",
}
# Labels Prometheus attaches at scrape time (or a ServiceMonitor's relabelling does).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "endpoint", "container"}
# Grafana's built-in interval variables, and what stands in for them when parsing.
GRAFANA_INTERVALS = {"$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEVERITIES = {"critical", "warning", "info"}

RUN_TIMEOUT_S = 150
CLUSTER_START_TIMEOUT_S = 60
STORAGE_NODES = 3
# Replicas of the ring group `dynamo dev` starts (its default), on ring_port + i.
RING_REPLICAS = 3


class Failures:
    """Collects every failure so one run reports them all."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, what: str) -> None:
        self.items.append(f"{where}: {what}")
        print(f"  FAIL {where}: {what}", flush=True)


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


# ---------------------------------------------------------------- dashboards


def all_panels(panels: list[dict]) -> list[dict]:
    """Returns the panels with those nested in collapsed rows."""
    out = []
    for p in panels:
        out.append(p)
        out.extend(all_panels(p.get("panels", [])))
    return out


def check_dashboard(path: Path, fail: Failures) -> list[tuple[str, str]]:
    """Validates one dashboard; returns its (where, expression) pairs."""
    where = path.relative_to(REPO).as_posix()
    exprs: list[tuple[str, str]] = []
    try:
        d = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        fail.add(where, f"not valid JSON: {e}")
        return exprs
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time", "tags"):
        if key not in d:
            fail.add(where, f"missing top-level key {key!r}")
    if not isinstance(d.get("schemaVersion"), int) or d.get("schemaVersion", 0) < 36:
        fail.add(where, f"schemaVersion {d.get('schemaVersion')!r}: want an integer >= 36")

    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail.add(where, "no `datasource` template variable of type datasource for prometheus")
    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        if v.get("datasource") != DATASOURCE:
            fail.add(where, f"variable {name!r}: datasource is not {DATASOURCE}")
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", q or "")
        if not m:
            fail.add(where, f"variable {name!r}: query {q!r} is not label_values(<selector>, <label>)")
            continue
        exprs.append((f"{where} variable {name}", m.group(1)))

    panels = all_panels(d.get("panels", []))
    if not panels:
        fail.add(where, "no panels")
    ids: dict[int, str] = {}
    titles: set[str] = set()
    for p in panels:
        title = p.get("title", "<untitled>")
        pw = f"{where} panel {p.get('id')} {title!r}"
        if title in titles and p.get("type") != "row":
            fail.add(pw, "title repeated (docs/operations.md describes panels by title)")
        titles.add(title)
        pid = p.get("id")
        if not isinstance(pid, int):
            fail.add(pw, "id is not an integer")
        elif pid in ids:
            fail.add(pw, f"id {pid} already used by {ids[pid]!r}")
        else:
            ids[pid] = title
        for key in ("type", "title"):
            if not p.get(key):
                fail.add(pw, f"missing {key!r}")
        g = p.get("gridPos")
        if not isinstance(g, dict) or not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")):
            fail.add(pw, "gridPos needs integer h, w, x, y")
        elif g["x"] < 0 or g["w"] <= 0 or g["x"] + g["w"] > 24:
            fail.add(pw, f"gridPos {g} leaves the 24-column grid")
        if p.get("type") == "row":
            continue
        if not p.get("description"):
            fail.add(pw, "no description")
        if p.get("datasource") != DATASOURCE:
            fail.add(pw, f"datasource {p.get('datasource')!r} is not {DATASOURCE}")
        targets = p.get("targets") or []
        if not targets:
            fail.add(pw, "no targets")
        refs = set()
        for t in targets:
            if t.get("refId") in refs:
                fail.add(pw, f"refId {t.get('refId')!r} repeated")
            refs.add(t.get("refId"))
            if t.get("datasource", DATASOURCE) != DATASOURCE:
                fail.add(pw, f"target {t.get('refId')}: datasource is not {DATASOURCE}")
            if not t.get("expr"):
                fail.add(pw, f"target {t.get('refId')}: no expr")
                continue
            exprs.append((f"{pw} target {t.get('refId')}", t["expr"]))
    print(f"  {where}: {len(panels)} panels, {len(exprs)} expressions", flush=True)
    return exprs


# ---------------------------------------------------------------- alerts


def check_alert_file(fail: Failures) -> tuple[list[tuple[str, str]], list[str]]:
    """Validates the rule file's shape; returns its (where, expression) pairs and alert names."""
    where = ALERTS.relative_to(REPO).as_posix()
    exprs: list[tuple[str, str]] = []
    names: list[str] = []
    try:
        doc = yaml.safe_load(ALERTS.read_text())
    except (OSError, yaml.YAMLError) as e:
        fail.add(where, f"not valid YAML: {e}")
        return exprs, names
    groups = (doc or {}).get("groups") or []
    if not groups:
        fail.add(where, "no groups")
    for g in groups:
        for r in g.get("rules") or []:
            name = r.get("alert") or r.get("record")
            rw = f"{where} rule {name}"
            exprs.append((rw, str(r.get("expr", ""))))
            if not r.get("alert"):
                continue
            names.append(name)
            if not r.get("for"):
                fail.add(rw, "no `for:`")
            if (r.get("labels") or {}).get("severity") not in SEVERITIES:
                fail.add(rw, f"severity label must be one of {sorted(SEVERITIES)}")
            ann = r.get("annotations") or {}
            for key in ("summary", "description"):
                if not ann.get(key):
                    fail.add(rw, f"no {key} annotation")
    tested = set(re.findall(r"alertname:\s*(\w+)", ALERTS_TEST.read_text())) if ALERTS_TEST.exists() else set()
    for n in names:
        if n not in tested:
            fail.add(ALERTS_TEST.relative_to(REPO).as_posix(), f"no test case for {n}")
    print(f"  {where}: {len(names)} alerts", flush=True)
    return exprs, names


# ---------------------------------------------------------------- PromQL


def substitute_variables(expr: str, values: dict[str, str] | None = None) -> str:
    """Replaces Grafana variables by `values` (default: placeholders PromQL can parse)."""
    for var, value in GRAFANA_INTERVALS.items():
        expr = expr.replace(var, value)

    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        return (values or {}).get(name, f"var_{name}")

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", value, expr)


class Use:
    """A metric an expression uses, with the matchers on it."""

    def __init__(self, where: str, name: str, matchers: list[tuple[str, str, str]]):
        self.where, self.name, self.matchers = where, name, matchers


def parse_uses(where: str, expr: str, fail: Failures) -> list[Use]:
    try:
        ast = promql_parser.parse(substitute_variables(expr))
    except Exception as e:  # noqa: BLE001 - the parser raises plain ValueErrors
        fail.add(where, f"does not parse as PromQL: {e}\n      {expr}")
        return []
    uses: list[Use] = []

    def visit(node) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            matchers = [(m.name, str(m.op).rsplit(".", 1)[-1], m.value) for m in node.matchers.matchers]
            name = node.name
            for m in matchers:
                if m[0] == "__name__":
                    if m[1] != "Equal":
                        fail.add(where, "selects metric names by regex; name them, so this test can check them")
                        return True
                    name = name or m[2]
            if name:
                uses.append(Use(where, name, [m for m in matchers if m[0] != "__name__"]))
            else:
                fail.add(where, "a selector without a metric name")
        return True

    promql_parser.walk(ast, visit)
    return uses


# ---------------------------------------------------------------- the cluster


class Scrape:
    """One service's /metrics: families by type, and the label values of every series."""

    SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+\S+")
    LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

    def __init__(self, service: str, text: str):
        self.service, self.text = service, text
        self.types: dict[str, str] = {}
        self.labels: dict[str, dict[str, set[str]]] = {}
        for line in text.splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split(None, 3)
                self.types[name] = kind.strip()
            elif line and not line.startswith("#"):
                m = self.SAMPLE.match(line)
                if m:
                    series = self.labels.setdefault(m.group(1), {})
                    for k, v in self.LABEL.findall(m.group(2) or ""):
                        series.setdefault(k, set()).add(v)

    def family(self, name: str) -> tuple[str, str] | None:
        """Returns the family and type a sample name belongs to, or None."""
        if name in self.types and self.types[name] not in ("histogram", "summary"):
            return name, self.types[name]
        for suffix in ("_bucket", "_sum", "_count"):
            base = name.removesuffix(suffix)
            if base != name and self.types.get(base) == "histogram":
                return base, "histogram"
        return None


class Cluster:
    """`dynamo dev` in a temporary directory, in a process group of its own."""

    def __init__(self, bin_dir: Path):
        self.bin = bin_dir / "dynamo"
        taken: set[int] = set()
        self.port = free_port(taken)
        taken.add(self.port)
        # Ring replica i listens on ring_port + i (three by default).
        self.ring_port = free_port_run(RING_REPLICAS, taken)
        taken.update(range(self.ring_port, self.ring_port + RING_REPLICAS))
        self.storage_port = free_port_run(STORAGE_NODES, taken)
        self.dir = Path(tempfile.mkdtemp(prefix="dynamo-obs-"))
        self.proc: subprocess.Popen | None = None
        self.out = self.dir / "dev.out"

    def start(self) -> None:
        cmd = [
            str(self.bin), "--data-dir", str(self.dir / "data"), "dev",
            "--nodes", str(STORAGE_NODES), "--port", str(self.port),
            "--ring-port", str(self.ring_port), "--storage-port", str(self.storage_port),
            "--partitions", "16",
        ]
        print("  " + " ".join(cmd), flush=True)
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        deadline = time.monotonic() + CLUSTER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if "ready;" in self.out.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"dynamo dev did not become ready:\n{self.out.read_text(errors='replace')}")

    def token(self) -> str:
        return (self.dir / "data/root-token").read_text().strip()

    def urls(self) -> dict[str, str]:
        u = {"coordinator": f"http://127.0.0.1:{self.port}", "ring": f"http://127.0.0.1:{self.ring_port}"}
        # Every ring replica: only the leader has the replication-lag series.
        for i in range(1, RING_REPLICAS):
            u[f"ring-{i}"] = f"http://127.0.0.1:{self.ring_port + i}"
        for i in range(STORAGE_NODES):
            u[f"storage node-{i}"] = f"http://127.0.0.1:{self.storage_port + i}"
        return u

    def stop(self) -> None:
        """Stops the cluster and removes its directory: SIGTERM to `dynamo dev`, which stops
        its services in order; then SIGKILL to whatever of it is left. The services run in
        process groups of their own, so those are found by their command line, which names
        this run's unique directory."""
        if self.proc and self.proc.poll() is None:
            try:
                self.proc.terminate()
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if self.proc:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()
            self.proc = None
        for pid in self.leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
                print(f"  killed leftover process {pid}", flush=True)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def leftover_pids(self) -> list[int]:
        """Returns the processes whose command line names this run's directory."""
        mark = str(self.dir).encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if mark in (entry / "cmdline").read_bytes():
                        pids.append(int(entry.name))
                except OSError:
                    pass
        return pids


# Loopback only: never through a proxy from the environment.
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request(method: str, url: str, token: str, body: bytes | None = None, headers=None) -> int:
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {token}")
    for k, v in (headers or {}).items():
        req.add_header(k, v)
    try:
        with HTTP.open(req, timeout=10) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        e.read()
        return e.code


def drive_traffic(c: Cluster, fail: Failures, round_: int) -> None:
    """Puts, gets, a delete, and two concurrent writes that leave siblings, on keys of
    their own per round (a write without a context to a key written before would leave
    siblings too)."""
    base, token = f"{c.urls()['coordinator']}/v1/kv/obs-{round_}", c.token()
    text = {"Content-Type": "text/plain"}
    for i in range(20):
        want(request("PUT", f"{base}/k{i}", token, f"v{i}".encode(), text), {200, 204}, f"put k{i}", fail)
    for i in range(20):
        want(request("GET", f"{base}/k{i}", token), {200}, f"get k{i}", fail)
    want(request("DELETE", f"{base}/k0", token), {200, 204}, "delete k0", fail)
    want(request("GET", f"{base}/k0", token), {404}, "get deleted k0", fail)
    want(request("GET", f"{base}/never-written", token), {404}, "get missing key", fail)
    # Two writes without a context are concurrent: the read answers both siblings.
    barrier = threading.Barrier(2)
    codes: list[int] = []

    def write(v: bytes) -> None:
        barrier.wait()
        codes.append(request("PUT", f"{base}/conflict", token, v, text))

    threads = [threading.Thread(target=write, args=(v,)) for v in (b"a", b"b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for code in codes:
        want(code, {200, 204}, "concurrent put", fail)
    want(request("GET", f"{base}/conflict", token), {300}, "get of concurrent writes (siblings)", fail)


def want(code: int, ok: set[int], what: str, fail: Failures) -> None:
    if code not in ok:
        fail.add("traffic", f"{what}: HTTP {code}, want one of {sorted(ok)}")


def scrape_all(c: Cluster) -> list[Scrape]:
    out = []
    for service, url in c.urls().items():
        with HTTP.open(f"{url}/metrics", timeout=10) as r:
            out.append(Scrape(service, r.read().decode()))
    return out


def check_uses(uses: list[Use], scrapes: list[Scrape], fail: Failures) -> None:
    checked = 0
    for u in uses:
        if u.name in EXTERNAL_METRICS:
            continue
        found = [(s, s.family(u.name)) for s in scrapes if s.family(u.name)]
        if not found:
            fail.add(u.where, f"metric {u.name} is in no service's /metrics")
            continue
        checked += 1
        labels: dict[str, set[str]] = {}
        for s, _ in found:
            for k, vs in s.labels.get(u.name, {}).items():
                labels.setdefault(k, set()).update(vs)
        for label, op, value in u.matchers:
            if label in TARGET_LABELS:
                continue
            if label not in labels:
                fail.add(u.where, f"{u.name} has no label {label!r} (it has {sorted(labels)})")
                continue
            if "var_" in value or op in ("NotEqual", "NotRe"):
                continue
            wanted = [value] if op == "Equal" else value.split("|") if re.fullmatch(r"[\w|]+", value) else []
            for v in wanted:
                if v not in labels[label]:
                    fail.add(u.where, f"{u.name} has no series with {label}={v!r} (it has {sorted(labels[label])})")
    print(f"  {checked} metric uses checked against {len(scrapes)} scrapes", flush=True)


# ---------------------------------------------------------------- a real Prometheus


class Prometheus:
    """Debian's Prometheus scraping the cluster every second, with deploy/prometheus's
    config (its targets moved to the cluster's ports) and the alert rules."""

    def __init__(self, binary: str, cluster: Cluster):
        self.binary, self.cluster = binary, cluster
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = cluster.dir / "prometheus"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.dir.mkdir()
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        config["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s"}
        config["rule_files"] = [str(ALERTS)]
        u = self.cluster.urls()
        ports = {
            "dynamo-ring": [v for k, v in u.items() if k.startswith("ring")],
            "dynamo-coordinator": [u["coordinator"]],
            "dynamo-storage": [v for k, v in u.items() if k.startswith("storage")],
        }
        for job in config["scrape_configs"]:
            job["static_configs"] = [{"targets": [t.removeprefix("http://") for t in ports[job["job_name"]]]}]
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        with open(self.dir / "prometheus.log", "wb") as log:
            self.proc = subprocess.Popen(
                [
                    self.binary, f"--config.file={self.dir / 'prometheus.yml'}",
                    f"--storage.tsdb.path={self.dir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )

    def api(self, path: str, **params: str) -> dict:
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        with HTTP.open(url, timeout=10) as r:
            return json.loads(r.read())

    def wait_for(self, what: str, ready, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc and self.proc.poll() is not None:
                break
            try:
                if ready():
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.5)
        log = (self.dir / "prometheus.log").read_text(errors="replace")[-3000:]
        raise RuntimeError(f"prometheus: {what} not reached in {timeout_s} s; log tail:\n{log}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def check_with_prometheus(binary: str, cluster: Cluster, exprs: list[tuple[str, str]], fail: Failures) -> None:
    """Runs every expression in a real Prometheus: parsing is not enough (a vector matching
    that is many-to-many, or a type error, fails only at evaluation), and the rules must load."""
    prom = Prometheus(binary, cluster)
    try:
        prom.start()
        targets = len(cluster.urls())
        prom.wait_for(
            f"{targets} targets up",
            lambda: sum(1 for r in prom.api("query", query="up == 1")["data"]["result"]) == targets,
            20,
        )
        # A few scrapes more, so rate() over them has two samples or more.
        time.sleep(3)
        drive_traffic(cluster, fail, 2)
        time.sleep(2)
        values = {"instance": cluster.urls()["storage node-0"].removeprefix("http://"), "peer": "node-0"}
        empty: list[str] = []
        for where, expr in exprs:
            q = substitute_variables(expr, values).replace(GRAFANA_INTERVALS["$__rate_interval"], "1m")
            try:
                r = prom.api("query", query=q)
            except urllib.error.HTTPError as e:
                fail.add(where, f"Prometheus refused it: {e.read().decode(errors='replace')}\n      {q}")
                continue
            if r.get("status") != "success":
                fail.add(where, f"Prometheus: {r}")
            elif not r["data"]["result"]:
                empty.append(where)
        groups = prom.api("rules")["data"]["groups"]
        rules = [rule for g in groups for rule in g["rules"]]
        for rule in rules:
            if rule.get("health") not in ("ok", "unknown"):
                fail.add(f"rule {rule.get('name')}", f"health {rule.get('health')}: {rule.get('lastError')}")
        print(f"  {len(exprs)} expressions evaluated by Prometheus; {len(rules)} rules loaded", flush=True)
        print(f"  {len(empty)} with no series yet (what did not happen: errors, failures, alerts):", flush=True)
        for where in empty:
            print(f"    {where}", flush=True)
    finally:
        prom.stop()


# ---------------------------------------------------------------- promtool


def tool_path(name: str, fail: Failures) -> str | None:
    """Returns the path of a tool from Debian's `prometheus` package, or None (a skip)."""
    path = shutil.which(name)
    if path:
        return path
    why = f"{name} not found (Debian: apt-get install -y --no-install-recommends prometheus)"
    if os.environ.get("DYNAMO_REQUIRE_TOOLS") == "1":
        fail.add(name, why + "; DYNAMO_REQUIRE_TOOLS=1")
    else:
        print(f"  SKIP the {name} checks: {why}", flush=True)
    return None


def run_promtool(promtool: str, args: list[str], what: str, fail: Failures, stdin: str | None = None) -> None:
    r = subprocess.run(
        [promtool, *args], input=stdin, capture_output=True, text=True, timeout=60, cwd=REPO
    )
    noisy = stdin is not None and (r.stdout.strip() or r.stderr.strip())
    if r.returncode != 0 or noisy:
        fail.add(what, f"promtool {' '.join(args)} (exit {r.returncode}):\n{r.stdout}{r.stderr}")
    else:
        print(f"  ok: {what}", flush=True)


# ---------------------------------------------------------------- main


def check_chart_copies(fail: Failures) -> None:
    for original, copy in CHART_COPIES:
        rel = copy.relative_to(REPO).as_posix()
        if not copy.exists():
            fail.add(rel, "missing; run scripts/sync-chart-files.sh")
        elif copy.read_bytes() != original.read_bytes():
            fail.add(rel, f"differs from {original.relative_to(REPO)}; run scripts/sync-chart-files.sh")
        else:
            print(f"  ok: {rel}", flush=True)


def check_docs(titles: list[str], alerts: list[str], fail: Failures) -> None:
    docs = DOCS.read_text()
    for t in titles:
        if f"**{t}**" not in docs:
            fail.add("docs/operations.md", f"panel {t!r} is not described (as **{t}**)")
    for a in alerts:
        if f"`{a}`" not in docs:
            fail.add("docs/operations.md", f"alert {a} is not described (as `{a}`)")


def main() -> int:
    fail = Failures()
    cluster: Cluster | None = None

    def on_signal(signum, _frame):
        raise SystemExit(f"stopped by signal {signum}")

    def on_timeout(_signum, _frame):
        raise TimeoutError(f"the run took longer than {RUN_TIMEOUT_S} s")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGALRM, on_timeout)
    signal.alarm(RUN_TIMEOUT_S)
    try:
        section("dashboards")
        exprs: list[tuple[str, str]] = []
        titles: list[str] = []
        for path in DASHBOARDS:
            exprs += check_dashboard(path, fail)
            if path.exists():
                titles += [
                    p["title"]
                    for p in all_panels(json.loads(path.read_text()).get("panels", []))
                    if p.get("type") != "row" and p.get("title")
                ]

        section("alert rules")
        alert_exprs, alerts = check_alert_file(fail)
        exprs += alert_exprs

        section("PromQL")
        uses: list[Use] = []
        for where, expr in exprs:
            uses += parse_uses(where, expr, fail)
        names = sorted({u.name for u in uses})
        print(f"  {len(exprs)} expressions parse; {len(names)} metrics used", flush=True)

        section("docs and chart copies")
        check_docs(titles, alerts, fail)
        check_chart_copies(fail)

        section("live cluster")
        cluster = Cluster(Path(os.environ.get("DYNAMO_BIN_DIR", REPO / "target/debug")))
        cluster.start()
        drive_traffic(cluster, fail, 1)
        scrapes = scrape_all(cluster)
        check_uses(uses, scrapes, fail)

        section("promtool")
        promtool = tool_path("promtool", fail)
        if promtool:
            for s in scrapes:
                run_promtool(promtool, ["check", "metrics"], f"/metrics of {s.service}", fail, stdin=s.text)
            run_promtool(promtool, ["check", "rules", str(ALERTS)], "check rules", fail)
            run_promtool(promtool, ["test", "rules", str(ALERTS_TEST)], "test rules", fail)
            run_promtool(promtool, ["check", "config", str(PROMETHEUS_CONFIG)], "check config", fail)

        section("a real Prometheus scraping the cluster")
        prometheus = tool_path("prometheus", fail)
        if prometheus:
            check_with_prometheus(prometheus, cluster, exprs, fail)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - reported, then the cluster is stopped
        fail.add("run", f"{type(e).__name__}: {e}")
    finally:
        signal.alarm(0)
        if cluster:
            cluster.stop()

    if fail.items:
        print(f"\nFAILED: {len(fail.items)} problem(s)", flush=True)
        for f in fail.items:
            print(f"  - {f}")
        return 1
    print("\nOK: dashboards, alerts and metrics agree", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
