#!/usr/bin/env bash
# Creates .venv-compat: Debian's python3-torch (1.13, CPU) and python3-torchvision (0.14) under the
# system Python 3.11, with pytest, and doconv_mm's torch-only core. `make test-compat` runs the core's tests in it.
# Needs Debian's apt (as root, or sudo) for python3-torch (about 190 MB of packages, once).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${COMPAT_VENV:-.venv-compat}
PYTHON=/usr/bin/python3
say() { printf '[setup-compat] %s\n' "$*"; }
die() { printf '[setup-compat] ERROR: %s\n' "$*" >&2; exit 1; }

if ! "$PYTHON" -c 'import torch, torchvision' >/dev/null 2>&1; then
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found: this target needs Debian's python3-torch (Debian 12 or newer)"
    sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
    say "installing Debian's python3-torch and python3-torchvision with apt-get (once)"
    $sudo apt-get install -y -q --no-install-recommends python3-torch python3-torchvision python3-venv >/dev/null \
        || { $sudo apt-get update -q >/dev/null && $sudo apt-get install -y -q --no-install-recommends python3-torch python3-torchvision python3-venv >/dev/null; } \
        || die "apt-get install python3-torch failed (see above); it needs root or sudo and Debian's package registry"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV (system site packages: Debian's torch)"
    "$PYTHON" -m venv --system-site-packages "$VENV" || die "could not create $VENV (is python3-venv installed?)"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --disable-pip-version-check pytest pytest-timeout \
    || die "installing pytest into $VENV failed: check the network to PyPI"
say "ready: $("$PY" -c 'import sys, torch; import torchvision; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {torchvision.__version__}")')"
