#!/usr/bin/env bash
# `make bench`: blitz side by side with direct PostgreSQL and PgBouncer, on
# one machine, in one run, with the same transaction everywhere
# (blitz_api.transfer: pgbench's TPC-B transaction as one plpgsql function).
#
#   bench/run.sh            (make bench builds first, then calls this)
#
# Environment:
#   BENCH_DURATION  seconds per throughput row (default 15)
#   BENCH_SCALE     pgbench scale of the data set (default 10)
#   BENCH_CLIENTS   concurrencies of the curve (default "1 2 4 8 16 32 500")
#   BENCH_TIMEOUT_MS  deadline of the overload rows' calls (default 1000)
#   BENCH_IDLE      idle-connection counts of the idle rows (default "10000 100000";
#                   empty: no idle rows)
#   BENCH_OUT       where the results go (default bench/results)
#   BENCH_SYSCALL_DURATION  seconds of each system-call sub-row (default 5;
#                   0: no sub-rows, the syscalls columns stay empty)
#   BENCH_SKIP      row groups not to run, among: tx10k pool-alt http keys
#                   pinned refusals limit replicas tls (default none; for a short trial)
#   BENCH_TLS_*     the TLS rows' durations and idle count (bench/tls.sh says which)
#   BENCH_LIMIT_*   the limit rows' durations (bench/limit.sh says which)
#
# What it does, all in a temporary directory it deletes at the end:
#   1. a throw-away PostgreSQL cluster (initdb as user postgres when run as
#      root) on a free port: max_connections 560 (500 direct clients beside
#      PgBouncer's and blitz-server's pools), shared_buffers 256MB,
#      fsync and synchronous_commit left on (durable commits, as deployed),
#      checkpoints only between rows; `pgbench -i -s SCALE`, then
#      conf/api.sql through scripts/load-api.sh;
#   2. blitz-server with its default configuration (pool = cores × 2), and
#      PgBouncer 1.18+ in transaction mode with the same pool size
#      (installed with apt-get when missing and running as root; otherwise
#      its rows are skipped and the table says so);
#   3. the rows (each after TRUNCATE pgbench_history, VACUUM of the small
#      tables and a CHECKPOINT, as pgbench does before a run):
#        direct PostgreSQL, pgbench -M prepared, and blitz, `blitz bench`
#        closed loop, in turn at each BENCH_CLIENTS;
#        PgBouncer at 500 clients (pgbench -M simple: transaction pooling
#        in PgBouncer 1.18 cannot keep prepared statements);
#        10,000 transactions from 500 clients (wall time, connections
#        included): blitz, PgBouncer, direct at 500, direct at its best;
#        for information, blitz at 500 on a second server whose pool is
#        direct's best concurrency (when that differs from the default);
#        blitz open loop at 2× and 10× its closed-loop peak, then the
#        closed loop at 500 and the same two rows pinned: the load generator
#        on the last CPU (taskset -c), blitz-server and every PostgreSQL
#        process on the others (taskset -a -p);
#        refusals alone: a second server with one worker and a queue as
#        deep as the load generator's threads (at most 4), the worker held on a
#        table lock (LOCK pgbench_accounts IN SHARE MODE from psql), open
#        loop at the 10× rate: every call refused (-32001 at admission; the
#        few that reach the worker or the queue end -32002 at their deadline);
#        the concurrency limit's rows (bench/limit.sh);
#        read replicas: list_project_images at 500 clients with 0, 1 and 2
#        local hot standbys, and the share of the calls each PostgreSQL ran
#        (bench/replicas.sh; skipped when the server has no db.replica_urls);
#        idle connections (BENCH_IDLE, default 10,000 and 100,000) on a fresh
#        server: threads, RSS, sys.ping p99 on a fresh connection meanwhile;
#        TLS (bench/tls.sh): handshake storms (full, pinned and not, and
#        resumed) with sys.ping meanwhile, CPU per call over TLS against
#        plaintext at 500 clients, memory per idle TLS connection;
#   4. bench/report.py prints the table and writes BENCH_OUT/latest.md,
#      latest.csv and tps.svg.
#
# The cost of a call, measured from outside the programs (any blitz-server
# and any load generator will do), over each row's whole run (connection
# set-up and logins included):
#   CPU: utime + stime from /proc/PID/stat: of blitz-server or PgBouncer;
#     of PostgreSQL, the postmaster's own and its reaped children's
#     (cutime + cstime: backends that exited) plus every live child's;
#   context switches: voluntary + nonvoluntary_ctxt_switches summed over
#     /proc/PID/task/*/status of blitz-server or PgBouncer, before and after;
#   system calls: in a sub-row of its own (BENCH_SYSCALL_DURATION seconds,
#     the same command), so that counting does not slow the row itself:
#     `perf stat -e raw_syscalls:sys_enter -p PID` where perf can read that
#     tracepoint, else `strace -c -f -p PID` (which slows the server a lot:
#     the figure is still a count); the table names the method.
# The report divides by successes ("per tx") in the throughput table and by
# replies, successes and error replies alike, in the overload and cost
# tables; PostgreSQL's CPU always by successes.
# Every process it starts is stopped on exit, however it exits (trap EXIT).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

duration=${BENCH_DURATION:-15}
scale=${BENCH_SCALE:-10}
clients=${BENCH_CLIENTS:-"1 2 4 8 16 32 500"}
timeout_ms=${BENCH_TIMEOUT_MS:-1000}
idle_counts=${BENCH_IDLE-"10000 100000"}
out=${BENCH_OUT:-bench/results}
syscall_duration=${BENCH_SYSCALL_DURATION:-5}
skip=" ${BENCH_SKIP:-} "
big=500          # "500 clients": the overload concurrency
txns=10000       # the seed's experiment: 10,000 transactions from 500 clients

target_dir=${CARGO_TARGET_DIR:-$root/target}
server_bin=$target_dir/release/blitz-server
blitz_bin=$target_dir/release/blitz
[ -x "$server_bin" ] && [ -x "$blitz_bin" ] \
  || { echo "bench: build first: cargo build --release --bins (make bench does)" >&2; exit 1; }

say() { echo "bench: $*" >&2; }
die() { echo "bench: $*" >&2; exit 1; }

bindir=$(scripts/localdb.sh check) || die "PostgreSQL server binaries not found"
for b in initdb pg_ctl psql pgbench; do
  [ -x "$bindir/$b" ] || die "$bindir/$b not found (install the PostgreSQL 15 server and client)"
done

load_start=$(cut -d' ' -f1-3 /proc/loadavg)
tmp=$(mktemp -d /tmp/blitz-bench.XXXXXX)
rows=$tmp/rows.jsonl
: >"$rows"
mkdir -p "$tmp/out"
blitz_pid=
default_pid=
bouncer_pidfile=$tmp/pgbouncer.pid

# Separate services: PostgreSQL, blitz-server and PgBouncer each start in a
# session of their own (setsid), as they would under systemd, rather than in
# this script's. Linux's scheduler (with kernel.sched_autogroup_enabled, the
# default on desktop and many server kernels) shares the CPU fairly between
# sessions before sharing it between threads: in one session, the bench
# client's and blitz-server's threads would compete with PostgreSQL's
# backends thread for thread, a contest no deployment sets up.
#
# PostgreSQL and PgBouncer refuse to run as root: run them as `postgres`.
as_pg() {
  if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  # Children of this script still running (a pgbench or blitz bench cut short).
  local j
  for j in $(jobs -p); do kill "$j" 2>/dev/null || true; done
  for j in $blitz_pid $default_pid; do
    kill "$j" 2>/dev/null && wait "$j" 2>/dev/null || true
  done
  if [ -s "$bouncer_pidfile" ]; then kill "$(cat "$bouncer_pidfile")" 2>/dev/null || true; fi
  if [ "$rc" != 0 ]; then
    local log
    for log in pg.log blitz-server.log pgbouncer.log; do
      [ -s "$tmp/$log" ] && { echo "bench: last lines of $log:" >&2; tail -5 "$tmp/$log" >&2; }
    done
  fi
  local data
  for data in "$tmp/data" "$tmp"/standby*; do
    if [ -f "$data/postmaster.pid" ]; then
      as_pg "$bindir/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 || true
    fi
  done
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# The soft limit only: the idle rows raise it again up to the hard limit.
ulimit -Sn 16384 2>/dev/null || ulimit -Sn "$(ulimit -Hn)" 2>/dev/null || true

# A port nothing is bound to, below the ephemeral range (where 500 client
# connections take their local ports), tested by binding it.
port_in_use() {
  python3 -c 'import socket, sys
s = socket.socket()
try: s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError: sys.exit(0)
sys.exit(1)' "$1"
}
free_port() {
  local p=$(( $1 + RANDOM % 2000 ))
  while port_in_use "$p"; do p=$((p + 1)); done
  echo "$p"
}

clk_tck=$(getconf CLK_TCK)
# CPU ticks of a process: utime + stime (+ cutime + cstime of reaped
# children when $2 = tree, + utime + stime of live children).
ticks() {
  local pid=$1 mode=${2:-own}
  # cat, not awk on the glob: backends exit while we read.
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v P="$pid" -v M="$mode" '
    { s = $0; sub(/^[^)]*\) /, "", s); split(s, f, " ")
      if ($1 == P) t += f[12] + f[13] + (M == "tree" ? f[14] + f[15] : 0)
      else if (M == "tree" && f[2] == P) t += f[12] + f[13] }
    END { print t + 0 }'
}
# Context switches of every thread of a process, voluntary and not.
switches() {
  { cat /proc/"$1"/task/*/status 2>/dev/null || true; } \
    | awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 } END { print n + 0 }'
}
skipped() { [[ "$skip" == *" $1 "* ]]; }
now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.6f\", $* }"; }

# ---------------------------------------------------------------- cluster
pg_port=$(free_port 20000)
[ "$(id -u)" = 0 ] && chown postgres "$tmp"
chmod 755 "$tmp"
say "PostgreSQL: initdb in $tmp/data (port $pg_port)"
as_pg "$bindir/initdb" -D "$tmp/data" -U postgres -A trust -E UTF8 --no-instructions >"$tmp/initdb.log" 2>&1 \
  || { cat "$tmp/initdb.log" >&2; die "initdb failed"; }
cat >>"$tmp/data/postgresql.conf" <<CONF
# bench/run.sh
port = $pg_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$tmp'
max_connections = 560
shared_buffers = 256MB
# Durable commits, as deployed: fsync and synchronous_commit stay on.
# Checkpoints are taken between rows, not during them.
max_wal_size = 8GB
checkpoint_timeout = 1h
CONF
as_pg setsid "$bindir/pg_ctl" -D "$tmp/data" -l "$tmp/pg.log" -w -t 60 start >/dev/null \
  || { cat "$tmp/pg.log" >&2; die "PostgreSQL did not start"; }
pg_pid=$(head -1 "$tmp/data/postmaster.pid")
psql() { "$bindir/psql" -X -q -h 127.0.0.1 -p "$pg_port" -U postgres "$@"; }
psql -d postgres -c "CREATE DATABASE blitz" >/dev/null
db_url="postgresql://postgres@127.0.0.1:$pg_port/blitz"
say "data: pgbench -i -s $scale, then conf/api.sql"
"$bindir/pgbench" -i -q -s "$scale" -h 127.0.0.1 -p "$pg_port" -U postgres blitz >"$tmp/init.log" 2>&1 \
  || { cat "$tmp/init.log" >&2; die "pgbench -i failed"; }
scripts/load-api.sh "$db_url" "$scale" >&2

cat >"$tmp/transfer.sql" <<'SQL'
\set aid random(1, 100000 * :scale)
\set tid random(1, 10 * :scale)
\set bid random(1, 1 * :scale)
\set delta random(-5000, 5000)
SELECT blitz_api.transfer(:aid, :tid, :bid, :delta);
SQL

reset_db() {
  psql -d blitz -c "TRUNCATE pgbench_history" -c "VACUUM pgbench_branches, pgbench_tellers" -c "CHECKPOINT" >/dev/null
}

# ---------------------------------------------------------------- blitz
auth=()
if "$server_bin" --set auth.mode=trust --print-config >/dev/null 2>&1; then
  auth=(--set auth.mode=trust)
fi
# start_blitz SETTINGS…: a blitz-server on a free port (and JSON-RPC over
# HTTP on another); sets blitz_port, blitz_http_port and blitz_pid, and
# waits until it answers.
start_blitz() {
  blitz_port=$(free_port 23000)
  blitz_http_port=$(free_port 25000)
  RUST_LOG=warn setsid "$server_bin" --listen "127.0.0.1:$blitz_port" --db-url "$db_url" \
    --set "server.http_listen=127.0.0.1:$blitz_http_port" \
    --set "server.max_clients=2000" "${auth[@]}" "$@" >>"$tmp/blitz-server.log" 2>&1 &
  blitz_pid=$!
  # setsid forks (and $! is not the server) only for a process-group leader,
  # as under an interactive shell's job control.
  sleep 0.2
  local comm
  comm=$(cat "/proc/$blitz_pid/comm" 2>/dev/null) || comm=blitz-server # exited: reported below
  [ "$comm" = blitz-server ] \
    || die "could not start blitz-server in a session of its own (pid $blitz_pid is not it); run bench/run.sh from make or a script"
  for _ in $(seq 100); do
    "$blitz_bin" --server "127.0.0.1:$blitz_port" ping >/dev/null 2>&1 && return
    kill -0 "$blitz_pid" 2>/dev/null || { cat "$tmp/blitz-server.log" >&2; die "blitz-server did not start"; }
    sleep 0.1
  done
}
stop_blitz() {
  kill "$blitz_pid" 2>/dev/null && wait "$blitz_pid" 2>/dev/null || true
  blitz_pid=
}
start_blitz
status=$("$blitz_bin" --server "127.0.0.1:$blitz_port" status)
pool=$(printf '%s' "$status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["pool"]["size"])')
workers=$(printf '%s' "$status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers"]["total"])')
router_threads=$(printf '%s' "$status" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("router_threads", 0))')
say "blitz-server: pid $blitz_pid, default configuration, pool_size $pool"

# Sessions: when this server has session.login, every bench connection logs
# in first (--user bench, trust mode); a server without sessions answers
# -32601 and the bench runs without.
user=()
probe=$("$blitz_bin" --server "127.0.0.1:$blitz_port" bench -c 1 --calls 1 --method sys.ping \
  --user bench --quiet --json 2>&1) && user=(--user bench) || true
if [ ${#user[@]} -gt 0 ]; then
  say "sessions: supported; bench connections log in with --user bench (auth.mode=trust)"
elif printf '%s' "$probe" | grep -q -- '-32601'; then
  say "sessions: this server has no session.login yet; bench runs without --user"
else
  die "the session.login probe failed: $probe"
fi

# ---------------------------------------------------------------- pgbouncer
bouncer=
bouncer_note=
if ! command -v pgbouncer >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing pgbouncer with apt-get"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer; } >"$tmp/apt.log" 2>&1 \
      || bouncer_note="apt-get install pgbouncer failed"
  else
    bouncer_note="pgbouncer not installed (and not root to install it)"
  fi
fi
if command -v pgbouncer >/dev/null 2>&1; then
  bouncer_port=$(free_port 26000)
  printf '"postgres" ""\n' >"$tmp/userlist.txt"
  cat >"$tmp/pgbouncer.ini" <<INI
[databases]
blitz = host=127.0.0.1 port=$pg_port dbname=blitz user=postgres

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $bouncer_port
unix_socket_dir = $tmp
auth_type = trust
auth_file = $tmp/userlist.txt
pool_mode = transaction
default_pool_size = $pool
min_pool_size = $pool
max_client_conn = 1000
logfile = $tmp/pgbouncer.log
pidfile = $bouncer_pidfile
INI
  chmod 644 "$tmp/pgbouncer.ini" "$tmp/userlist.txt"
  if as_pg setsid pgbouncer -d -q "$tmp/pgbouncer.ini" >"$tmp/pgbouncer.out" 2>&1; then
    for _ in $(seq 50); do [ -s "$bouncer_pidfile" ] && break; sleep 0.1; done
    bouncer=$(pgbouncer --version | head -1)
    say "$bouncer: pid $(cat "$bouncer_pidfile"), transaction mode, pool $pool"
  else
    bouncer_note="pgbouncer did not start: $(tail -1 "$tmp/pgbouncer.out")"
  fi
fi
[ -n "$bouncer_note" ] && say "PgBouncer rows skipped: $bouncer_note"

# ---------------------------------------------------------------- rows
# Each row appends one JSON line to $rows; bench/report.py reads them.
row() { printf '%s\n' "$1" >>"$rows"; python3 bench/report.py --row "$1" "$tmp/out" >&2; }

# Busy CPU ticks of the whole machine (user, nice, system, irq, softirq),
# plus steal: CPU the hypervisor gave to other machines.
busy_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 + $9 }' /proc/stat; }
# CPU seconds of this shell's finished children, from the `times` builtin
# (its second line), which must run in this shell, not in $(…).
children_cpu() { awk 'NR == 2 { split($1, u, /[ms]/); split($2, s, /[ms]/); printf "%.3f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }' "$1"; }

# How system calls are counted in the sub-rows: perf where it can read the
# raw_syscalls tracepoint (root, or kernel.perf_event_paranoid ≤ 1 with
# tracefs readable), else strace; none when BENCH_SYSCALL_DURATION is 0.
syscall_method=
if [ "$syscall_duration" != 0 ]; then
  if command -v perf >/dev/null 2>&1 \
     && perf stat -x, -e raw_syscalls:sys_enter -o "$tmp/perf-probe" true >/dev/null 2>&1 \
     && awk -F, '$3 ~ /raw_syscalls:sys_enter/ && $1 > 0 { ok = 1 } END { exit !ok }' "$tmp/perf-probe"; then
    syscall_method=perf
  elif command -v strace >/dev/null 2>&1; then
    syscall_method=strace
  else
    say "neither perf nor strace can count system calls here: the syscalls columns stay empty"
  fi
fi

# short_command COMMAND…: sets short to the command of a system-call
# sub-row: COMMAND sending for syscall_duration seconds instead of its
# --duration or -T, without pgbench's per-transaction log.
short_command() {
  local prev= a
  short=()
  for a in "$@"; do
    case "$prev" in --duration | -T) a=$syscall_duration ;; esac
    prev=$a
    case "$a" in -l | --sampling-rate=* | --log-prefix=*) continue ;; esac
    short+=("$a")
  done
}

# syscall_subrow ID PID COMMAND…: runs COMMAND shortened (short_command)
# with PID's system calls counted meanwhile, all its threads; its output
# goes to OUTDIR/ID-sys.out and .err. Prints the JSON members to add to
# the row (nothing when no method works here).
syscall_subrow() {
  local id=$1 pid=$2 counter count f=$tmp/count-$1
  shift 2
  [ -n "$syscall_method" ] || return 0
  short_command "$@"
  reset_db
  if [ "$syscall_method" = perf ]; then
    perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$f" >/dev/null 2>&1 &
  else
    strace -f -c -p "$pid" -o "$f" >/dev/null 2>&1 &
  fi
  counter=$!
  sleep 1 # attached to every thread before the first call
  "${short[@]}" >"$tmp/out/$id-sys.out" 2>"$tmp/out/$id-sys.err" \
    || say "$id: system-call sub-row failed: $(tail -1 "$tmp/out/$id-sys.err")"
  kill -INT "$counter" 2>/dev/null || true
  wait "$counter" 2>/dev/null || true
  if [ "$syscall_method" = perf ]; then
    count=$(awk -F, '$3 ~ /raw_syscalls:sys_enter/ && $1 ~ /^[0-9]+$/ { print $1 }' "$f" 2>/dev/null)
  else
    count=$(awk '$NF == "total" { print $4 }' "$f" 2>/dev/null)
  fi
  [ -n "$count" ] || { say "$id: no system-call count ($syscall_method)"; return 0; }
  printf ',"sys_calls":%s,"sys_method":"%s","sys_id":"%s-sys"' "$count" "$syscall_method" "$id"
}

# measure ID SYSTEM KIND CLIENTS TOOL MIDDLE_PID COMMAND…: runs one row on a
# freshly reset database. Its stdout goes to OUTDIR/ID.out, stderr to
# ID.err; the row records the wall time of the command and the CPU seconds
# PostgreSQL (postmaster tree), the middle process (blitz-server or
# PgBouncer), the client and the whole machine used meanwhile, so the
# report can show how much CPU other programs took (the noise), and the
# middle process's context switches. With a middle process, a system-call
# sub-row follows (syscall_subrow).
measure() {
  local id=$1 system=$2 kind=$3 c=$4 tool=$5 mid_pid=$6
  shift 6
  local t0 t1 pg0 pg1 mid0=0 mid1=0 sw0=0 sw1=0 busy0 busy1 cl0 cl1 json
  reset_db
  times >"$tmp/times"; cl0=$(children_cpu "$tmp/times")
  busy0=$(busy_ticks); pg0=$(ticks "$pg_pid" tree)
  if [ "$mid_pid" != 0 ]; then mid0=$(ticks "$mid_pid"); sw0=$(switches "$mid_pid"); fi
  t0=$(now)
  "$@" >"$tmp/out/$id.out" 2>"$tmp/out/$id.err" || say "$id: $tool failed: $(tail -2 "$tmp/out/$id.err")"
  t1=$(now)
  times >"$tmp/times"; cl1=$(children_cpu "$tmp/times")
  busy1=$(busy_ticks); pg1=$(ticks "$pg_pid" tree)
  if [ "$mid_pid" != 0 ]; then mid1=$(ticks "$mid_pid"); sw1=$(switches "$mid_pid"); fi
  json="{\"id\":\"$id\",\"system\":\"$system\",\"kind\":\"$kind\",\"clients\":$c,\"pool\":${row_pool:-$pool},\"tool\":\"$tool\",\"wall_s\":$(calc "$t1 - $t0"),\"pg_cpu_s\":$(calc "($pg1 - $pg0) / $clk_tck"),\"mid_cpu_s\":$(calc "($mid1 - $mid0) / $clk_tck"),\"client_cpu_s\":$(calc "$cl1 - $cl0"),\"busy_cpu_s\":$(calc "($busy1 - $busy0) / $clk_tck")"
  if [ "$mid_pid" != 0 ]; then
    json+=",\"mid_switches\":$((sw1 - sw0))$(syscall_subrow "$id" "$mid_pid" "$@")"
  fi
  row "$json}"
}

# Load generator threads: one per CPU, at most 4 (pgbench -j here; blitz
# bench picks the same by itself, from the CPUs it may run on, so a pinned
# generator runs one): more threads than CPUs only preempt one another.
loader_threads=$(nproc)
[ "$loader_threads" -gt 4 ] && loader_threads=4

# pgbench_row ID SYSTEM PORT CLIENTS MODE KIND -T SECS|-t N [log]
pgbench_row() {
  local id=$1 system=$2 port=$3 c=$4 mode=$5 kind=$6 limit=$7 n=$8 log=${9:-}
  local mid_pid=0 logargs=()
  if [ "$system" = pgbouncer ]; then mid_pid=$(cat "$bouncer_pidfile"); fi
  if [ -n "$log" ]; then logargs=(-l --sampling-rate=0.1 --log-prefix="$tmp/out/$id"); fi
  measure "$id" "$system" "$kind" "$c" pgbench "$mid_pid" \
    "$bindir/pgbench" -n -f "$tmp/transfer.sql" -s "$scale" -c "$c" -j $(( c < loader_threads ? c : loader_threads )) \
    -M "$mode" "$limit" "$n" "${logargs[@]}" -h 127.0.0.1 -p "$port" -U postgres blitz
}

# blitz_row ID KIND CLIENTS BENCH_ARGS…; the command runs under
# loader_prefix when set (taskset for the pinned rows, a table lock for
# refusals alone).
loader_prefix=()
blitz_row() {
  local id=$1 kind=$2 c=$3
  shift 3
  measure "$id" blitz "$kind" "$c" "blitz bench" "$blitz_pid" \
    "${loader_prefix[@]}" "$blitz_bin" --server "127.0.0.1:$blitz_port" bench -c "$c" --scale "$scale" "${user[@]}" \
    --server-pid "$blitz_pid" --postgres-pid "$pg_pid" --json "$@"
}

# blitz_http_row ID CLIENTS BENCH_ARGS…: the same closed loop over HTTP/1.1
# keep-alive connections (server.http_listen of the same server).
blitz_http_row() {
  local id=$1 c=$2
  shift 2
  measure "$id" blitz curve-http "$c" "blitz bench --http" "$blitz_pid" \
    "$blitz_bin" --server "127.0.0.1:$blitz_http_port" bench --http -c "$c" --scale "$scale" "${user[@]}" \
    --server-pid "$blitz_pid" --postgres-pid "$pg_pid" --json "$@"
}

n_curve=$(echo $clients | wc -w)
n_long=$((2 * n_curve + 9)) # keys, PgBouncer, pool, 2 overload, pinned peak, 2 pinned, refusals
[[ " $clients " == *" $big "* ]] && n_long=$((n_long + 1)) # blitz over HTTP at $big
skipped replicas || n_long=$((n_long + 3)) # 0, 1 and 2 standbys (when the server has replicas)
n_sub=$(( syscall_duration > 0 ? n_curve + 11 : 0 )) # one per blitz or PgBouncer row
say "rows: $n_long of ${duration} s, 4 short ones and $n_sub system-call sub-rows of ${syscall_duration} s" \
  "(about $(( (n_long * (duration + 3) + n_sub * (syscall_duration + 3)) / 60 + 1 )) min at most); the table comes at the end"
# The curve, direct and blitz interleaved at each concurrency so that a
# burst of load from other programs hits both alike; PgBouncer right after
# blitz at 500.
for c in $clients; do
  pgbench_row "direct-c$c" direct "$pg_port" "$c" prepared curve -T "$duration" log
  blitz_row "blitz-c$c" curve "$c" --duration "$duration"
  if [ "$c" = "$big" ] && ! skipped http; then
    blitz_http_row "blitz-http-c$big" "$big" --duration "$duration"
  fi
  if [ "$c" = "$big" ] && [ -n "$bouncer" ]; then
    pgbench_row "pgbouncer-c$big" pgbouncer "$bouncer_port" "$big" simple curve -T "$duration" log
  fi
done
# What an idempotency key costs: blitz at 500 with a fresh key on every call
# (each call also writes its record), right after the row without keys.
skipped keys || blitz_row "blitz-keys-c$big" keys "$big" --duration "$duration" --idempotency-keys
if ! [[ " $clients " == *" $big "* ]] && [ -n "$bouncer" ]; then
  pgbench_row "pgbouncer-c$big" pgbouncer "$bouncer_port" "$big" simple curve -T "$duration" log
fi

# The seed's experiment: 10,000 transactions from 500 clients, wall time
# with connection setup. Direct at its best concurrency: the curve's best.
best=$(python3 bench/report.py --best-direct "$rows" "$tmp/out")
if ! skipped tx10k; then
  blitz_row "tx10k-blitz" tx10k "$big" --calls "$txns"
  if [ -n "$bouncer" ]; then
    pgbench_row "tx10k-pgbouncer" pgbouncer "$bouncer_port" "$big" simple tx10k -t $((txns / big))
  fi
  pgbench_row "tx10k-direct-c$big" direct "$pg_port" "$big" prepared tx10k -t $((txns / big))
  pgbench_row "tx10k-direct-c$best" direct "$pg_port" "$best" prepared tx10k -t $(( (txns + best - 1) / best ))
fi

# For information: blitz at 500 with a pool as large as direct's best
# concurrency, on a second server (the default pool follows the formula).
if [ "$best" != "$pool" ] && ! skipped pool-alt; then
  default_port=$blitz_port default_pid=$blitz_pid
  start_blitz --set "db.pool_size=$best"
  row_pool=$best blitz_row "blitz-pool$best-c$big" pool-alt "$big" --duration "$duration"
  stop_blitz
  blitz_port=$default_port blitz_pid=$default_pid default_pid=
fi

# Overload: open loop at 2× and 10× blitz's closed-loop peak at 500.
peak=$(python3 bench/report.py --peak "$rows" "$tmp/out" "blitz-c$big")
for x in 2 10; do
  rate=$(calc "$peak * $x")
  blitz_row "overload-${x}x" "overload-${x}x" "$big" --rate "$rate" --duration "$duration" --timeout-ms "$timeout_ms"
done

# The same overload rows pinned: the load generator on the last CPU this
# script may use, blitz-server and PostgreSQL on the others, so that the
# load generator takes no CPU from the server. First the closed loop at 500
# pinned the same way: the peak those CPUs give, against which the pinned
# overload rows' goodput is read (the offered rates stay the unpinned ones). Backends forked later
# inherit the postmaster's CPUs. Afterwards every process is allowed all
# of this script's CPUs again.
read -r loader_cpu service_cpus all_cpus < <(python3 -c 'import os
c = sorted(os.sched_getaffinity(0)); j = lambda l: ",".join(map(str, l))
print(c[-1], j(c[:-1]) or "-", j(c))')
pg_processes() {
  { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk -v P="$pg_pid" '
    { s = $0; sub(/^[^)]*\) /, "", s); split(s, f, " "); if ($1 == P || f[2] == P) print $1 }'
}
pin_services() {
  local p
  for p in $blitz_pid $(pg_processes); do taskset -a -p -c "$1" "$p" >/dev/null 2>&1 || true; done
}
pinning=
if skipped pinned; then
  :
elif [ "$service_cpus" = - ] || ! command -v taskset >/dev/null 2>&1; then
  say "pinned overload rows skipped: they need taskset and two CPUs"
else
  pinning="load generator on CPU $loader_cpu; blitz-server and PostgreSQL on CPU $service_cpus"
  pin_services "$service_cpus"
  loader_prefix=(taskset -c "$loader_cpu")
  blitz_row "blitz-c$big-pinned" peak-pinned "$big" --duration "$duration"
  for x in 2 10; do
    rate=$(calc "$peak * $x")
    blitz_row "overload-${x}x-pinned" overload-pinned "$big" --rate "$rate" --duration "$duration" --timeout-ms "$timeout_ms"
  done
  loader_prefix=()
  pin_services "$all_cpus"
fi

# Refusals alone: what a refusal costs the server when it does nothing
# else. A second server with one worker and a queue of four: the load
# generator's threads (at most four) log their connections in one at a time
# each, so the logins fit. Then a psql session holds pgbench_accounts in SHARE mode:
# the transfer that reaches the worker waits on it until its deadline, four
# more wait in the queue, and every other call is refused at admission.
# Open loop at the 10× rate.
# with_table_locked COMMAND…: runs COMMAND while that lock is held.
with_table_locked() {
  psql -d "dbname=blitz application_name=bench-lock" -c "BEGIN" \
    -c "LOCK TABLE pgbench_accounts IN SHARE MODE" -c "SELECT pg_sleep(86400)" >/dev/null 2>&1 &
  local holder=$! rc=0 _
  for _ in $(seq 100); do
    [ "$(psql -d blitz -Atc "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)
          WHERE a.application_name = 'bench-lock' AND l.granted
            AND l.relation = 'pgbench_accounts'::regclass")" = 1 ] && break
    sleep 0.1
  done
  "$@" || rc=$?
  psql -d blitz -Atc "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                      WHERE application_name = 'bench-lock'" >/dev/null
  wait "$holder" 2>/dev/null || true
  return "$rc"
}
if ! skipped refusals; then
  default_port=$blitz_port default_pid=$blitz_pid
  start_blitz --set invocation.workers=1 --set invocation.queue_capacity=4
  loader_prefix=(with_table_locked)
  blitz_row "refusals-10x" refusals "$big" --rate "$(calc "$peak * 10")" \
    --duration "$duration" --timeout-ms "$timeout_ms"
  loader_prefix=()
  stop_blitz
  blitz_port=$default_port blitz_pid=$default_pid default_pid=
fi

# The concurrency limit: fixed limits beside auto, settling, a slowdown,
# low traffic (bench/limit.sh).
skipped limit || source bench/limit.sh

# Read replicas: 0, 1 and 2 local standbys (bench/replicas.sh).
skipped replicas || source bench/replicas.sh

# Idle connections: a fresh server (default configuration) holding N idle
# client connections spread over 127.0.0.x source addresses: its threads,
# RSS, and sys.ping p99 on a fresh connection while they are open. The
# open-file limit is raised for this step only (as root, the hard limit too).
for n in $idle_counts; do
  id="idle-$n"
  lim=$(( n + 4000 > 16384 ? n + 4000 : 16384 ))
  if ( ulimit -Hn "$lim" 2>/dev/null; ulimit -Sn "$lim" 2>/dev/null; \
       IDLE_RSS_LOG="$tmp/idle-$n.log" python3 bench/idle_rss.py "$server_bin" "$db_url" "$n" --json \
       >"$tmp/out/$id.out" 2>"$tmp/out/$id.err" ); then
    row "{\"id\":\"$id\",\"system\":\"blitz\",\"kind\":\"idle\",\"clients\":$n,\"pool\":$pool,\"tool\":\"idle_rss\",\"wall_s\":0}"
  else
    say "$id: skipped: $(tail -1 "$tmp/out/$id.err")"
  fi
done

# TLS: handshakes, CPU per call and memory per connection (bench/tls.sh).
skipped tls || source bench/tls.sh

# ---------------------------------------------------------------- report
meta=$tmp/meta.json
python3 - "$meta" <<PY
import json, os, platform, subprocess, sys, datetime
def sh(c):
    try: return subprocess.run(c, shell=True, capture_output=True, text=True).stdout.strip()
    except Exception: return ""
model = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
json.dump({
  "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
  "commit": sh("git rev-parse --short HEAD"),
  "cpus": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
  "load_start": "$load_start", "load_end": sh("cut -d' ' -f1-3 /proc/loadavg"),
  "postgres": sh("'$bindir/postgres' --version"), "pgbouncer": "$bouncer", "pgbouncer_note": "$bouncer_note",
  "duration_s": $duration, "scale": $scale, "pool": $pool, "timeout_ms": $timeout_ms,
  "sessions": ${#user[@]} > 0, "clk_tck": $clk_tck,
  "syscall_method": "$syscall_method", "syscall_duration_s": $syscall_duration,
  "pinning": "$pinning",
  "router_threads": $router_threads, "workers": $workers,
}, open(sys.argv[1], "w"))
PY
mkdir -p "$out"
python3 bench/report.py --report "$rows" "$tmp/out" "$meta" "$out"
