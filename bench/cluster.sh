#!/usr/bin/env bash
# Starling as a cluster over NATS JetStream: the same MQTT 3.1.1 scenarios on
# one standalone node, within one cluster node, across two cluster nodes, and
# on NATS's own MQTT listener (the anchor: `mqtt { }` on the same three NATS
# servers), plus the time a takeover across nodes takes.
#
#   bench/cluster.sh            the full run (a few minutes)
#   bench/cluster.sh --smoke    tiny counts: checks the script works
#   bench/cluster.sh --out DIR  keep the JSON summaries and logs in DIR
#
# Everything runs on loopback on free ports: three nats-servers (JetStream,
# clustered), three `starling broker --cluster` nodes, one standalone
# `starling broker`. On a 2-core machine all of them share the cores with the
# load generator: read the ratios, not the absolutes. STARLING_BIN=path and
# NATS_SERVER=path pick the binaries.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${STARLING_BIN:-"$ROOT/target/release/starling"}
NATS=${NATS_SERVER:-$(command -v nats-server || true)}
SMOKE=0
OUT=""
while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --out) OUT=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ -x "$BIN" ] || { echo "no starling binary at $BIN (cargo build --release)" >&2; exit 1; }
[ -n "$NATS" ] || { echo "no nats-server (apt-get install nats-server)" >&2; exit 1; }
OUT=${OUT:-$(mktemp -d /tmp/starling-cluster-bench.XXXXXX)}
mkdir -p "$OUT"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM
# shellcheck source=../scripts/lib/procs.sh
. "$ROOT/scripts/lib/procs.sh"

declare -a CP RP MP SP
read -r -a PORTS <<< "$(free_ports 13)"
for i in 1 2 3; do
    CP[$i]=${PORTS[$((i - 1))]}; RP[$i]=${PORTS[$((i + 2))]}
    MP[$i]=${PORTS[$((i + 5))]}; SP[$i]=${PORTS[$((i + 8))]}
done
SP0=${PORTS[12]}
ROUTES="nats://127.0.0.1:${RP[1]}, nats://127.0.0.1:${RP[2]}, nats://127.0.0.1:${RP[3]}"
for i in 1 2 3; do
    cat > "$OUT/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${CP[$i]}
max_payload: 8MB
jetstream { store_dir: "$OUT/n$i" }
cluster { name: bench, listen: 127.0.0.1:${RP[$i]}, routes: [$ROUTES] }
mqtt { listen: 127.0.0.1:${MP[$i]} }
EOF
    "$NATS" -c "$OUT/n$i.conf" > "$OUT/n$i.log" 2>&1 &
    PIDS+=($!)
done
# One server knowing the JetStream leader is enough: the nodes retry
# JetStream until it answers them (a server that joins its routes late
# logs the leader late).
wait_any_log() {
    local pattern=$1
    for _ in $(seq 600); do
        grep -q "$pattern" "$OUT"/n[123].log 2>/dev/null && return 0
        sleep 0.1
    done
    echo "timed out waiting for '$pattern' in the NATS logs" >&2
    tail -20 "$OUT"/n[123].log >&2
    exit 1
}
wait_any_log "metadata leader"
for i in 1 2 3; do
    "$BIN" broker --listen "mqtt://127.0.0.1:${SP[$i]}" --data-dir "$OUT/node$i" \
        --cluster "nats://127.0.0.1:${CP[$i]}" --node-id "node$i" --log-level info \
        > "$OUT/node$i.log" 2>&1 &
    PIDS+=($!)
done
"$BIN" broker --listen "mqtt://127.0.0.1:$SP0" --data-dir "$OUT/single" --log-level warn \
    > "$OUT/single.log" 2>&1 &
PIDS+=($!)
for i in 1 2 3; do wait_log "$OUT/node$i.log" "serving as a cluster node"; done
for i in 2 3; do wait_log "$OUT/node1.log" "a node is in the cluster node=node$i"; done
echo "NATS client ports ${CP[*]}, NATS MQTT ${MP[*]}, Starling nodes ${SP[*]}, standalone $SP0; results in $OUT" >&2

if [ "$SMOKE" = 1 ]; then
    N_IN=2000; N_OUT=200; N_Q1=1000; LAT_SECS=1
else
    N_IN=200000; N_OUT=20000; N_Q1=50000; LAT_SECS=5
fi

# run NAME PUB_PORT SUB_PORT ARGS...: one `starling bench pubsub` run.
run() {
    local name=$1 pub=$2 sub=$3
    shift 3
    "$BIN" bench pubsub --json -Q -V 311 -h 127.0.0.1 -p "$pub" --sub-port "$sub" \
        --prefix "$name-$RANDOM" "$@" > "$OUT/$name.json" 2> "$OUT/$name.err" || {
        echo "$name failed:" >&2; cat "$OUT/$name.err" >&2; return 1; }
}

TARGETS=(
    "single:$SP0:$SP0"
    "node:${SP[1]}:${SP[1]}"
    "cross:${SP[2]}:${SP[1]}"
    "nats-mqtt:${MP[1]}:${MP[1]}"
    "nats-mqtt-cross:${MP[2]}:${MP[1]}"
)
for t in "${TARGETS[@]}"; do
    IFS=: read -r tag pub sub <<< "$t"
    echo "== $tag" >&2
    run "fanin-q0-$tag" "$pub" "$sub" --mode fan-in -c 10 -n "$N_IN" -t "fi/%i"
    run "fanout-q0-$tag" "$pub" "$sub" --mode fan-out -c 10 -n "$N_OUT" -t "fo/%i"
    run "fanin-q1-$tag" "$pub" "$sub" --mode fan-in -c 10 -n "$N_Q1" -q 1 -t "fq/%i"
    run "latency-$tag" "$pub" "$sub" --mode pairs -c 1 --rate 10000 --duration "$LAT_SECS" -t "lt/%i"
    # A persistent subscriber: every message stored (and, in the cluster,
    # replicated in JetStream) before it is acknowledged.
    run "fanin-q1p-$tag" "$pub" "$sub" --mode fan-in -c 10 -n "$N_Q1" -q 1 -x 300 -t "fp/%i"
    # QoS 2 to a persistent subscriber: each PUBLISH and PUBREL waits for
    # its in-flight state in the store (and, in the cluster, in the
    # session's replica). NATS's MQTT has no QoS 2.
    case $tag in
        nats-mqtt*) ;;
        *) run "fanin-q2p-$tag" "$pub" "$sub" --mode fan-in -c 10 -n "$N_Q1" -q 2 -x 300 -t "fq2/%i" ;;
    esac
done

# Takeover across nodes: a persistent MQTT 5 session moved between node 1
# and node 2, 20 times; the time from CONNECT to CONNACK (session present).
python3 - "${SP[1]}" "${SP[2]}" "$SMOKE" > "$OUT/takeover.json" <<'PY'
import json, socket, struct, sys, time

ports = [int(sys.argv[1]), int(sys.argv[2])]
rounds = 4 if sys.argv[3] == "1" else 20

def connect_packet(cid):
    body = b"\x00\x04MQTT\x05" + bytes([0x00]) + struct.pack(">H", 60)
    props = b"\x11" + struct.pack(">I", 300)  # session expiry
    body += bytes([len(props)]) + props
    body += struct.pack(">H", len(cid)) + cid.encode()
    return bytes([0x10, len(body)]) + body

def connack(port, cid):
    s = socket.create_connection(("127.0.0.1", port))
    t = time.perf_counter()
    s.sendall(connect_packet(cid))
    head = s.recv(5)
    took = time.perf_counter() - t
    assert head[0] == 0x20 and head[3] == 0, head
    return s, took, head[2] & 1

keep = []
times = []
for i in range(rounds + 1):
    s, took, present = connack(ports[i % 2], "takeover-bench")
    keep.append(s)
    if i > 0:
        assert present == 1, "session not present after the takeover"
        times.append(took * 1000)
times.sort()
print(json.dumps({"rounds": rounds, "p50_ms": times[len(times) // 2],
                  "max_ms": times[-1], "min_ms": times[0]}))
PY

python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
def load(name):
    with open(os.path.join(out, name + ".json")) as f:
        return json.loads(f.read())
tags = ["single", "node", "cross", "nats-mqtt", "nats-mqtt-cross"]
print("| scenario | " + " | ".join(tags) + " |")
print("|---" * (len(tags) + 1) + "|")
for scen, what in [("fanin-q0", "msg/s"), ("fanout-q0", "msg/s"), ("fanin-q1", "msg/s"),
                   ("fanin-q1p", "msg/s, persistent subscriber"),
                   ("fanin-q2p", "msg/s, QoS 2, persistent subscriber")]:
    row = []
    for t in tags:
        if not os.path.exists(os.path.join(out, f"{scen}-{t}.json")):
            row.append("–")
            continue
        s = load(f"{scen}-{t}")
        lost = (s.get("expected") or 0) - s["received"]
        row.append(f"{s['recv_rate']:,.0f}" + (f" (lost {lost})" if lost else ""))
    print(f"| {scen} ({what}) | " + " | ".join(row) + " |")
for q in ["p50", "p99"]:
    row = []
    for t in tags:
        s = load(f"latency-{t}")
        row.append(f"{s['latency_us'][q] / 1000:.2f} ms")
    print(f"| latency {q} at 10,000 msg/s | " + " | ".join(row) + " |")
tk = load("takeover")
print(f"\nTakeover across nodes (CONNECT to CONNACK, session present, {tk['rounds']} rounds): "
      f"p50 {tk['p50_ms']:.1f} ms, max {tk['max_ms']:.1f} ms")
PY
