#!/usr/bin/env bash
# Runs the whole test suite against real PostgreSQL, Redis and NATS, starting any that is not
# running. Usage: scripts/test.sh [extra cargo-nextest or cargo-test arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
# The fault tests need the server binaries too (they start private servers and kill those).
for bin in redis-server; do command -v "$bin" >/dev/null || { echo "error: $bin not installed" >&2; exit 1; }; done
# Real alert senders the compatibility tests drive: Debian's Alertmanager (with amtool) and pdpyras.
command -v amtool >/dev/null && command -v prometheus-alertmanager >/dev/null || apt_install prometheus-alertmanager
python3 -c 'import pdpyras' 2>/dev/null || python3 -m pip install --quiet pdpyras
# The outbound webhook tests' receiver verifies signatures with the Standard Webhooks library.
python3 -c 'import standardwebhooks' 2>/dev/null || python3 -m pip install --quiet standardwebhooks
# The email tests' SMTP server (tests/support/smtp_sink.py) is aiosmtpd.
python3 -c 'import aiosmtpd' 2>/dev/null || python3 -m pip install --quiet aiosmtpd
# The console's browser test: Debian's Chromium driven by Playwright's Python package (no browser download).
command -v chromium >/dev/null || apt_install chromium
python3 -c 'import playwright' 2>/dev/null || python3 -m pip install --quiet playwright
# The API contract test: schemathesis fuzzes every operation against the OpenAPI document.
command -v schemathesis >/dev/null || python3 -m pip install --quiet schemathesis
# The deployment checks: Kubernetes schemas offline, Prometheus' rule checker, certificates for TLS tests.
command -v kubernetes-validate >/dev/null || python3 -m pip install --quiet kubernetes-validate
command -v promtool >/dev/null || apt_install prometheus
command -v openssl >/dev/null || apt_install openssl

# A target directory outside the clone keeps later runs incremental.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opssentinal-target}"
# The pure core of `common` (no server, client or runtime crates) builds and passes on its own.
cargo test -p common --no-default-features --locked --quiet
# The SIGKILL test runs the real worker binary.
cargo build --workspace --bins --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast "$@"
else
  cargo test --workspace --locked --no-fail-fast "$@"
fi
