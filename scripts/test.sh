#!/usr/bin/env bash
# The whole test suite: installs what the tests need (apt and pip packages for
# the interoperability tests), then checks formatting, lints and the API docs,
# and runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# A clean build of every test needs ~8 GB under target/; say early if the disk
# is short, rather than failing mid-compile with "No space left on device".
avail_kb=$(df -Pk . | awk 'NR==2 {print $4}')
if [ "${avail_kb:-0}" -lt 8000000 ]; then
    echo "warning: only $((avail_kb / 1024)) MiB free on $(df -P . | awk 'NR==2 {print $6}'); the build needs ~8 GB" >&2
fi

for script in scripts/install-test-deps.d/*.sh; do
    echo "==> $script"
    bash "$script"
done

echo "==> cargo fmt --check"
cargo fmt --all -- --check

echo "==> no import cycles between the modules of any crate"
for src in crates/starling-codec/src crates/starling-broker/src crates/starling-admin/src crates/starling-client/src crates/starling-io/src crates/starling-integrate/src crates/starling-scram/src crates/starling-cluster/src crates/starling/src; do
    python3 scripts/module-cycles.py "$src"
done

echo "==> cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

echo "==> cargo doc (broken links and bad doc markup are errors)"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet

echo "==> tests"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast
    cargo test --workspace --doc --locked
else
    cargo test --workspace --locked --no-fail-fast
fi

echo "==> benchmark smoke (Starling vs Mosquitto, tiny counts, no speed checks)"
cargo build -p starling --locked --quiet
STARLING_BIN="$PWD/target/debug/starling" scripts/bench-smoke.sh --no-build

echo "==> cluster benchmark smoke (three nats-servers, three nodes, NATS MQTT; tiny counts)"
STARLING_BIN="$PWD/target/debug/starling" bash bench/cluster.sh --smoke

echo "==> cluster demo smoke (three nats-servers, three nodes, HAProxy with PROXY v2)"
STARLING_BIN="$PWD/target/debug/starling" bash scripts/cluster-demo.sh --smoke

echo "==> Debian package (build with cargo deb, dpkg -i, check the installed files, purge)"
bash scripts/test-deb.sh
