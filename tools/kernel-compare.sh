#!/usr/bin/env bash
# Times named kernel configurations side by side in one run on a GPU host (after a build by
# tools/gpu-check.sh): the spec table, then page sizes 1, 16 and 64 at h_q 16 and 128 (batch 128,
# 4096 keys; PAGES="1 8 16" to choose), once per configuration ("default" = the chooser's pick
# for each shape). Output:
# $OUT/compare.txt (or ./gpu-check-out/compare.txt); the results are printed last.
#   bash tools/kernel-compare.sh [--build-dir DIR] [--no-table] KERNEL[,KERNEL...]
set -uo pipefail
build_dir=build-gpu table=1
while [[ ${1:-} == --* ]]; do
  case "$1" in
    --build-dir) build_dir=$2; shift ;;
    --no-table) table=0 ;;
    *) echo "kernel-compare: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
IFS=, read -r -a kernels <<<"${1:?usage: kernel-compare.sh [--build-dir DIR] [--no-table] k1,k2,...}"
out=${OUT:-$PWD/gpu-check-out}
mkdir -p "$out"
log=$out/compare.txt
cli=$build_dir/tools/mla-decode
for k in "${kernels[@]}"; do
  env_k=()
  [[ $k == default ]] || env_k=(MLA_CUDA_KERNEL="$k")
  if [[ $table -eq 1 ]]; then
    echo "== $k: spec table" >>"$log"
    env "${env_k[@]}" timeout 150 "$cli" bench --device cuda --table >>"$log" 2>&1
  fi
  for h in 16 128; do
    for ps in ${PAGES:-1 16 64}; do
      echo "== $k: h_q $h page $ps" >>"$log"
      env "${env_k[@]}" timeout 40 "$cli" bench --device cuda --h-q "$h" --batch 128 \
        --seq-len 4096 --page-size "$ps" >>"$log" 2>&1
    done
  done
done
grep -vE '^\s*$|^(measuring|timing) ' "$log"
