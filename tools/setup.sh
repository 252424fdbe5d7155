#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine lacks to build and test mla-decode: a C++17
# compiler, CMake >= 3.25, GoogleTest, CLI11 and clang-format 14, the version whose output the
# tree is formatted to (Debian packages). The CUDA toolkit is optional and never installed here:
# with nvcc on PATH the CUDA backend is built too.
set -euo pipefail

need=()
command -v c++ >/dev/null || need+=(g++)
command -v cmake >/dev/null || need+=(cmake)
command -v python3 >/dev/null || need+=(python3 python3-pip python3-venv)
[ -f /usr/include/gtest/gtest.h ] || need+=(libgtest-dev)
[ -f /usr/include/CLI/CLI.hpp ] || need+=(libcli11-dev)
command -v clang-format-14 >/dev/null || need+=(clang-format-14)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
