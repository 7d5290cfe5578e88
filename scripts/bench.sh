#!/usr/bin/env bash
# `make bench`: this store beside a 3-member etcd, one generator (`dynamo bench`), one run.
#
# 1. installs etcd from Debian's packages if it is missing (root only; else says how);
# 2. builds the release binaries;
# 3. starts a 3-member etcd and a `dynamo dev` cluster (3 storage nodes, N=3 R=2 W=2,
#    durability sync) on free loopback ports, each in a temporary directory;
# 4. runs the matrix against both: workloads A, C, W and A with --mode rmw; concurrency 32
#    and 128; 1 KiB values; 100 000 records loaded once per cluster (--load on its first
#    cell); every cell repeated, Dynamo and etcd cells interleaved;
# 5. the cost of durability: workload W, c=32, against the sync cluster and a second
#    `dynamo dev --durability buffered`, runs alternating;
# 6. reads: a second `dynamo dev` whose coordinator asks every replica
#    (`--read-fanout all`), runs alternating with the sync cluster (R first with a hedge,
#    the default): workloads C and A, c=32;
# 7. one storage node killed (kill -9 during the first run): workload A, c=32;
# 8. anti-entropy: workload A, c=32, against a cluster with anti-entropy off, then one with
#    a pass starting every second;
# 9. the cost of one anti-entropy exchange by partition size and difference
#    (`cargo bench -p dynamo-storage --bench antientropy`);
# 10. stops everything it started (also on failure or Ctrl-C), then writes the medians,
#    ratios and targets between the make-bench markers of docs/benchmarks.md.
#
# The raw JSON lines and the services' logs stay in a directory under /tmp (printed at the
# end); nothing of the run is committed. Settings (environment): BENCH_REPEATS (3),
# BENCH_DURATION (10 s), BENCH_WARMUP (2 s), BENCH_RECORDS (100000), BENCH_VALUE_SIZE (1024),
# BENCH_RESULTS_DIR, BENCH_REPORT (docs/benchmarks.md), BENCH_SKIP_BUILD=1,
# BENCH_GENERATOR (the command run as `<cmd> [global flags] bench ...`; default the release
# `dynamo`; a stub tests this script's plumbing).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

REPEATS=${BENCH_REPEATS:-3}
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
RECORDS=${BENCH_RECORDS:-100000}
VALUE_SIZE=${BENCH_VALUE_SIZE:-1024}
DISTRIBUTION=zipfian
PARTITIONS=256
CONCURRENCIES=(32 128)
WORKLOADS=("a plain" "c plain" "w plain" "a rmw")
KILLED_NODE=node-2
HEDGE_MS=20          # the coordinators' default --read-hedge-ms (the main cluster reads R first)
AE_INTERVAL_MS=1000  # --anti-entropy-interval-ms of the anti-entropy-on cluster
REPORT=${BENCH_REPORT:-$ROOT/docs/benchmarks.md}
RESULTS_DIR=${BENCH_RESULTS_DIR:-/tmp/dynamo-bench-$(date +%Y%m%d-%H%M%S)}
CARGO=${CARGO:-cargo}
DYNAMO=$ROOT/target/release/dynamo
GENERATOR=${BENCH_GENERATOR:-$DYNAMO}
HELPER=$ROOT/scripts/bench_report.py

# Bounds on every wait (seconds).
START_TIMEOUT=90    # a cluster becomes ready / healthy
STOP_TIMEOUT=90     # `dynamo dev` stops its services (each has 15 s) / an etcd member
CELL_SLACK=60       # a cell may take this much longer than warm-up + duration
LOAD_TIMEOUT=900    # the load phase of 100 000 records

for v in REPEATS DURATION RECORDS VALUE_SIZE; do
    if ! [[ ${!v} =~ ^[1-9][0-9]*$ ]]; then
        echo "bench: BENCH_$v must be a positive integer (got '${!v}')" >&2
        exit 2
    fi
done
if ! [[ $WARMUP =~ ^[0-9]+$ ]]; then
    echo "bench: BENCH_WARMUP must be a whole number of seconds (got '$WARMUP')" >&2
    exit 2
fi

log() { printf '%s [%3dm%02ds] %s\n' "$(date +%H:%M:%S)" $((SECONDS / 60)) $((SECONDS % 60)) "$*" >&2; }
die() { log "error: $*"; exit 1; }

command -v python3 >/dev/null || die "python3 is needed for the report (standard library only)"

# ------------------------------------------------------------------------------ the plan
MATRIX_CELLS=$((REPEATS * ${#WORKLOADS[@]} * ${#CONCURRENCIES[@]} * 2))
# durability: sync + buffered; one node killed; read fan-out: 2 workloads x 2 clusters;
# anti-entropy: off + on.
EXTRA_CELLS=$((REPEATS * 9))
CELLS=$((MATRIX_CELLS + EXTRA_CELLS))
LOAD_S=$(((RECORDS + 3999) / 4000)) # measured: 4 000-6 000 inserts/s on 2 cores
# Each cell: warm-up + window + ~0.3 s to start and stop the generator; start-up and stops.
ESTIMATE=$((CELLS * (WARMUP + DURATION) + CELLS / 3 + 6 * LOAD_S + 90))
log "make bench: Dynamo (dynamo dev, 3 storage nodes, N=3 R=2 W=2) beside a 3-member etcd"
log "  matrix: workloads A, C, W, A-rmw x c=${CONCURRENCIES[*]} x {dynamo, etcd} x $REPEATS runs = $MATRIX_CELLS cells"
log "  extra: durability sync/buffered (W, c=32), read fan-out all/first (C and A, c=32),"
log "    one node killed (A, c=32), anti-entropy off/on (A, c=32): $EXTRA_CELLS cells"
log "  and one anti-entropy exchange per partition size and difference (cargo bench)"
log "  each cell ${WARMUP} s warm-up + ${DURATION} s measured; $RECORDS records of $VALUE_SIZE B loaded 3 times (~${LOAD_S} s each)"
log "  estimate: about $((ESTIMATE / 60)) min $((ESTIMATE % 60)) s after the build"

# How busy the machine was before this run (a build or another benchmark skews it).
LOADAVG=$(cut -d' ' -f1 /proc/loadavg)
STARTED=$(date -u '+%Y-%m-%d %H:%M UTC')

# ------------------------------------------------------------------------------ etcd
install_etcd() {
    if command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
        return 0
    fi
    if [[ $(id -u) != 0 ]]; then
        log "etcd is missing; install it and rerun:"
        log "  sudo apt-get update && sudo apt-get install -y etcd-server etcd-client"
        exit 1
    fi
    command -v apt-get >/dev/null || die "etcd is missing and this is not a Debian-like system: install etcd 3.x (etcd, etcdctl) and rerun"
    log "installing etcd from Debian's packages (etcd-server, etcd-client)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server etcd-client >&2; then
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q etcd-server etcd-client >&2
    fi
    if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null; then
        die "etcd is still missing after apt-get install"
    fi
}
install_etcd
ETCD_BIN=$(command -v etcd)
# etcd reads ETCD_* variables as flags and refuses a flag given twice.
while read -r v; do unset "$v"; done < <(compgen -e | grep '^ETCD' || true)
export ETCDCTL_API=3

# ------------------------------------------------------------------------------ build
BUILD_START=$SECONDS
if [[ ${BENCH_SKIP_BUILD:-0} != 1 ]]; then
    log "building release binaries"
    "$CARGO" build --release --workspace --bins --locked
fi
BUILD_S=$((SECONDS - BUILD_START))
[[ -x $DYNAMO ]] || die "$DYNAMO is missing: the build did not produce it"
if ! "$GENERATOR" bench --help >/dev/null 2>&1; then
    die "'$GENERATOR bench --help' fails: this build has no load generator (dynamo bench)"
fi

# ------------------------------------------------------------------------------ cleanup
mkdir -p "$RESULTS_DIR"
RESULTS=$RESULTS_DIR/results.jsonl
: >"$RESULTS"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/dynamo-bench.XXXXXX")
ETCD_PIDS=()
DEV_PIDS=()     # `dynamo dev` processes
SERVICE_PIDS=() # the services each `dynamo dev` printed (a last resort if dev dies)
BENCH_PID=''
SLEEP_PID=''

alive() { kill -0 "$1" 2>/dev/null; }

# stop_pid PID SIGNAL TIMEOUT: signal, wait up to TIMEOUT s, then SIGKILL; reap it.
stop_pid() {
    local pid=$1 sig=$2 limit=$3 waited=0
    if alive "$pid"; then
        kill "-$sig" "$pid" 2>/dev/null || true
        while alive "$pid" && ((waited < limit * 5)); do
            sleep 0.2
            waited=$((waited + 1))
        done
        if alive "$pid"; then
            log "pid $pid did not stop in ${limit} s after SIG$sig: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

stop_dev() { # stop_dev PID
    log "stopping dynamo dev (pid $1, SIGINT)"
    stop_pid "$1" INT "$STOP_TIMEOUT"
}

stop_etcd() {
    local pid
    if ((${#ETCD_PIDS[@]})); then
        log "stopping etcd (pids ${ETCD_PIDS[*]})"
        for pid in "${ETCD_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
        for pid in "${ETCD_PIDS[@]}"; do stop_pid "$pid" TERM 30; done
    fi
    ETCD_PIDS=()
}

cleanup() {
    local rc=$? pid cmd
    set +e
    trap - EXIT INT TERM
    [[ -n $SLEEP_PID ]] && kill "$SLEEP_PID" 2>/dev/null
    if [[ -n $BENCH_PID ]] && alive "$BENCH_PID"; then
        log "stopping the running generator (pid $BENCH_PID)"
        stop_pid "$BENCH_PID" TERM 15
    fi
    for pid in "${DEV_PIDS[@]}"; do stop_dev "$pid"; done
    # Services whose `dynamo dev` died without stopping them (each has its own group).
    for pid in "${SERVICE_PIDS[@]}"; do
        cmd=$({ tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null) || continue
        if [[ $cmd == *"$ROOT/target/release/dynamo-"* ]]; then
            log "killing leftover service pid $pid"
            kill -KILL "$pid" 2>/dev/null
        fi
    done
    stop_etcd
    # Keep the logs with the results; the data goes.
    for d in "$TMP"/*/logs; do
        [[ -d $d ]] && cp -r "$d" "$RESULTS_DIR/logs-$(basename "$(dirname "$d")")"
    done
    cp "$TMP"/etcd-*.log "$TMP"/*.out "$RESULTS_DIR"/ 2>/dev/null
    rm -rf "$TMP"
    if ((rc != 0)); then
        log "bench failed (exit $rc); logs and raw results: $RESULTS_DIR"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Interruptible sleep: a trapped signal ends `wait` at once.
nap() {
    sleep "$1" &
    SLEEP_PID=$!
    wait "$SLEEP_PID" || true
    SLEEP_PID=''
}

# ------------------------------------------------------------------------------ ports
# One block of 20 consecutive free loopback ports: etcd clients +0..2, peers +3..5, the
# sync cluster +6 (coordinator), +7..9 (the three ring replicas), +10..12 (nodes), the
# other clusters (one at a time) +13..19 the same way.
BASE=$(python3 "$HELPER" ports 20)
ETCD_CLIENT=("$BASE" $((BASE + 1)) $((BASE + 2)))
ETCD_PEER=($((BASE + 3)) $((BASE + 4)) $((BASE + 5)))
ETCD_ENDPOINTS="http://127.0.0.1:${ETCD_CLIENT[0]},http://127.0.0.1:${ETCD_CLIENT[1]},http://127.0.0.1:${ETCD_CLIENT[2]}"
MAIN_PORT=$((BASE + 6))
BUF_PORT=$((BASE + 13))

# ------------------------------------------------------------------------------ start
start_etcd() {
    local i cluster='' name
    mkdir -p "$TMP/etcd"
    for i in 0 1 2; do
        cluster+="${cluster:+,}e$i=http://127.0.0.1:${ETCD_PEER[$i]}"
    done
    for i in 0 1 2; do
        name=e$i
        mkdir -m 700 "$TMP/etcd/$name"
        "$ETCD_BIN" --name "$name" --data-dir "$TMP/etcd/$name" \
            --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" \
            --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT[$i]}" \
            --listen-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" \
            --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER[$i]}" \
            --initial-cluster "$cluster" --initial-cluster-state new \
            --initial-cluster-token "dynamo-bench-$$" \
            --auto-compaction-mode periodic --auto-compaction-retention 5m \
            --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) \
            --logger zap --log-outputs stderr --log-level warn \
            >"$TMP/etcd-$name.log" 2>&1 &
        ETCD_PIDS+=($!)
    done
    log "etcd: 3 members starting (clients $ETCD_ENDPOINTS; pids ${ETCD_PIDS[*]})"
    local deadline=$((SECONDS + START_TIMEOUT)) pid
    until etcdctl --endpoints "$ETCD_ENDPOINTS" --dial-timeout 2s --command-timeout 3s \
        endpoint health >/dev/null 2>&1; do
        for pid in "${ETCD_PIDS[@]}"; do
            alive "$pid" || die "an etcd member exited during start-up; see $TMP/etcd-*.log: $(tail -n 3 "$TMP"/etcd-*.log)"
        done
        ((SECONDS < deadline)) || die "etcd not healthy after ${START_TIMEOUT} s"
        nap 0.5
    done
    log "etcd: healthy"
}

# start_dev NAME PORT DURABILITY [VAR=VALUE...]: sets DEV_PID; the data dir is $TMP/NAME;
# the variables (DYNAMO_* settings every service reads) go to the cluster's services. Fails
# (after saying why) when the cluster does not come up; cleanup stops what it started.
start_dev() {
    local name=$1 port=$2 durability=$3 out=$TMP/$1.out
    : >"$out"
    env "${@:4}" "$DYNAMO" --data-dir "$TMP/$name" dev --nodes 3 --partitions "$PARTITIONS" \
        --port "$port" --ring-port $((port + 1)) --storage-port $((port + 4)) \
        --n 3 --r 2 --w 2 --durability "$durability" >"$out" 2>&1 &
    DEV_PID=$!
    DEV_PIDS+=("$DEV_PID")
    local deadline=$((SECONDS + START_TIMEOUT))
    until grep -q '^ready' "$out"; do
        if ! alive "$DEV_PID"; then
            log "dynamo dev ($name) exited during start-up: $(tail -n 5 "$out")"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "dynamo dev ($name) not ready after ${START_TIMEOUT} s: $(tail -n 5 "$out")"
            return 1
        fi
        nap 0.2
    done
    local svc pid
    for svc in ring node-0 node-1 node-2 coordinator; do
        pid=$(awk -v s="$svc" '$1 == s && $2 == "pid" { print $3 }' "$out")
        [[ -n $pid ]] && SERVICE_PIDS+=("$pid")
    done
    log "dynamo dev ($name, durability $durability): ready on http://127.0.0.1:$port (pid $DEV_PID)"
}

service_pid() { # service_pid NAME SERVICE
    awk -v s="$2" '$1 == s && $2 == "pid" { print $3 }' "$TMP/$1.out"
}

# ------------------------------------------------------------------------------ cells
CELL_NO=0
TOTAL_CELLS=$((MATRIX_CELLS + EXTRA_CELLS))
FAILED=0
declare -A LOADED=()

label() { # label WORKLOAD MODE: A, C, W, A-rmw
    if [[ $2 == rmw ]]; then echo "${1^^}-rmw"; else echo "${1^^}"; fi
}

# run_cell EXPERIMENT REP CLUSTER WORKLOAD MODE CONCURRENCY [PID_TO_KILL]
# CLUSTER: main (dynamo, sync), buffered (dynamo), etcd. The first successful cell of a
# cluster carries --load.
run_cell() {
    local exp=$1 rep=$2 cluster=$3 workload=$4 mode=$5 conc=$6 victim=${7:-}
    local target=dynamo load=false limit rc=0
    local global=() args=()
    CELL_NO=$((CELL_NO + 1))
    case $cluster in
        main) global=(--endpoint "http://127.0.0.1:$MAIN_PORT" --data-dir "$TMP/main") ;;
        etcd) target=etcd ;;
        # The second cluster of an experiment (buffered, rall, aeoff, aeon).
        *) global=(--endpoint "http://127.0.0.1:$BUF_PORT" --data-dir "$TMP/$cluster") ;;
    esac
    args=(bench --target "$target" --workload "$workload" --mode "$mode"
        --distribution "$DISTRIBUTION" --records "$RECORDS" --value-size "$VALUE_SIZE"
        --concurrency "$conc" --duration "$DURATION" --warmup "$WARMUP" --json --no-progress)
    if [[ $target == etcd ]]; then
        args+=(--endpoints "$ETCD_ENDPOINTS")
    elif [[ $mode == rmw ]]; then
        # Read, then write with the read's context: siblings, as Dynamo apps write.
        args+=(--n 3 --r 2 --w 2 --conflict siblings)
    else
        # Blind writes on a siblings bucket pile up siblings until max_siblings refuses
        # them; last-writer-wins is like-for-like with etcd.
        args+=(--n 3 --r 2 --w 2 --conflict lww)
    fi
    limit=$((WARMUP + DURATION + CELL_SLACK))
    if [[ -z ${LOADED[$cluster]:-} ]]; then
        args+=(--load)
        load=true
        limit=$((limit + LOAD_TIMEOUT))
        log "[$CELL_NO/$TOTAL_CELLS] $cluster: loading $RECORDS records first, then $exp run $rep: $(label "$workload" "$mode") c=$conc"
    else
        log "[$CELL_NO/$TOTAL_CELLS] $exp run $rep: $cluster $(label "$workload" "$mode") c=$conc"
    fi
    timeout -k 10 "$limit" "$GENERATOR" "${global[@]}" "${args[@]}" \
        >"$TMP/cell.out" 2>"$TMP/cell.err" &
    BENCH_PID=$!
    if [[ -n $victim ]]; then
        # Kill the node a third of the way into the measured window.
        nap $((WARMUP + DURATION / 3))
        log "kill -9 $KILLED_NODE (pid $victim) while the generator runs"
        kill -KILL "$victim" 2>/dev/null || log "warning: $KILLED_NODE (pid $victim) was already gone"
    fi
    wait "$BENCH_PID" || rc=$?
    BENCH_PID=''
    if python3 "$HELPER" record "$RESULTS" "$TMP/cell.out" "$TMP/cell.err" "$rc" \
        experiment="$exp" rep="$rep" cluster="$cluster" target="$target" \
        workload="$workload" mode="$mode" concurrency="$conc" load="$load" \
        killed_during="$([[ -n $victim ]] && echo true || echo false)"; then
        [[ $load == true ]] && LOADED[$cluster]=1
    else
        FAILED=$((FAILED + 1))
    fi
    return 0
}

# ------------------------------------------------------------------------------ the run
FS=$(df -PT "$TMP" | awk 'NR == 2 { print $2 }')
log "temporary data: $TMP ($FS); results: $RESULTS_DIR"

start_etcd
start_dev main "$MAIN_PORT" sync || die "the sync cluster did not start"
MAIN_DEV_PID=$DEV_PID

log "the matrix"
for rep in $(seq 1 "$REPEATS"); do
    for wl in "${WORKLOADS[@]}"; do
        read -r workload mode <<<"$wl"
        for conc in "${CONCURRENCIES[@]}"; do
            run_cell matrix "$rep" main "$workload" "$mode" "$conc"
            run_cell matrix "$rep" etcd "$workload" "$mode" "$conc"
        done
    done
done
stop_etcd

log "the cost of durability: workload W, c=32, sync vs buffered"
if start_dev buffered "$BUF_PORT" buffered; then
    for rep in $(seq 1 "$REPEATS"); do
        run_cell durability "$rep" buffered w plain 32
        run_cell durability "$rep" main w plain 32
    done
else
    log "skipping the durability comparison"
    FAILED=$((FAILED + 1))
fi
stop_dev "$DEV_PID"
DEV_PIDS=("$MAIN_DEV_PID")

log "reads: R first with a ${HEDGE_MS} ms hedge (the sync cluster) or every replica, c=32"
if start_dev rall "$BUF_PORT" sync DYNAMO_READ_FANOUT=all; then
    for rep in $(seq 1 "$REPEATS"); do
        for workload in c a; do
            run_cell fanout "$rep" rall "$workload" plain 32
            run_cell fanout "$rep" main "$workload" plain 32
        done
    done
    stop_dev "$DEV_PID"
else
    log "skipping the read fan-out comparison"
    FAILED=$((FAILED + 1))
fi
DEV_PIDS=("$MAIN_DEV_PID")

log "one storage node killed: workload A, c=32"
VICTIM=$(service_pid main "$KILLED_NODE")
if [[ -n $VICTIM ]]; then
    run_cell killed 1 main a plain 32 "$VICTIM"
    for rep in $(seq 2 "$REPEATS"); do
        run_cell killed "$rep" main a plain 32
    done
else
    log "no pid for $KILLED_NODE in the output of dynamo dev: skipping the node-killed runs"
    FAILED=$((FAILED + 1))
fi
stop_dev "$MAIN_DEV_PID"
DEV_PIDS=()

# One cluster at a time: a cluster whose anti-entropy runs would take CPU from the other's
# runs and hide its own cost.
log "anti-entropy against workload A, c=32: off, then a pass every ${AE_INTERVAL_MS} ms"
for cfg in "aeoff 0" "aeon $AE_INTERVAL_MS"; do
    read -r cluster interval <<<"$cfg"
    if start_dev "$cluster" "$BUF_PORT" sync DYNAMO_ANTI_ENTROPY_INTERVAL_MS="$interval"; then
        for rep in $(seq 1 "$REPEATS"); do
            run_cell anti_entropy "$rep" "$cluster" a plain 32
        done
        stop_dev "$DEV_PID"
    else
        log "skipping anti-entropy $cluster"
        FAILED=$((FAILED + 1))
    fi
    DEV_PIDS=()
done

log "the cost of one anti-entropy exchange (cargo bench -p dynamo-storage --bench antientropy)"
AE_RESULTS=$RESULTS_DIR/ae_cost.jsonl
if ! "$CARGO" bench -p dynamo-storage --bench antientropy --locked >"$AE_RESULTS" 2>"$RESULTS_DIR/ae_cost.log"; then
    log "the anti-entropy exchange benchmark failed: $(tail -n 5 "$RESULTS_DIR/ae_cost.log")"
    FAILED=$((FAILED + 1))
fi

ELAPSED=$SECONDS
log "all services stopped; writing the report to ${REPORT#"$ROOT"/}"
python3 "$HELPER" report "$RESULTS" "$REPORT" \
    repo="$ROOT" etcd_bin="$ETCD_BIN" results="$RESULTS" tmp="${TMPDIR:-/tmp}" fs="$FS" \
    loadavg="$LOADAVG" date="$STARTED" elapsed_s="$ELAPSED" build_s="$BUILD_S" repeats="$REPEATS" duration="$DURATION" \
    warmup="$WARMUP" records="$RECORDS" value_size="$VALUE_SIZE" \
    distribution="$DISTRIBUTION" partitions="$PARTITIONS" killed_node="$KILLED_NODE" \
    hedge_ms="$HEDGE_MS" ae_interval_ms="$AE_INTERVAL_MS" ae_results="$AE_RESULTS"

log "done in $((ELAPSED / 60)) min $((ELAPSED % 60)) s; raw JSON lines: $RESULTS"
if ((FAILED)); then
    log "$FAILED run(s) failed: see the report and $RESULTS"
    exit 1
fi
