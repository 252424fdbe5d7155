#!/usr/bin/env bash
# Builds mla-decode on a GPU host and checks it there: the `gpu` test suites, the GPU test
# binary under compute-sanitizer (memcheck, initcheck, racecheck, synccheck; the bar is zero
# reports), then `mla-decode bench` (spec table, sparse table and a 61-layer step). Needs no
# network: GoogleTest and CLI11 come from the system or from .deps/ (googletest/,
# cli11/include/).
#
# Run from the repository root:  bash tools/gpu-check.sh [options]
# Logs go to $OUT when set (the device runner's output folder), else ./gpu-check-out; at most
# eight files, so they come back through the runner. The last thing printed is a summary.
# On an H100 the whole run takes about ten minutes (build 20 s, ctest 120 s, memcheck 180 s,
# synccheck 150 s, racecheck 50 s, bench 60 s); memcheck and synccheck run every GPU test, so
# `--no-tests` loses no coverage when the sanitizers run, and `--no-sanitizer` gives a quick pass.
# `--model-check` also installs the Python package (CUDA) into python3 and runs the DeepSeek-V3
# example's GPU tests (python/tests/test_deepseek_example.py -m gpu: the engine on mla-decode
# against the model's own forward, eager and CUDA graphs, and 2-GPU tensor parallelism over NCCL
# where two GPUs are visible); it is skipped when python3 cannot import torch and transformers'
# DeepseekV3. Its output goes to ctest.log. Only it: --model-check --no-tests --no-sanitizer --no-bench.
set -uo pipefail

usage() {
  cat <<'EOF'
usage: tools/gpu-check.sh [options]
  --no-tests          skip ctest -L gpu
  --no-sanitizer      skip the compute-sanitizer passes
  --no-bench          skip the benchmarks
  --bench-only        build, then only run the benchmarks
  --ctest-regex REGEX only the gpu tests whose names match (ctest -R)
  --tools LIST        sanitizer tools, comma-separated (default memcheck,initcheck,racecheck,synccheck)
  --filter PATTERN    gtest filter for the sanitizer passes (default '*')
  --racecheck-filter PATTERN
                      gtest filter for racecheck and initcheck, the slow tools (default: all
                      but the exhaustive kernel sweeps)
  --sanitizer-timeout SECONDS
                      limit per sanitizer pass (default 300; memcheck over the whole
                      suite takes about 125 s on H100); a pass cut off reports TIMEOUT
  --level N           MLA_TEST_LEVEL for the tests and sanitizer passes (default 0)
  --build-dir DIR     build directory (default build-gpu)
  --arch LIST         CMAKE_CUDA_ARCHITECTURES (default 90)
  --model-check       pip install the package (MLA_CUDA=ON) and run the DeepSeek-V3 example's GPU
                      tests, when python3 imports torch and transformers with DeepseekV3
  --kernels LIST      also run the bench table with each named kernel configuration
                      (MLA_CUDA_KERNEL), comma-separated, e.g. sm90n64s2,m4n64s2w8, or `all`:
                      every registered configuration the card runs (`mla-decode kernels`)
EOF
}

run_tests=1 run_sanitizer=1 run_bench=1 run_model=0
tools="memcheck,initcheck,racecheck,synccheck"
# The exhaustive kernel sweeps take minutes under racecheck / initcheck; memcheck runs them all.
filter='*' slow_filter='*-DecodeGpu.EveryKernelConfiguration:DecodeGpu.Sweep:Fp8Gpu.EveryKernelConfiguration:Fp8Gpu.DecodeShapes'
sanitizer_timeout=300 level=0 ctest_regex=
build_dir=build-gpu arch=90 kernels=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-tests) run_tests=0 ;;
    --no-sanitizer) run_sanitizer=0 ;;
    --no-bench) run_bench=0 ;;
    --model-check) run_model=1 ;;
    --bench-only) run_tests=0; run_sanitizer=0; run_bench=1 ;;
    --ctest-regex) ctest_regex="$2"; shift ;;
    --tools) tools="$2"; shift ;;
    --filter) filter="$2"; shift ;;
    --racecheck-filter) slow_filter="$2"; shift ;;
    --sanitizer-timeout) sanitizer_timeout="$2"; shift ;;
    --level) level="$2"; shift ;;
    --build-dir) build_dir="$2"; shift ;;
    --arch) arch="$2"; shift ;;
    --kernels) kernels="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu-check: unknown option $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done

root=$PWD
out=${OUT:-$root/gpu-check-out}
mkdir -p "$out"
summary=$out/summary.txt
: >"$summary"
declare -a rows=()
failed=0

# record STAGE STATUS SECONDS LOG
record() {
  rows+=("$(printf '%-22s %-8s %6ss  %s' "$1" "$2" "$3" "$4")")
  [[ "$2" == ok || "$2" == skipped ]] || failed=1
}

# note TEXT: appends TEXT to the last summary row.
note() { rows[${#rows[@]}-1]+="  $1"; }

# stage NAME LOG TIMEOUT COMMAND...: runs COMMAND with output appended to LOG.
stage() {
  local name=$1 log=$2 limit=$3
  shift 3
  local start=$SECONDS rc
  echo "== $name" | tee -a "$log"
  timeout "$limit" "$@" >>"$log" 2>&1
  rc=$?
  local status=ok
  if [[ $rc -eq 124 ]]; then status=TIMEOUT; elif [[ $rc -ne 0 ]]; then status="FAIL($rc)"; fi
  record "$name" "$status" $((SECONDS - start)) "$(basename "$log")"
  return $rc
}

{
  echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo none)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "gpu:     $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo 'nvidia-smi unavailable')"
  echo "nvcc:    $(nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo 'not found')"
} | tee -a "$summary"

# --- configure and build ----------------------------------------------------------------------
cmake_args=(-S . -B "$build_dir" -G Ninja -DCMAKE_BUILD_TYPE=Release -DMLA_CUDA=ON
            -DCMAKE_CUDA_ARCHITECTURES="$arch")
# find_package(GTest) needs the headers and libraries; find_package(CLI11 CONFIG) its package file.
system_gtest() {
  [[ -f /usr/include/gtest/gtest.h || -f /usr/local/include/gtest/gtest.h ]] || return 1
  compgen -G '/usr/lib/*/libgtest.*' >/dev/null || compgen -G '/usr/lib/libgtest.*' >/dev/null ||
    compgen -G '/usr/local/lib/libgtest.*' >/dev/null
}
system_cli11() {
  compgen -G '/usr/lib/*/cmake/CLI11' >/dev/null || compgen -G '/usr/share/cmake/CLI11' >/dev/null ||
    compgen -G '/usr/local/lib*/cmake/CLI11' >/dev/null || compgen -G '/usr/local/share/cmake/CLI11' >/dev/null
}
if ! system_gtest; then
  cmake_args+=(-DMLA_GTEST_SOURCE_DIR="$root/.deps/googletest")
fi
if ! system_cli11; then
  if [[ -f "$root/.deps/cli11/include/CLI/CLI.hpp" ]]; then
    cmake_args+=(-DMLA_CLI11_INCLUDE_DIR="$root/.deps/cli11/include")
  elif [[ -f /usr/include/CLI/CLI.hpp ]]; then
    cmake_args+=(-DMLA_CLI11_INCLUDE_DIR=/usr/include)
  else
    echo "gpu-check: CLI11 not found (system or .deps/cli11): building without the CLI" | tee -a "$summary"
    cmake_args+=(-DMLA_BUILD_TOOLS=OFF)
    run_bench=0
  fi
fi
if ! { stage configure "$out/build.log" 300 cmake "${cmake_args[@]}" &&
        stage build "$out/build.log" 900 cmake --build "$build_dir" -j "$(nproc)"; }; then
  run_tests=0 run_sanitizer=0 run_bench=0
  tail -40 "$out/build.log"
fi

# --- tests ------------------------------------------------------------------------------------
gpu_tests=$build_dir/tests/gpu/mla_gpu_tests
if [[ $run_tests -eq 1 ]]; then
  MLA_TEST_LEVEL=$level stage "ctest -L gpu" "$out/ctest.log" 600 \
    ctest --test-dir "$build_dir" -L gpu ${ctest_regex:+-R "$ctest_regex"} --output-on-failure -j 8
  note "$(grep -E 'tests passed' "$out/ctest.log" | tail -1)"
else
  record "ctest -L gpu" skipped 0 -
fi

# --- the DeepSeek-V3 example on the Python package (optional) ----------------------------------
if [[ $run_model -eq 1 ]]; then
  if python3 -c 'import torch, transformers.models.deepseek_v3' >>"$out/ctest.log" 2>&1; then
    # The image's python3 holds torch, nanobind and scikit-build-core; nothing is downloaded.
    if MLA_CUDA=ON CMAKE_ARGS="-DCMAKE_CUDA_ARCHITECTURES=$arch" stage "pip install (model)" \
        "$out/ctest.log" 900 python3 -m pip install -q --no-build-isolation --no-deps .; then
      NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 stage "model check" "$out/ctest.log" 900 \
        python3 -m pytest python/tests/test_deepseek_example.py -m gpu -q -rs -s
      note "$(grep -E '[0-9]+ (passed|failed)' "$out/ctest.log" | tail -1)"
    fi
  else
    echo "gpu-check: python3 lacks torch or transformers' DeepseekV3: model check skipped" | tee -a "$summary"
    record "model check" skipped 0 -
  fi
fi

# --- compute-sanitizer ------------------------------------------------------------------------
if [[ $run_sanitizer -eq 1 ]] && ! command -v compute-sanitizer >/dev/null; then
  echo "gpu-check: compute-sanitizer not on PATH" | tee -a "$summary"
  record "compute-sanitizer" FAIL 0 -
  run_sanitizer=0
fi
IFS=, read -r -a tool_list <<<"$tools"
for tool in "${tool_list[@]}"; do
  if [[ $run_sanitizer -eq 0 ]]; then
    record "sanitizer $tool" skipped 0 -
    continue
  fi
  f=$filter
  [[ $tool == racecheck || $tool == initcheck ]] && f=$slow_filter
  MLA_TEST_LEVEL=$level stage "sanitizer $tool" "$out/sanitizer.log" "$sanitizer_timeout" \
    compute-sanitizer --tool "$tool" --error-exitcode 1 \
    "$gpu_tests" --gtest_filter="$f" --gtest_brief=1
  note "$(grep -E '^\[  (PASSED|FAILED)  \] [0-9]+ test' "$out/sanitizer.log" | tail -1 | tr -s ' ')"
  note "$(grep -E 'ERROR SUMMARY' "$out/sanitizer.log" | tail -1 | sed 's/^=* *//')"
done

# --- benchmarks -------------------------------------------------------------------------------
cli=$build_dir/tools/mla-decode
if [[ $run_bench -eq 1 ]]; then
  : >"$out/bench.txt"
  stage "bench --table" "$out/bench.txt" 300 \
    "$cli" bench --device cuda --table --json "$out/bench-table.json"
  stage "bench --table --sparse-topk 2048" "$out/bench.txt" 300 \
    "$cli" bench --device cuda --table --sparse-topk 2048
  if [[ $kernels == all ]]; then
    kernel_list=()
    while IFS= read -r k; do kernel_list+=("$k"); done < <("$cli" kernels)
  else
    IFS=, read -r -a kernel_list <<<"$kernels"
  fi
  for k in "${kernel_list[@]}"; do
    MLA_CUDA_KERNEL=$k stage "bench --table $k" "$out/bench.txt" 300 \
      "$cli" bench --device cuda --table
  done
  stage "bench --layers 61" "$out/bench.txt" 240 \
    "$cli" bench --device cuda --layers 61 --json "$out/bench-layers61.json"
  stage "bench --layers 61 b1" "$out/bench.txt" 120 \
    "$cli" bench --device cuda --layers 61 --batch 1 --seq-len 8192 \
    --json "$out/bench-layers61-b1.json"
else
  record "bench" skipped 0 -
fi

# --- summary (printed last) -------------------------------------------------------------------
{
  echo
  echo "== summary (logs in $out)"
  printf '%s\n' "${rows[@]}"
  if [[ $run_bench -eq 1 && -s "$out/bench.txt" ]]; then
    echo
    # The report tables and the zero-fill notes of each bench run.
    grep -E '^(== bench|device:|ceilings|workload|[A-Za-z].* (graph|step x)|.*zero-fill before)' \
      "$out/bench.txt"
  fi
} | tee -a "$summary"
exit $failed
