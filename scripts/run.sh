#!/usr/bin/env bash
# Runs Cairn's main job: builds the release binary and starts `cairn demo`, an LwM2M
# server on its embedded store (in ./cairn-demo) with a fleet of simulated devices that
# register over DTLS-PSK, each with its own random key; it prints what happens until
# Ctrl-C. Extra arguments go to `cairn demo` (e.g. --devices 50).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

"$repo/scripts/setup.sh"
echo "run: cargo build --release -p cairn" >&2
cargo build --release --quiet -p cairn

cairn="${CARGO_TARGET_DIR:-$repo/target}/release/cairn"
echo "run: cairn demo $*" >&2
exec "$cairn" demo "$@"
