"""The read-replica table for bench/report.py (the rows of bench/replicas.sh):
list_project_images at 500 clients with 0, 1 and 2 local standbys, its
throughput and latency, and the share of the calls each PostgreSQL server
ran (from OUTDIR/replicas-shares.jsonl: pg_stat_user_functions deltas per
server, primary first). On one 2-core machine the standbys share the CPUs
with the primary: the table shows the routing, not a speed-up.
"""
import json
import os

NOTE = ("On one 2-core machine the standbys share the CPUs with the primary: "
        "this shows where the calls ran (the routing), not a speed-up.")


def read_shares(outdir):
    path = os.path.join(outdir, "replicas-shares.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {s["id"]: s for s in map(json.loads, filter(str.strip, f))}


def shares_text(calls):
    total = sum(calls)
    if not total:
        return "–"
    names = ["primary"] + [f"standby {i}" for i in range(1, len(calls))]
    return " · ".join(f"{n} {100 * c / total:.0f} %" for n, c in zip(names, calls))


def section(rows, outdir, fmt, ms):
    """(title, headers, body, note) for report.py, or None without replica rows."""
    shown = sorted([r for r in rows if r["kind"] == "replicas"], key=lambda r: r["id"])
    if not shown:
        return None
    shares = read_shares(outdir)
    body = []
    for r in shown:
        s = shares.get(r["id"], {})
        body.append([str(s.get("standbys", r["id"].split("-")[-1])), fmt(r.get("tps")),
                     ms(r.get("p50_ms")), ms(r.get("p99_ms")), shares_text(s.get("calls", []))])
    return ("Read replicas: list_project_images at 500 clients",
            ["standbys", "calls/s", "p50 ms", "p99 ms", "calls run by"], body, NOTE)
