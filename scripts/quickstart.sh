#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install, build, run.
# Today it evaluates KVTuner's uniform baselines and the hardware formats on
# the built-in (synthetic) demo model; the embedded local search (coordinator,
# workers and store in one process) replaces this when it lands.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target kvtune kvtune-worker
./build/kvtune inspect --model builtin:demo
echo
./build/kvtune eval --model builtin:demo --data sample:8:128:0 --scheme kivi \
  --config KV8 --config K8V4 --config KV4 --config K4V2 --config KV2 \
  --config KVfp8 --config Kfp8Vnvfp4 "$@"
