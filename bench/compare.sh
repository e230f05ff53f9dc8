#!/usr/bin/env bash
# Starling vs Mosquitto, side by side, with the same load generator (`starling bench`).
#
#   bench/compare.sh            full comparison, unpinned, 3 repetitions
#   bench/compare.sh --pin      broker on CPU 0, load generator on CPU 1 (taskset)
#   bench/compare.sh --smoke    tiny counts (seconds): checks the script works and
#                               that no message was lost; exits non-zero on loss or
#                               failure; no speed checks
#
# Options: --reps N (default 3), --only a,b,c (scenarios: fanin fanout fanout-lat
# qos1 latency conn conn100k subs), --out DIR (default: a new directory under /tmp),
# --no-build, --mosquitto-nodelay (adds `set_tcp_nodelay true` to Mosquitto's config,
# as Starling sets TCP_NODELAY; off by default: it halves Mosquitto's fan-in
# throughput here), --defaults (both brokers on their own defaults, apart from the
# listener and, for Starling, --durability: what a new user gets; losses then
# show what each broker drops on its defaults). STARLING_BIN=path uses that
# binary instead of target/release/starling.
#
# Each scenario runs against both brokers in turn (A B A B ...), each run on a
# freshly started broker, on free loopback ports. For each run the script records
# the `starling bench --json` summary, the broker's CPU time (utime + stime from
# /proc/PID/stat) over the run, and the broker's VmRSS. Then it prints a Markdown
# table: median and min–max of each figure for both brokers, the ratio
# (Starling / Mosquitto), CPU use, and lost messages or errors.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${STARLING_BIN:-"$ROOT/target/release/starling"}
PIN=0
SMOKE=0
REPS=3
ONLY=""
OUT=""
BUILD=1
MOSQ_NODELAY=0
DEFAULTS=0

while [ $# -gt 0 ]; do
    case "$1" in
        --pin) PIN=1 ;;
        --smoke) SMOKE=1 ;;
        --reps) REPS=$2; REPS_SET=1; shift ;;
        --only) ONLY=$2; shift ;;
        --out) OUT=$2; shift ;;
        --no-build) BUILD=0 ;;
        --mosquitto-nodelay) MOSQ_NODELAY=1 ;;
        --defaults) DEFAULTS=1 ;;
        -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option: $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$SMOKE" = 1 ] && [ -z "${REPS_SET:-}" ] && REPS=1

log() { printf '%s\n' "$*" >&2; }
die() { log "compare.sh: $*"; exit 1; }

# --- prerequisites -----------------------------------------------------------
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO=sudo
MOSQUITTO=$(command -v mosquitto || true)
[ -z "$MOSQUITTO" ] && [ -x /usr/sbin/mosquitto ] && MOSQUITTO=/usr/sbin/mosquitto
if [ -z "$MOSQUITTO" ]; then
    log "installing mosquitto from apt"
    $SUDO apt-get install -y mosquitto >&2 || { $SUDO apt-get update >&2 && $SUDO apt-get install -y mosquitto >&2; }
    MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
fi
[ -x "$MOSQUITTO" ] || die "mosquitto not found"
command -v python3 >/dev/null || $SUDO apt-get install -y python3 >&2
command -v taskset >/dev/null || [ "$PIN" = 0 ] || die "--pin needs taskset (util-linux)"

if [ "$BUILD" = 1 ]; then
    log "building starling (release)"
    (cd "$ROOT" && cargo build --release -p starling --quiet) || die "build failed"
fi
[ -x "$BIN" ] || die "$BIN missing"

# Many connections need many descriptors (two per connection on loopback, one in
# each process).
ulimit -n 400000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FDS=$(ulimit -n)

if [ -z "$OUT" ]; then OUT=$(mktemp -d /tmp/starling-compare.XXXXXX); fi
mkdir -p "$OUT"
RUNS="$OUT/runs"
mkdir -p "$RUNS"
log "results in $OUT"

if [ "$PIN" = 1 ]; then
    BROKER_CPU=(taskset -c 0)
    BENCH_CPU=(taskset -c 1)
else
    BROKER_CPU=()
    BENCH_CPU=()
fi
TCK=$(getconf CLK_TCK)

# --- scenario sizes -------------------------------------------------------------
if [ "$SMOKE" = 1 ]; then
    FANIN_N=20000; FANOUT_N=200; QOS1_N=4000; LAT_SECS=1; LAT_RATE=2000
    FANOUT_LAT_SECS=1; CONN_N=200; CONN100K_N=0; SUBS_C=100; SUBS_K=20
    DRAIN=2; HOLD=2
    DEFAULT_SCENARIOS="fanin fanout fanout-lat qos1 latency conn subs"
else
    FANIN_N=1000000; FANOUT_N=20000; QOS1_N=200000; LAT_SECS=10; LAT_RATE=10000
    FANOUT_LAT_SECS=5; CONN_N=10000; CONN100K_N=100000; SUBS_C=10000; SUBS_K=100
    DRAIN=5; HOLD=3
    DEFAULT_SCENARIOS="fanin fanout fanout-lat qos1 latency conn conn100k subs"
fi
SCENARIOS=${ONLY//,/ }
SCENARIOS=${SCENARIOS:-$DEFAULT_SCENARIOS}

# --- helpers -----------------------------------------------------------------------
free_port() {
    local p
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 12000)) # below the ephemeral range
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
    die "no free port"
}

cpu_ticks() { # utime + stime of a process, in clock ticks
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || { echo 0; return; }
    s=${s##*) }
    set -- $s
    echo $(( ${12} + ${13} ))
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
fd_count() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }

BROKER_PID=""
PORT=""
# start_broker KIND DURABILITY RUN_DIR: starts a fresh broker, sets BROKER_PID and PORT.
start_broker() {
    local kind=$1 durability=$2 dir=$3
    PORT=$(free_port)
    mkdir -p "$dir"
    case "$kind" in
        starling)
            if [ "$DEFAULTS" = 1 ]; then
                : > "$dir/starling.toml"
            else
                cat > "$dir/starling.toml" <<EOF
allow-anonymous = true
max-queued-messages = 10000000
max-queued-bytes = 4294967296
EOF
            fi
            "${BROKER_CPU[@]}" "$BIN" broker --config "$dir/starling.toml" \
                --listen "mqtt://127.0.0.1:$PORT" --durability "$durability" \
                --data-dir "$dir/data" > "$dir/broker.log" 2>&1 &
            ;;
        mosquitto)
            # Mosquitto's defaults, except persistence, limits and the listener.
            if [ "$DEFAULTS" = 1 ]; then
                printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$PORT" > "$dir/mosquitto.conf"
            else
                cat > "$dir/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages 10000000
max_queued_bytes 0
max_inflight_messages 65535
max_keepalive 65535
EOF
            fi
            if [ "$MOSQ_NODELAY" = 1 ]; then echo "set_tcp_nodelay true" >> "$dir/mosquitto.conf"; fi
            "${BROKER_CPU[@]}" "$MOSQUITTO" -c "$dir/mosquitto.conf" > "$dir/broker.log" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    for _ in $(seq 1 500); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
            sleep 0.2 # let the accept of the probe settle
            return 0
        fi
        kill -0 "$BROKER_PID" 2>/dev/null || { cat "$dir/broker.log" >&2; die "$kind did not start"; }
        sleep 0.02
    done
    die "$kind did not listen on $PORT"
}

stop_broker() {
    [ -n "$BROKER_PID" ] || return 0
    kill "$BROKER_PID" 2>/dev/null || true
    for _ in $(seq 1 250); do
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.02
    done
    kill -9 "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}
SIDE_PID=""
cleanup() {
    [ -n "$SIDE_PID" ] && kill "$SIDE_PID" 2>/dev/null || true
    stop_broker
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench() { "${BENCH_CPU[@]}" "$BIN" bench "$@"; }
# (Background jobs run "${BENCH_CPU[@]}" "$BIN" directly, so that $! is the bench's own pid.)

# meta FILE key=value...: writes a run's measurements beside its bench JSON.
meta() { local f=$1; shift; printf '%s\n' "$@" > "$f"; }

# run_pubsub SCENARIO BROKER VARIANT DURABILITY REP ARGS...
run_pubsub() {
    local scen=$1 kind=$2 variant=$3 dur=$4 rep=$5; shift 5
    local tag="$scen.$variant.$rep" dir="$RUNS/$scen.$variant.$rep"
    start_broker "$kind" "$dur" "$dir"
    local rss0 t0 c0 t1 c1 rss1 rc=0
    rss0=$(rss_kb "$BROKER_PID"); c0=$(cpu_ticks "$BROKER_PID"); t0=$(date +%s.%N)
    bench pubsub -h 127.0.0.1 -p "$PORT" --json -Q --drain-timeout "$DRAIN" \
        --prefix "cmp-$tag" "$@" > "$dir/bench.json" 2> "$dir/bench.err" || rc=$?
    c1=$(cpu_ticks "$BROKER_PID"); t1=$(date +%s.%N); rss1=$(rss_kb "$BROKER_PID")
    meta "$dir/meta" "scenario=$scen" "variant=$variant" "rep=$rep" "rc=$rc" \
        "cpu_ticks=$((c1 - c0))" "tck=$TCK" "wall=$(elapsed "$t0" "$t1")" \
        "rss0=$rss0" "rss1=$rss1"
    stop_broker
    log "  $tag: $(summary_line "$dir")"
}

# run_conn SCENARIO BROKER VARIANT REP COUNT [IFADDRS]
run_conn() {
    local scen=$1 kind=$2 variant=$3 rep=$4 n=$5 ifaddr=${6:-}
    local tag="$scen.$variant.$rep" dir="$RUNS/$scen.$variant.$rep"
    start_broker "$kind" none "$dir"
    local rss0 fd0 t0 c0 t1 c1 rss1="" rc=0 extra=()
    [ -n "$ifaddr" ] && extra=(--ifaddr "$ifaddr")
    sleep 0.3
    rss0=$(rss_kb "$BROKER_PID"); fd0=$(fd_count "$BROKER_PID")
    c0=$(cpu_ticks "$BROKER_PID"); t0=$(date +%s.%N)
    "${BENCH_CPU[@]}" "$BIN" bench conn -h 127.0.0.1 -p "$PORT" --json -Q -k 60 -c "$n" --hold "$HOLD" \
        --prefix "cmp-$tag" "${extra[@]}" > "$dir/bench.json" 2> "$dir/bench.err" &
    local bpid=$!
    # Once the broker holds every connection, let it settle and read its RSS
    # while the connections are still held.
    while kill -0 "$bpid" 2>/dev/null; do
        if [ "$(fd_count "$BROKER_PID")" -ge $((fd0 + n)) ]; then
            c1=$(cpu_ticks "$BROKER_PID"); t1=$(date +%s.%N)
            sleep 0.5
            kill -0 "$bpid" 2>/dev/null && rss1=$(rss_kb "$BROKER_PID")
            break
        fi
        sleep 0.05
    done
    wait "$bpid" || rc=$?
    if [ -z "$rss1" ]; then c1=$(cpu_ticks "$BROKER_PID"); t1=$(date +%s.%N); rss1=0; fi
    meta "$dir/meta" "scenario=$scen" "variant=$variant" "rep=$rep" "rc=$rc" \
        "cpu_ticks=$((c1 - c0))" "tck=$TCK" "wall=$(elapsed "$t0" "$t1")" \
        "rss0=$rss0" "rss1=$rss1" "conns=$n"
    stop_broker
    log "  $tag: $(summary_line "$dir")"
}

# run_subs BROKER VARIANT REP: 1,000,000 subscriptions held, then fan-in.
run_subs() {
    local kind=$1 variant=$2 rep=$3
    local tag="subs.$variant.$rep" dir="$RUNS/subs.$variant.$rep"
    start_broker "$kind" none "$dir"
    local rss0 rss_subs t0 c0 t1 c1 rss1 rc=0
    rss0=$(rss_kb "$BROKER_PID")
    c0=$(cpu_ticks "$BROKER_PID"); t0=$(date +%s.%N)
    "${BENCH_CPU[@]}" "$BIN" bench subs -h 127.0.0.1 -p "$PORT" --json -c "$SUBS_C" --per-client "$SUBS_K" \
        --topic-prefix base -k 300 --prefix "cmp-$tag" \
        > "$dir/subs.json" 2> "$dir/subs.err" &
    SIDE_PID=$!
    until grep -q '^subscribed:' "$dir/subs.err" 2>/dev/null; do
        kill -0 "$SIDE_PID" 2>/dev/null || break
        sleep 0.1
    done
    c1=$(cpu_ticks "$BROKER_PID"); t1=$(date +%s.%N)
    sleep 1
    rss_subs=$(rss_kb "$BROKER_PID")
    local c2 t2 c3 t3
    c2=$(cpu_ticks "$BROKER_PID"); t2=$(date +%s.%N)
    bench pubsub -h 127.0.0.1 -p "$PORT" --json -Q --drain-timeout "$DRAIN" \
        --prefix "cmp-$tag-f" --mode fan-in -c 10 -n "$FANIN_N" -t 'base/%i' \
        > "$dir/bench.json" 2> "$dir/bench.err" || rc=$?
    c3=$(cpu_ticks "$BROKER_PID"); t3=$(date +%s.%N); rss1=$(rss_kb "$BROKER_PID")
    # (a background job ignores SIGINT in a script, but tokio's handler replaces that)
    kill -INT "$SIDE_PID" 2>/dev/null || true
    for _ in $(seq 1 200); do kill -0 "$SIDE_PID" 2>/dev/null || break; sleep 0.05; done
    kill "$SIDE_PID" 2>/dev/null || true
    wait "$SIDE_PID" || true
    SIDE_PID=""
    meta "$dir/meta" "scenario=subs" "variant=$variant" "rep=$rep" "rc=$rc" \
        "cpu_ticks=$((c3 - c2))" "tck=$TCK" "wall=$(elapsed "$t2" "$t3")" \
        "sub_cpu_ticks=$((c1 - c0))" "sub_wall=$(elapsed "$t0" "$t1")" \
        "rss0=$rss0" "rss_subs=$rss_subs" "rss1=$rss1" "subs=$((SUBS_C * SUBS_K))"
    stop_broker
    log "  $tag: $(summary_line "$dir") subs: $(jq -c '{acked, send_rate, errors, connect_errors}' "$dir/subs.json" 2>/dev/null || echo none)"
}

summary_line() {
    jq -c '{sent, received, lost, errors, connect_errors, recv_rate, ack_rate, connect_rate, p99: .latency_us.p99}' \
        "$1/bench.json" 2>/dev/null || echo "no summary ($(tail -1 "$1/bench.err" 2>/dev/null))"
}

# --- the runs -------------------------------------------------------------------------
cat > "$OUT/env" <<EOF
date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
nproc=$(nproc)
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
kernel=$(uname -r)
mosquitto=$("$MOSQUITTO" -h 2>&1 | head -1)
starling=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD -- crates 2>/dev/null || echo '+dirty')
pin=$PIN
smoke=$SMOKE
reps=$REPS
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
fds=$FDS
mosquitto_nodelay=$MOSQ_NODELAY
EOF
log "load average: $(cut -d' ' -f1-3 /proc/loadavg), nproc $(nproc), pin=$PIN, smoke=$SMOKE, reps=$REPS"

IFADDRS="127.0.0.2,127.0.0.3,127.0.0.4,127.0.0.5,127.0.0.6"
for scen in $SCENARIOS; do
    log "== $scen"
    for rep in $(seq 1 "$REPS"); do
        case "$scen" in
            fanin)
                for b in starling mosquitto; do
                    run_pubsub fanin $b $b none "$rep" --mode fan-in -c 10 -n "$FANIN_N" -t 'base/%i'
                done ;;
            fanout)
                for b in starling mosquitto; do
                    run_pubsub fanout $b $b none "$rep" --mode fan-out -c 100 -n "$FANOUT_N" -t base/fan
                done ;;
            fanout-lat)
                for b in starling mosquitto; do
                    run_pubsub fanout-lat $b $b none "$rep" --mode fan-out -c 100 --rate 1000 \
                        --duration "$FANOUT_LAT_SECS" -t base/fan
                done ;;
            qos1)
                run_pubsub qos1 starling starling none "$rep" --mode fan-in -c 4 -q 1 --inflight 100 -n "$QOS1_N" -t 'base/%i'
                run_pubsub qos1 mosquitto mosquitto none "$rep" --mode fan-in -c 4 -q 1 --inflight 100 -n "$QOS1_N" -t 'base/%i'
                run_pubsub qos1 starling starling-always always "$rep" --mode fan-in -c 4 -q 1 --inflight 100 -n "$QOS1_N" -t 'base/%i'
                ;;
            latency)
                for b in starling mosquitto; do
                    run_pubsub latency $b $b none "$rep" --mode fan-in -c 10 --rate "$LAT_RATE" \
                        --duration "$LAT_SECS" -t 'base/%i'
                done ;;
            conn)
                for b in starling mosquitto; do run_conn conn $b $b "$rep" "$CONN_N"; done ;;
            conn100k)
                if [ "$CONN100K_N" -gt 0 ] && [ "$FDS" -gt $((2 * CONN100K_N + 1000)) ]; then
                    for b in starling mosquitto; do run_conn conn100k $b $b "$rep" "$CONN100K_N" "$IFADDRS"; done
                else
                    log "  skipped: needs $((2 * CONN100K_N + 1000)) file descriptors, have $FDS"
                fi ;;
            subs)
                for b in starling mosquitto; do run_subs $b $b "$rep"; done ;;
            *) die "unknown scenario $scen" ;;
        esac
    done
done
echo "load_after=$(cut -d' ' -f1-3 /proc/loadavg)" >> "$OUT/env"

# --- the table --------------------------------------------------------------------------
python3 - "$OUT" <<'PY'
import json, os, statistics, sys

out = sys.argv[1]
env = dict(l.rstrip("\n").split("=", 1) for l in open(os.path.join(out, "env")) if "=" in l)
pinned = env.get("pin") == "1"
runs = {}  # (scenario, variant) -> list of run dicts
problems = []
for d in sorted(os.listdir(os.path.join(out, "runs"))):
    path = os.path.join(out, "runs", d)
    meta_path = os.path.join(path, "meta")
    if not os.path.exists(meta_path):
        problems.append(f"{d}: no measurements (the run did not finish)")
        continue
    m = dict(l.rstrip("\n").split("=", 1) for l in open(meta_path) if "=" in l)
    try:
        j = json.load(open(os.path.join(path, "bench.json")))
    except Exception:
        err = open(os.path.join(path, "bench.err")).read().strip().splitlines()
        problems.append(f"{d}: no bench summary (exit {m.get('rc')}): {err[-1] if err else ''}")
        continue
    r = {"meta": m, "bench": j}
    if os.path.exists(os.path.join(path, "subs.json")):
        try:
            r["subs"] = json.load(open(os.path.join(path, "subs.json")))
        except Exception:
            problems.append(f"{d}: no `bench subs` summary")
    runs.setdefault((m["scenario"], m["variant"]), []).append(r)
    if m.get("rc") not in ("0", None):
        problems.append(f"{d}: starling bench exited with {m['rc']}")
    lost = j.get("lost") or 0
    if lost:
        problems.append(f"{d}: {lost:,} of {j.get('expected'):,} messages lost")
    for k in ("errors", "connect_errors"):
        if j.get(k):
            problems.append(f"{d}: {j[k]} {k.replace('_', ' ')} (first: {j.get('first_error')})")
    if j.get("connected", 0) < j.get("connections", 0):
        problems.append(f"{d}: {j['connected']} of {j['connections']} connections opened")
    if m["scenario"].startswith("conn") and m.get("rss1") == "0":
        problems.append(f"{d}: RSS not measured while the connections were held")
    s = r.get("subs")
    if s is not None and (s.get("acked") != s.get("sent") or s.get("errors") or s.get("connect_errors")):
        problems.append(f"{d}: {s.get('acked')} of {s.get('sent')} subscriptions granted, "
                        f"{s.get('errors')} errors, {s.get('connect_errors')} connect errors "
                        f"(first: {s.get('first_error')})")

def vals(scen, variant, f):
    out = []
    for r in runs.get((scen, variant), []):
        try:
            v = f(r)
        except (KeyError, TypeError, ZeroDivisionError, ValueError):
            v = None
        if v is not None:
            out.append(v)
    return out

def med(xs):
    return statistics.median(xs) if xs else None

def fmt(x, unit):
    if x is None:
        return "–"
    if unit == "ms":
        return f"{x:.3f}"
    if unit == "KB":
        return f"{x:.2f}"
    if unit == "B":
        return f"{x:,.0f}"
    return f"{x:,.0f}"

def cell(xs, unit):
    if not xs:
        return "–"
    if len(xs) == 1:
        return fmt(xs[0], unit)
    return f"{fmt(med(xs), unit)} ({fmt(min(xs), unit)}–{fmt(max(xs), unit)})"

rate = lambda key: (lambda r: r["bench"][key])
lat = lambda q: (lambda r: r["bench"]["latency_us"][q] / 1000.0 if r["bench"]["latency_us"]["samples"] else None)
rss_per_conn = lambda r: (int(r["meta"]["rss1"]) - int(r["meta"]["rss0"])) / int(r["meta"]["conns"]) if r["meta"]["rss1"] != "0" else None
broker_cpu = lambda r: 100.0 * int(r["meta"]["cpu_ticks"]) / int(r["meta"]["tck"]) / float(r["meta"]["wall"])
bench_cpu = lambda r: r["bench"]["cpu_percent"]
def cpu_per_item(r):  # broker CPU µs per message received (or per connection)
    b = r["bench"]
    n = b["received"] or b["connected"]
    return 1e6 * int(r["meta"]["cpu_ticks"]) / int(r["meta"]["tck"]) / n if n else None
def fmt_small(x):
    return "–" if x is None else (f"{x:.2f}" if x < 10 else f"{x:,.0f}")

fanin_base = {v: med(vals("fanin", v, rate("recv_rate"))) for v in ("starling", "mosquitto")}

# (scenario, figure, starling variant, mosquitto variant, extractor, unit, better, target)
# target: ("ratio>=", x) / ("ratio<=", x) / ("abs<=", x on Starling's median) / None
rows = [
    ("fanin", "received msg/s", "starling", "mosquitto", rate("recv_rate"), "", "higher",
     ("ratio>=", 2.0 if pinned else 3.0)),
    ("fanout", "deliveries/s", "starling", "mosquitto", rate("recv_rate"), "", "higher", ("ratio>=", 5.0)),
    ("fanout", "p99 latency, ms (flat out: queueing)", "starling", "mosquitto", lat("p99"), "ms", "lower", None),
    ("fanout-lat", "p99 latency, ms (1,000 msg/s × 100 subs)", "starling", "mosquitto", lat("p99"), "ms", "lower", ("abs<=", 1.0)),
    ("qos1", "acked msg/s, Starling durability none", "starling", "mosquitto", rate("ack_rate"), "", "higher", ("ratio>=", 3.0)),
    ("qos1", "acked msg/s, Starling durability always", "starling-always", "mosquitto", rate("ack_rate"), "", "higher", ("ratio>=", 1.0)),
    ("latency", "p50, ms", "starling", "mosquitto", lat("p50"), "ms", "lower", ("ratio<=", 1.0)),
    ("latency", "p99, ms", "starling", "mosquitto", lat("p99"), "ms", "lower", ("ratio<=", 0.5)),
    ("latency", "p99.9, ms", "starling", "mosquitto", lat("p999"), "ms", "lower", None),
    ("conn", "connects/s (10k)", "starling", "mosquitto", rate("connect_rate"), "", "higher", ("ratio>=", 2.0)),
    ("conn", "RSS per idle connection, KB (10k)", "starling", "mosquitto", rss_per_conn, "KB", "lower", ("ratio<=", 1.0)),
    ("conn100k", "connects/s (100k)", "starling", "mosquitto", rate("connect_rate"), "", "higher", ("ratio>=", 2.0)),
    ("conn100k", "RSS per idle connection, KB (100k)", "starling", "mosquitto", rss_per_conn, "KB", "lower", ("ratio<=", 1.0)),
    ("subs", "subscriptions/s (connect + SUBSCRIBE)", "starling", "mosquitto", lambda r: r["subs"]["send_rate"], "", "higher", None),
    ("subs", "RSS per subscription, bytes", "starling", "mosquitto",
     lambda r: 1024.0 * (int(r["meta"]["rss_subs"]) - int(r["meta"]["rss0"])) / int(r["meta"]["subs"]), "B", "lower", None),
    ("subs", "fan-in msg/s beside the subscriptions", "starling", "mosquitto", rate("recv_rate"), "", "higher", None),
    ("subs", "… as % of the same broker's plain fan-in", "starling", "mosquitto",
     None, "%", "higher", None),
]

lines = []
title = "pinned: broker on CPU 0, load generator on CPU 1" if pinned else "unpinned"
lines.append(f"Run {env.get('date')}: {title}; {env.get('reps')} repetition(s) per broker, medians with (min–max); "
             f"nproc {env.get('nproc')}, {env.get('cpu')}, kernel {env.get('kernel')}; {env.get('mosquitto')}; "
             f"Starling {env.get('starling')}; load average {env.get('load_before')} before, {env.get('load_after')} after.")
lines.append("")
lines.append("| scenario | figure | Starling | Mosquitto | ratio S/M | target | Starling CPU % | Mosquitto CPU % | broker CPU µs per msg or conn (S / M) | bench CPU % (S / M) |")
lines.append("|---|---|---:|---:|---:|---|---:|---:|---:|---:|")
for scen, fig, sv, mv, f, unit, better, target in rows:
    if not runs.get((scen, sv)) and not runs.get((scen, mv)):
        continue
    if f is None:  # subs relative to plain fan-in
        sx = [x / fanin_base["starling"] * 100 for x in vals(scen, sv, rate("recv_rate"))] if fanin_base["starling"] else []
        mx = [x / fanin_base["mosquitto"] * 100 for x in vals(scen, mv, rate("recv_rate"))] if fanin_base["mosquitto"] else []
        lines.append(f"| {scen} | {fig} | {cell(sx, '%')} % | {cell(mx, '%')} % | | | | | | |")
        continue
    sx, mx = vals(scen, sv, f), vals(scen, mv, f)
    ratio = med(sx) / med(mx) if sx and mx and med(mx) else None
    verdict = ""
    if target:
        kind, t = target
        if kind == "ratio>=" and ratio is not None:
            verdict = f"≥ {t}×: " + ("met" if ratio >= t else "**missed**")
        elif kind == "ratio<=" and ratio is not None:
            verdict = f"≤ {t}×: " + ("met" if ratio <= t else "**missed**")
        elif kind == "abs<=" and sx:
            verdict = f"≤ {t} ms: " + ("met" if med(sx) <= t else "**missed**")
    cpu_s = cell(vals(scen, sv, broker_cpu), "")
    cpu_m = cell(vals(scen, mv, broker_cpu), "")
    bs, bm = med(vals(scen, sv, bench_cpu)), med(vals(scen, mv, bench_cpu))
    bcpu = f"{fmt(bs, '')} / {fmt(bm, '')}"
    r = "–" if ratio is None else f"{ratio:.2f}×"
    per = f"{fmt_small(med(vals(scen, sv, cpu_per_item)))} / {fmt_small(med(vals(scen, mv, cpu_per_item)))}"
    lines.append(f"| {scen} | {fig} | {cell(sx, unit)} | {cell(mx, unit)} | {r} | {verdict} | {cpu_s} | {cpu_m} | {per} | {bcpu} |")
lines.append("")
lines.append("CPU % is of one core (200 % = both cores of a 2-CPU machine), over the run of `starling bench` "
             "(for conn: until every connection is open; for subs: over the fan-in). "
             "Mosquitto runs with its defaults apart from the listener, persistence and queue limits"
             + (", plus `set_tcp_nodelay true`." if env.get("mosquitto_nodelay") == "1" else " (so without TCP_NODELAY, which Starling sets)."))
if problems:
    lines.append("")
    lines.append("Problems:")
    for p in problems:
        lines.append(f"- {p}")
else:
    lines.append("No message was lost and no error was reported.")
text = "\n".join(lines)
print(text)
open(os.path.join(out, "table.md"), "w").write(text + "\n")
sys.exit(1 if problems else 0)
PY
