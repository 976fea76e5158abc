# bench/replicas.sh: the read-replica rows of `make bench` (row group
# `replicas`; BENCH_SKIP=replicas skips it). Sourced by bench/run.sh after
# the limit rows: it uses run.sh's start_blitz, stop_blitz, blitz_row,
# as_pg, free_port, say, and its variables (bindir, tmp, pg_port, big,
# duration, server_bin).
#
# The rows: a read-only function (blitz_api.list_project_images, declared
# STABLE in conf/api.sql) at 500 clients, closed loop, on a server of its
# own with 0, 1 and 2 local hot standbys in `db.replica_urls`, and the
# share of the calls each PostgreSQL server ran (pg_stat_user_functions,
# track_functions = all on every server, read before and after the row;
# the server is stopped after its row so that its backends flush their
# counts as they exit). On one 2-core machine the standbys share the CPUs
# with the primary: the rows show the routing, not a speed-up.
#
# The standbys: `pg_basebackup -R` of the bench cluster, in $tmp/standbyN,
# each on a free port, started after the primary has track_functions on
# (their postgresql.auto.conf is the primary's), stopped at the end of the
# group (and by run.sh's cleanup on any exit). Skipped, saying so, when the
# built server does not know `db.replica_urls`.

replica_ports=()
replica_shares=$tmp/out/replicas-shares.jsonl

# start_standby N: a hot standby of the bench cluster in $tmp/standbyN on a
# free port, caught up; appends its port to replica_ports.
start_standby() {
  local n=$1 dir=$tmp/standby$1 port
  port=$(free_port 21000)
  as_pg "$bindir/pg_basebackup" -D "$dir" -h 127.0.0.1 -p "$pg_port" -U postgres \
    -R -X stream -c fast >"$tmp/basebackup$n.log" 2>&1 \
    || { cat "$tmp/basebackup$n.log" >&2; die "pg_basebackup of standby $n failed"; }
  printf '# bench/replicas.sh: standby %s\nport = %s\n' "$n" "$port" >>"$dir/postgresql.conf"
  as_pg setsid "$bindir/pg_ctl" -D "$dir" -l "$tmp/standby$n.log" -w -t 60 start >/dev/null \
    || { cat "$tmp/standby$n.log" >&2; die "standby $n did not start"; }
  local lsn
  lsn=$(pg_at "$pg_port" "SELECT pg_current_wal_insert_lsn()")
  for _ in $(seq 300); do
    [ "$(pg_at "$port" "SELECT pg_last_wal_replay_lsn() >= '$lsn'::pg_lsn")" = t ] && break
    sleep 0.1
  done
  replica_ports+=("$port")
  say "standby $n: port $port, in recovery: $(pg_at "$port" "SELECT pg_is_in_recovery()")"
}

# stop_standbys: stops every standby of this group.
stop_standbys() {
  local dir
  for dir in "$tmp"/standby*; do
    if [ -f "$dir/postmaster.pid" ]; then
      as_pg "$bindir/pg_ctl" -D "$dir" -m fast -w stop >/dev/null 2>&1 || true
    fi
  done
  replica_ports=()
}

# pg_at PORT SQL: one value from database blitz on the server at PORT.
pg_at() {
  "$bindir/psql" -X -q -At -h 127.0.0.1 -p "$1" -U postgres -d blitz -c "$2"
}

# function_calls PORT: calls of list_project_images counted on that server.
function_calls() {
  pg_at "$1" "SELECT COALESCE(sum(calls), 0) FROM pg_stat_user_functions
              WHERE schemaname = 'blitz_api' AND funcname = 'list_project_images'"
}

# replica_urls N: the db.replica_urls value naming the first N standbys.
replica_urls() {
  local urls=() p
  for p in "${replica_ports[@]:0:$1}"; do urls+=("postgresql://postgres@127.0.0.1:$p/blitz"); done
  local IFS=,
  echo "${urls[*]}"
}

# wait_replicas N: until the server's sys.status lists N replicas each with
# a share (at most 20 s; the row runs anyway and the shares show the rest).
wait_replicas() {
  local n=$1
  local status
  for _ in $(seq 200); do
    status=$("$blitz_bin" --server "127.0.0.1:$blitz_port" status 2>/dev/null) || status='{}'
    printf '%s' "$status" | python3 -c '
import json, sys
replicas = json.load(sys.stdin).get("replicas") or []
sys.exit(0 if len(replicas) >= int(sys.argv[1]) and all((r.get("share") or 0) > 0 for r in replicas) else 1)' "$n" \
      2>/dev/null && return
    sleep 0.1
  done
  say "replicas-$n: the server did not list $n replicas with a share within 20 s; running anyway"
}

# replicas_row N: the 500-client row with the first N standbys.
replicas_row() {
  local n=$1 ports=("$pg_port" "${replica_ports[@]:0:$1}") before=() after=() p
  default_port=$blitz_port default_pid=$blitz_pid
  start_blitz --set "db.replica_urls=$(replica_urls "$n")"
  [ "$n" = 0 ] || wait_replicas "$n"
  for p in "${ports[@]}"; do before+=("$(function_calls "$p")"); done
  blitz_row "replicas-$n" replicas "$big" --method api.list_project_images \
    --params "{\"project_id\": $project}" --duration "$duration"
  stop_blitz
  blitz_port=$default_port blitz_pid=$default_pid default_pid=
  sleep 1 # the backends' last counts reach the statistics as they exit
  for p in "${ports[@]}"; do after+=("$(function_calls "$p")"); done
  python3 - "$replica_shares" "$n" "${before[*]}" "${after[*]}" <<'PY'
import json, sys
path, n, before, after = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), sys.argv[4].split()
calls = [int(a) - int(b) for a, b in zip(after, before)]
with open(path, "a") as f:
    f.write(json.dumps({"id": f"replicas-{n}", "standbys": n, "calls": calls}) + "\n")
total = sum(calls) or 1
names = ["primary"] + [f"standby {i}" for i in range(1, n + 1)]
print(f"bench: replicas-{n}: calls " + ", ".join(
    f"{name} {c} ({100 * c / total:.0f} %)" for name, c in zip(names, calls)), file=sys.stderr)
PY
}

if ! "$server_bin" --set db.replica_urls= --print-config >/dev/null 2>&1; then
  say "replica rows skipped: this blitz-server does not know db.replica_urls"
else
  project=$(pg_at "$pg_port" "SELECT min(id) FROM blitz_demo.projects")
  pg_at "$pg_port" "ALTER SYSTEM SET track_functions = 'all'" >/dev/null
  pg_at "$pg_port" "SELECT pg_reload_conf()" >/dev/null
  start_standby 1
  start_standby 2
  say "replica rows: list_project_images($project) at $big clients with 0, 1 and 2 standbys;" \
    "on one machine the standbys share its CPUs: this shows the routing, not a speed-up"
  for n in 0 1 2; do replicas_row "$n"; done
  stop_standbys
  pg_at "$pg_port" "ALTER SYSTEM RESET track_functions" >/dev/null
  pg_at "$pg_port" "SELECT pg_reload_conf()" >/dev/null
fi
