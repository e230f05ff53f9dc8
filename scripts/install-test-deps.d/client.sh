#!/usr/bin/env bash
# Test dependencies of starling-client and `starling pub`/`starling sub`:
# a real Mosquitto broker and its command-line tools. Idempotent.
set -euo pipefail
if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then
    if command -v mosquitto_passwd >/dev/null 2>&1; then
        exit 0
    fi
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y mosquitto mosquitto-clients
