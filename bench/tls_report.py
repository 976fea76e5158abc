"""The TLS rows of `make bench` (bench/tls.sh): reading them and their table.

report.py calls load() for a row whose tool is "tls", row_line() for its
progress line, and section() for the table. The figures:

- storm rows (kind tls-storm): OUTDIR/ID.out is `blitz bench --handshakes
  --json` (handshakes/s; router and generator CPU per handshake from
  /proc and getrusage); OUTDIR/ID-ping.out is the pinger's `blitz bench
  --rate 200 --json` (sys.ping on one open connection meanwhile, latency
  from the scheduled send);
- call rows (kind tls-ping-tls, tls-ping-plain: `blitz bench -c 500
  --method sys.ping --rate R`; tls-tx-tls, tls-tx-plain: api.transfer
  closed loop), `--json` with --server-pid: blitz-server's CPU per reply;
- idle rows (kind tls-idle-tls, tls-idle-plain): bench/tls_idle_rss.py
  --json: (RSS after − RSS before) / N.
"""
import json
import os

CALLS = ("tls-ping-", "tls-tx-")


def _json(outdir, name):
    try:
        with open(os.path.join(outdir, name)) as f:
            return json.loads(f.read().strip() or "null")
    except (OSError, ValueError):
        return None


def load(meta, outdir):
    """The row `meta` with its figures (or a note saying why there are none)."""
    r = {k: meta.get(k) for k in ("id", "system", "kind", "clients", "tool", "wall_s", "pinned")}
    out = _json(outdir, meta["id"] + ".out")
    if not out:
        r["note"] = "no report (see " + meta["id"] + ".err)"
        return r
    if meta["kind"] == "tls-storm":
        ping = _json(outdir, meta["id"] + "-ping.out") or {}
        lat = ping.get("latency_ok") or {}
        r.update(handshakes_per_s=out.get("handshakes_per_s"), full=out.get("full"),
                 resumed=out.get("resumed"), failed=out.get("failed"),
                 router_us=out.get("router_us_per_handshake"),
                 server_us=out.get("server_us_per_handshake"),
                 client_us=out.get("client_us_per_handshake"),
                 ping_count=lat.get("count"), ping_p50_ms=lat.get("p50_ms"),
                 ping_p99_ms=lat.get("p99_ms"), ping_max_ms=lat.get("max_ms"))
    elif meta["kind"].startswith(CALLS):
        cpu = out.get("server_cpu") or {}
        r.update(throughput=out.get("throughput"), mid_cpu_reply_us=cpu.get("us_per_call"),
                 p99_ms=(out.get("latency_ok") or {}).get("p99_ms"),
                 connection_errors=out.get("connection_errors"))
    else:
        r.update(kib_per_connection=out.get("kib_per_connection"), open_s=out.get("open_s"),
                 connections=out.get("connections"))
    return r


def row_line(r, fmt, ms):
    """The progress line of one TLS row."""
    if r.get("note"):
        return f"{r['id']:<22} {r['note']}"
    if r["kind"] == "tls-storm":
        return (f"{r['id']:<22} {fmt(r.get('handshakes_per_s'))} handshakes/s "
                f"({fmt(r.get('full'))} full, {fmt(r.get('resumed'))} resumed, "
                f"{fmt(r.get('failed'))} failed), router {fmt(r.get('router_us'))} µs, "
                f"generator {fmt(r.get('client_us'))} µs per handshake; sys.ping meanwhile "
                f"p50 {ms(r.get('ping_p50_ms'))} p99 {ms(r.get('ping_p99_ms'))} "
                f"max {ms(r.get('ping_max_ms'))} ms")
    if r["kind"].startswith(CALLS):
        return (f"{r['id']:<22} {fmt(r.get('throughput'))} calls/s, blitz-server "
                f"{fmt(r.get('mid_cpu_reply_us'), 1)} µs per call")
    return f"{r['id']:<22} {fmt(r.get('kib_per_connection'), 1)} KiB per idle connection"


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def section(rows, fmt, ms):
    """(title, headers, body, note) for report.py, or None without TLS rows."""
    tls = {r["id"]: r for r in rows if r.get("tool") == "tls"}
    if not tls:
        return None
    body = []
    for id_, name in (("tls-storm", "full handshakes, unpinned"),
                      ("tls-storm-pinned", "full handshakes, generator and server pinned apart"),
                      ("tls-storm-resumed", "resumed handshakes, unpinned")):
        r = tls.get(id_)
        if not r:
            continue
        body.append([name, f"{fmt(r.get('handshakes_per_s'))}/s",
                     f"router {fmt(r.get('router_us'))} µs, generator {fmt(r.get('client_us'))} µs "
                     "per handshake",
                     f"sys.ping p50 {ms(r.get('ping_p50_ms'))} · p99 {ms(r.get('ping_p99_ms'))} · "
                     f"max {ms(r.get('ping_max_ms'))} ms",
                     "≥ 1,500/s, ping p99 ≤ 10 ms" if "full" in name else ""])
    for kind, name in (("tls-ping", "sys.ping, open loop, pinned"), ("tls-tx", "api.transfer (TPC-B), closed loop")):
        calls = {side: [r for r in tls.values() if r["kind"] == f"{kind}-{side}"]
                 for side in ("tls", "plain")}
        cpu = {side: _mean([r.get("mid_cpu_reply_us") for r in calls[side]]) for side in calls}
        if cpu["tls"] is None and cpu["plain"] is None:
            continue
        each = lambda side, key, d: " · ".join(fmt(r.get(key), d) for r in calls[side])
        t, p = cpu["tls"], cpu["plain"]
        body.append([f"blitz-server CPU per call, 500 clients, {name}: TLS / plaintext",
                     fmt(t / p, 2) + "×" if t and p else "–",
                     f"TLS {each('tls', 'mid_cpu_reply_us', 1)} µs; "
                     f"plaintext {each('plain', 'mid_cpu_reply_us', 1)} µs",
                     f"calls/s TLS {each('tls', 'throughput', 0)}; "
                     f"plaintext {each('plain', 'throughput', 0)}", "≤ 1.15×"])
    idle = {k: tls.get(f"tls-idle-{k}") for k in ("tls", "plain")}
    if idle["tls"] or idle["plain"]:
        kib = lambda k: idle[k] and idle[k].get("kib_per_connection")
        n = next((r.get("connections") for r in idle.values() if r and r.get("connections")), None)
        body.append([f"memory per idle connection ({fmt(n)} connections)",
                     f"{fmt(kib('tls'), 1)} KiB", f"plaintext {fmt(kib('plain'), 1)} KiB", "",
                     "≤ 40 KiB"])
    headers = ["TLS measure", "figure", "detail", "meanwhile", "target"]
    note = ("ECDSA P-256 certificate (openssl), default server configuration. Storms: `blitz "
            "bench --handshakes -c 32` (connect, handshake, one sys.ping, close; full: no client "
            "session kept), router CPU = blitz-server's acceptor and event-loop threads from "
            "/proc/PID/task; sys.ping meanwhile from one open connection at 200/s (open loop). "
            "Pinned: the generator on the last CPU, blitz-server on the others. CPU per call: TLS "
            "and plaintext servers side by side, alternated twice; sys.ping at the same rate on "
            "both, the generator pinned apart from the servers; api.transfer unpinned. Memory: Python's ssl clients "
            "held idle on a fresh server. bench/tls.sh says how each figure is taken.")
    return "TLS", headers, body, note
