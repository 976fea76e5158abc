# bench/limit.sh: the concurrency limit's rows of `make bench` (row group
# `limit`; BENCH_SKIP=limit skips it). Sourced by bench/run.sh after the
# overload rows: it uses run.sh's start_blitz, stop_blitz, blitz_row, psql,
# now, say, and its variables (big, duration, tmp, timeout_ms).
#
# Environment (for a short trial):
#   BENCH_LIMIT_DURATION  seconds of each 500-client row (default BENCH_DURATION)
#   BENCH_LIMIT_LOW_S     seconds of the low-traffic row, 10 calls/s (default 60)
#   BENCH_LIMIT_SLOW_RUN_S  seconds of the slowdown row (default 60); the
#                         slowdown starts halfway
#   BENCH_LIMIT_SLOWDOWN_S  seconds the slowdown lasts (default 20)
#
# The rows, each on a server of its own beside the default one (idle):
#   auto, from start: a fresh server (db.active_limit = "auto"), 500 clients
#     closed loop (limit-auto, settling included), and again right after
#     (limit-auto-settled, the row the sweep compares); then on the same
#     server 10 calls/s open loop (low traffic), then 500 clients again
#     (the recovery); the limit sampled every 250 ms from /metrics all
#     along (bench/limit_sampler.py: OUTDIR/limit-auto.csv);
#   fixed limits: the formula (the auto server's limit at start), 2×, 4×
#     and 8×, each `--set db.active_limit=N --set db.pool_size=N`, 500
#     clients closed loop, from start (limit-fixed-N-start) then warm
#     (limit-fixed-N); then 8×, 4×, 2×, the formula again (`-r2`), and auto
#     again on a fresh server, from start (limit-auto-r2) then settled
#     (limit-auto-settled-r2): two rounds in mirrored order, whose warm
#     rows' means the report compares;
#   slowdown: a fresh auto server at 500 clients; halfway, two psql
#     sessions run `SELECT count(*) FROM generate_series(1, 5000000)` in a
#     loop directly on PostgreSQL (CPU-heavy) for BENCH_LIMIT_SLOWDOWN_S,
#     then stop; sampled to OUTDIR/limit-slowdown.csv.
# The times the phases start go to OUTDIR/limit-marks.jsonl; bench/report.py
# reads the CSVs and the marks, prints the limit table, and writes
# limit-slowdown.svg and the CSVs beside tps.svg.

limit_duration=${BENCH_LIMIT_DURATION:-$duration}
limit_low_s=${BENCH_LIMIT_LOW_S:-60}
limit_slow_run_s=${BENCH_LIMIT_SLOW_RUN_S:-60}
limit_slowdown_s=${BENCH_LIMIT_SLOWDOWN_S:-20}
limit_marks=$tmp/out/limit-marks.jsonl
sampler_pid=

# mark NAME: the time the phase NAME starts.
mark() { printf '{"name":"%s","t":%s}\n' "$1" "$(now)" >>"$limit_marks"; }

# start_limit_server SETTINGS…: a server beside the default one, with its
# metrics listener on metrics_port.
start_limit_server() {
  default_port=$blitz_port default_pid=$blitz_pid
  metrics_port=$(free_port 27000)
  start_blitz --set "metrics.listen=127.0.0.1:$metrics_port" "$@"
}
stop_limit_server() {
  stop_blitz
  blitz_port=$default_port blitz_pid=$default_pid default_pid=
}

# start_sampler CSV / stop_sampler: the limit over time (limit_sampler.py).
start_sampler() {
  python3 bench/limit_sampler.py "127.0.0.1:$metrics_port" "$tmp/out/$1" 250 &
  sampler_pid=$!
}
stop_sampler() {
  kill "$sampler_pid" 2>/dev/null && wait "$sampler_pid" 2>/dev/null || true
  sampler_pid=
}

# inject_slowdown AFTER_S FOR_S: two CPU-heavy psql sessions on
# PostgreSQL itself from AFTER_S seconds on, for FOR_S seconds.
inject_slowdown() {
  sleep "$1"
  mark slowdown_start
  local end=$(( $(date +%s) + $2 )) i
  for i in 1 2; do
    ( while [ "$(date +%s)" -lt "$end" ]; do
        psql -d blitz -c "SELECT count(*) FROM generate_series(1, 5000000)" >/dev/null 2>&1 || break
      done ) &
  done
  wait
  mark slowdown_end
}

say "limit rows: auto from start, low traffic, recovery; fixed limits; slowdown"
: >"$limit_marks"
# No system-call sub-rows here: they would run between the phases.
limit_saved_syscall_method=$syscall_method
syscall_method=

# Auto from start, low traffic, then 500 clients again, on one server.
start_limit_server
formula=$("$blitz_bin" --server "127.0.0.1:$blitz_port" call sys.status \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["active_limit"]["current"])')
auto_pool=$("$blitz_bin" --server "127.0.0.1:$blitz_port" call sys.status \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["pool"]["size"])')
start_sampler limit-auto.csv
mark auto_start
row_pool=$auto_pool blitz_row limit-auto limit-start "$big" --duration "$limit_duration"
row_pool=$auto_pool blitz_row limit-auto-settled limit-sweep "$big" --duration "$limit_duration"
mark low_start
row_pool=$auto_pool blitz_row limit-low limit-low 10 --rate 10 --duration "$limit_low_s" --timeout-ms "$timeout_ms"
mark recover_start
row_pool=$auto_pool blitz_row limit-recover limit-recover "$big" --duration "$limit_duration"
mark recover_end
stop_sampler
stop_limit_server

# The sweep of fixed limits, formula, 2×, 4×, 8×, then back down, then
# auto again from start: each setting runs twice, in mirrored order, so a
# drift of the machine's speed over the sweep hits every setting alike.
# Every setting's server is fresh: a row from start (new backends warming
# up, auto settling), then the row the sweep compares, on warm backends.
fixed_row() {
  start_limit_server --set "db.active_limit=$1" --set "db.pool_size=$1"
  row_pool=$1 blitz_row "limit-fixed-$1${2:-}-start" limit-start "$big" --duration "$limit_duration"
  row_pool=$1 blitz_row "limit-fixed-$1${2:-}" limit-sweep "$big" --duration "$limit_duration"
  stop_limit_server
}
for m in 1 2 4 8; do fixed_row $((formula * m)); done
for m in 8 4 2 1; do fixed_row $((formula * m)) -r2; done
start_limit_server
row_pool=$auto_pool blitz_row limit-auto-r2 limit-start "$big" --duration "$limit_duration"
row_pool=$auto_pool blitz_row limit-auto-settled-r2 limit-sweep "$big" --duration "$limit_duration"
stop_limit_server

# A slowdown injected halfway.
start_limit_server
start_sampler limit-slowdown.csv
mark slowdown_run_start
inject_slowdown $((limit_slow_run_s / 2)) "$limit_slowdown_s" &
injector=$!
row_pool=$auto_pool blitz_row limit-slowdown limit-slowdown "$big" --duration "$limit_slow_run_s" \
  --series "$tmp/out/limit-slowdown-calls.csv"
wait "$injector" 2>/dev/null || true
stop_sampler
stop_limit_server
syscall_method=$limit_saved_syscall_method
