#!/usr/bin/env bash
# What interest costs in a cluster: SUBS distinct MQTT subscriptions (a
# quarter each exact, `+`, `#` and leading-`+` filters) made on node 1 of a
# three-node cluster (three nats-servers with JetStream, one per node), and
# the memory each process holds for them: the node that has the
# subscriptions, the NATS server it is connected to, the other two NATS
# servers (which learn the interest over their routes) and the other nodes
# (which hold nothing of it). Also the time the subscriptions took (each
# SUBACK waits until every live node's NATS server has the interest) and how
# soon a fresh subscription gets what another node publishes at that scale.
#
#   bench/interest.sh [SUBS]     default 1,000,000 (1,000 clients x 1,000)
#
# Run by hand (release build; a few minutes); figures in BENCHMARKS.md and
# ARCHITECTURE.md. STARLING_BIN and NATS_SERVER pick the binaries.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${STARLING_BIN:-"$ROOT/target/release/starling"}
NATS=${NATS_SERVER:-$(command -v nats-server || true)}
SUBS=${1:-1000000}
CLIENTS=1000
PER=$((SUBS / CLIENTS))
[ -x "$BIN" ] || { echo "no starling binary at $BIN (cargo build --release)" >&2; exit 1; }
[ -n "$NATS" ] || { echo "no nats-server (apt-get install nats-server)" >&2; exit 1; }
OUT=$(mktemp -d /tmp/starling-interest.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$OUT"
}
trap cleanup EXIT INT TERM

# shellcheck source=../scripts/lib/procs.sh
. "$ROOT/scripts/lib/procs.sh"
read -r -a PORTS <<< "$(free_ports 9)"
declare -a CP RP SP NPID SPID
for i in 1 2 3; do
    CP[$i]=${PORTS[$((i - 1))]}; RP[$i]=${PORTS[$((i + 2))]}; SP[$i]=${PORTS[$((i + 5))]}
done
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

ROUTES="nats://127.0.0.1:${RP[1]}, nats://127.0.0.1:${RP[2]}, nats://127.0.0.1:${RP[3]}"
for i in 1 2 3; do
    cat > "$OUT/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${CP[$i]}
jetstream { store_dir: "$OUT/n$i" }
cluster { name: interest, listen: 127.0.0.1:${RP[$i]}, routes: [$ROUTES] }
EOF
    "$NATS" -c "$OUT/n$i.conf" > "$OUT/n$i.log" 2>&1 &
    NPID[$i]=$!
    PIDS+=($!)
done
for i in 1 2 3; do
    "$BIN" broker --listen "mqtt://127.0.0.1:${SP[$i]}" --data-dir "$OUT/node$i" \
        --cluster "nats://127.0.0.1:${CP[$i]}" --node-id "node$i" --log-level warn \
        > "$OUT/node$i.log" 2>&1 &
    SPID[$i]=$!
    PIDS+=($!)
done
for i in 1 2 3; do
    for _ in $(seq 600); do
        (echo > "/dev/tcp/127.0.0.1/${SP[$i]}") 2>/dev/null && break
        sleep 0.1
    done
done
sleep 3 # the nodes' heartbeats: every node knows the others (probes wait for them)

declare -A BEFORE
for i in 1 2 3; do BEFORE[n$i]=$(rss_kib "${NPID[$i]}"); BEFORE[s$i]=$(rss_kib "${SPID[$i]}"); done
started=$(date +%s.%N)
"$BIN" bench subs -Q --json -p "${SP[1]}" -c "$CLIENTS" --per-client "$PER" --hold 20 \
    --prefix "i$RANDOM" > "$OUT/subs.json" &
BENCH=$!
# Once every SUBACK is in (the summary is printed at the end of the hold,
# so watch node 1's subscription count in $SYS instead).
for _ in $(seq 3000); do
    n=$("$BIN" sub -p "${SP[1]}" -t '$SYS/broker/subscriptions/count' -C 1 -W 5 2>/dev/null || true)
    [ "${n:-0}" -ge "$SUBS" ] 2>/dev/null && break
    sleep 1
done
took=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
sleep 2
declare -A AFTER
for i in 1 2 3; do AFTER[n$i]=$(rss_kib "${NPID[$i]}"); AFTER[s$i]=$(rss_kib "${SPID[$i]}"); done
# A fresh subscription at this scale: subscribed on node 1, published on
# node 3 until it arrives (an upper bound: two CLI connections each try).
topic="fresh/$RANDOM"
t0=$(date +%s%N)
"$BIN" sub -p "${SP[1]}" -t "$topic" -C 1 -W 30 > "$OUT/fresh.txt" 2>/dev/null &
FRESH=$!
for _ in $(seq 3000); do
    "$BIN" pub -p "${SP[3]}" -t "$topic" -m x > /dev/null 2>&1 || true
    [ -s "$OUT/fresh.txt" ] && break
done
t1=$(date +%s%N)
wait "$FRESH" || true
wait "$BENCH" || true

per() { python3 -c "print(f'{($2 - $1) * 1024 / $SUBS:.0f}')"; }
echo "| process | RSS before (MiB) | RSS with $SUBS subscriptions (MiB) | bytes per subscription |"
echo "|---|---:|---:|---:|"
for k in s1 n1 n2 n3 s2 s3; do
    case $k in
        s1) name="Starling node 1 (holds the subscriptions)" ;;
        n1) name="nats-server 1 (node 1's)" ;;
        n2) name="nats-server 2 (learns it over routes)" ;;
        n3) name="nats-server 3 (learns it over routes)" ;;
        s2) name="Starling node 2" ;;
        s3) name="Starling node 3" ;;
    esac
    echo "| $name | $((BEFORE[$k] / 1024)) | $((AFTER[$k] / 1024)) | $(per "${BEFORE[$k]}" "${AFTER[$k]}") |"
done
echo
echo "all $SUBS subscribed (every SUBACK after the probes) in about ${took} s; a fresh"
echo "subscription on node 1 received a message published on node 3 $(( (t1 - t0) / 1000000 )) ms"
echo "after the subscriber started (its connect and SUBACK included)"
