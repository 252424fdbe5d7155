#!/usr/bin/env bash
# The Python package: pinned test dependencies, a CPU-only build (CI has no GPU, and skipping
# nvcc saves minutes), then pytest. On a GPU host build with MLA_CUDA=ON instead.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --root-user-action=ignore -r python/tests/requirements.txt
MLA_CUDA="${MLA_CUDA:-OFF}" python3 -m pip install -q --root-user-action=ignore .
python3 -m pytest python/tests -q
