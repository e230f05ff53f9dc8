#!/usr/bin/env bash
# Fan-in QoS 0 and QoS 1 on the defaults, with and without a webhook posting
# message.publish/delivered/acked to a receiver that accepts and never answers
# (bench/blackhole.py). Usage: STARLING_BIN=target/release/starling bench/webhook.sh
# (EVENTS='["client.connected"]' for a webhook of other events).
set -u
BIN=${STARLING_BIN:-target/release/starling}
HOLE=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
python3 "$(dirname "$0")/blackhole.py" $HOLE & HOLEPID=$!
for rep in 1 2; do
for variant in none hook; do
  P=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
  D=$(mktemp -d /tmp/hookbench.XXXX)
  { echo "listen = [\"mqtt://127.0.0.1:$P\"]"; echo "data-dir = \"$D/data\""; echo 'sys-interval = 0'; echo 'log-level = "warn"';
    if [ $variant = hook ]; then echo; echo '[[webhook]]'; echo "url = \"http://127.0.0.1:$HOLE/hook\""; echo "events = ${EVENTS:-[\"message.publish\", \"message.delivered\", \"message.acked\"]}"; fi; } > $D/c.toml
  $BIN broker --config $D/c.toml & B=$!
  for i in $(seq 1 300); do (echo > /dev/tcp/127.0.0.1/$P) 2>/dev/null && break; sleep 0.02; done
  F=$($BIN bench pubsub -p $P --mode fan-in -c 10 -n 1000000 -t 'base/%i' --json --quiet 2>/dev/null | tail -1)
  Q=$($BIN bench pubsub -p $P --mode fan-in -c 4 -q 1 --inflight 100 -n 200000 -t 'q/%i' --json --quiet 2>/dev/null | tail -1)
  echo "rep $rep $variant fanin: $F"
  echo "rep $rep $variant qos1: $Q"
  kill $B; wait $B 2>/dev/null; rm -rf $D
done; done
kill $HOLEPID
