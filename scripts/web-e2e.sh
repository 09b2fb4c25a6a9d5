#!/usr/bin/env bash
# End-to-end test of the web console in a real browser: starts `cairn demo` (a server with
# its web console and a fleet of simulated devices over DTLS, each with a Firmware Update
# object) on free local ports, then runs web-tests/console.test.mjs in headless Chromium:
# sign-in with TOTP, a device read and observed, a firmware campaign started from the console
# and watched to completion. Screenshots go to target/web-tests/ (kept after the run).
# Needs: chromium (/usr/bin/chromium), node, and `npm ci` in web-tests (scripts/setup.sh).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
die() { printf 'web-e2e: error: %s\n' "$*" >&2; exit 1; }

[[ -x ${CHROMIUM:-/usr/bin/chromium} ]] || die "chromium is not installed (run scripts/setup.sh)"
[[ -d web-tests/node_modules/playwright-core ]] || die "run 'npm ci' in web-tests (scripts/setup.sh)"

# CAIRN_BIN: a cairn binary already built (the Rust test that runs this script passes its own).
if [[ -n ${CAIRN_BIN:-} ]]; then
    cairn="$CAIRN_BIN"
else
    cargo build -q -p cairn
    cairn="$repo/target/debug/cairn"
fi

free_port() {
    python3 -c 'import socket,sys; s=socket.socket(socket.AF_INET, getattr(socket, sys.argv[1])); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])' "$1"
}
dtls_port="$(free_port SOCK_DGRAM)"
bootstrap_port="$(free_port SOCK_DGRAM)"
web_port="$(free_port SOCK_STREAM)"
work="$(mktemp -d)"
log="$work/demo.log"
demo_pid=""
cleanup() {
    if [[ -n $demo_pid ]]; then kill "$demo_pid" 2>/dev/null || true; wait "$demo_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

devices=3
"$cairn" demo --devices "$devices" --data-dir "$work/data" --dtls-listen "127.0.0.1:$dtls_port" \
    --bootstrap-listen "127.0.0.1:$bootstrap_port" --web-listen "127.0.0.1:$web_port" >"$log" 2>&1 &
demo_pid=$!

link=""
for _ in $(seq 1 60); do
    link="$(grep -o 'http://[^ ]*/setup?token=[A-Za-z0-9_-]*' "$log" | head -n 1 || true)"
    [[ -n $link ]] && break
    kill -0 "$demo_pid" 2>/dev/null || { cat "$log" >&2; die "cairn demo exited"; }
    sleep 0.5
done
[[ -n $link ]] || { cat "$log" >&2; die "no setup link printed"; }

# The package the console uploads: written (after the setup link) before the fleet starts.
package="$work/data/firmware/demo-meter-firmware-1.2.0.cfw"
for _ in $(seq 1 60); do
    grep -q '^fleet: ' "$log" && break
    sleep 0.5
done
[[ -f $package ]] || { cat "$log" >&2; die "the demo wrote no firmware package to upload"; }

mkdir -p target/web-tests
rm -f target/web-tests/*.png
status=0
(
    cd web-tests
    CAIRN_WEB_URL="http://127.0.0.1:$web_port" CAIRN_SETUP_LINK="$link" \
        CAIRN_FIRMWARE_PACKAGE="$package" CAIRN_DEVICES="$devices" \
        CAIRN_SCREENSHOTS="$repo/target/web-tests" timeout 300 node console.test.mjs
) || status=$?
if [[ $status -ne 0 ]]; then
    printf 'web-e2e: the demo printed:\n' >&2
    grep -v '^notification' "$log" | tail -n 60 >&2 || true
fi
printf 'web-e2e: screenshots in %s\n' "$repo/target/web-tests"
exit "$status"
