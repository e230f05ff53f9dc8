#!/usr/bin/env bash
# Test dependencies of the HTTP listener's tests: a real Prometheus server and
# promtool (apt prometheus; the tests start their own, on loopback) and
# schemathesis (pip), which fuzzes the admin API from its OpenAPI document.
# Idempotent.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
if ! command -v prometheus >/dev/null 2>&1 || ! command -v promtool >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get update
    # The package's service is not wanted: the tests run their own servers.
    $SUDO apt-get install -y --no-install-recommends prometheus
    if command -v systemctl >/dev/null 2>&1; then
        $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
    fi
    $SUDO service prometheus stop >/dev/null 2>&1 || true
fi
# Version 4: 3.x does not load OpenAPI 3.1 documents (utoipa writes 3.1).
if ! schemathesis --version 2>/dev/null | grep -q 'version 4\.'; then
    python3 -m pip install --quiet 'schemathesis>=4.3,<5'
fi
