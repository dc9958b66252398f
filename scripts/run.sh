#!/usr/bin/env bash
# Runs everything on this machine: starts PostgreSQL, Redis and NATS if needed, creates the
# database, then ingest + a worker + the query API in one process on port 8080.
# On first start it prints the admin user's password and an admin API key, once.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/services.sh
ensure_services
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/opssentinal}"
db="${DATABASE_URL##*/}"; db="${db%%\?*}"
psql "${DATABASE_URL%/*}/postgres" -tAc "select 1 from pg_database where datname = '$db'" | grep -q 1 \
  || psql "${DATABASE_URL%/*}/postgres" -qc "create database \"$db\""
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opssentinal-target}"
exec cargo run --release --locked --bin opssentinal -- serve "$@"
