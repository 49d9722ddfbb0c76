#!/usr/bin/env bash
# Dev/CI install: a .venv with Saturn, its test tools and DeepSpeed/fairscale.
# torch is pinned by constraints.txt (a CPU build here); DeepSpeed and fairscale build from source
# against the installed torch, so they come last, without build isolation.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q --upgrade pip setuptools wheel
pip install -q -c constraints.txt torch
pip install -q -c constraints.txt -e ".[dev,ray,hpo,track]"
pip install -q -c constraints.txt --no-build-isolation "deepspeed>=0.14" "fairscale>=0.4.13"
echo "installed: $(saturn --version 2>/dev/null || python -c 'import saturn; print("saturn", saturn.__version__)')"
