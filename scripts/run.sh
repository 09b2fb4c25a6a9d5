#!/usr/bin/env bash
# Runs Cairn's main job: builds the release binary and starts the CoAP server on
# 127.0.0.1:5683, serving the files of docs/ (override with CAIRN_SERVE_DIR).
# Extra arguments are passed to `cairn coap serve`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

"$repo/scripts/setup.sh"
echo "run: cargo build --release -p cairn" >&2
cargo build --release --quiet -p cairn

cairn="${CARGO_TARGET_DIR:-$repo/target}/release/cairn"
serve_dir="${CAIRN_SERVE_DIR:-$repo/docs}"
listen="${CAIRN_LISTEN:-127.0.0.1:5683}"
echo "run: cairn coap serve --listen $listen --dir $serve_dir $*" >&2
exec "$cairn" coap serve --listen "$listen" --dir "$serve_dir" "$@"
