#!/usr/bin/env bash
# What a stuck subscriber costs everyone else, Starling and Mosquitto each on
# its own defaults: a subscriber to stuck/# stops reading (mosquitto_sub under
# SIGSTOP) while 4 connections publish QoS 0 to stuck/... flat out; meanwhile
# an unrelated pair measures QoS 1 end-to-end latency at 1,000 msg/s on free/...
#
#   bench/stuck-subscriber.sh [SECONDS]     (STARLING_BIN=path, default target/release/starling)
#
# Prints one Markdown row per broker: the unrelated pair's latency p50/p99/max
# and loss, and what the flooders managed to send.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${STARLING_BIN:-"$ROOT/target/release/starling"}
SECS=${1:-10}
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
OUT=$(mktemp -d /tmp/starling-stuck.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 500); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.02; done; return 1; }

run() {
    local kind=$1 port dir="$OUT/$1"
    mkdir -p "$dir"
    port=$(free_port)
    case "$kind" in
        starling) "$BIN" broker --listen "mqtt://127.0.0.1:$port" --data-dir "$dir/data" > "$dir/broker.log" 2>&1 & ;;
        mosquitto) printf 'listener %s 127.0.0.1\nallow_anonymous true\n' "$port" > "$dir/m.conf"
                   "$MOSQUITTO" -c "$dir/m.conf" > "$dir/broker.log" 2>&1 & ;;
    esac
    local broker=$!; PIDS+=("$broker")
    wait_port "$port"
    mosquitto_sub -h 127.0.0.1 -p "$port" -t 'stuck/#' -q 0 > /dev/null &
    local stuck=$!; PIDS+=("$stuck")
    sleep 0.5
    kill -STOP "$stuck"
    "$BIN" bench pub -h 127.0.0.1 -p "$port" -c 4 -q 0 -s 64 -t 'stuck/%i' \
        --duration $((SECS + 4)) --json -Q > "$dir/flood.json" 2>/dev/null &
    local flood=$!; PIDS+=("$flood")
    sleep 2
    "$BIN" bench pubsub -h 127.0.0.1 -p "$port" --mode fan-in -c 1 -q 1 --rate 1000 \
        --duration "$SECS" -t 'free/%i' --json -Q > "$dir/free.json"
    wait "$flood" || true
    kill -CONT "$stuck" 2>/dev/null || true; kill "$stuck" 2>/dev/null || true
    kill "$broker"; wait "$broker" 2>/dev/null || true
    python3 - "$kind" "$dir" <<'PY'
import json, sys
kind, d = sys.argv[1], sys.argv[2]
free = json.load(open(f"{d}/free.json"))
try:
    flood = json.load(open(f"{d}/flood.json"))
    sent = f"{flood.get('send_rate', 0):,.0f}/s"
except Exception:
    sent = "?"
l = free["latency_us"]
print(f"| {kind} | {l['p50']/1000:.2f} ms | {l['p99']/1000:.2f} ms | {l['max']/1000:.1f} ms | {free['lost']} of {free['sent']} | {sent} |")
PY
}

echo "| broker (defaults) | unrelated QoS 1 p50 | p99 | max | lost | flood sent |"
echo "|---|---|---|---|---|---|"
run starling
run mosquitto
