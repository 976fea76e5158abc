# bench/tls.sh: the TLS rows of `make bench` (row group `tls`;
# BENCH_SKIP=tls skips it). Sourced by bench/run.sh after the idle rows:
# it uses run.sh's free_port, say, row, calc, skipped, ticks, clk_tck,
# server_bin, blitz_bin, db_url, auth, loader_cpu, service_cpus, all_cpus
# and tmp.
#
# Environment (for a short trial):
#   BENCH_TLS_STORM_S  seconds of each handshake-storm row (default 10)
#   BENCH_TLS_CALL_S   seconds of each 500-client row (default 6)
#   BENCH_TLS_RATE     calls/s of the sys.ping rows (default 20000)
#   BENCH_TLS_IDLE     idle connections of the memory rows (default 10000;
#                      0: no memory rows)
#
# A CA and a server certificate (ECDSA P-256, for localhost) are made with
# openssl in the temporary directory. Every server here has the default
# configuration beside TLS, in a session of its own, and is stopped after
# its rows. The rows print figures; the report (bench/tls_report.py) shows
# them beside the targets.
#   storm, unpinned and pinned: `blitz bench --handshakes` keeps 32 new
#     connections in flight (connect, full handshake with no resumption, one
#     sys.ping, close) for BENCH_TLS_STORM_S; meanwhile one more connection,
#     opened before, sends sys.ping at 200/s (`blitz bench --rate 200`, open
#     loop: latency from the scheduled send). Pinned: the generator on one
#     CPU (taskset -c), every thread of blitz-server on the others (taskset
#     -a -p); the pinger is not pinned. Reported: handshakes/s, router CPU
#     per handshake (its acceptor and event-loop threads), the generator's,
#     the ping's p50/p99/max;
#   resumed: the same storm unpinned with --resume (TLS 1.3 tickets);
#   CPU per call, TLS against plaintext: a TLS server and a plaintext one
#     side by side, 500 clients on each in turn, TLS, plain, TLS, plain:
#     sys.ping open loop at BENCH_TLS_RATE (the same rate on both, so that
#     both servers batch alike: in a closed loop the TLS clients' own cost
#     lowers the rate, and a lower rate costs the server more per call),
#     pinned as the pinned storm is; then api.transfer (TPC-B) closed loop,
#     not pinned (PostgreSQL needs the CPUs); blitz-server's CPU per reply
#     from /proc (the whole process);
#   memory per idle connection: a fresh server each, BENCH_TLS_IDLE
#     connections opened by bench/tls_idle_rss.py (Python's ssl) and held
#     idle; (RSS after − RSS before) / N, TLS and plaintext.

tls_storm_s=${BENCH_TLS_STORM_S:-10}
tls_call_s=${BENCH_TLS_CALL_S:-6}
tls_rate=${BENCH_TLS_RATE:-20000}
tls_idle=${BENCH_TLS_IDLE:-10000}
tls_dir=$tmp/tls
mkdir -p "$tls_dir"
tls_call_prefix= # a command the call rows run under (taskset for the pinned ones)

say "tls: a CA and a server certificate (ECDSA P-256) in $tls_dir"
(
  cd "$tls_dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=blitz bench CA" -keyout ca.key -out ca.pem
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=localhost" -keyout server.key -out server.csr
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >san.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -extfile san.ext -out server.crt
) >"$tls_dir/openssl.log" 2>&1 || die "openssl could not make the bench certificate: $(tail -2 "$tls_dir/openssl.log")"
tls_ca=$tls_dir/ca.pem

# tls_start tls|plain: a blitz-server with the default configuration (and
# TLS with the bench certificate, or not) on a free port; sets tls_port
# and tls_pid and waits until it answers.
tls_start() {
  local kind=$1 settings=(--set server.max_clients=$(( tls_idle + 2000 )))
  local client=("$blitz_bin")
  tls_port=$(free_port 27000)
  if [ "$kind" = tls ]; then
    settings+=(--set "server.tls_cert_file=$tls_dir/server.crt" --set "server.tls_key_file=$tls_dir/server.key")
    client+=(--ca "$tls_ca")
  fi
  RUST_LOG=warn setsid "$server_bin" --listen "127.0.0.1:$tls_port" --db-url "$db_url" \
    "${settings[@]}" "${auth[@]}" >>"$tmp/blitz-server-tls.log" 2>&1 &
  tls_pid=$!
  for _ in $(seq 100); do
    "${client[@]}" --server "localhost:$tls_port" ping >/dev/null 2>&1 && return
    kill -0 "$tls_pid" 2>/dev/null || { tail -5 "$tmp/blitz-server-tls.log" >&2; die "blitz-server ($kind) did not start"; }
    sleep 0.1
  done
  die "blitz-server ($kind) did not answer"
}
tls_stop() {
  kill "$1" 2>/dev/null && wait "$1" 2>/dev/null || true
}

# tls_storm_row ID GEN_PREFIX BENCH_ARGS…: a storm on the TLS server with
# the pinger beside it; the row holds both reports.
tls_storm_row() {
  local id=$1 prefix=$2
  shift 2
  local gen=() pinger
  [ -n "$prefix" ] && gen=($prefix)
  "$blitz_bin" --ca "$tls_ca" --server "localhost:$tls_port" bench -c 1 --threads 1 --rate 200 \
    --method sys.ping --duration "$tls_storm_s" --json --quiet \
    >"$tmp/out/$id-ping.out" 2>"$tmp/out/$id-ping.err" &
  pinger=$!
  sleep 0.3 # the pinger's connection is open before the storm
  "${gen[@]}" "$blitz_bin" --ca "$tls_ca" --server "localhost:$tls_port" bench --handshakes -c 32 \
    --duration "$tls_storm_s" --server-pid "$tls_pid" --json "$@" \
    >"$tmp/out/$id.out" 2>"$tmp/out/$id.err" || say "$id: blitz bench --handshakes failed: $(tail -1 "$tmp/out/$id.err")"
  wait "$pinger" || say "$id: the pinger failed: $(tail -1 "$tmp/out/$id-ping.err")"
  row "{\"id\":\"$id\",\"system\":\"blitz\",\"kind\":\"tls-storm\",\"clients\":32,\"tool\":\"tls\",\"wall_s\":$tls_storm_s,\"pinned\":$([ -n "$prefix" ] && echo true || echo false)}"
}

# tls_call_row ID KIND tls|plain BENCH_ARGS…: 500 clients on the TLS
# server or the plaintext one (kind: tls-ping-…, tls-tx-…).
tls_call_row() {
  local id=$1 kind=$2 side=$3 port=$plain_port pid=$plain_pid client=()
  shift 3
  if [ "$side" = tls ]; then port=$tls_server_port pid=$tls_server_pid client=(--ca "$tls_ca"); fi
  reset_db
  ${tls_call_prefix:-} "$blitz_bin" "${client[@]}" --server "localhost:$port" bench -c "$big" \
    --duration "$tls_call_s" --server-pid "$pid" --json --quiet "$@" \
    >"$tmp/out/$id.out" 2>"$tmp/out/$id.err" || say "$id: blitz bench failed: $(tail -1 "$tmp/out/$id.err")"
  row "{\"id\":\"$id\",\"system\":\"blitz\",\"kind\":\"$kind-$side\",\"clients\":$big,\"tool\":\"tls\",\"wall_s\":$tls_call_s}"
}

# tls_idle_row KIND: a fresh server holding tls_idle idle connections.
tls_idle_row() {
  local kind=$1 id="tls-idle-$1" ca=$tls_ca
  [ "$kind" = plain ] && ca=--plain
  tls_start "$kind"
  if ( ulimit -Sn $(( tls_idle + 1000 )) 2>/dev/null || true
       python3 bench/tls_idle_rss.py "127.0.0.1:$tls_port" "$tls_pid" "$ca" "$tls_idle" --json \
         >"$tmp/out/$id.out" 2>"$tmp/out/$id.err" ); then
    row "{\"id\":\"$id\",\"system\":\"blitz\",\"kind\":\"tls-idle-$kind\",\"clients\":$tls_idle,\"tool\":\"tls\",\"wall_s\":0}"
  else
    say "$id: skipped: $(tail -1 "$tmp/out/$id.err")"
  fi
  tls_stop "$tls_pid"
}

tls_start tls
tls_storm_row tls-storm ""
if [ "$service_cpus" != - ] && command -v taskset >/dev/null 2>&1; then
  taskset -a -p -c "$service_cpus" "$tls_pid" >/dev/null 2>&1 || true
  tls_storm_row tls-storm-pinned "taskset -c $loader_cpu" --threads 1
  taskset -a -p -c "$all_cpus" "$tls_pid" >/dev/null 2>&1 || true
else
  say "tls: the pinned storm row skipped: it needs taskset and two CPUs"
fi
tls_storm_row tls-storm-resumed "" --resume

tls_server_pid=$tls_pid tls_server_port=$tls_port
tls_start plain
plain_pid=$tls_pid plain_port=$tls_port
# sys.ping pinned where it can be: the generator on one CPU, both servers
# on the others, so that what a server spends per call does not include
# the scheduler's cost of sharing its CPUs with the generator's TLS
# (unpinned, that grows with the client's work, not the server's).
if [ "$service_cpus" != - ] && command -v taskset >/dev/null 2>&1; then
  for p in "$tls_server_pid" "$plain_pid"; do taskset -a -p -c "$service_cpus" "$p" >/dev/null 2>&1 || true; done
  tls_call_prefix="taskset -c $loader_cpu"
fi
for round in 1 2; do
  for side in tls plain; do
    tls_call_row "tls-ping-$side-$round" tls-ping "$side" --method sys.ping --rate "$tls_rate"
  done
done
tls_call_prefix=
for p in "$tls_server_pid" "$plain_pid"; do taskset -a -p -c "$all_cpus" "$p" >/dev/null 2>&1 || true; done
for round in 1 2; do
  for side in tls plain; do
    tls_call_row "tls-tx-$side-$round" tls-tx "$side" --scale "$scale" "${user[@]}"
  done
done
tls_stop "$plain_pid"
tls_stop "$tls_server_pid"

if [ "$tls_idle" -gt 0 ]; then
  tls_idle_row tls
  tls_idle_row plain
fi
