#!/usr/bin/env bash
# For a GPU machine without Debian's libraries (the device image): builds the
# kernels and runs the CUDA-vs-CPU tests and the GPU kernel benchmark; where
# python3's PyTorch is a CUDA build, also builds the evaluator against its
# LibTorch and runs the CUDA-vs-CPU evaluator tests, the worker tests and
# `bench_eval --device cuda` (a Llama-3.1-8B-shaped model in bf16).
#
# `bash scripts/gpu-check.sh prepare` (on a Debian host with kvtune's
# dependencies installed) copies what the image lacks into .device/, an
# ignored folder that travels with the tree: googletest's sources, Google
# Benchmark, nlohmann-json and xxHash as Debian installs them, and ../shared's model.
# Run the check with `bash scripts/gpu-check.sh` there (`... evaluator`: the
# evaluator's part alone); CUDAARCHS picks the architectures (default 90:
# H100/H200).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "prepare" ]; then
  rm -rf .device && mkdir -p .device/deps/include .device/deps/share/cmake \
    .device/deps/lib/x86_64-linux-gnu/cmake
  cp -r /usr/src/googletest .device/
  cp -r /usr/include/nlohmann /usr/include/benchmark /usr/include/xxhash.h .device/deps/include/
  cp -r /usr/share/cmake/nlohmann_json .device/deps/share/cmake/
  cp -r /usr/lib/x86_64-linux-gnu/cmake/benchmark .device/deps/lib/x86_64-linux-gnu/cmake/
  cp -a /usr/lib/x86_64-linux-gnu/libbenchmark.so* /usr/lib/x86_64-linux-gnu/libbenchmark_main.a \
    .device/deps/lib/x86_64-linux-gnu/
  if [ -d ../shared/models ]; then
    mkdir -p .device/shared && cp -r ../shared/models ../shared/reference .device/shared/
  fi
  grep -qx '/.device/' .git/info/exclude 2>/dev/null || echo '/.device/' >> .git/info/exclude
  du -sh .device
  exit 0
fi
# The tests and benches read ../shared; on the device it arrives in .device/.
if [ ! -e ../shared ] && [ -d .device/shared ]; then ln -s "$PWD/.device/shared" ../shared; fi

torch_prefix=""
if python3 -c 'import torch, sys; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
  torch_prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
fi
with_torch=OFF
[ -n "$torch_prefix" ] && with_torch=ON
export CUDAARCHS="${CUDAARCHS:-90}"
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DKVTUNE_CUDA=ON \
  -DKVTUNE_WITH_TORCH="$with_torch" -DKVTUNE_WITH_CLUSTER=OFF \
  -DCMAKE_PREFIX_PATH="${torch_prefix:+$torch_prefix;}$PWD/.device/deps" \
  -DKVTUNE_GTEST_SOURCE_DIR="${KVTUNE_GTEST_SOURCE_DIR:-$PWD/.device/googletest}"
kernels=yes
[ "${1:-}" = "evaluator" ] && kernels=no
targets=()
[ "$kernels" = yes ] && targets+=(test_kernels test_cuda_kernels)
cmake --build build-gpu --target help > build-gpu/targets.txt
[ "$kernels" = yes ] && grep -q bench_cuda_kernels build-gpu/targets.txt &&
  targets+=(bench_cuda_kernels)
[ "$with_torch" = ON ] && targets+=(test_worker bench_eval)
cmake --build build-gpu -j"$(nproc)" --target "${targets[@]}"

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || true
status=0
if [ "$kernels" = yes ]; then
  build-gpu/tests/test_kernels --gtest_brief=1 || status=1
  build-gpu/tests/test_cuda_kernels || status=1
  if [ -x build-gpu/bench/bench_cuda_kernels ]; then build-gpu/bench/bench_cuda_kernels || status=1; fi
fi
if [ "$with_torch" = ON ]; then
  build-gpu/tests/test_worker --gtest_filter='CudaEvaluator.*' || status=1
  timeout 150 build-gpu/bench/bench_eval --device cuda || status=1
  timeout 150 build-gpu/tests/test_worker --gtest_filter='-CudaEvaluator.*' || status=1
else
  echo "gpu-check: python3's PyTorch is not a CUDA build; the evaluator was not checked"
fi
exit "$status"
