#!/usr/bin/env bash
# Benchmarks, on release binaries against the local services:
#   scripts/bench.sh                       # the event pipeline, all default phases (tests/bench/pipeline.rs)
#   scripts/bench.sh pipeline scale steady # only the named phases: ingest, scale, steady, wide
#   scripts/bench.sh query                 # the query API over 1,000,000 incidents (tests/bench/query.rs)
# Settings are environment variables, e.g. BENCH_WRK_SECONDS=10 BENCH_RUNS=1 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bench="${1:-pipeline}"
case "$bench" in pipeline|query) ;; *) echo "usage: scripts/bench.sh [pipeline [PHASE…]|query]" >&2; exit 2 ;; esac
shift || true
source scripts/services.sh
ensure_services
# The closed-loop phases' load generator (BENCH_CLIENT=builtin does without it).
command -v wrk >/dev/null || [ "${BENCH_CLIENT:-}" = builtin ] || apt_install wrk
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opssentinal-target}"
cargo build --release --locked --bins
cargo bench --locked -p e2e --bench "$bench" -- "$@"
