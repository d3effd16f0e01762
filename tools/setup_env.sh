#!/usr/bin/env bash
# Creates .venv with the OpenMMLab stack that works together here and installs doconv_mm into it.
# The exact versions are those of constraints.txt (the package metadata holds ranges only).
# Idempotent: a finished setup leaves a stamp; with nothing changed, a second run returns at once.
# mmcv 2.1.0 is built from source with its ops once; the wheel is kept in .cache/wheels/ and reused.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MMCV_VERSION=2.1.0
WHEELS=.cache/wheels
STAMP=$VENV/.doconv_mm-setup

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# The stamp records what the environment was built from; any change re-runs the install steps.
want=$(cat setup.cfg pyproject.toml constraints.txt tools/setup_env.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
    say "environment $VENV is up to date"
    exit 0
fi

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found. Install Python 3.8-3.12 (or set PYTHON=/path/to/python3.X) and run 'make setup' again."
"$PYTHON" -c 'import sys; assert (3, 8) <= sys.version_info[:2] <= (3, 12)' 2>/dev/null \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); Python 3.8-3.12 is required (mmcv 2.1.0 and mmdet 3.3 are not released for newer ones). Set PYTHON=/path/to/python3.X."

rm -f "$STAMP"  # from here until the end, the venv counts as unfinished
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import pip' >/dev/null 2>&1; then
    say "creating $VENV with $PYTHON"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV" || die "could not create $VENV with $PYTHON (is the venv module installed?)"
fi
PY="$VENV/bin/python"
pip() { "$PY" -m pip --disable-pip-version-check "$@"; }

if "$PY" -c 'import torch' >/dev/null 2>&1; then
    say "keeping the torch already in $VENV: $("$PY" -c 'import torch; print(torch.__version__)')"
else
    say "installing $TORCH_SPEC (CPU build here; set TORCH_SPEC to choose another)"
    pip install -q "$TORCH_SPEC" || die "installing $TORCH_SPEC failed (see pip's message above): check the network to PyPI and the version asked for, then run 'make setup' again"
fi
torch_version=$("$PY" -c 'import torch; print(torch.__version__)')

# mmcv's compiled ops are tied to the torch they were built against: one cached wheel per torch.
if "$PY" -c "import mmcv, mmcv.ops; assert mmcv.__version__ == '$MMCV_VERSION'" >/dev/null 2>&1; then
    say "mmcv $MMCV_VERSION with ops is installed"
else
    cache="$WHEELS/torch-$torch_version"
    if ! ls "$cache"/mmcv-$MMCV_VERSION-*.whl >/dev/null 2>&1; then
        # mmcv's setup.py imports pkg_resources and wants the build tools of its time
        say "installing mmcv's build tools (setuptools<70, wheel, ninja, numpy<2)"
        pip install -q 'setuptools>=61,<70' 'numpy<2' wheel ninja \
            || die "installing build tools failed: check the network to PyPI and run 'make setup' again"
        say "building mmcv $MMCV_VERSION with its ops for torch $torch_version."
        say "This happens once and takes about 20 minutes on 2 cores; the wheel is kept in $cache."
        mkdir -p "$cache"
        tmp=$(mktemp -d "$WHEELS/build.XXXXXX")
        MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-$(nproc)} \
            pip wheel --no-build-isolation --no-deps -w "$tmp" "mmcv==$MMCV_VERSION" \
            || { rm -rf "$tmp"; die "building mmcv $MMCV_VERSION failed (see the compiler output above; a C++ compiler and the Python headers are needed). Fix the cause and run 'make setup' again."; }
        mv "$tmp"/mmcv-*.whl "$cache"/ && rm -rf "$tmp"
    fi
    say "installing mmcv $MMCV_VERSION from $cache"
    pip install -q --no-deps "$cache"/mmcv-$MMCV_VERSION-*.whl || die "installing the cached mmcv wheel failed; delete $cache and run 'make setup' again"
fi

say "installing setuptools and wheel (constraints.txt) to install doconv_mm with"
pip install -q -c constraints.txt setuptools wheel \
    || die "installing setuptools failed: check the network to PyPI and run 'make setup' again"
say "installing mmengine, mmdet, mmsegmentation and doconv_mm (editable, with test extras)"
# torch is held at the installed build (constraints.txt holds everything else): left free, pip
# could trade it for another build.
pip install -q --no-build-isolation -c constraints.txt -e '.[all,tests]' "torch==$torch_version" \
    || die "installing doconv_mm and its dependencies failed: check the network to PyPI and run 'make setup' again"
pip check || die "pip check found inconsistent requirements (above)"

"$PY" -c 'import doconv_mm, mmdet, mmseg; from mmcv.ops import RoIAlign, nms' \
    || die "the environment does not import (doconv_mm, mmdet, mmseg, mmcv.ops); see the error above"
echo "$want" > "$STAMP"
say "done: $VENV is ready"
