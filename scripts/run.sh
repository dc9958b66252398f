#!/usr/bin/env bash
# Runs everything on this machine: starts PostgreSQL, Redis and NATS if needed, creates the
# database, builds the release binary and links it as ~/.local/bin/opssentinal (saying what to
# export when that is not on PATH), then runs ingest + a worker + the query API in one process on
# port 8080, in the foreground. On first start it prints the admin user's password and an admin
# API key, once.
set -euo pipefail
cd "$(dirname "$0")/.."
user_path=$PATH user_nats_url=${NATS_URL:-}
source scripts/services.sh
ensure_services
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/opssentinal}"
db="${DATABASE_URL##*/}"; db="${db%%\?*}"
psql "${DATABASE_URL%/*}/postgres" -tAc "select 1 from pg_database where datname = '$db'" | grep -q 1 \
  || psql "${DATABASE_URL%/*}/postgres" -qc "create database \"$db\""
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/opssentinal-target}"
cargo build --release --locked --bin opssentinal
bin="$(cd "$CARGO_TARGET_DIR/release" && pwd)/opssentinal"

# The README's `opssentinal …` commands, from another terminal: a link to this build in
# ~/.local/bin (OPSSENTINAL_BIN_DIR), never over a file there that is not such a link.
bin_dir="${OPSSENTINAL_BIN_DIR:-$HOME/.local/bin}"
mkdir -p "$bin_dir"
hints=()
if [ -e "$bin_dir/opssentinal" ] && [ ! -L "$bin_dir/opssentinal" ]; then
  echo "note: $bin_dir/opssentinal is not a link to a build, left as it is; this build is $bin" >&2
else
  ln -sfn "$bin" "$bin_dir/opssentinal"
  echo "the CLI: $bin_dir/opssentinal (-> $bin)" >&2
  case ":$user_path:" in
    *":$bin_dir:"*)
      first=$(PATH=$user_path command -v opssentinal || true)
      [ "$first" = "$bin_dir/opssentinal" ] || echo "note: $first comes first on PATH, not this link" >&2 ;;
    *) hints+=("PATH=\"$bin_dir:\$PATH\"") ;;
  esac
fi
# The CLI's dlq commands need NATS_URL when services.sh started NATS on its alternative port.
[ -n "$user_nats_url" ] || [ "$NATS_URL" = nats://127.0.0.1:4222 ] || hints+=("NATS_URL=$NATS_URL")
[ ${#hints[@]} = 0 ] || echo "in the terminal you run \`opssentinal …\` from: export ${hints[*]}" >&2
exec "$bin" serve "$@"
