#!/usr/bin/env python3
"""The table, markdown, CSV and SVG of `make bench` (Python 3 stdlib only).

bench/run.sh calls it:

  report.py --row JSON OUTDIR             one status line for a row just run
  report.py --best-direct ROWS OUTDIR     the direct concurrency with the best tps
  report.py --peak ROWS OUTDIR ID         the ok/s of row ID (an integer)
  report.py --report ROWS OUTDIR META RESULTS
                                          prints the table; writes RESULTS/latest.md,
                                          latest.csv and tps.svg (and, with the limit
                                          rows, bench/limit_report.py's files; the
                                          replica rows' table: bench/replicas_report.py)

ROWS holds one JSON object per line as run.sh wrote it; OUTDIR holds each
row's ID.out and ID.err: pgbench's text (plus its sampled per-transaction
logs ID.*, for percentiles) or `blitz bench --json`, and ID-sys.out of its
system-call sub-row.

The cost figures come from run.sh's measures taken outside the programs
(CPU ticks, context switches, system-call counts: see run.sh's header) and
are divided here by the row's successes or replies as each column says.
"""
import csv
import glob
import json
import math
import os
import re
import sys

import limit_report
import replicas_report
import tls_report

# ----------------------------------------------------------------- parsing


def percentile(sorted_values, q):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[i]


def pgbench_latencies(outdir, row_id):
    """Latencies (ms) from pgbench -l logs: column 3 is the latency in µs."""
    values = []
    for path in glob.glob(os.path.join(outdir, row_id + ".*")):
        if path.endswith((".out", ".err")):
            continue
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2].isdigit():
                    values.append(int(parts[2]) / 1000.0)
    values.sort()
    return values


def read(outdir, name):
    try:
        with open(os.path.join(outdir, name), errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def from_pgbench(meta, outdir):
    text = read(outdir, meta["id"] + ".out") + read(outdir, meta["id"] + ".err")

    def num(pattern, default=None):
        m = re.search(pattern, text)
        return float(m.group(1)) if m else default

    processed = int(num(r"number of transactions actually processed: (\d+)", 0))
    failed = int(num(r"number of failed transactions: (\d+)", 0))
    aborted = len(re.findall(r"client \d+ aborted", text))
    tps = num(r"tps = ([0-9.]+) \(without initial connection time\)", 0.0)
    lat = pgbench_latencies(outdir, meta["id"])
    r = base(meta)
    r.update({
        "tps": tps, "ok": processed, "rejected": failed, "connection_errors": aborted,
        "p50_ms": percentile(lat, 0.50), "p90_ms": percentile(lat, 0.90),
        "p99_ms": percentile(lat, 0.99), "p999_ms": percentile(lat, 0.999),
        "max_ms": lat[-1] if lat else None,
        "mean_ms": num(r"latency average = ([0-9.]+) ms"),
        "connect_ms": num(r"initial connection time = ([0-9.]+) ms"),
        "goodput": tps,
    })
    cost(r, meta, outdir, processed, processed + failed)
    if not processed:
        r["note"] = ("pgbench failed: " + text.strip().splitlines()[-1][:120]
                     if text.strip() else "pgbench: no output")
    client_and_other(r, meta, processed)
    return r


def from_blitz(meta, outdir):
    r = base(meta)
    try:
        j = json.loads(read(outdir, meta["id"] + ".out"))
    except ValueError:
        tail = read(outdir, meta["id"] + ".err").strip().splitlines()[-1:]
        r["note"] = "blitz bench failed: " + (tail[0][:160] if tail else "no output")
        return r
    ok, rej = j["latency_ok"], j["latency_rejected"]
    r.update({
        "tps": j["ok_per_s"], "ok": j["ok"], "rejected": j["rejected"],
        "connection_errors": j["connection_errors"] + j["lost"],
        "p50_ms": ok["p50_ms"], "p90_ms": ok["p90_ms"], "p99_ms": ok["p99_ms"],
        "p999_ms": ok["p999_ms"], "max_ms": ok["max_ms"], "mean_ms": ok["mean_ms"],
        "rej_p50_ms": rej["p50_ms"] if rej["count"] else None,
        "rej_p99_ms": rej["p99_ms"] if rej["count"] else None,
        "rej_p999_ms": rej["p999_ms"] if rej["count"] else None,
        "rej_max_ms": rej["max_ms"] if rej["count"] else None,
        "connect_ms": j["connect_s"] * 1000, "elapsed_s": j.get("elapsed_s"),
        "goodput": j["goodput"], "offered": j.get("offered_rate"),
        "target_rate": j.get("target_rate"), "throughput": j["throughput"],
        "errors_by_code": " ".join(f"{c}:{n}" for c, n in j["errors_by_code"].items()),
        "send_lag_p99_ms": (j.get("send_lag") or {}).get("p99_ms"),
    })
    cost(r, meta, outdir, j["ok"], j["ok"] + j["rejected"])
    client_and_other(r, meta, j["sent"])
    if j["rejected"] and "-32001" in j.get("error_samples", {}):
        m = re.search(r'"reason":"([^"]*)"', j["error_samples"]["-32001"])
        if m:
            r["note"] = "first -32001: " + m.group(1)
    if j.get("first_connection_error"):
        r["note"] = ((r.get("note", "") + "; ") if r.get("note") else "") + \
            "first connection error: " + j["first_connection_error"][:160]
    return r


def per(amount, n, scale=1.0):
    return amount * scale / n if amount is not None and n else None


def cost(r, meta, outdir, ok, replies):
    """The cost of a call from run.sh's outside measures over the whole row:
    PostgreSQL's CPU per success; the middle process's (blitz-server or
    PgBouncer) CPU per success and per reply, its context switches per reply,
    and its system calls per reply in the row's sub-row."""
    r["replies"] = replies
    if "pg_cpu_s" in meta:
        r["pg_cpu_s"] = meta["pg_cpu_s"]
        r["pg_cpu_us"] = per(meta["pg_cpu_s"], ok, 1e6)
    if meta["system"] == "direct" or "mid_cpu_s" not in meta:
        return
    r["mid_cpu_seconds"] = meta["mid_cpu_s"]
    r["mid_cpu_us"] = per(meta["mid_cpu_s"], ok, 1e6)
    r["mid_cpu_reply_us"] = per(meta["mid_cpu_s"], replies, 1e6)
    r["mid_switches"] = meta.get("mid_switches")
    r["switches_reply"] = per(meta.get("mid_switches"), replies)
    if meta.get("sys_calls") is not None:
        r["sys_calls"] = meta["sys_calls"]
        r["sys_method"] = meta["sys_method"]
        r["sys_replies"] = sub_row_replies(outdir, meta["sys_id"], meta["tool"])
        r["sys_reply"] = per(meta["sys_calls"], r["sys_replies"])


def sub_row_replies(outdir, sub_id, tool):
    """Replies (blitz bench) or transactions (pgbench) of a system-call sub-row."""
    if tool == "pgbench":
        text = read(outdir, sub_id + ".out")
        n = [int(m) for m in re.findall(
            r"number of (?:transactions actually processed|failed transactions): (\d+)", text)]
        return sum(n) or None
    try:
        j = json.loads(read(outdir, sub_id + ".out"))
    except ValueError:
        return None
    return j["ok"] + j["rejected"]


def client_and_other(r, meta, calls):
    """Client CPU per call, and the cores other programs kept busy meanwhile."""
    if "client_cpu_s" not in meta:
        return
    r["client_cpu_us"] = meta["client_cpu_s"] * 1e6 / calls if calls else None
    ours = meta["pg_cpu_s"] + meta["mid_cpu_s"] + meta["client_cpu_s"]
    if meta["wall_s"] > 0:
        r["other_cores"] = max(0.0, meta["busy_cpu_s"] - ours) / meta["wall_s"]


def base(meta):
    return {"id": meta["id"], "system": meta["system"], "kind": meta["kind"],
            "clients": meta["clients"], "pool": meta.get("pool"), "tool": meta["tool"],
            "wall_s": meta["wall_s"]}


def from_idle(meta, outdir):
    r = base(meta)
    try:
        r.update(json.loads(read(outdir, meta["id"] + ".out")))
    except ValueError:
        tail = read(outdir, meta["id"] + ".err").strip().splitlines()[-1:]
        r["note"] = "idle_rss failed: " + (tail[0][:160] if tail else "no output")
    return r


def load(meta, outdir):
    if meta["tool"] == "tls":
        return tls_report.load(meta, outdir)
    if meta["tool"] == "idle_rss":
        return from_idle(meta, outdir)
    return from_pgbench(meta, outdir) if meta["tool"] == "pgbench" else from_blitz(meta, outdir)


def load_all(rows_path, outdir):
    with open(rows_path) as f:
        return [load(json.loads(line), outdir) for line in f if line.strip()]

# ----------------------------------------------------------------- formatting


def fmt(v, digits=0, unit=""):
    if v is None:
        return "–"
    if isinstance(v, float) and digits == 0:
        return f"{v:,.0f}{unit}"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v:,.{digits}f}{unit}"


def ms(v):
    if v is None:
        return "–"
    return f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:,.0f}"


def label(r):
    if r["kind"] == "pool-alt":
        return f"blitz, pool {r['pool']} (info)"
    if r["kind"] == "keys":
        return "blitz, idempotency keys"
    if r["kind"] == "curve-http":
        return "blitz over HTTP (keep-alive)"
    if r["kind"] == "tx10k" and r["system"] == "blitz":
        return "blitz, 10,000 transactions"
    if r["kind"].startswith("overload"):
        x = r["id"].split("-")[1].replace("x", "×")
        return f"blitz, {x} overload" + (", pinned" if r["kind"] == "overload-pinned" else "")
    if r["kind"] == "refusals":
        return "blitz, refusals alone"
    if r["kind"] == "peak-pinned":
        return "blitz, closed loop, pinned"
    if r["kind"].startswith("limit"):
        return f"blitz, {r['id']} (pool {r['pool']})"
    if r["kind"] == "replicas":
        return f"blitz, list_project_images, {r['id'].split('-')[-1]} standbys"
    return {"direct": "direct PostgreSQL", "pgbouncer": "PgBouncer (transaction)",
            "blitz": "blitz"}[r["system"]]


def md_table(headers, rows):
    out = ["| " + " | ".join(headers) + " |",
           "| " + " | ".join("---:" if i else "---" for i in range(len(headers))) + " |"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def text_table(headers, rows):
    cells = [headers] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) if i == 0 else c.rjust(widths[i])
                               for i, c in enumerate(r)))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)

# ----------------------------------------------------------------- the report


def build(rows, meta):
    by_id = {r["id"]: r for r in rows}
    big = 500
    direct = sorted([r for r in rows if r["system"] == "direct" and r["kind"] == "curve"],
                    key=lambda r: r["clients"])
    blitz_curve = sorted([r for r in rows if r["system"] == "blitz" and r["kind"] == "curve"],
                         key=lambda r: r["clients"])
    best = max(direct, key=lambda r: r["tps"] or 0) if direct else None
    d500 = by_id.get(f"direct-c{big}")
    b500 = by_id.get(f"blitz-c{big}")
    pgb = by_id.get(f"pgbouncer-c{big}")
    alt = next((r for r in rows if r["kind"] == "pool-alt"), None)
    keys = next((r for r in rows if r["kind"] == "keys"), None)
    http = next((r for r in rows if r["kind"] == "curve-http"), None)
    sections = []

    # 1. throughput against concurrency
    headers = ["system", "clients", "tps", "p50 ms", "p99 ms", "max ms", "errors",
               "conn err", "PG CPU µs/tx", "middle CPU µs/tx", "client CPU µs/tx",
               "other load (cores)"]
    t1 = []
    for r in direct + ([pgb] if pgb else []) + blitz_curve + ([http] if http else []) + ([keys] if keys else []) + ([alt] if alt else []):
        t1.append([label(r) + (" (best)" if r is best else ""), r["clients"], fmt(r.get("tps")),
                   ms(r.get("p50_ms")), ms(r.get("p99_ms")), ms(r.get("max_ms")),
                   fmt(r.get("rejected")), fmt(r.get("connection_errors")),
                   fmt(r.get("pg_cpu_us")), fmt(r.get("mid_cpu_us")),
                   fmt(r.get("client_cpu_us")), fmt(r.get("other_cores"), 2)])
    sections.append(("Throughput against concurrency (closed loop, "
                     f"{meta['duration_s']} s each)", headers, t1,
                     "direct: pgbench -M prepared -f transfer.sql; PgBouncer: pgbench -M simple "
                     f"through PgBouncer, pool {meta['pool']}; blitz: blitz bench, default "
                     f"configuration (pool {meta['pool']}). p50/p99/max: pgbench from a 10 % "
                     "sample of its per-transaction log, blitz bench from every call. errors: "
                     "error replies (blitz) or failed transactions (pgbench). PG CPU and "
                     "middle CPU (blitz-server or PgBouncer) µs/tx: CPU over the whole row "
                     "(connections and logins included) per successful call or transaction; "
                     "more of the cost of a call in the table below. client CPU: pgbench "
                     "or blitz bench, whole process, per transaction (pgbench) or call sent "
                     "(blitz bench). other load: CPU cores kept busy by programs outside the "
                     "benchmark meanwhile, or stolen by the hypervisor: the noise. "
                     "blitz over HTTP: the same server and closed loop, each call a POST / "
                     "on a keep-alive connection (blitz bench --http), beside the TCP row at "
                     "the same concurrency. "
                     "blitz, pool N (info): a second server whose pool is direct's best "
                     "concurrency instead of the formula's, to show what the pool size "
                     "alone is worth. blitz, idempotency keys: the same as blitz at 500 "
                     "with a fresh idempotency_key on every call (blitz bench "
                     "--idempotency-keys), each call also recording its outcome."))

    # 2. the seed's experiment
    tx = [by_id.get(i) for i in ("tx10k-blitz", "tx10k-pgbouncer", f"tx10k-direct-c{big}")]
    tx += [r for r in rows if r["kind"] == "tx10k" and r["system"] == "direct"
           and r["clients"] != big]
    headers = ["system", "clients", "transactions", "errors", "wall s", "tx/s (wall)",
               "other load (cores)"]
    t2 = []
    for r in [r for r in tx if r]:
        done = r.get("ok") or 0
        t2.append([label(r), r["clients"], fmt(done), fmt(r.get("rejected")),
                   f"{r['wall_s']:.2f}", fmt(done / r["wall_s"] if r["wall_s"] else None),
                   fmt(r.get("other_cores"), 2)])
    sections.append((f"10,000 transactions from 500 clients (wall time, connection setup "
                     "included)", headers, t2,
                     "Wall time of the whole client process: connecting, all the "
                     "transactions, disconnecting. Direct at its best concurrency runs the "
                     "same 10,000 (rounded up to a multiple of the clients) with fewer "
                     "connections."))

    # 3. overload
    headers = ["load", "offered/s", "ok/s", "goodput/s", "goodput / peak",
               "goodput / pinned peak", "rejected/s",
               "rej p50 ms", "rej p99 ms", "rej max ms", "ok p99 ms", "conn err",
               "server CPU µs/reply", "server CPU µs/refusal (est.)", "client CPU µs/call",
               "other load (cores)"]
    t3 = []
    peak = b500["tps"] if b500 else None
    pinned_peak_row = by_id.get(f"blitz-c{big}-pinned")
    pinned_peak = pinned_peak_row and pinned_peak_row.get("tps")
    served_us = b500.get("mid_cpu_us") if b500 else None
    if pinned_peak_row:
        r = pinned_peak_row
        t3.append(["closed loop, pinned (the pinned peak)", "–", fmt(r["tps"]), fmt(r["tps"]),
                   f"{r['tps'] / peak:.2f}" if peak else "–", "1.00", "–", "–", "–", "–",
                   ms(r.get("p99_ms")), fmt(r.get("connection_errors")),
                   fmt(r.get("mid_cpu_reply_us"), 1), "–", fmt(r.get("client_cpu_us")),
                   fmt(r.get("other_cores"), 2)])
    overload_ids = [f"overload-{x}x" for x in (2, 10)] + \
        [f"overload-{x}x-pinned" for x in (2, 10)] + ["refusals-10x"]
    for r in [by_id.get(i) for i in overload_ids]:
        if not r or r.get("tps") is None:
            continue
        el = elapsed_s(r)
        name = {"overload-pinned": " pinned", "refusals": " refusals alone"}.get(r["kind"], "")
        x = r["id"].split("-")[1].replace("x", "×")
        pinned = r["kind"] == "overload-pinned"
        t3.append([f"{x}{name} ({fmt(r.get('target_rate'))}/s target)", fmt(r.get("offered")),
                   fmt(r["tps"]), fmt(r["goodput"]),
                   f"{r['goodput'] / peak:.2f}" if peak else "–",
                   f"{r['goodput'] / pinned_peak:.2f}" if pinned and pinned_peak else "–",
                   fmt(r["rejected"] / el if el else None), ms(r.get("rej_p50_ms")),
                   ms(r.get("rej_p99_ms")), ms(r.get("rej_max_ms")),
                   ms(r.get("p99_ms")) if r.get("ok") else "–",
                   fmt(r.get("connection_errors")), fmt(r.get("mid_cpu_reply_us"), 1),
                   fmt(refusal_cpu_us(r, served_us), 1),
                   fmt(r.get("client_cpu_us")), fmt(r.get("other_cores"), 2)])
    sections.append((f"blitz under overload (open loop, 500 connections, timeout_ms "
                     f"{meta['timeout_ms']})", headers, t3,
                     "Offered: calls sent per second on a fixed schedule; latency counts "
                     "from the scheduled send time. goodput: successes within timeout_ms. "
                     "peak: blitz closed loop at 500 clients. pinned peak: the same closed "
                     "loop pinned as the pinned rows are (the most those CPUs serve); the "
                     "pinned rows' goodput over it. server CPU µs/reply: "
                     "blitz-server's CPU over the whole row per reply, successes and "
                     "refusals alike. server CPU µs/refusal (est.): "
                     "the row's blitz-server CPU less its successes at the closed-loop "
                     "500 row's CPU per success, over the error replies. pinned: "
                     f"{meta.get('pinning') or 'not run'}, the same rates. refusals alone: "
                     "10× the peak offered to a second server with one worker and a queue of "
                     "four, the worker held by a transfer waiting on a table lock: every "
                     "call refused, its CPU per reply is the CPU per refusal."))

    # 3a. the cost of a call
    sections.append(cost_section(rows, meta))

    # 3b. idle connections
    headers = ["connections", "threads", "threads target (R + W + 8)", "RSS MiB",
               "idle server RSS MiB", "KiB / connection", "connect s",
               "fresh sys.ping p50 ms", "fresh sys.ping p99 ms", "max ms"]
    idle = sorted([r for r in rows if r["kind"] == "idle" and r.get("threads")],
                  key=lambda r: r["clients"])
    limit_threads = (meta.get("router_threads") or 0) + (meta.get("workers") or 0) + 8
    t3b = [[fmt(r["connections"]) + (f" (of {fmt(r['requested'])} asked: {r['limited_by']})"
                                     if r.get("limited_by") else ""),
            fmt(r["threads"]), fmt(limit_threads),
            fmt(r["rss_with_connections_mib"], 1), fmt(r["rss_idle_server_mib"], 1),
            fmt(r["kib_per_connection"], 2), fmt(r["connect_s"], 1),
            ms(r["fresh_ping_p50_ms"]), ms(r["fresh_ping_p99_ms"]), ms(r["fresh_ping_max_ms"])]
           for r in idle]
    if t3b:
        sections.append(("Idle connections (a fresh server holding N idle connections)",
                         headers, t3b,
                         "threads: of blitz-server with the N connections open (R router "
                         f"threads = {meta.get('router_threads')}, W workers = "
                         f"{meta.get('workers')}). fresh sys.ping: connect, one sys.ping, "
                         "its reply, on a new connection, 200 times while the N are open. "
                         "Client side spread over 127.0.0.1-16."))

    # 4. ratios and targets
    def ratio(a, b):
        return a / b if a is not None and b else None
    tx_blitz = by_id.get("tx10k-blitz")
    tx_best = next((r for r in rows if r["kind"] == "tx10k" and r["system"] == "direct"
                    and best and r["clients"] == best["clients"]), None)
    over10 = by_id.get("overload-10x")
    over2 = by_id.get("overload-2x")
    over10p = by_id.get("overload-10x-pinned")
    over2p = by_id.get("overload-2x-pinned")
    refusals = by_id.get("refusals-10x")
    d4 = by_id.get("direct-c4")
    idle10k = by_id.get("idle-10000")
    idle100k = by_id.get("idle-100000")
    big_idle = (f"{idle100k['connections']:,} (100,000 asked)" if idle100k and
                idle100k.get("limited_by") else "100,000")
    blitz_rows = [r for r in rows if r["system"] == "blitz"]
    conn_err = sum(r.get("connection_errors") or 0 for r in blitz_rows)
    targets = [
        ("blitz 500 / best direct" + (f" ({best['clients']} clients)" if best else ""),
         ratio(b500 and b500["tps"], best and best["tps"]), "≥ 1.00", lambda v: v >= 1.0),
        (f"for information: blitz 500 with pool {alt['pool']} / best direct" if alt else
         "for information: blitz 500 with a larger pool / best direct",
         ratio(alt and alt["tps"], best and best["tps"]), "report", None),
        ("for information: blitz 500 with idempotency keys / without",
         ratio(keys and keys["tps"], b500 and b500["tps"]), "report", None),
        ("blitz 500 / PgBouncer 500 (same pool)", ratio(b500 and b500["tps"], pgb and pgb["tps"]),
         "≥ 1.30", lambda v: v >= 1.3),
        ("blitz 500 / direct 500", ratio(b500 and b500["tps"], d500 and d500["tps"]), "≥ 3.50",
         lambda v: v >= 3.5),
        ("10,000 tx wall: blitz / direct at best", ratio(tx_blitz and tx_blitz["wall_s"],
                                                         tx_best and tx_best["wall_s"]),
         "≤ 1.00", lambda v: v <= 1.0),
        ("10× overload goodput / blitz peak", ratio(over10 and over10.get("goodput"), peak),
         "≥ 0.90", lambda v: v >= 0.9),
        ("10× overload rejection p99 (ms)", over10 and over10.get("rej_p99_ms"), "≤ 1.00",
         lambda v: v <= 1.0),
        ("10× overload: server CPU µs per refused call (est.)",
         refusal_cpu_us(over10, b500 and b500.get("mid_cpu_us")), "≤ 3.00", lambda v: v <= 3.0),
        ("2× overload goodput / blitz peak", ratio(over2 and over2.get("goodput"), peak),
         "≥ 0.95", lambda v: v >= 0.95),
        ("connection errors, all blitz rows", conn_err, "= 0", lambda v: v == 0),
        ("blitz-server CPU µs/call at 500 (PostgreSQL: "
         f"{fmt(b500 and b500.get('pg_cpu_us'))} µs/tx)", b500 and b500.get("mid_cpu_us"),
         "report", None),
        ("blitz-server CPU per served call / PgBouncer's, 500 clients",
         ratio(b500 and b500.get("mid_cpu_us"), pgb and pgb.get("mid_cpu_us")), "≤ 1.00",
         lambda v: v <= 1.0),
        ("PostgreSQL CPU per call: blitz at 500 / direct at 4",
         ratio(b500 and b500.get("pg_cpu_us"), d4 and d4.get("pg_cpu_us")), "≤ 1.05",
         lambda v: v <= 1.05),
        ("blitz-server system calls per served call at 500", b500 and b500.get("sys_reply"),
         "≤ 5.00", lambda v: v <= 5),
        ("blitz-server CPU µs per refusal, refusals alone",
         refusals and refusals.get("mid_cpu_reply_us"), "≤ 5.00", lambda v: v <= 5),
        ("10× overload pinned: goodput / blitz peak",
         ratio(over10p and over10p.get("goodput"), peak), "≥ 0.85", lambda v: v >= 0.85),
        ("10× overload pinned: goodput / pinned peak",
         ratio(over10p and over10p.get("goodput"), pinned_peak), "≥ 0.85", lambda v: v >= 0.85),
        ("2× overload pinned: goodput / pinned peak",
         ratio(over2p and over2p.get("goodput"), pinned_peak), "≥ 0.95", lambda v: v >= 0.95),
        ("10× overload pinned: rejection p99 (ms)", over10p and over10p.get("rej_p99_ms"),
         "≤ 1.00", lambda v: v <= 1.0),
    ]
    targets += [
        ("threads with 10,000 idle connections", idle10k and idle10k.get("threads"),
         f"≤ {limit_threads}", lambda v: v <= limit_threads),
        ("RSS MiB with 10,000 idle connections", idle10k and idle10k.get("rss_with_connections_mib"),
         "≤ 60.00", lambda v: v <= 60),
        (f"threads with {big_idle} idle connections", idle100k and idle100k.get("threads"),
         f"≤ {limit_threads}", lambda v: v <= limit_threads),
        (f"RSS MiB with {big_idle} idle connections",
         idle100k and idle100k.get("rss_with_connections_mib"), "≤ 1024.00", lambda v: v <= 1024),
        (f"fresh sys.ping p99 ms with {big_idle} idle connections",
         idle100k and idle100k.get("fresh_ping_p99_ms"), "≤ 5.00", lambda v: v <= 5),
    ]
    t4 = []
    for name, v, goal, ok in targets:
        verdict = "–" if v is None or ok is None else ("met" if ok(v) else "MISSED")
        t4.append([name, target_value(v, ok), goal, verdict])
    sections.append(("Ratios and targets", ["measure", "value", "target", ""], t4, ""))
    return sections, direct, blitz_curve, pgb


def target_value(v, ok, digits=2):
    """A target's measured value as shown: `digits` decimals, or one more
    where the rounded figure would pass the target's test `ok` and the real
    one does not, or the other way round (0.945 against ≥ 0.95), so that
    the figure and its verdict agree."""
    if v is None:
        return "–"
    if isinstance(v, int):
        return f"{v:,}"
    if ok is not None and ok(round(v, digits)) != ok(v):
        digits += 1
    return f"{v:.{digits}f}"


def elapsed_s(r):
    """The measured phase of a blitz row, from its successes and their rate."""
    if r.get("elapsed_s"):
        return r["elapsed_s"]
    return r["ok"] / r["tps"] if r.get("tps") else None


COST_ORDER = ["curve", "curve-http", "keys", "pool-alt", "tx10k", "overload-2x",
              "overload-10x", "peak-pinned", "overload-pinned", "refusals"]


def cost_section(rows, meta):
    """Every blitz and PgBouncer row (and direct's PostgreSQL): what one call
    cost the middle process and PostgreSQL."""
    method = meta.get("syscall_method") or "not counted"
    headers = ["row", "clients", "successes", "error replies", "middle CPU µs/success",
               "middle CPU µs/reply", f"middle syscalls/reply ({method})",
               "middle switches/reply", "PG CPU µs/success"]
    shown = [r for r in rows if r["kind"] != "idle" and r.get("ok") is not None]
    shown.sort(key=lambda r: ({"direct": 0, "pgbouncer": 1, "blitz": 2}[r["system"]],
                              COST_ORDER.index(r["kind"]) if r["kind"] in COST_ORDER else 99,
                              r["clients"]))
    body = [[label(r) + ("" if r["kind"] in ("curve", "curve-http") else f" [{r['id']}]"),
             r["clients"], fmt(r.get("ok")), fmt(r.get("rejected")),
             fmt(r.get("mid_cpu_us"), 1), fmt(r.get("mid_cpu_reply_us"), 1),
             fmt(r.get("sys_reply"), 1), fmt(r.get("switches_reply"), 2),
             fmt(r.get("pg_cpu_us"), 1)] for r in shown]
    legend = ("Measured from outside the programs over each row's whole run, connection "
              "set-up and logins included. middle: blitz-server or PgBouncer. CPU: utime + "
              "stime from /proc/PID/stat; PostgreSQL's: the postmaster's own, its exited "
              "backends' (cutime + cstime) and its live backends'. switches: voluntary + "
              "involuntary context switches summed over /proc/PID/task/*/status. syscalls: "
              "counted in a separate sub-row of "
              f"{meta.get('syscall_duration_s', '–')} s (the same command), so that counting "
              "does not slow the row: "
              + ({"perf": "perf stat -e raw_syscalls:sys_enter -p PID (every thread)",
                  "strace": "strace -c -f -p PID, which slows the server a lot; the count "
                            "stands"}.get(meta.get("syscall_method"), "not counted here"))
              + ". A reply: a success or an error reply (blitz) or a transaction (pgbench); "
              "in the closed-loop rows replies and successes are the same but for the "
              "error replies shown.")
    return ("The cost of a call", headers, body, legend)


def refusal_cpu_us(r, served_us):
    """blitz-server CPU per refused call in an overload row: its CPU less its
    successes at the closed-loop CPU per call, over its refusals."""
    if not r or served_us is None or not r.get("rejected") or r.get("mid_cpu_seconds") is None:
        return None
    left = r["mid_cpu_seconds"] * 1e6 - r["ok"] * served_us
    # Where the successes cost less here than in the closed loop, the
    # estimate says nothing: none is shown.
    return left / r["rejected"] if left > 0 else None


def notes(rows):
    return [f"{r['id']}: {r['note']}" for r in rows if r.get("note")]


def header_lines(meta):
    lines = [f"{meta['date']}, commit {meta['commit']}: {meta['cpus']} CPUs ({meta['cpu_model']}), "
             f"Linux {meta['kernel']}, load average at start {meta['load_start']}, "
             f"at end {meta['load_end']}",
             f"{meta['postgres']}; " + (meta["pgbouncer"] or f"PgBouncer skipped: {meta['pgbouncer_note']}"),
             f"pgbench scale {meta['scale']}; blitz pool {meta['pool']} (default configuration); "
             f"sessions: {'on (--user bench, auth.mode=trust)' if meta['sessions'] else 'not in this server'}; "
             "fsync and synchronous_commit on",
             "system calls counted with " + (meta.get("syscall_method") or "nothing (not counted)")
             + "; pinned rows: " + (meta.get("pinning") or "not run")]
    return lines


def write_csv(rows, path):
    fields = ["id", "system", "kind", "clients", "pool", "tool", "tps", "ok", "rejected",
              "connection_errors", "wall_s", "connect_ms", "mean_ms", "p50_ms", "p90_ms",
              "p99_ms", "p999_ms", "max_ms", "rej_p50_ms", "rej_p99_ms", "rej_p999_ms",
              "rej_max_ms", "goodput", "offered", "target_rate", "throughput",
              "send_lag_p99_ms", "pg_cpu_us", "mid_cpu_us", "client_cpu_us",
              "other_cores", "errors_by_code", "mid_cpu_seconds", "replies", "pg_cpu_s",
              "mid_cpu_reply_us", "mid_switches", "switches_reply", "sys_method",
              "sys_calls", "sys_replies", "sys_reply", "threads",
              "rss_with_connections_mib", "kib_per_connection", "fresh_ping_p99_ms", "note"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 3) if isinstance(v, float) else v)
                        for k, v in r.items()})


def svg(direct, blitz, pgb, meta):
    """A line chart of tps against clients, log-2 x axis; hand-written SVG."""
    W, H, L, R, T, B = 720, 420, 70, 170, 40, 50
    pts = [(r["clients"], r["tps"]) for r in direct + blitz + ([pgb] if pgb else [])
           if r.get("tps") is not None]
    if not pts:
        return "<svg xmlns='http://www.w3.org/2000/svg'/>"
    xmax = max(c for c, _ in pts)
    ymax = max(t for _, t in pts)
    step = 10 ** math.floor(math.log10(ymax)) if ymax > 0 else 1
    ytop = math.ceil(ymax * 1.1 / step) * step if ymax > 0 else 1
    lx = lambda c: L + (math.log2(c) / math.log2(max(xmax, 2))) * (W - L - R)
    ly = lambda t: H - B - t / ytop * (H - T - B)
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' "
           f"viewBox='0 0 {W} {H}' font-family='sans-serif' font-size='12'>",
           f"<rect width='{W}' height='{H}' fill='white'/>",
           f"<text x='{L}' y='22' font-size='14' font-weight='bold'>TPC-B transfer: "
           f"transactions/s against concurrent clients</text>"]
    # grid and axes
    nticks = int(ytop / step)
    for i in range(nticks + 1):
        v = i * step
        y = ly(v)
        out.append(f"<line x1='{L}' y1='{y:.1f}' x2='{W - R}' y2='{y:.1f}' stroke='#ddd'/>")
        out.append(f"<text x='{L - 6}' y='{y + 4:.1f}' text-anchor='end'>{v:,.0f}</text>")
    c = 1
    while c <= xmax * 1.01:
        x = lx(c)
        out.append(f"<line x1='{x:.1f}' y1='{T}' x2='{x:.1f}' y2='{H - B}' stroke='#eee'/>")
        out.append(f"<text x='{x:.1f}' y='{H - B + 16}' text-anchor='middle'>{c}</text>")
        c *= 2
    if xmax not in [2 ** k for k in range(20)]:
        x = lx(xmax)
        out.append(f"<text x='{x:.1f}' y='{H - B + 30}' text-anchor='middle'>{xmax}</text>")
    out.append(f"<line x1='{L}' y1='{H - B}' x2='{W - R}' y2='{H - B}' stroke='black'/>")
    out.append(f"<line x1='{L}' y1='{T}' x2='{L}' y2='{H - B}' stroke='black'/>")
    out.append(f"<text x='{(L + W - R) / 2}' y='{H - 6}' text-anchor='middle'>"
               "concurrent clients (log scale)</text>")
    out.append(f"<text x='16' y='{(T + H - B) / 2}' text-anchor='middle' "
               f"transform='rotate(-90 16 {(T + H - B) / 2})'>transactions/s</text>")

    def series(rows, color, name, ly_legend):
        rs = [r for r in rows if r.get("tps") is not None]
        if not rs:
            return
        path = " ".join(f"{lx(r['clients']):.1f},{ly(r['tps']):.1f}" for r in rs)
        out.append(f"<polyline points='{path}' fill='none' stroke='{color}' stroke-width='2'/>")
        for r in rs:
            out.append(f"<circle cx='{lx(r['clients']):.1f}' cy='{ly(r['tps']):.1f}' r='3.5' "
                       f"fill='{color}'><title>{name}, {r['clients']} clients: "
                       f"{r['tps']:,.0f} tps</title></circle>")
        out.append(f"<line x1='{W - R + 15}' y1='{ly_legend}' x2='{W - R + 40}' "
                   f"y2='{ly_legend}' stroke='{color}' stroke-width='2'/>")
        out.append(f"<text x='{W - R + 46}' y='{ly_legend + 4}'>{name}</text>")

    series(direct, "#1f77b4", "direct PostgreSQL", T + 10)
    series(blitz, "#d62728", f"blitz (pool {meta['pool']})", T + 30)
    if pgb and pgb.get("tps") is not None:
        x, y = lx(pgb["clients"]), ly(pgb["tps"])
        out.append(f"<rect x='{x - 4:.1f}' y='{y - 4:.1f}' width='8' height='8' fill='#2ca02c'>"
                   f"<title>PgBouncer, {pgb['clients']} clients: {pgb['tps']:,.0f} tps</title></rect>")
        out.append(f"<rect x='{W - R + 23}' y='{T + 46}' width='8' height='8' fill='#2ca02c'/>")
        out.append(f"<text x='{W - R + 46}' y='{T + 54}'>PgBouncer (pool {meta['pool']})</text>")
    out.append(f"<text x='{W - R + 15}' y='{T + 80}' font-size='10' fill='#555'>"
               f"{meta['cpus']} CPUs, scale {meta['scale']}</text>")
    out.append(f"<text x='{W - R + 15}' y='{T + 94}' font-size='10' fill='#555'>"
               f"{meta['date']}</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"


def report(rows_path, outdir, meta_path, results):
    rows = load_all(rows_path, outdir)
    meta = json.load(open(meta_path))
    sections, direct, blitz, pgb = build(rows, meta)
    limits = limit_report.section(rows, outdir, meta, fmt, ms, target_value)
    if limits:
        sections.insert(-1, limits)  # before the ratios and targets
    replicas = replicas_report.section(rows, outdir, fmt, ms)
    if replicas:
        sections.insert(-1, replicas)
    tls = tls_report.section(rows, fmt, ms)
    if tls:
        sections.insert(-1, tls)
    os.makedirs(results, exist_ok=True)
    limit_report.write_files(outdir, results)
    text = ["", "make bench: " + header_lines(meta)[0]] + ["  " + l for l in header_lines(meta)[1:]]
    md = ["# make bench: latest run", "", *[f"- {l}" for l in header_lines(meta)], "",
          "Compare figures within this run only: runs on a shared 2-core machine move by ±20 %.",
          "How to read it: README.md, section Benchmark. Plot: [tps.svg](tps.svg); every "
          "figure: [latest.csv](latest.csv).", ""]
    for title, headers, body, note in sections:
        text += ["", title, text_table(headers, body)]
        md += [f"## {title}", "", md_table(headers, body), ""]
        if note:
            md += [note, ""]
    extra = notes(rows)
    if extra:
        text += ["", "Notes:"] + ["  " + n for n in extra]
        md += ["## Notes", ""] + [f"- {n}" for n in extra] + [""]
    text += ["", f"Written: {results}/latest.md, latest.csv, tps.svg"]
    print("\n".join(text))
    with open(os.path.join(results, "latest.md"), "w") as f:
        f.write("\n".join(md).rstrip() + "\n")
    write_csv(rows, os.path.join(results, "latest.csv"))
    with open(os.path.join(results, "tps.svg"), "w") as f:
        f.write(svg(direct, blitz, pgb, meta))


def row_line(meta_json, outdir):
    meta = json.loads(meta_json)
    r = load(meta, outdir)
    if r.get("tool") == "tls":
        print("bench: " + tls_report.row_line(r, fmt, ms))
        return
    if r["kind"] == "idle":
        print(f"bench: {r['id']:<22} " + (r.get("note") or
              f"threads {r['threads']}, RSS {r['rss_with_connections_mib']} MiB, "
              f"fresh sys.ping p99 {r['fresh_ping_p99_ms']} ms"))
        return
    parts = [f"{r['id']:<22}", f"{fmt(r.get('tps')):>7} tps"]
    if r["kind"] == "tx10k":
        parts.append(f"wall {r['wall_s']:.2f} s")
    if r.get("p99_ms") is not None:
        parts.append(f"p99 {ms(r['p99_ms'])} ms")
    if r.get("goodput") is not None and r["kind"].startswith("overload"):
        parts.append(f"goodput {fmt(r['goodput'])}/s, rejected {fmt(r.get('rejected'))}, "
                     f"rej p99 {ms(r.get('rej_p99_ms'))} ms")
    elif r.get("rejected"):
        parts.append(f"errors {fmt(r['rejected'])}")
    if r.get("mid_cpu_reply_us") is not None:
        parts.append(f"middle {fmt(r['mid_cpu_reply_us'], 1)} µs, "
                     f"{fmt(r.get('sys_reply'), 1)} syscalls, "
                     f"{fmt(r.get('switches_reply'), 2)} switches per reply")
    if r.get("pg_cpu_us") is not None:
        parts.append(f"PG {fmt(r['pg_cpu_us'], 1)} µs/success")
    if r.get("connection_errors"):
        parts.append(f"CONNECTION ERRORS {r['connection_errors']}")
    if r.get("note"):
        parts.append(r["note"])
    print("bench: " + "  ".join(parts))


def main(argv):
    if len(argv) == 3 and argv[0] == "--row":
        row_line(argv[1], argv[2])
    elif len(argv) == 3 and argv[0] == "--best-direct":
        direct = [r for r in load_all(argv[1], argv[2])
                  if r["system"] == "direct" and r["kind"] == "curve" and r.get("tps")]
        print(max(direct, key=lambda r: r["tps"])["clients"] if direct else 8)
    elif len(argv) == 4 and argv[0] == "--peak":
        r = next((r for r in load_all(argv[1], argv[2]) if r["id"] == argv[3]), None)
        print(int(r["tps"]) if r and r.get("tps") else 1000)
    elif len(argv) == 5 and argv[0] == "--report":
        report(*argv[1:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
