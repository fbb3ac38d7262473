#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install, build, run.
# It runs a job on this machine with an embedded coordinator and store and
# local worker processes (`kvtune run`): KVTuner's uniform baselines and the
# hardware formats on the built-in (synthetic) demo model. The search job
# (issue 5) replaces the evaluate job here when it lands.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target kvtune kvtune-worker
./build/kvtune inspect --model builtin:demo
echo
./build/kvtune run --model builtin:demo --data sample:8:128:0 --scheme kivi \
  --config KV8 --config K8V4 --config KV4 --config K4V2 --config KV2 \
  --config KVfp8 --config Kfp8Vnvfp4 "$@"
