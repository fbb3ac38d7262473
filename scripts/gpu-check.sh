#!/usr/bin/env bash
# For a GPU machine without Debian's libraries (the device image): builds the
# kernels alone and runs the CUDA-vs-CPU tests and, when Google Benchmark is
# available, the GPU bandwidth benchmark. GoogleTest comes from source:
# `bash scripts/gpu-check.sh prepare` (on a Debian host) copies
# /usr/src/googletest into .device/, an ignored folder that travels with it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "prepare" ]; then
  mkdir -p .device && cp -r /usr/src/googletest .device/
  grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
  exit 0
fi
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DKVTUNE_CUDA=ON \
  -DKVTUNE_WITH_TORCH=OFF -DKVTUNE_WITH_CLUSTER=OFF \
  -DKVTUNE_GTEST_SOURCE_DIR="${KVTUNE_GTEST_SOURCE_DIR:-$PWD/.device/googletest}"
cmake --build build-gpu -j"$(nproc)"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
build-gpu/tests/test_kernels --gtest_brief=1
build-gpu/tests/test_cuda_kernels
if [ -x build-gpu/bench/bench_cuda_kernels ]; then build-gpu/bench/bench_cuda_kernels; fi
