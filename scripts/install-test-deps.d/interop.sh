#!/usr/bin/env bash
# Test dependencies of the broker's interoperability tests: mosquitto_pub and
# mosquitto_sub (apt mosquitto-clients) and paho-mqtt (pip). Idempotent.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v mosquitto_pub >/dev/null 2>&1 || ! command -v mosquitto_sub >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    $SUDO apt-get install -y mosquitto-clients
fi
if ! python3 -c 'import paho.mqtt' >/dev/null 2>&1; then
    python3 -m pip install --quiet 'paho-mqtt>=2,<3'
fi
