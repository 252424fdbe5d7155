#!/usr/bin/env bash
# The main job: set up, build (Release), and benchmark decode on the default workload
# (DeepSeek-V3 at TP8: h_q 16, s_q 1, batch 32, seq_len 4096, page 64, bf16) on the GPU when
# one is usable, else on the CPU. Extra arguments go to `mla-decode bench`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
cmake --preset release >/dev/null
cmake --build --preset release -j"$(nproc)" --target mla-decode-cli
exec build/release/tools/mla-decode bench "$@"
