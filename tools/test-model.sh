#!/usr/bin/env bash
# The DeepSeek-V3 example's CPU tests (python/tests/test_deepseek_example.py: the engine on
# mla-decode's CPU backend against the model's own forward, page sizes 1/16/64, s_q 2, two gloo
# ranks under torchrun) in a virtualenv of their own, so torch never reaches the interpreter that
# the rest of the Python tests use. Prints how long each part took.
#   MLA_MODEL_VENV   the virtualenv (default build/model-venv; reused when it exists)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${MLA_MODEL_VENV:-build/model-venv}
py=$venv/bin/python
start=$SECONDS
[ -x "$py" ] || python3 -m venv "$venv"
"$py" -m pip install -q -r examples/deepseek/requirements.txt -r python/tests/requirements.txt
installed=$SECONDS
echo "model check: pip install torch, transformers: $((installed - start)) s"
MLA_CUDA=OFF "$py" -m pip install -q .
built=$SECONDS
echo "model check: pip install . (CPU): $((built - installed)) s"
"$py" -m pytest python/tests/test_deepseek_example.py -q -rs
echo "model check: tests: $((SECONDS - built)) s"
