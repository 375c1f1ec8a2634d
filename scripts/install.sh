#!/usr/bin/env bash
# Install zero-chatgpt and its test tools into the current Python environment.
# torch goes first and pinned: on the project's build machines `torch==2.13.0` is a local CPU wheel, while an
# unpinned request would pull several GB of CUDA packages. On a GPU machine set TORCH_SPEC (e.g. "torch") to
# get the normal CUDA build, or install torch yourself first: an importable torch is left alone.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  "$PYTHON" -m pip install "${TORCH_SPEC:-torch==2.13.0}"
fi
"$PYTHON" -m pip install -e ".[dev]"
# pyenv only sees new console scripts (zero-chatgpt) after a rehash.
if command -v pyenv >/dev/null 2>&1; then pyenv rehash; fi
