#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL, Redis and NATS, starting any that is not
# running. Usage: scripts/test.sh [extra cargo-nextest or cargo-test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
# The fault tests need the server binaries too (they start private servers and kill those).
for bin in nats-server redis-server; do command -v "$bin" >/dev/null || { echo "error: $bin not installed" >&2; exit 1; }; done

# A target directory outside the clone keeps later runs incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opssentinal-target}"
# The SIGKILL test runs the real worker binary.
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
