#!/usr/bin/env bash
# Installs what Cairn's run and test scripts need on a Debian machine with Rust:
# system packages (libcoap's tools, OpenSSL, the autotools that build tinydtls, Chromium for
# the web console's browser tests) and a Python venv at .venv with aiocoap and DTLSSocket
# (tinydtls), the interop peers; and web-tests/node_modules (playwright-core, from its lock).
# Idempotent: a second run installs nothing and prints nothing but its last line.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.venv"
apt_packages=(libcoap3-bin openssl autoconf automake libtool pkg-config python3-venv chromium)
python_packages=(aiocoap DTLSSocket)

say() { printf 'setup: %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [[ $(id -u) -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        # Without a terminal (CI) sudo must not wait for a password nobody can type.
        if [[ -t 0 ]]; then sudo "$@"; else sudo -n "$@"; fi
    else
        die "need root to run '$*' (not root, and sudo is not available)"
    fi
}

is_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

install_apt_packages() {
    local missing=() package
    for package in "$@"; do
        is_installed "$package" || missing+=("$package")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install by hand: ${missing[*]}"
    say "installing system packages: ${missing[*]}"
    local log
    log="$(mktemp)"
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >"$log" 2>&1 ||
        ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            "${missing[@]}" >>"$log" 2>&1; then
        tail -n 30 "$log" >&2
        rm -f "$log"
        die "apt-get failed to install: ${missing[*]}"
    fi
    rm -f "$log"
}

# A Python that can create a venv with pip and build C extensions (DTLSSocket needs
# Python.h). The one on PATH (often pyenv's) comes first; Debian's is the fallback.
python_is_usable() {
    "$1" - <<'PY' >/dev/null 2>&1
import ensurepip, os, sys, sysconfig, venv
assert sys.version_info >= (3, 9)
assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))
PY
}

find_python() {
    local candidate
    for candidate in "${CAIRN_SETUP_PYTHON:-}" "$(command -v python3 || true)" /usr/bin/python3; do
        [[ -n $candidate && -x $candidate ]] || continue
        if python_is_usable "$candidate"; then
            printf '%s\n' "$candidate"
            return 0
        fi
    done
    # Debian's python3 lacks the headers until python3-dev is installed.
    if [[ -x /usr/bin/python3 ]]; then
        install_apt_packages python3-dev
        if python_is_usable /usr/bin/python3; then
            printf '%s\n' /usr/bin/python3
            return 0
        fi
    fi
    die "no usable python3 (needs venv, ensurepip and Python.h); set CAIRN_SETUP_PYTHON"
}

venv_is_ready() {
    [[ -x $venv/bin/python ]] && "$venv/bin/python" -c 'import aiocoap, DTLSSocket' >/dev/null 2>&1
}

create_venv() {
    local python log
    python="$(find_python)"
    say "creating $venv with ${python_packages[*]} (builds tinydtls, takes a minute)"
    rm -rf "$venv"
    log="$(mktemp)"
    if ! "$python" -m venv "$venv" >"$log" 2>&1 ||
        ! "$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >>"$log" 2>&1 ||
        ! "$venv/bin/python" -m pip install -q --disable-pip-version-check "${python_packages[@]}" >>"$log" 2>&1; then
        tail -n 40 "$log" >&2
        rm -f "$log"
        rm -rf "$venv"
        die "could not create the Python venv at $venv"
    fi
    rm -f "$log"
    venv_is_ready || die "the venv at $venv was built but cannot import ${python_packages[*]}"
}

# The browser tests' driver, exactly as locked in web-tests/package-lock.json.
install_web_tests() {
    command -v npm >/dev/null 2>&1 || install_apt_packages nodejs npm
    [[ -d $repo/web-tests/node_modules/playwright-core ]] && return 0
    say "installing web-tests/node_modules (npm ci)"
    (cd "$repo/web-tests" && npm ci --no-audit --no-fund --loglevel=error >/dev/null) ||
        die "npm ci failed in web-tests"
}

install_apt_packages "${apt_packages[@]}"
venv_is_ready || create_venv
install_web_tests
say "ready (system packages, $venv and web-tests/node_modules)"
