#!/usr/bin/env bash
# Test dependencies of the cluster (starling-cluster): Debian's nats-server
# (2.9.x), which the tests start three of, with JetStream, on free ports,
# and HAProxy (scripts/cluster-demo.sh puts it in front of the nodes).
# Idempotent.
set -euo pipefail
if command -v nats-server >/dev/null 2>&1 && command -v haproxy >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y nats-server haproxy
