#!/usr/bin/env bash
# Loads conf/api.sql (the blitz_api functions, the pgbench tables and the
# blitz_demo model) into a database.
#
#   scripts/load-api.sh URL [SCALE]
#
# URL is a PostgreSQL connection URL or key=value string; SCALE is the
# pgbench scale used when the pgbench tables are empty (default 1: 100000
# accounts per unit). Safe to run again: the second run only replaces the
# functions. Prints one line saying what the database now holds.
set -euo pipefail

usage() { echo "usage: $0 URL [SCALE]   (SCALE: integer 1..20000, default 1)" >&2; exit 2; }

[ $# -ge 1 ] && [ $# -le 2 ] && [ -n "$1" ] || usage
url=$1
scale=${2:-1}
[[ $scale =~ ^[1-9][0-9]{0,4}$ ]] && [ "$scale" -le 20000 ] || usage

root=$(cd "$(dirname "$0")/.." && pwd)
sql="$root/conf/api.sql"
[ -r "$sql" ] || { echo "load-api: $sql not found" >&2; exit 1; }

# psql: on PATH, else in `pg_config --bindir`, else a Debian versioned dir.
find_psql() {
  if command -v psql >/dev/null 2>&1; then command -v psql; return 0; fi
  if command -v pg_config >/dev/null 2>&1; then
    local b; b=$(pg_config --bindir)
    if [ -x "$b/psql" ]; then echo "$b/psql"; return 0; fi
  fi
  local p
  for p in /usr/lib/postgresql/*/bin/psql; do
    if [ -x "$p" ]; then echo "$p"; return 0; fi
  done
  return 1
}
psql=$(find_psql) || {
  echo "load-api: psql not found on PATH nor in \`pg_config --bindir\`; install the PostgreSQL client (e.g. \`apt-get install postgresql-client-15\`)" >&2
  exit 1
}

# The URL as it may be shown: any password replaced by ***.
shown=$(printf '%s' "$url" | sed -E 's#^([a-z]+://[^:/@]*):[^@/]*@#\1:***@#; s#(password=)[^ ]*#\1***#g')

# -X: ignore ~/.psqlrc, whose settings could change the output or behaviour.
if ! out=$("$psql" -X -q -v ON_ERROR_STOP=1 -v scale="$scale" -d "$url" -f "$sql"); then
  echo "load-api: loading $sql into $shown failed (see the psql error above)" >&2
  exit 1
fi
echo "load-api: loaded conf/api.sql into $shown: ${out#api.sql: }"
