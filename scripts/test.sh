#!/usr/bin/env bash
# Runs Cairn's whole test suite: installs what the interop tests need (scripts/setup.sh),
# then runs every test of the workspace with cargo-nextest when it is installed, or
# with `cargo test` otherwise. Extra arguments go to the test runner.
# Exits non-zero when any test fails.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"

"$repo/scripts/setup.sh"
export CAIRN_PYTHON_VENV="$repo/.venv"

if cargo nextest --version >/dev/null 2>&1; then
    # nextest does not run doctests: run them first, so nextest's summary closes the output.
    echo "test: doctests (cargo test --doc)" >&2
    cargo test --workspace --doc --quiet
    echo "test: cargo nextest run --workspace" >&2
    cargo nextest run --workspace --no-fail-fast "$@"
else
    echo "test: cargo test --workspace (cargo-nextest not installed)" >&2
    cargo test --workspace --no-fail-fast "$@"
fi
