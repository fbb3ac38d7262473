#!/usr/bin/env bash
# Installs what kvtune needs (Debian 12), builds it with warnings as errors,
# and runs every test. CTest's summary is the last thing printed.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh --optional slurm browser
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo -DKVTUNE_WERROR=ON
cmake --build build -j"$(nproc)"
# Twice as many tests as cores: the integration tests mostly wait on their
# processes, and the suite is meant to pass under this load.
ctest --test-dir build --output-on-failure -j"$(( $(nproc) * 2 ))" --timeout 600
