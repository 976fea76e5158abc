"""The concurrency limit's table and plot for bench/report.py (the rows of
bench/limit.sh): the sweep of fixed limits beside auto, the time auto takes
to settle, the slowdown, the recovery after low traffic, and the overload
rows' served-call latency beside goodput.

How each figure is taken (from OUTDIR/limit-auto.csv, limit-slowdown.csv,
limit-marks.jsonl; bench/limit_sampler.py explains the columns):

- auto / best fixed: each setting's mean tps over its two rounds (the
  sweep runs auto, formula … 8×, then 8× … formula, auto again: mirrored,
  so a drift of the machine's speed hits every setting alike), auto's mean
  against the best fixed setting's mean. Every setting's server is fresh,
  and the rows compared are the ones run right after a row from start on
  the same server: warm backends for every setting, and auto settled (its
  settling is the next figure's). The rows from start are compared the
  same way beside them, for information.
- settled limit: read from blitz_db_active_limit_settled, the limit the
  tuner keeps between its probes (its probe windows, one step away, and
  its baseline re-measurements at half the limit are excursions from it);
  the knee: its median over the last quarter of the auto phase (its two
  rows at 500 clients, from start and settled); settled at: the first
  sample after which it stays within one of the tuner's steps (a quarter,
  at least 1) of the knee, timed from the row's start.
- slowdown: the settled limit's median over the 10 s before the slowdown
  and during it; "adapts within": from the slowdown's start to the first
  sample a step below the median before; served p99: the median, and the
  worst, of the 250 ms intervals' p99 before and during, from the load
  generator's own latencies (limit-slowdown-calls.csv, `blitz bench
  --series`: exact), or, without that file, from the sampler's reading of
  the server's histogram (rounded to its bucket bounds: 100, 250, 500 ms).
- recovery: from the second 500-client phase's start to the first sample
  whose settled limit is within one step (or 3 %, the larger) of the knee.
"""
import csv
import json
import os
import shutil
import statistics


def read_csv(outdir, name):
    path = os.path.join(outdir, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        rows = list(csv.DictReader(f))
    num = lambda v: float(v) if v not in ("", None) else None
    return [{k: num(v) for k, v in r.items()} for r in rows]


def read_marks(outdir):
    path = os.path.join(outdir, "limit-marks.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return {m["name"]: m["t"] for m in map(json.loads, filter(str.strip, f))}


def step_of(limit):
    """The tuner's step once its first climb is over (src/db/limit/tuner.rs)."""
    return max(1, int(limit) // 4)


def between(samples, start, end):
    return [s for s in samples if start is not None and s["t_s"] >= start
            and (end is None or s["t_s"] < end)]


def settled(samples):
    """The settled limit and the time (from the first sample) it settled."""
    if len(samples) < 4:
        return None, None
    limits = [settled_of(s) for s in samples]
    ref = statistics.median(limits[-max(1, len(limits) // 4):])
    near = [abs(l - ref) <= step_of(ref) for l in limits]
    for i in range(len(near)):
        if all(near[i:]):
            return ref, samples[i]["t_s"] - samples[0]["t_s"]
    return ref, None


def settled_of(sample):
    """The settled limit of a sample (the limit itself in a CSV from before
    the settled gauge)."""
    settled = sample.get("settled")
    return settled if settled else sample["limit"]


def first_time(samples, start, test):
    return next((s["t_s"] - start for s in samples if test(s)), None)


def median_of(samples, key):
    values = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(values) if values else None


def median_settled(samples):
    values = [settled_of(s) for s in samples]
    return statistics.median(values) if values else None


def worst(samples, key):
    values = [s[key] for s in samples if s.get(key) is not None]
    return max(values) if values else None


def slowdown_figures(outdir, marks):
    samples = read_csv(outdir, "limit-slowdown.csv")
    start, end = marks.get("slowdown_start"), marks.get("slowdown_end")
    if not samples or start is None:
        return None
    before = between(samples, start - 10, start)
    during = between(samples, start, end)
    pre = median_settled(before)
    adapt = None
    if pre is not None:
        adapt = first_time(during, start, lambda s: settled_of(s) <= pre - step_of(pre))
    # Served p99 from the load generator's own series (exact), else from
    # the sampler's reading of the server's histogram (bucket bounds).
    calls = read_csv(outdir, "limit-slowdown-calls.csv")
    latency = calls or samples
    lat_before = between(latency, start - 10, start)
    lat_during = between(latency, start, end)
    return {"before": pre, "during": median_settled(during), "adapt_s": adapt,
            "p99_before": median_of(lat_before, "p99_ms"),
            "p99_during": median_of(lat_during, "p99_ms"),
            "p99_worst": worst(lat_during, "p99_ms"),
            "samples": samples, "latency": latency, "start": start, "end": end,
            "run_start": marks.get("slowdown_run_start", samples[0]["t_s"])}


def auto_figures(outdir, marks):
    samples = read_csv(outdir, "limit-auto.csv")
    auto = between(samples, marks.get("auto_start"), marks.get("low_start"))
    knee, settle_s = settled(auto)
    low = between(samples, marks.get("low_start"), marks.get("recover_start"))
    recover = between(samples, marks.get("recover_start"), marks.get("recover_end"))
    back_s = None
    if knee is not None and recover:
        margin = max(step_of(knee), 0.03 * knee)
        back_s = first_time(recover, marks["recover_start"],
                            lambda s: abs(settled_of(s) - knee) <= margin)
    tail = [settled_of(s) for s in auto[len(auto) // 2:]]
    return {"knee": knee, "settle_s": settle_s, "tail_range": (min(tail), max(tail)) if tail else None,
            "low_end": settled_of(low[-1]) if low else None, "back_s": back_s}


def sweep_settings(sweep):
    """The sweep's rows grouped by setting (a fixed limit, or auto: pool
    None), each with its rounds in the order they ran and their mean tps;
    fixed settings by limit, auto last."""
    groups = {}
    for r in sweep:
        key = None if r["id"].startswith("limit-auto") else r["pool"]
        groups.setdefault(key, []).append(r)
    settings = [{"pool": key, "rounds": rs, "tps": statistics.mean(r["tps"] for r in rs)}
                for key, rs in groups.items()]
    return sorted(settings, key=lambda g: (g["pool"] is None, g["pool"] or 0))


def split_settings(settings):
    """(the fixed settings, the best of them, auto) of sweep_settings' list;
    None where there is none."""
    fixed = [g for g in settings if g["pool"] is not None]
    best = max(fixed, key=lambda g: g["tps"]) if fixed else None
    return fixed, best, next((g for g in settings if g["pool"] is None), None)


def verdict(value, ok):
    return "–" if value is None else ("met" if ok(value) else "MISSED")


def section(rows, outdir, meta, fmt, ms, shown):
    """(title, headers, body, note) for report.py, or None without limit rows.
    `shown(value, ok, digits)` renders a value judged by `ok` so that it
    agrees with its verdict."""
    judged = lambda value, ok, digits: (shown(value, ok, digits), verdict(value, ok))
    sweep = [r for r in rows if r["kind"] == "limit-sweep" and r.get("tps") is not None]
    if not sweep:
        return None
    marks = read_marks(outdir)
    auto, slow = auto_figures(outdir, marks), slowdown_figures(outdir, marks)
    by_id = {r["id"]: r for r in rows}
    fixed, best, auto_setting = split_settings(sweep_settings(sweep))
    _, start_best, start_auto = split_settings(sweep_settings(
        [r for r in rows if r["kind"] == "limit-start" and r.get("tps") is not None]))
    div = lambda a, b: a / b if a is not None and b else None
    # One line per setting: its mean tps (each round's in brackets), against
    # the best, and the first round's latencies.
    line = lambda name, g, against, target: [
        name, fmt(g["tps"]) + (f" ({' · '.join(fmt(r['tps']) for r in g['rounds'])})"
                               if len(g["rounds"]) > 1 else ""),
        fmt(div(g["tps"], against and against["tps"]), 2),
        ms(g["rounds"][0].get("p50_ms")), ms(g["rounds"][0].get("p99_ms")), target, ""]
    body = [line(f"fixed {g['pool']}", g, best, "") for g in fixed]
    if auto_setting:
        body.append(line(f"auto, settled (at {fmt(auto['knee'])}, pool {auto_setting['rounds'][0]['pool']})",
                         auto_setting, best, ""))
    if start_auto:
        best_name = fmt(start_best["pool"]) if start_best else "–"
        body.append(line(f"auto from start, settling included (against fixed from start: best {best_name})",
                         start_auto, start_best, "report"))
    auto_ratio = div(auto_setting and auto_setting["tps"], best and best["tps"])
    value, met = judged(auto_ratio, lambda v: v >= 0.97, 2)
    body.append(["auto (settled) / best fixed", value, "", "", "", "≥ 0.97", met])
    if auto["settle_s"] is None and auto["knee"] is not None:
        low, high = auto["tail_range"]
        body.append(["auto: time to settle from start (s)",
                     f"not within a step of {fmt(auto['knee'])} to the phase's end "
                     f"(second half: {fmt(low)}–{fmt(high)})", "", "", "", "≤ 30", "MISSED"])
    else:
        value, met = judged(auto["settle_s"], lambda v: v <= 30, 1)
        body.append(["auto: time to settle from start (s)", value, "", "", "", "≤ 30", met])
    if slow:
        body.append(["slowdown: limit before → during", f"{fmt(slow['before'])} → {fmt(slow['during'])}",
                     "", "", "", "", ""])
        value, met = judged(slow["adapt_s"], lambda v: v <= 5, 1)
        body.append(["slowdown: limit adapts within (s)", value, "", "", "", "≤ 5", met])
        doubled = div(slow["p99_during"], slow["p99_before"])
        body.append(["slowdown: served p99 before · during (worst) ms",
                     f"{ms(slow['p99_before'])} · {ms(slow['p99_during'])} ({ms(slow['p99_worst'])})",
                     "", "", "", "≤ 2× before", verdict(doubled, lambda v: v <= 2)])
    body.append(["after low traffic (limit at its end): back within (s)",
                 f"{fmt(auto['back_s'], 1)} (limit {fmt(auto['low_end'])})", "", "", "", "≤ 30",
                 verdict(auto["back_s"], lambda v: v <= 30)])
    peak = by_id.get("blitz-c500")
    for x in (2, 10):
        r = by_id.get(f"overload-{x}x")
        if r and r.get("tps") is not None:
            good = div(r.get("goodput"), peak and peak.get("tps"))
            met = (r.get("p99_ms") or 0) <= 100 and (x != 2 or (good or 0) >= 0.95)
            body.append([f"{x}× overload: served p50 · p99 ms, goodput / peak",
                         f"{ms(r.get('p50_ms'))} · {ms(r.get('p99_ms'))}", fmt(good, 2), "", "",
                         "p99 ≤ 100" + (", goodput ≥ 0.95" if x == 2 else ""),
                         "met" if met else "MISSED"])
    headers = ["limit / measure", "tps or value", "/ best fixed", "p50 ms", "p99 ms", "target", ""]
    note = ("500 clients closed loop, one server per row beside the default one; fixed N: "
            "db.active_limit = db.pool_size = N (formula, 2×, 4×, 8×). Each setting ran twice, "
            "in mirrored order (auto, formula … 8×, 8× … formula, auto), each on a fresh server: one "
            "row from start, then the warm (for auto: settled) row the ratio compares; its tps is the mean of the "
            "two (each round's in brackets), and the latencies are the first round's. The limit is sampled from "
            "/metrics every 250 ms (limit-auto.csv, limit-slowdown.csv; plot limit-slowdown.svg); "
            "the slowdown's served p99 is the load generator's, per 250 ms "
            "(limit-slowdown-calls.csv); bench/limit_report.py says how each figure is taken. Overload rows: the default "
            "server (auto), open loop; peak: blitz closed loop at 500.")
    return "Concurrency limit (db.active_limit)", headers, body, note


def write_files(outdir, results):
    """Copies the CSVs to RESULTS and writes limit-slowdown.svg."""
    for name in ("limit-auto.csv", "limit-slowdown.csv", "limit-slowdown-calls.csv"):
        if os.path.exists(os.path.join(outdir, name)):
            shutil.copy(os.path.join(outdir, name), os.path.join(results, name))
    slow = slowdown_figures(outdir, read_marks(outdir))
    if slow:
        with open(os.path.join(results, "limit-slowdown.svg"), "w") as f:
            f.write(svg(slow))


def svg(slow):
    """The limit (left axis) and the served p99 (right axis) over time, the
    slowdown shaded."""
    W, H, L, R, T, B = 760, 360, 60, 70, 30, 40
    samples, t0 = slow["samples"], slow["run_start"]
    xs = [s["t_s"] - t0 for s in samples]
    xmax = max(xs + [1.0])
    lmax = max([s["limit"] for s in samples] + [1.0]) * 1.1
    latency = slow["latency"]
    pmax = max([s["p99_ms"] or 0 for s in latency] + [1.0]) * 1.1
    lx = lambda x: L + (W - L - R) * x / xmax
    ly = lambda v, top: H - B - (H - T - B) * v / top
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{W}' height='{H}' "
           "font-family='sans-serif' font-size='12'>",
           f"<text x='{W / 2}' y='18' text-anchor='middle'>db.active_limit auto under a slowdown "
           "injected on PostgreSQL (500 clients)</text>"]
    x0, x1 = lx(slow["start"] - t0), lx((slow["end"] or samples[-1]["t_s"]) - t0)
    out.append(f"<rect x='{x0:.1f}' y='{T}' width='{max(0, x1 - x0):.1f}' height='{H - T - B}' "
               "fill='#fbe3d6'><title>slowdown</title></rect>")
    for rows, series, top, color in ((samples, "limit", lmax, "#9ecae1"),
                                     (samples, "settled", lmax, "#1f77b4"),
                                     (latency, "p99_ms", pmax, "#d62728")):
        pts = " ".join(f"{lx(r['t_s'] - t0):.1f},{ly(r[series], top):.1f}"
                       for r in rows if r.get(series) is not None and r["t_s"] >= t0)
        out.append(f"<polyline points='{pts}' fill='none' stroke='{color}' stroke-width='1.5'/>")
    for i in range(5):
        v = lmax * i / 4
        out.append(f"<text x='{L - 6}' y='{ly(v, lmax) + 4:.1f}' text-anchor='end' "
                   f"fill='#1f77b4'>{v:.0f}</text>")
        out.append(f"<text x='{W - R + 6}' y='{ly(pmax * i / 4, pmax) + 4:.1f}' "
                   f"fill='#d62728'>{pmax * i / 4:.0f}</text>")
    for i in range(6):
        x = xmax * i / 5
        out.append(f"<text x='{lx(x):.1f}' y='{H - B + 16}' text-anchor='middle'>{x:.0f}</text>")
    out.append(f"<line x1='{L}' y1='{H - B}' x2='{W - R}' y2='{H - B}' stroke='black'/>")
    out.append(f"<text x='{(L + W - R) / 2}' y='{H - 6}' text-anchor='middle'>seconds</text>")
    out.append(f"<text x='14' y='{H / 2}' fill='#1f77b4' transform='rotate(-90 14 {H / 2})' "
               "text-anchor='middle'>limit (settled; pale: in force)</text>")
    out.append(f"<text x='{W - 14}' y='{H / 2}' fill='#d62728' "
               f"transform='rotate(90 {W - 14} {H / 2})' text-anchor='middle'>served p99 ms</text>")
    out.append("</svg>")
    return "\n".join(out) + "\n"
