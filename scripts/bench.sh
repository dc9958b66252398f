#!/usr/bin/env bash
# Pipeline benchmark (see tests/bench/pipeline.rs): release binaries, local services.
#   scripts/bench.sh                      # 100k events, 64 in flight, 3 runs
#   BENCH_EVENTS=20000 BENCH_RUNS=1 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opssentinal-target}"
cargo build --release --locked --bins
cargo bench --locked -p e2e --bench pipeline
