#!/usr/bin/env bash
# Checks the Grafana dashboards and Prometheus alerts against a live `dynamo dev`
# cluster (tests/observability/check.py says what and how).
#
# Needs python3 (with venv) and, for the promtool checks, Debian's `prometheus` package;
# DYNAMO_REQUIRE_TOOLS=1 makes a missing promtool a failure instead of a skip.
# Builds the debug binaries unless DYNAMO_BIN_DIR points at built ones.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$repo"
venv="$repo/.venv-obs"
reqs="$repo/tests/observability/requirements.txt"

# The venv is reused while it holds exactly the pinned requirements.
if [[ ! -x "$venv/bin/python" ]] || ! cmp -s "$reqs" "$venv/.requirements.txt"; then
    python3 -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$reqs"
    cp "$reqs" "$venv/.requirements.txt"
fi

if [[ -z "${DYNAMO_BIN_DIR:-}" ]]; then
    cargo build --quiet --workspace --bins
fi

# check.py bounds itself and stops its cluster on SIGTERM; this is the backstop.
exec timeout --kill-after=30 240 "$venv/bin/python" "$repo/tests/observability/check.py"
