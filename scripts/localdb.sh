#!/usr/bin/env bash
# The project-local PostgreSQL used by `make run` and `make bench`.
#
#   scripts/localdb.sh check   make sure initdb/pg_ctl exist (installs them as root on Debian)
#   scripts/localdb.sh start   create the cluster in .blitz/pg if needed, start it, create db `blitz`
#   scripts/localdb.sh url     print the connection URL of the running cluster
#   scripts/localdb.sh stop    stop the cluster
#   scripts/localdb.sh clean   stop it and delete .blitz/pg
#
# Idempotent: `start` on a running cluster only prints its URL. The cluster
# trusts local connections, listens on a unix socket in .blitz/pg and on
# 127.0.0.1 at a non-default port (54329 unless BLITZ_LOCAL_PG_PORT is set,
# or the next free one).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.blitz/pg"
data="$dir/data"

die() { echo "localdb: $*" >&2; exit 1; }

# Finds the PostgreSQL server binaries: on PATH, then in `pg_config --bindir`.
find_bindir() {
  if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
    dirname "$(readlink -f "$(command -v initdb)")"; return 0
  fi
  if command -v pg_config >/dev/null 2>&1; then
    local b; b=$(pg_config --bindir)
    if [ -x "$b/initdb" ] && [ -x "$b/pg_ctl" ]; then echo "$b"; return 0; fi
  fi
  local b
  for b in /usr/lib/postgresql/*/bin; do
    if [ -x "$b/initdb" ]; then echo "$b"; return 0; fi
  done
  return 1
}

ensure_binaries() {
  if bindir=$(find_bindir); then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "localdb: PostgreSQL server binaries not found; installing postgresql with apt-get" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    bindir=$(find_bindir) || die "apt-get installed postgresql but initdb is still not found"
    return 0
  fi
  die "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH nor in \`pg_config --bindir\`.
Install PostgreSQL 15, e.g. \`sudo apt-get install postgresql-15\` (Debian/Ubuntu)
or \`brew install postgresql@15\` (macOS), then run this again."
}

# PostgreSQL refuses to run as root: as root, run it as the `postgres` user.
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/sh postgres
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

choose_port() {
  local p=${BLITZ_LOCAL_PG_PORT:-54329}
  while port_in_use "$p"; do p=$((p + 1)); done
  echo "$p"
}

port() { cat "$dir/port"; }
url() { echo "postgresql://postgres@127.0.0.1:$(port)/blitz"; }
running() { [ -f "$data/PG_VERSION" ] && as_pg "$bindir/pg_ctl" -D "$data" status >/dev/null 2>&1; }

init_cluster() {
  mkdir -p "$dir"
  choose_port > "$dir/port"
  [ "$(id -u)" = 0 ] && { as_pg true; chown -R postgres "$dir"; }
  as_pg "$bindir/initdb" -D "$data" -U postgres -A trust -E UTF8 --no-instructions >"$dir/initdb.log" 2>&1 \
    || die "initdb failed; see $dir/initdb.log"
  cat >>"$data/postgresql.conf" <<CONF
# added by scripts/localdb.sh
port = $(port)
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
max_connections = 600
shared_buffers = 256MB
CONF
}

start() {
  ensure_binaries
  [ -f "$data/PG_VERSION" ] || init_cluster
  if ! running; then
    if port_in_use "$(port)"; then
      die "port $(port) is taken by another program; run \`make db-clean\` and set BLITZ_LOCAL_PG_PORT to a free port"
    fi
    as_pg "$bindir/pg_ctl" -D "$data" -l "$dir/server.log" -w -t 60 start >/dev/null \
      || die "PostgreSQL did not start; see $dir/server.log"
  fi
  if ! "$bindir/psql" -h 127.0.0.1 -p "$(port)" -U postgres -d postgres -tAc \
      "SELECT 1 FROM pg_database WHERE datname = 'blitz'" | grep -q 1; then
    "$bindir/psql" -h 127.0.0.1 -p "$(port)" -U postgres -d postgres -qc "CREATE DATABASE blitz" >/dev/null
  fi
  url
}

stop() {
  ensure_binaries
  if running; then as_pg "$bindir/pg_ctl" -D "$data" -m fast -w stop >/dev/null; echo "localdb: stopped"; fi
}

case "${1:-}" in
  check) ensure_binaries; echo "$bindir" ;;
  start) start ;;
  url) ensure_binaries; running || die "the local cluster is not running; run \`scripts/localdb.sh start\`"; url ;;
  stop) stop ;;
  clean) stop; rm -rf "$dir"; echo "localdb: removed $dir" ;;
  *) die "usage: $0 check|start|url|stop|clean" ;;
esac
