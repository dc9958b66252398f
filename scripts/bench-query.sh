#!/usr/bin/env bash
# Query benchmark (see tests/bench/query.rs): 1,000,000 incidents, release query-api, local services.
#   scripts/bench-query.sh
#   BENCH_INCIDENTS=100000 BENCH_RUNS=1 scripts/bench-query.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opssentinal-target}"
cargo build --release --locked --bins
cargo bench --locked -p e2e --bench query
