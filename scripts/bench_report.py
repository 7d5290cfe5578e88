#!/usr/bin/env python3
"""Helpers of `scripts/bench.sh` (`make bench`); Python standard library only.

    bench_report.py ports COUNT
        print the first port of a block of COUNT consecutive free loopback ports
    bench_report.py record RESULTS STDOUT STDERR RC KEY=VALUE...
        append one line to RESULTS (JSON lines): the cell's settings (KEY=VALUE), whether
        it succeeded, and the generator's raw JSON line; print a one-line summary
    bench_report.py report RESULTS DOC KEY=VALUE...
        compute the medians, ratios and targets from RESULTS and rewrite the section of
        DOC between the make-bench markers (appended at the end when they are absent)

Every figure in the generated section is computed here from the run's JSON lines.
"""

from __future__ import annotations

import json
import os
import platform
import random
import re
import socket
import statistics
import subprocess
import sys
import textwrap
from datetime import datetime, timezone

START = "<!-- make-bench:start -->"
END = "<!-- make-bench:end -->"

WORKLOADS = [
    ("a", "plain", "A", "50 % read, 50 % update"),
    ("c", "plain", "C", "100 % read"),
    ("w", "plain", "W", "100 % update"),
    ("a", "rmw", "A-rmw", "50 % read, 50 % read-modify-write with the read's context"),
]
OP_ORDER = ["read", "update", "insert", "rmw", "write"]

# Targets of issue 6.
RATIO_TARGET = 3.0
P99_TARGET_MS = 10.0
P999_TARGET_MS = 50.0
KILLED_MIN_FRACTION = 0.70


# ---------------------------------------------------------------------------- ports


def free_ports(count: int) -> int:
    rng = random.Random()
    for _ in range(500):
        # Below Linux's ephemeral range (32768+), so outgoing connections never take them.
        base = rng.randrange(20000, 32000 - count)
        socks = []
        try:
            for port in range(base, base + count):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(s)
                s.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
        return base
    raise SystemExit(f"no block of {count} free loopback ports found")


# ---------------------------------------------------------------------------- record


def parse_kv(items: list[str]) -> dict:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        if value.isdigit():
            out[key] = int(value)
        elif value in ("true", "false"):
            out[key] = value == "true"
        else:
            out[key] = value
    return out


def tail(path: str, lines: int = 5) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "\n".join(f.read().strip().splitlines()[-lines:])
    except OSError:
        return ""


def record(results: str, stdout: str, stderr: str, rc: int, kv: list[str]) -> int:
    cell = parse_kv(kv)
    cell["rc"] = rc
    cell["ok"] = False
    cell["result"] = None
    cell["error"] = None
    with open(stdout, encoding="utf-8", errors="replace") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    if rc == 124:
        cell["error"] = "timed out"
    elif rc != 0:
        cell["error"] = f"exit status {rc}"
    elif len(lines) != 1:
        cell["error"] = f"expected one JSON line on stdout, got {len(lines)}"
    else:
        try:
            result = json.loads(lines[0])
        except json.JSONDecodeError as e:
            cell["error"] = f"stdout is not JSON: {e}"
        else:
            if not isinstance(result, dict) or not isinstance(
                result.get("throughput_ops_s"), (int, float)
            ):
                cell["error"] = "JSON line without a numeric throughput_ops_s"
            else:
                cell["ok"] = True
                cell["result"] = result
    if not cell["ok"]:
        cell["stderr_tail"] = tail(stderr)
        if lines:
            cell["stdout_tail"] = "\n".join(lines[-3:])
    with open(results, "a", encoding="utf-8") as f:
        f.write(json.dumps(cell, sort_keys=True) + "\n")

    label = (
        f"{cell.get('experiment', '?'):<10} rep {cell.get('rep', '?')}  "
        f"{cell.get('cluster', '?'):<8} {workload_label(cell):<6} c={cell.get('concurrency', '?'):<4}"
    )
    if not cell["ok"]:
        print(f"  {label} FAILED: {cell['error']}", file=sys.stderr)
        if cell.get("stderr_tail"):
            print("    " + cell["stderr_tail"].replace("\n", "\n    "), file=sys.stderr)
        return 1
    r = cell["result"]
    lat = r.get("latency_ms") or {}
    p99 = ", ".join(
        f"{op} {fmt_ms(v.get('p99'))}"
        for op, v in sorted_ops(lat)
        if isinstance(v, dict) and v.get("count", 1)
    )
    load = r.get("load")
    load_txt = ""
    if isinstance(load, dict):
        load_txt = f"  [load {fmt_int(load.get('throughput_ops_s'))} ops/s in {fmt_s(load.get('duration_s'))}]"
    print(
        f"  {label} {fmt_int(r['throughput_ops_s']):>8} ops/s  p99 {p99 or '-'} ms  "
        f"errors {fmt_errors(r.get('errors'))}  generator CPU {fmt_pct(r.get('generator_cpu_percent'))}{load_txt}",
        file=sys.stderr,
    )
    return 0


# ---------------------------------------------------------------------------- formatting


def workload_label(cell: dict) -> str:
    w = str(cell.get("workload", "?")).upper()
    return w + ("-rmw" if cell.get("mode") == "rmw" else "")


def sorted_ops(lat: dict):
    return sorted(
        lat.items(), key=lambda kv: (OP_ORDER.index(kv[0]) if kv[0] in OP_ORDER else 99, kv[0])
    )


def fmt_int(x) -> str:
    if not isinstance(x, (int, float)):
        return "–"
    return f"{x:,.0f}".replace(",", " ")


def fmt_ms(x) -> str:
    if not isinstance(x, (int, float)):
        return "–"
    if round(x, 2) < 10:
        return f"{x:.2f}"
    if round(x, 1) < 100:
        return f"{x:.1f}"
    return f"{x:.0f}"


def fmt_s(x) -> str:
    return f"{x:.1f} s" if isinstance(x, (int, float)) else "–"


def fmt_pct(x) -> str:
    return f"{x:.0f} %" if isinstance(x, (int, float)) else "–"


def fmt_ratio(x) -> str:
    return f"{x:.2f}×" if isinstance(x, (int, float)) else "–"


def fmt_errors(errors) -> str:
    if not errors:
        return "0"
    return ", ".join(f"{k} {v}" for k, v in sorted(errors.items()))


def _wrap(text: str, first: str, rest: str) -> str:
    """Wraps at 90 columns like the rest of the docs, never inside a code span, a number
    such as `10 236` or `N = 3`."""
    keep = "\x00"
    text = re.sub(r"`[^`]*`", lambda m: m.group(0).replace(" ", keep), text)
    text = re.sub(r"(?<=\d) (?=\d{3}\b)", keep, text)
    text = re.sub(r"(?<=\w) = (?=\w)", f"{keep}={keep}", text)
    out = textwrap.fill(
        text, 90, initial_indent=first, subsequent_indent=rest,
        break_long_words=False, break_on_hyphens=False,
    )
    return out.replace(keep, " ")


def para(text: str) -> str:
    return _wrap(text, "", "")


def bullet(text: str) -> str:
    return _wrap(text, "- ", "  ")


def ok_word(ok) -> str:
    return {True: "**met**", False: "**not met**", None: "**not measured**"}[ok]


# ---------------------------------------------------------------------------- aggregation


class Cell:
    """The repeats of one cell: medians over the repeats that succeeded."""

    def __init__(self, rows: list[dict]):
        self.rows = rows
        self.ok = [r["result"] for r in rows if r.get("ok")]
        self.failed = len(rows) - len(self.ok)

    def __bool__(self) -> bool:
        return bool(self.ok)

    def median(self, key: str):
        vals = [r[key] for r in self.ok if isinstance(r.get(key), (int, float))]
        return statistics.median(vals) if vals else None

    @property
    def throughput(self):
        return self.median("throughput_ops_s")

    def throughputs(self) -> list:
        return [r["throughput_ops_s"] for r in self.ok]

    def ops(self) -> list[str]:
        names = {}
        for r in self.ok:
            for op, v in (r.get("latency_ms") or {}).items():
                if isinstance(v, dict) and v.get("count", 1):
                    names[op] = v
        return [op for op, _ in sorted_ops(names)]

    def latency(self, op: str, pct: str):
        vals = []
        for r in self.ok:
            v = (r.get("latency_ms") or {}).get(op)
            if isinstance(v, dict) and isinstance(v.get(pct), (int, float)):
                vals.append(v[pct])
        return statistics.median(vals) if vals else None

    def errors(self) -> dict:
        total: dict = {}
        for r in self.ok:
            for k, v in (r.get("errors") or {}).items():
                if isinstance(v, (int, float)) and v:
                    total[k] = total.get(k, 0) + v
        return total

    def error_count(self) -> int:
        return int(sum(self.errors().values()))

    def errors_txt(self) -> str:
        txt = fmt_errors(self.errors())
        if self.failed:
            txt += f" ({self.failed} run{'s' if self.failed > 1 else ''} failed)"
        return txt

    def lat_txt(self, op: str) -> str:
        return " / ".join(fmt_ms(self.latency(op, p)) for p in ("p50", "p99", "p999"))

    def loads(self) -> list[dict]:
        return [r["load"] for r in self.ok if isinstance(r.get("load"), dict)]


def select(rows: list[dict], **kw) -> Cell:
    return Cell([r for r in rows if all(r.get(k) == v for k, v in kw.items())])


# ---------------------------------------------------------------------------- machine


def run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine() -> dict:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = "?"
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                    break
    except OSError:
        pass
    return {
        "nproc": run(["nproc"]) or str(os.cpu_count()),
        "cpu": cpu,
        "mem": mem,
        "kernel": f"{platform.system()} {platform.release()}",
    }


def versions(etcd_bin: str, repo: str) -> dict:
    rustc = run(["rustc", "-V"]) or "rustc ?"
    etcd_out = run([etcd_bin, "--version"])
    m = re.search(r"etcd Version:\s*(\S+)", etcd_out)
    etcd = f"etcd {m.group(1)}" if m else (etcd_out.splitlines()[0] if etcd_out else "etcd ?")
    g = re.search(r"Go Version:\s*(\S+)", etcd_out)
    if g:
        etcd += f" ({g.group(1)})"
    deb = run(["dpkg-query", "-W", "-f=${Version}", "etcd-server"])
    if deb:
        etcd += f", Debian package etcd-server {deb}"
    commit = run(["git", "-C", repo, "rev-parse", "--short=12", "HEAD"]) or "?"
    dirty = run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"])
    if dirty:
        commit += " with uncommitted changes"
    return {"rustc": rustc, "etcd": etcd, "commit": commit}


# ---------------------------------------------------------------------------- report


def report(results: str, doc: str, kv: list[str]) -> int:
    meta = parse_kv(kv)
    rows = []
    with open(results, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    matrix = [r for r in rows if r.get("experiment") == "matrix"]
    concs = sorted({r["concurrency"] for r in matrix}) or [32, 128]
    mach = machine()
    ver = versions(meta.get("etcd_bin", "etcd"), meta.get("repo", "."))
    elapsed = meta.get("elapsed_s")
    now = meta.get("date") or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    failed_runs = sum(1 for r in rows if not r.get("ok"))

    out = [START, "## Dynamo beside etcd (`make bench`)", ""]
    took = ""
    if isinstance(elapsed, int):
        took = f" in {elapsed // 60} min {elapsed % 60:02d} s"
        build = meta.get("build_s")
        if isinstance(build, int) and build > 0:
            took += f" (including a {build} s build)"
    out.append(para(
        f"Generated by `scripts/bench.sh` on {now}{took}; every figure below is computed from "
        "that run's JSON lines. Do not edit this section by hand: the next `make bench` "
        "replaces everything between the `make-bench` markers."
    ))
    out.append("")
    out.append(bullet(
        f"Machine: {mach['nproc']} × {mach['cpu']}, {mach['mem']} RAM, {mach['kernel']}; "
        f"data on {meta.get('fs', '?')} ({meta.get('tmp', '/tmp')}); 1-minute load "
        f"{meta.get('loadavg', '?')} before the run. The clusters and the generator share the cores."
    ))
    out.append(bullet(
        f"Versions: {ver['rustc']}; {ver['etcd']}; this repository at {ver['commit']}."
    ))
    reps = meta.get("repeats", "?")
    reps = "once" if reps == 1 else "twice" if reps == 2 else f"{reps} times"
    out.append(bullet(
        f"Settings: `dynamo bench`, closed loop, {meta.get('distribution', 'zipfian')} keys, "
        f"{fmt_int(meta.get('records'))} records of {fmt_int(meta.get('value_size'))} B inserted "
        f"once per cluster (`--load`, on its first cell), then each cell {meta.get('warmup', '?')} s "
        f"of warm-up and {meta.get('duration', '?')} s measured; every cell run {reps}, the "
        "targets interleaved (cell by cell, Dynamo then etcd), and the tables give the median of "
        "the runs for each figure (each percentile is the median of the runs' percentiles); "
        "errors are summed over the runs, counted by error code and never mixed into latencies."
    ))
    out.append(bullet(
        "Dynamo: `dynamo dev` (ring service, 3 storage nodes, coordinator; separate processes "
        f"talking HTTP/JSON), Q = {meta.get('partitions', 256)}, N = 3, R = 2, W = 2, durability "
        "`sync` (fsync with group commit) unless said otherwise. Updates in `plain` mode are "
        "blind writes to a last-writer-wins bucket (`--conflict lww`, like-for-like with "
        "etcd); in A-rmw each update reads, then writes with the read's context to a "
        "`siblings` bucket, the way Dynamo applications write."
    ))
    out.append(bullet(
        "etcd: 3 members on loopback, each with its own data directory, static bootstrap; "
        "driven through its v3 HTTP/JSON gateway (linearizable reads, puts through Raft); "
        "periodic auto-compaction every 5 min."
    ))
    spreads = []
    for workload, mode, name, _ in WORKLOADS:
        for c in concs:
            for t in ("dynamo", "etcd"):
                cell = select(matrix, target=t, workload=workload, mode=mode, concurrency=c)
                tps = cell.throughputs()
                if len(tps) > 1 and cell.throughput:
                    spread = (max(tps) - min(tps)) / cell.throughput
                    label = f"{'Dynamo' if t == 'dynamo' else 'etcd'} {name} c={c}"
                    spreads.append((spread, label))
    if spreads:
        worst = max(spreads)
        out.append(bullet(
            "Noise: the fastest and the slowest run of a cell are "
            f"{statistics.median(s for s, _ in spreads) * 100:.0f} % of the cell's median apart "
            f"(the median over all cells; at most {worst[0] * 100:.0f} %, {worst[1]}), so a "
            "figure that close to a target is no clear verdict either way."
        ))
    if failed_runs:
        out.append(bullet(
            f"**{failed_runs} run{'s' if failed_runs > 1 else ''} failed** (timed out or no valid JSON line); their cells "
            "show the medians of the runs that succeeded, and the raw lines say why."
        ))
    out.append("")

    # Targets first: they are what the issue asks.
    out.append("### Targets of issue 6 in this run")
    out.append("")
    out.extend(bullet(line[2:]) for line in targets(rows, matrix, concs))
    out.append("")

    for workload, mode, name, what in WORKLOADS:
        out.append(f"### Workload {name} ({what})")
        out.append("")
        out.append(
            "| c | op | Dynamo ops/s | etcd ops/s | Dynamo/etcd | Dynamo p50 / p99 / p99.9 (ms) "
            "| etcd p50 / p99 / p99.9 (ms) | errors Dynamo / etcd | generator CPU (of a core) Dynamo / etcd |"
        )
        out.append("|---:|---|---:|---:|---:|---|---|---|---|")
        sibs = []
        for c in concs:
            d = select(matrix, target="dynamo", workload=workload, mode=mode, concurrency=c)
            e = select(matrix, target="etcd", workload=workload, mode=mode, concurrency=c)
            ops = d.ops() or e.ops() or ["–"]
            for extra in e.ops():
                if extra not in ops:
                    ops.append(extra)
            ratio = (
                d.throughput / e.throughput
                if d.throughput is not None and e.throughput
                else None
            )
            for i, op in enumerate(ops):
                if i == 0:
                    out.append(
                        f"| {c} | {op} | {fmt_int(d.throughput)} | {fmt_int(e.throughput)} | "
                        f"{fmt_ratio(ratio)} | {d.lat_txt(op)} | {e.lat_txt(op)} | "
                        f"{d.errors_txt()} / {e.errors_txt()} | "
                        f"{fmt_pct(d.median('generator_cpu_percent'))} / "
                        f"{fmt_pct(e.median('generator_cpu_percent'))} |"
                    )
                else:
                    out.append(f"| | {op} | | | | {d.lat_txt(op)} | {e.lat_txt(op)} | | |")
            s = d.median("siblings_per_read")
            if s is not None:
                sibs.append(f"c={c} {s:.2f}")
        runs = []
        for c in concs:
            for t in ("dynamo", "etcd"):
                cell = select(matrix, target=t, workload=workload, mode=mode, concurrency=c)
                if cell:
                    runs.append(
                        f"{'Dynamo' if t == 'dynamo' else 'etcd'} c={c}: "
                        + " / ".join(fmt_int(x) for x in cell.throughputs())
                    )
        out.append("")
        notes = []
        if runs:
            notes.append("Ops/s of each run: " + "; ".join(runs) + ".")
        if sibs:
            notes.append("Siblings per read (Dynamo, median): " + ", ".join(sibs) + ".")
        if notes:
            out.append(para(" ".join(notes)))
            out.append("")

    out.extend(load_section(rows))
    out.extend(killed_section(rows, matrix, meta))
    out.extend(durability_section(rows))
    out.extend(fanout_section(rows, meta))
    out.extend(anti_entropy_section(rows, meta))
    out.extend(ae_cost_section(meta.get("ae_results")))
    out.append(para(
        f"Raw JSON lines of this run: `{meta.get('results', results)}` on the machine that ran "
        "it (not committed)."
    ))
    out.append(END)

    section = "\n".join(out) + "\n"
    with open(doc, encoding="utf-8") as f:
        text = f.read()
    if START in text and END in text and text.index(START) < text.index(END):
        before = text[: text.index(START)]
        after = text[text.index(END) + len(END) :]
        after = after[1:] if after.startswith("\n") else after
        text = before + section + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    tmp = doc + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, doc)

    print("targets of issue 6 in this run:")
    for line in targets(rows, matrix, concs):
        print("  " + re.sub(r"\*\*|`", "", line))
    return 0


def targets(rows: list[dict], matrix: list[dict], concs: list[int]) -> list[str]:
    lines = []
    for workload, name in (("a", "A"), ("c", "C")):
        d = select(matrix, target="dynamo", workload=workload, mode="plain", concurrency=32)
        e = select(matrix, target="etcd", workload=workload, mode="plain", concurrency=32)
        if not d or not e or not e.throughput:
            lines.append(
                f"- Workload {name}, c=32: at least {RATIO_TARGET:.0f}× etcd with p99 < "
                f"{P99_TARGET_MS:.0f} ms: {ok_word(None)}."
            )
            continue
        ratio = d.throughput / e.throughput
        p99s = {op: d.latency(op, "p99") for op in d.ops()}
        worst = max((v for v in p99s.values() if v is not None), default=None)
        ok = ratio >= RATIO_TARGET and worst is not None and worst < P99_TARGET_MS
        p99_txt = ", ".join(f"{op} {fmt_ms(v)} ms" for op, v in p99s.items())
        lines.append(
            f"- Workload {name}, c=32: at least {RATIO_TARGET:.0f}× etcd with p99 < "
            f"{P99_TARGET_MS:.0f} ms: {ok_word(ok)}: {fmt_ratio(ratio)} etcd "
            f"({fmt_int(d.throughput)} vs {fmt_int(e.throughput)} ops/s), p99 {p99_txt}."
        )

    worst = None
    over = []
    measured = 0
    for workload, mode, name, _ in WORKLOADS:
        for c in concs:
            d = select(matrix, target="dynamo", workload=workload, mode=mode, concurrency=c)
            for op in d.ops():
                v = d.latency(op, "p999")
                if v is None:
                    continue
                measured += 1
                if worst is None or v > worst[0]:
                    worst = (v, f"{name} c={c} {op}")
                if v >= P999_TARGET_MS:
                    over.append(f"{name} c={c} {op} {fmt_ms(v)} ms")
    if not measured:
        lines.append(f"- p99.9 < {P999_TARGET_MS:.0f} ms in every Dynamo cell: {ok_word(None)}.")
    else:
        detail = (
            f"over in {len(over)}: " + "; ".join(over)
            if over
            else f"the highest is {fmt_ms(worst[0])} ms ({worst[1]})"
        )
        lines.append(
            f"- p99.9 < {P999_TARGET_MS:.0f} ms in every Dynamo cell of the matrix: "
            f"{ok_word(not over)}: {detail}."
        )

    healthy = select(matrix, target="dynamo", workload="a", mode="plain", concurrency=32)
    killed = select(rows, experiment="killed")
    if not healthy or not killed:
        lines.append(
            f"- One storage node killed: within {100 - KILLED_MIN_FRACTION * 100:.0f} % of "
            f"healthy and no failed requests: {ok_word(None)}."
        )
    else:
        frac = killed.throughput / healthy.throughput
        failed = killed.error_count()
        ok = frac >= KILLED_MIN_FRACTION and failed == 0 and not killed.failed
        lines.append(
            f"- One storage node killed (workload A, c=32): within "
            f"{100 - KILLED_MIN_FRACTION * 100:.0f} % of healthy and no failed requests: "
            f"{ok_word(ok)}: {frac * 100:.0f} % of healthy ({fmt_int(killed.throughput)} vs "
            f"{fmt_int(healthy.throughput)} ops/s), {failed} failed request"
            f"{'' if failed == 1 else 's'}."
        )
    return lines


def load_section(rows: list[dict]) -> list[str]:
    out = ["### Load phase (`--load`: every record inserted once, before the first cell)", ""]
    out.append("| cluster | concurrency | records | time | inserts/s | errors |")
    out.append("|---|---:|---:|---:|---:|---|")
    names = {"main": "Dynamo (`sync`)", "etcd": "etcd", "buffered": "Dynamo (`buffered`)"}
    any_row = False
    for cluster in ("main", "etcd", "buffered"):
        for r in rows:
            if r.get("cluster") != cluster or not r.get("ok"):
                continue
            load = r["result"].get("load")
            if not isinstance(load, dict):
                continue
            any_row = True
            out.append(
                f"| {names[cluster]} | {r.get('concurrency')} | {fmt_int(load.get('records'))} | "
                f"{fmt_s(load.get('duration_s'))} | {fmt_int(load.get('throughput_ops_s'))} | "
                f"{fmt_errors(load.get('errors'))} |"
            )
    if not any_row:
        out.append("| – | | | | | no load phase reported |")
    out.append("")
    return out


def killed_section(rows: list[dict], matrix: list[dict], meta: dict) -> list[str]:
    healthy = select(matrix, target="dynamo", workload="a", mode="plain", concurrency=32)
    killed = select(rows, experiment="killed")
    out = ["### One storage node killed (sloppy quorum; workload A, c=32)", ""]
    out.append(para(
        f"After the matrix, `{meta.get('killed_node', 'node-2')}` of the `sync` cluster was "
        "killed with `kill -9` a third of the way into the measured window of the first run; "
        "the other runs found it already dead. With 3 nodes and N = 3 there is no fallback "
        "node, so every write reaches 2 of its 3 replicas (W = 2) and every read 2 of 3 (R = 2). "
        "Failed requests are all the errors the generator counted in those runs."
    ))
    out.append("")
    out.append(
        "| cluster | ops/s (median) | of healthy | read p50 / p99 / p99.9 (ms) "
        "| update p50 / p99 / p99.9 (ms) | failed requests | ops/s of each run |"
    )
    out.append("|---|---:|---:|---|---|---|---|")
    for name, cell in (("healthy (the matrix's A, c=32)", healthy), ("one node killed", killed)):
        frac = (
            f"{cell.throughput / healthy.throughput * 100:.0f} %"
            if cell and healthy and healthy.throughput
            else "–"
        )
        out.append(
            f"| {name} | {fmt_int(cell.throughput)} | {frac} | {cell.lat_txt('read')} | "
            f"{cell.lat_txt('update')} | {cell.errors_txt()} | "
            f"{' / '.join(fmt_int(x) for x in cell.throughputs()) or '–'} |"
        )
    out.append("")
    if killed and healthy and healthy.throughput and killed.throughput > healthy.throughput:
        out.append(para(
            "Above 100 %: every process shares the same cores, so a dead node also frees "
            "CPU for the rest; the figure says that, not that the store gains from a failure."
        ))
        out.append("")
    return out


def durability_section(rows: list[dict]) -> list[str]:
    sync = select(rows, experiment="durability", cluster="main")
    buffered = select(rows, experiment="durability", cluster="buffered")
    out = ["### Cost of durability (workload W, c=32)", ""]
    out.append(para(
        "The same workload against the `sync` cluster above and a second `dynamo dev` started "
        "with `--durability buffered` (loaded with the same records), runs alternating between "
        "the two."
    ))
    out.append("")
    out.append(
        "| durability | ops/s (median) | vs `sync` | update p50 / p99 / p99.9 (ms) | errors "
        "| ops/s of each run |"
    )
    out.append("|---|---:|---:|---|---|---|")
    for name, cell in (("`sync` (default)", sync), ("`buffered`", buffered)):
        ratio = (
            fmt_ratio(cell.throughput / sync.throughput)
            if cell and sync and sync.throughput
            else "–"
        )
        out.append(
            f"| {name} | {fmt_int(cell.throughput)} | {ratio} | {cell.lat_txt('update')} | "
            f"{cell.errors_txt()} | {' / '.join(fmt_int(x) for x in cell.throughputs()) or '–'} |"
        )
    out.append("")
    return out


# Anti-entropy may cost workload A at most this fraction of its throughput (issue 13).
AE_MAX_COST = 0.10


def fanout_section(rows: list[dict], meta: dict) -> list[str]:
    out = ["### Reads: every replica, or R first with a hedge (c=32)", ""]
    out.append(para(
        "The `sync` cluster above (the default `--read-fanout first --read-hedge-ms "
        f"{meta.get('hedge_ms', 20)}`: a read asks R = 2 replicas, and the third only when one "
        "fails or the hedge delay passes without R replies) beside a second `dynamo dev` whose "
        "coordinator runs `--read-fanout all` (every read asks all N = 3 replicas and answers "
        "with the first R); same records, runs alternating. Both answer the merge of R "
        "replies: the same guarantee."
    ))
    out.append("")
    out.append(
        "| workload | fan-out | ops/s (median) | vs `all` | read p50 / p99 / p99.9 (ms) | errors "
        "| ops/s of each run |"
    )
    out.append("|---|---|---:|---:|---|---|---|")
    for workload in ("c", "a"):
        base = select(rows, experiment="fanout", cluster="rall", workload=workload)
        for name, cluster in (("`all`", "rall"), ("`first` (default)", "main")):
            cell = select(rows, experiment="fanout", cluster=cluster, workload=workload)
            ratio = (
                fmt_ratio(cell.throughput / base.throughput)
                if cell and base and base.throughput
                else "–"
            )
            out.append(
                f"| {workload.upper()} | {name} | {fmt_int(cell.throughput)} | {ratio} | "
                f"{cell.lat_txt('read')} | {cell.errors_txt()} | "
                f"{' / '.join(fmt_int(x) for x in cell.throughputs()) or '–'} |"
            )
    out.append("")
    return out


def anti_entropy_section(rows: list[dict], meta: dict) -> list[str]:
    off = select(rows, experiment="anti_entropy", cluster="aeoff")
    on = select(rows, experiment="anti_entropy", cluster="aeon")
    out = ["### Anti-entropy running against workload A (c=32)", ""]
    out.append(para(
        "Two more `dynamo dev` clusters, one after the other (each loaded with the same "
        "records): one with anti-entropy off (`--anti-entropy-interval-ms 0`), one with a pass "
        f"starting every {meta.get('ae_interval_ms', 1000)} ms, so exchanges run through the "
        "whole window (the default is one pass a minute), at the default tranquility and rate. "
        f"The target: anti-entropy costs workload A less than {AE_MAX_COST * 100:.0f} % of its "
        "throughput."
    ))
    out.append("")
    out.append(
        "| anti-entropy | ops/s (median) | vs off | read p50 / p99 (ms) | update p50 / p99 (ms) "
        "| errors | ops/s of each run |"
    )
    out.append("|---|---:|---:|---|---|---|---|")
    def lat(cell: Cell, op: str) -> str:
        return " / ".join(fmt_ms(cell.latency(op, p)) for p in ("p50", "p99"))

    for name, cell in (("off", off), ("a pass every second", on)):
        ratio = fmt_ratio(cell.throughput / off.throughput) if cell and off and off.throughput else "–"
        out.append(
            f"| {name} | {fmt_int(cell.throughput)} | {ratio} | {lat(cell, 'read')} | {lat(cell, 'update')} | "
            f"{cell.errors_txt()} | {' / '.join(fmt_int(x) for x in cell.throughputs()) or '–'} |"
        )
    out.append("")
    if on and off and off.throughput:
        cost = 1 - on.throughput / off.throughput
        ok = cost < AE_MAX_COST
        out.append(para(
            f"Cost of anti-entropy in this run: {cost * 100:.1f} % of workload A's throughput; "
            f"the target (under {AE_MAX_COST * 100:.0f} %) is {ok_word(ok)}."
        ))
        out.append("")
    return out


def ae_cost_section(path) -> list[str]:
    out = ["### The cost of one anti-entropy exchange", ""]
    cells = []
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            cells = [json.loads(line) for line in f if line.strip().startswith("{")]
    if not cells:
        out.append(para("Not measured in this run (`cargo bench -p dynamo-storage --bench antientropy` failed)."))
        out.append("")
        return out
    value = cells[0].get("value_bytes", "?")
    out.append(para(
        "`cargo bench -p dynamo-storage --bench antientropy`: two storage nodes hold the same "
        f"partition of N keys ({value} B values); k of them get a newer version on one node, "
        "which then runs one exchange of the partition with the other (over HTTP on loopback, "
        "unpaced): Merkle roots, the differing branches, the digests of the differing leaves, "
        "then the differing keys both ways (the digests do not say which side is newer, so each "
        "is read from the peer and pushed to it). One run per cell."
    ))
    out.append("")
    out.append("| keys in the partition | differing keys | time (ms) | round trips | keys compared | bytes moved |")
    out.append("|---:|---:|---:|---:|---:|---:|")
    for c in cells:
        out.append(
            f"| {fmt_int(c.get('keys'))} | {fmt_int(c.get('differing'))} | "
            f"{c.get('seconds', 0) * 1000:.1f} | {fmt_int(c.get('round_trips'))} | "
            f"{fmt_int(c.get('keys_compared'))} | {fmt_int(c.get('bytes'))} |"
        )
    out.append("")
    return out


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] == "ports":
        print(free_ports(int(argv[2])))
        return 0
    if len(argv) >= 6 and argv[1] == "record":
        return record(argv[2], argv[3], argv[4], int(argv[5]), argv[6:])
    if len(argv) >= 4 and argv[1] == "report":
        return report(argv[2], argv[3], argv[4:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
