#!/usr/bin/env bash
# Test dependencies of the browser tests (crates/starling-broker/tests/browser.rs,
# crates/starling-admin/tests/dashboard.rs): Debian's chromium, run headless,
# and from npm MQTT.js and playwright-core (no browser download: the tests drive
# Debian's chromium), installed under
# ${STARLING_BROWSER_DEPS:-$HOME/.cache/starling/browser}. Idempotent.
set -euo pipefail
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
if ! command -v chromium >/dev/null 2>&1; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends chromium
fi
if ! command -v npm >/dev/null 2>&1; then
    $SUDO apt-get update
    $SUDO apt-get install -y --no-install-recommends nodejs npm
fi
DIR="${STARLING_BROWSER_DEPS:-$HOME/.cache/starling/browser}"
if [ ! -f "$DIR/node_modules/mqtt/dist/mqtt.min.js" ]; then
    mkdir -p "$DIR"
    npm install --prefix "$DIR" --no-audit --no-fund --silent 'mqtt@5'
fi
if [ ! -f "$DIR/node_modules/playwright-core/package.json" ]; then
    mkdir -p "$DIR"
    npm install --prefix "$DIR" --no-audit --no-fund --silent 'playwright-core@1'
fi
