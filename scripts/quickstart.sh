#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: install, build, run.
# Today it surveys every KV format on a synthetic cache (`kvtune formats`);
# the embedded local search replaces it when it lands.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$(nproc)" --target kvtune kvtune-worker
./build/kvtune formats "$@"
