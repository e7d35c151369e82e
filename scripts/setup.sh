#!/usr/bin/env bash
# Set up kb in ./.venv on a fresh machine: a CPU build of PyTorch first (so nothing pulls a multi-GB CUDA
# build), then kb with its test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
if ! python -c "import torch" 2>/dev/null; then
  # This machine keeps the CPU wheel of torch 2.13.0 on disk; elsewhere use PyTorch's CPU index:
  #   pip install torch --index-url https://download.pytorch.org/whl/cpu
  python -m pip install -q "torch==2.13.0" || {
    echo "Could not install torch 2.13.0 (CPU). Install a CPU build of torch yourself (see README), then re-run." >&2
    exit 1
  }
fi
python -m pip install -q -e ".[dev]"
echo "kb is installed in $(pwd)/.venv (activate with: . .venv/bin/activate)"
