#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install, build, run.
# It runs a search on this machine with an embedded coordinator and store and
# local worker processes (`kvtune run`): the Pareto frontier of per-layer KV
# configs (average bits vs. KL) of the built-in, synthetic demo model within 5
# bits, next to the uniform baselines.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target kvtune kvtune-worker
./build/kvtune inspect --model builtin:demo
echo
./build/kvtune run --kind search --model builtin:demo --data sample:4:64:0 --scheme kivi \
  --max-bits 5 --max-evaluations 150 "$@"
