#!/usr/bin/env bash
# The contract check: the coordinator answers exactly as its OpenAPI document says.
#
# Goal: a status, a media type, a header or a body the document does not list, a schema
# looser or stricter than the server, or a 5xx fails `make test`, so the document served
# at /v1/openapi.json stays the contract clients are generated from.
#
# Method: a real `dynamo dev` cluster (ring service, 7 storage nodes, a coordinator) starts
# on free loopback ports in a temporary directory; schemathesis loads the served document
# and runs its phases against it with the root token: examples, coverage (boundary values
# of every schema, every status the inputs imply, requests without the token), fuzzing
# and stateful sequences (e.g. a token created, then deleted). Each answer goes through
# the checks below; tests/contract/hooks.py shapes a few inputs. Generation is
# derandomized (Hypothesis's fixed seed, and no example database, so every run sends the
# same cases), the cases per operation are bounded, and each run is under a timeout; the
# cluster and its directory are removed on every exit.
#
# Needs python3 with venv (Debian: python3-venv) and PyPI; makes (or reuses) .venv-contract
# at the repository root with the pinned tests/contract/requirements.txt. Without them the
# check is skipped with a note, unless DYNAMO_REQUIRE_TOOLS=1 (CI), when that is a failure.
# Builds nothing: the binaries come from DYNAMO_BIN_DIR (default target/debug), which
# `make contract-check` builds first.
#
# Knobs: CONTRACT_EXAMPLES (cases per operation and phase, default 50; about 40 s on 2
# cores), CONTRACT_SEED (explore other inputs: random generation from this seed, still
# reproducible, instead of the derandomized default), CONTRACT_TIMEOUT_S (the bound on the
# main schemathesis run, default 110; the membership run gets 40).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="$root/.venv-contract"
req="$here/requirements.txt"
stamp="$venv/.requirements.sha256"
bin_dir="${DYNAMO_BIN_DIR:-$root/target/debug}"
[[ "$bin_dir" = /* ]] || bin_dir="$root/$bin_dir"
examples="${CONTRACT_EXAMPLES:-50}"
timeout_s="${CONTRACT_TIMEOUT_S:-110}"
if [[ -n "${CONTRACT_SEED:-}" ]]; then
    generation=(--seed "$CONTRACT_SEED" --generation-database none)
    generated="seed $CONTRACT_SEED"
else
    generation=(--generation-deterministic)
    generated="derandomized"
fi
# As many storage nodes as a bucket's `n` may be (dynamo_core::limits::MAX_N): the fuzzer
# sets bucket properties, and a bucket of n = 7, w = 7 on fewer nodes answers every write
# with 503 quorum_unavailable, correctly but as a server error.
nodes=7

# What every answer is checked for. Not `positive_data_acceptance`: a request the schema
# allows can still be refused for what no schema can say (r above the bucket's own n, a
# key of 1024 characters but more bytes, a precondition that does not hold).
checks=not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,response_headers_conformance

skip() {
    if [[ "${DYNAMO_REQUIRE_TOOLS:-0}" == 1 ]]; then
        echo "contract: $1 (DYNAMO_REQUIRE_TOOLS=1 makes this a failure)" >&2
        exit 1
    fi
    echo "contract: SKIPPED: $1"
    exit 0
}

command -v python3 >/dev/null 2>&1 || skip "python3 is not installed"
python3 -c 'import ensurepip, venv' 2>/dev/null || skip "python3 has no venv (Debian: apt-get install python3-venv)"
for b in dynamo dynamo-ring dynamo-storage dynamo-coordinator; do
    if [[ ! -x "$bin_dir/$b" ]]; then
        echo "contract: $bin_dir/$b is missing: build the binaries first (make contract-check does)" >&2
        exit 1
    fi
done

# The venv is reused while it holds exactly the pinned requirements.
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/schemathesis" ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
    echo "contract: installing $req into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || skip "cannot make a venv at $venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-input -r "$req" \
        || skip "cannot install $req from PyPI"
    echo "$want" >"$stamp"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/dynamo-contract-XXXXXX")"
dev_pid=""
st_pid=""

# Stops the cluster and removes its directory: SIGTERM to `dynamo dev`, which stops its
# services in order; then SIGKILL to whatever is left of it. The services run in process
# groups of their own, so they are found by their command line, which names this run's
# unique directory.
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$st_pid" ]] && kill -0 "$st_pid" 2>/dev/null; then
        kill -TERM "$st_pid" 2>/dev/null || true
        wait "$st_pid" 2>/dev/null || true
    fi
    if [[ -n "$dev_pid" ]] && kill -0 "$dev_pid" 2>/dev/null; then
        kill -TERM "$dev_pid" 2>/dev/null || true
        for _ in $(seq 300); do
            kill -0 "$dev_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$dev_pid" 2>/dev/null || true
    fi
    wait "$dev_pid" 2>/dev/null || true
    local pid
    for cmdline in /proc/[0-9]*/cmdline; do
        pid="${cmdline#/proc/}"
        pid="${pid%/cmdline}"
        [[ "$pid" == "$$" ]] && continue
        if tr '\0' ' ' <"$cmdline" 2>/dev/null | grep -qF -- "$work/"; then
            kill -KILL "$pid" 2>/dev/null && echo "contract: killed leftover process $pid"
        fi
    done
    if ((status != 0)) && [[ -d "$work/data/logs" ]]; then
        echo "contract: the cluster's logs, last lines:"
        tail -n 5 "$work"/data/logs/*.log 2>/dev/null || true
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Free loopback ports below the ephemeral range (tests/free_ports.py says why): the
# coordinator's, a run of three for the ring replicas and a run for the storage nodes
# (replica and node i listen on base + i).
read -r port ring_port storage_port < <(python3 "$root/tests/free_ports.py" 1 3 "$nodes")

echo "contract: starting a cluster in $work (coordinator on 127.0.0.1:$port)"
"$bin_dir/dynamo" --data-dir "$work/data" dev --nodes "$nodes" --port "$port" \
    --ring-port "$ring_port" --storage-port "$storage_port" --partitions 16 \
    --durability buffered >"$work/dev.out" 2>&1 </dev/null &
dev_pid=$!
for _ in $(seq 600); do
    grep -q '^ready;' "$work/dev.out" && break
    if ! kill -0 "$dev_pid" 2>/dev/null; then
        cat "$work/dev.out" >&2
        echo "contract: dynamo dev exited during start-up" >&2
        exit 1
    fi
    sleep 0.1
done
if ! grep -q '^ready;' "$work/dev.out"; then
    cat "$work/dev.out" >&2
    echo "contract: dynamo dev did not become ready in 60 s" >&2
    exit 1
fi
token="$(cat "$work/data/root-token")"
url="http://127.0.0.1:$port/v1/openapi.json"

# One schemathesis run against the served document, bounded by $1 seconds; the other
# arguments select the operations and shape the inputs. It runs in the work directory, so
# nothing it writes lands in the repository, and in the background, so that a signal to
# this script is handled at once (bash runs traps only between foreground commands).
# One worker: Hypothesis describes its strategies by parsing source with `ast`, which
# CPython 3.11 does not do safely from two threads at once (a `SystemError: AST
# constructor recursion depth mismatch` failed runs with two workers).
run_schemathesis() {
    local bound="$1"
    shift
    (cd "$work" && SCHEMATHESIS_HOOKS="$here/hooks.py" \
        exec timeout --kill-after=10 "$bound" "$venv/bin/schemathesis" run "$url" \
        --header "Authorization: Bearer $token" \
        --checks "$checks" \
        --max-examples "$examples" \
        "${generation[@]}" \
        --workers 1 --request-timeout 20 --no-color \
        "$@") &
    st_pid=$!
    local status=0
    wait "$st_pid" || status=$?
    st_pid=""
    if ((status == 124)); then
        echo "contract: schemathesis did not finish within $bound s" >&2
    fi
    return "$status"
}

# Every operation but the membership changes, with valid and invalid inputs. Join,
# decommission and replace are left out here, because a valid request changes the cluster
# under test: a join of a made-up address starts a handoff to a node that never answers,
# which blocks every later change until it is aborted, and a decommission or a replace
# of a real member (node-0 ... node-6 match the documented pattern) takes its partitions
# away. What they answer to valid input is the membership tests' (tests/tests/*, make
# soak). Retry and abort stay: with no change in progress they refuse with 409, as
# documented.
membership='^/v1/cluster/nodes'
start=$(date +%s)
echo "contract: schemathesis on every operation but the membership changes ($examples cases each, $generated)"
run_schemathesis "$timeout_s" --exclude-path-regex "$membership"

# The membership changes with invalid input only: every such request is refused, by the
# coordinator or (an address or zone breaking the ring service's rules) by the ring
# service, so the cluster stays as it is, and the refusals must be as documented.
echo "contract: schemathesis on the membership changes, invalid input only"
run_schemathesis 40 --include-path-regex "$membership" --mode negative

# ... and the membership is as it started: every node up, no change in progress.
python3 - "http://127.0.0.1:$port/v1/cluster" "$token" "$nodes" <<'EOF'
import json, sys, urllib.request

url, token, nodes = sys.argv[1], sys.argv[2], int(sys.argv[3])
req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
with urllib.request.urlopen(req, timeout=10) as resp:
    view = json.load(resp)
states, change = [n["state"] for n in view["nodes"]], view.get("change")
if states != ["up"] * nodes or change:
    sys.exit(f"contract: the membership changed under the check: {states}, change {change}")
EOF

echo "contract: passed in $(($(date +%s) - start)) s"
