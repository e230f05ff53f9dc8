#!/usr/bin/env bash
# CI smoke test of the Starling vs Mosquitto comparison: tiny counts on loopback
# (about 20 s once Starling is built), no speed checks. Fails if the script
# breaks, if a broker does not start, or if any message is lost.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=$(mktemp -d /tmp/bench-smoke.XXXXXX)
trap 'rm -rf "$out"' EXIT
timeout 300 bench/compare.sh --smoke --out "$out" "$@"
