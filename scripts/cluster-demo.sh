#!/usr/bin/env bash
# A Starling cluster to try on one machine, as it is deployed: three
# nats-servers with JetStream in one NATS cluster, three Starling nodes (one
# per NATS server) and HAProxy in front of them in TCP mode, sending the
# PROXY protocol v2 (so the nodes see the clients' own addresses) and
# taking a node out of rotation while its /readyz does not answer 200.
# Everything listens on 127.0.0.1; Ctrl-C stops it all.
#
#   scripts/cluster-demo.sh            run until Ctrl-C
#   scripts/cluster-demo.sh --smoke    start, pass one message through
#                                      HAProxy, stop (what CI runs)
#
# Needs nats-server and haproxy (Debian: apt-get install nats-server
# haproxy) and a starling binary (STARLING_BIN, else target/release/starling,
# built if missing). The nodes keep their data under a temporary directory,
# printed at start.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
NATS=$(command -v nats-server || true)
HAPROXY=$(command -v haproxy || true)
[ -n "$NATS" ] || { echo "cluster-demo: no nats-server (apt-get install nats-server)" >&2; exit 1; }
[ -n "$HAPROXY" ] || { echo "cluster-demo: no haproxy (apt-get install haproxy)" >&2; exit 1; }
BIN=${STARLING_BIN:-"$ROOT/target/release/starling"}
if [ ! -x "$BIN" ]; then
    echo "cluster-demo: building starling (cargo build --release)" >&2
    (cd "$ROOT" && cargo build --release -p starling)
fi
DIR=$(mktemp -d /tmp/starling-cluster-demo.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "$SMOKE" = 1 ]; then rm -rf "$DIR"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck source=lib/procs.sh
. "$ROOT/scripts/lib/procs.sh"
read -r -a PORTS <<< "$(free_ports 14)"
declare -a CP RP SP HP
for i in 1 2 3; do
    CP[$i]=${PORTS[$((i - 1))]}; RP[$i]=${PORTS[$((i + 2))]}
    SP[$i]=${PORTS[$((i + 5))]}; HP[$i]=${PORTS[$((i + 8))]}
done
FRONT=${PORTS[12]}
STATS=${PORTS[13]}

ROUTES="nats://127.0.0.1:${RP[1]}, nats://127.0.0.1:${RP[2]}, nats://127.0.0.1:${RP[3]}"
for i in 1 2 3; do
    cat > "$DIR/nats$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:${CP[$i]}
jetstream { store_dir: "$DIR/nats$i" }
cluster { name: starling-demo, listen: 127.0.0.1:${RP[$i]}, routes: [$ROUTES] }
EOF
    "$NATS" -c "$DIR/nats$i.conf" > "$DIR/nats$i.log" 2>&1 &
    PIDS+=($!)
done
# A node that stops (a rolling restart) sends its MQTT 5 clients to
# HAProxy: DISCONNECT 0x9C Use another server, with this Server Reference.
for i in 1 2 3; do
    cat > "$DIR/node$i.toml" <<EOF
[cluster]
nats = ["nats://127.0.0.1:${CP[$i]}"]
node-id = "node$i"
server-reference = "127.0.0.1:$FRONT"
EOF
    "$BIN" broker --config "$DIR/node$i.toml" \
        --listen "mqtt://127.0.0.1:${SP[$i]}?proxy-protocol=true" \
        --http-listen "http://127.0.0.1:${HP[$i]}" --data-dir "$DIR/node$i" \
        > "$DIR/node$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 1 2 3; do wait_log "$DIR/node$i.log" "serving as a cluster node"; done

cat > "$DIR/haproxy.cfg" <<EOF
global
    maxconn 5000
defaults
    mode tcp
    timeout connect 5s
    timeout client 1h
    timeout server 1h
    timeout check 2s
frontend mqtt
    bind 127.0.0.1:$FRONT
    default_backend starling
backend starling
    balance leastconn
    option httpchk GET /readyz
    default-server send-proxy-v2 check inter 1s fall 2 rise 2
    server node1 127.0.0.1:${SP[1]} port ${HP[1]}
    server node2 127.0.0.1:${SP[2]} port ${HP[2]}
    server node3 127.0.0.1:${SP[3]} port ${HP[3]}
frontend stats
    mode http
    bind 127.0.0.1:$STATS
    stats enable
    stats uri /
EOF
"$HAPROXY" -W -db -f "$DIR/haproxy.cfg" > "$DIR/haproxy.log" 2>&1 &
PIDS+=($!)

# HAProxy's health checks pass once it counts every node up.
for _ in $(seq 100); do
    up=$(curl -fs "http://127.0.0.1:$STATS/;csv" 2>/dev/null | grep -c '^starling,node[123],.*,UP,' || true)
    [ "$up" = 3 ] && break
    sleep 0.1
done
[ "${up:-0}" = 3 ] || { echo "cluster-demo: HAProxy does not see the three nodes up" >&2; cat "$DIR/haproxy.log" >&2; exit 1; }

cat <<EOF
Starling cluster demo (data and logs in $DIR):
  MQTT through HAProxy:  mqtt://127.0.0.1:$FRONT     (PROXY v2 to the nodes)
  nodes (PROXY only):    ${SP[1]} ${SP[2]} ${SP[3]}
  nodes' HTTP (/readyz, /metrics, /api/v1): ${HP[1]} ${HP[2]} ${HP[3]}
  HAProxy stats:         http://127.0.0.1:$STATS/
  NATS:                  nats://127.0.0.1:${CP[1]},${CP[2]},${CP[3]}
Try:
  $BIN sub -p $FRONT -t 'demo/#' -v &
  $BIN pub -p $FRONT -t demo/1 -m hello
EOF

if [ "$SMOKE" = 1 ]; then
    # One message through HAProxy: a subscriber and a publisher, each on
    # whichever node HAProxy picks.
    "$BIN" sub -p "$FRONT" -t 'demo/#' -C 1 -W 20 > "$DIR/got.txt" 2> "$DIR/sub.log" &
    SUB=$!
    for _ in $(seq 100); do
        grep -q "client connected" "$DIR"/node[123].log && break
        sleep 0.1
    done
    for _ in $(seq 100); do
        "$BIN" pub -p "$FRONT" -t demo/1 -m hello -q 1 > /dev/null
        [ -s "$DIR/got.txt" ] && break
        sleep 0.2
    done
    wait "$SUB" || true
    grep -q hello "$DIR/got.txt" || { echo "cluster-demo: no message through HAProxy" >&2; cat "$DIR/sub.log" "$DIR"/node*.log >&2; exit 1; }
    echo "cluster-demo: a message passed through HAProxy (PROXY v2) and the cluster"
    exit 0
fi
echo "Ctrl-C stops everything."
wait
