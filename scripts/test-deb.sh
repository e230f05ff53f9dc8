#!/usr/bin/env bash
# Builds the Debian package, installs it with dpkg, checks that the installed
# files work (`starling --version`, `starling check-config` on the shipped
# configuration, the unit, man pages and completions, the starling user and
# its data directory), then purges it. Needs root (or sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
bash scripts/build-deb.sh
deb=$(ls -1t target/debian/starling_*.deb | head -1)
# The package depends on adduser (its postinst creates the starling user);
# minimal images may lack it, and dpkg -i does not fetch dependencies.
if ! command -v adduser >/dev/null 2>&1; then
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y adduser
fi
echo "==> dpkg -i $deb"
$SUDO env DEBIAN_FRONTEND=noninteractive dpkg -i "$deb"
trap '$SUDO dpkg --purge starling >/dev/null 2>&1 || true' EXIT
fail() { echo "test-deb: $*" >&2; exit 1; }
/usr/bin/starling --version | grep -q "^starling " || fail "starling --version"
/usr/bin/starling check-config /etc/starling/starling.toml >/dev/null || fail "check-config of the shipped file"
for f in /lib/systemd/system/starling.service /usr/share/man/man1/starling.1.gz \
         /usr/share/man/man1/starling-broker.1.gz /usr/share/man/man1/starling-ctl.1.gz \
         /usr/share/bash-completion/completions/starling \
         /usr/share/zsh/vendor-completions/_starling \
         /usr/share/fish/vendor_completions.d/starling.fish; do
    [ -e "$f" ] || fail "$f is missing"
done
getent passwd starling >/dev/null || fail "no starling user"
[ "$(stat -c %U /var/lib/starling)" = starling ] || fail "/var/lib/starling is not starling's"
dpkg-query -W -f='${Conffiles}\n' starling | grep -q /etc/starling/starling.toml || fail "starling.toml is not a conffile"
# The installed broker runs as the starling user on the shipped file.
echo "==> the installed broker serves"
out=$(mktemp)
if command -v runuser >/dev/null; then
    $SUDO runuser -u starling -- /usr/bin/starling broker --config /etc/starling/starling.toml \
        --listen mqtt://127.0.0.1:0 --http-listen http://127.0.0.1:0 >"$out" 2>&1 &
    pid=$!
    ok=""
    # Waits for the log line (at most 20 s), not for a guessed delay.
    if grep -q -m1 "HTTP listener serving" <(timeout 20 tail -n +1 -f "$out"); then ok=1; fi
    $SUDO kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    [ -n "$ok" ] || { cat "$out"; fail "the installed broker did not start"; }
fi
rm -f "$out"
echo "test-deb: ok ($deb)"
