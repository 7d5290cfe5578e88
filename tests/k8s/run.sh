#!/usr/bin/env bash
# Checks the Helm chart helm/dynamo: strict lint with the real Helm library, renders of
# the defaults and of tests/k8s/values/good-*.yaml validated with kubernetes-validate
# --strict for two Kubernetes versions, semantic checks, and the refusal of every
# tests/k8s/values/bad-*.yaml (tests/k8s/chart.py says what each layer does).
#
# Makes (or reuses) the virtualenv .venv-k8s at the repository root with the pinned
# packages of tests/k8s/requirements.txt; needs python3 with venv (Debian: python3-venv)
# and PyPI. Idempotent: the venv is rebuilt only when the requirements change.
# Usage: tests/k8s/run.sh [--keep DIR]   (DIR: where to write the rendered manifests)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/.venv-k8s"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"

if [[ ! -x "$venv/bin/python" ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "k8s: installing $req into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$req"
    echo "$want" > "$stamp"
fi

exec "$venv/bin/python" "$here/chart.py" "$@"
