#!/usr/bin/env bash
# `make run`: ensure a database, then run blitz-server in the foreground.
# With BLITZ_DB_URL set, that database is used as it is; otherwise the
# project-local cluster (scripts/localdb.sh) is started and used.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if [ -z "${BLITZ_DB_URL:-}" ]; then
  BLITZ_DB_URL=$(scripts/localdb.sh start)
  export BLITZ_DB_URL
  echo "run: using the project-local PostgreSQL at $BLITZ_DB_URL (make db-stop stops it)" >&2
fi
scripts/load-api.sh "$BLITZ_DB_URL" "${BLITZ_SCALE:-1}"
export RUST_LOG=${RUST_LOG:-info}
# Trust mode (login by name, loopback only) so a newcomer can call the API at
# once; the shipped conf/blitz.toml says "password". BLITZ_AUTH_MODE=password
# make run keeps passwords.
# JSON-RPC over HTTP on 127.0.0.1:4080, metrics and health on 127.0.0.1:4081
# (BLITZ_SERVER_HTTP_LISTEN, BLITZ_METRICS_LISTEN choose others).
exec target/release/blitz-server --config conf/blitz.toml \
  --set "server.http_listen=${BLITZ_SERVER_HTTP_LISTEN:-127.0.0.1:4080}" \
  --set "metrics.listen=${BLITZ_METRICS_LISTEN:-127.0.0.1:4081}" \
  --set "auth.mode=${BLITZ_AUTH_MODE:-trust}" "$@"
