#!/usr/bin/env bash
# Set-up (if needed), a Release build with ccache, and the whole test suite through ctest.
#
#   scripts/test.sh                 everything
#   scripts/test.sh -R tokenizer    extra arguments go to ctest
#   BUILD_DIR=build-asan SHARDSERVE_CMAKE_ARGS="-DSHARDSERVE_SANITIZE=address,undefined" scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh

build=${BUILD_DIR:-build}
jobs=${JOBS:-$(nproc)}
# shellcheck disable=SC2086
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${SHARDSERVE_CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs" "$@"
