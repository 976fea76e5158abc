#!/usr/bin/env python3
"""The concurrency limit over time, for bench/limit.sh.

    limit_sampler.py METRICS_ADDR OUT.csv [INTERVAL_MS]

Scrapes http://METRICS_ADDR/metrics every INTERVAL_MS (default 250) until
SIGTERM and writes one CSV line per scrape:

    t_s          wall-clock time of the scrape (seconds since the epoch)
    limit        blitz_db_active_limit (a probe's window included)
    settled      blitz_db_active_limit_settled (the limit the tuner keeps)
    hold_ms      blitz_db_hold_seconds (the tuner's last window), in ms
    baseline_ms  blitz_db_hold_baseline_seconds, in ms
    calls        api. calls the workers finished since the scrape before
    p50_ms, p99_ms  their latency (arrival to reply) over that interval, from
                 the deltas of blitz_api_call_duration_seconds buckets, summed
                 over methods, interpolated linearly within a bucket (the
                 buckets are about three per decade: read it as ±30 %)

A scrape that fails writes nothing (the server may be starting or gone).
"""

import csv
import re
import signal
import sys
import time
import urllib.request

SAMPLE = re.compile(r'^([a-z_]+)(\{[^}]*\})? ([0-9.eE+-]+|NaN|\+Inf)')
LE = re.compile(r'le="([^"]+)"')


def scrape(addr):
    """Gauges by name, and the call-duration buckets summed over methods."""
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=2) as reply:
        text = reply.read().decode()
    gauges, buckets = {}, {}
    for line in text.splitlines():
        m = SAMPLE.match(line)
        if not m:
            continue
        name, labels, value = m.group(1), m.group(2) or "", float(m.group(3))
        if name == "blitz_api_call_duration_seconds_bucket":
            le = LE.search(labels).group(1)
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0) + value
        elif not labels:
            gauges[name] = value
    return gauges, buckets


def quantile(before, now, q):
    """The q-quantile in ms of the calls between two cumulative bucket sets."""
    bounds = sorted(now)
    counts = [now[b] - before.get(b, 0) for b in bounds]
    total = counts[-1] if counts else 0
    if total <= 0:
        return None, 0
    rank, low, below = q * total, 0.0, 0
    for bound, cumulative in zip(bounds, counts):
        if cumulative >= rank:
            if bound == float("inf"):
                return low * 1000, int(total)
            inside = cumulative - below
            share = (rank - below) / inside if inside else 1.0
            return (low + (bound - low) * share) * 1000, int(total)
        low, below = bound, cumulative
    return low * 1000, int(total)


def main():
    addr, path = sys.argv[1], sys.argv[2]
    interval = (int(sys.argv[3]) if len(sys.argv) > 3 else 250) / 1000
    running = [True]
    signal.signal(signal.SIGTERM, lambda *_: running.__setitem__(0, False))
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["t_s", "limit", "settled", "hold_ms", "baseline_ms", "calls", "p50_ms", "p99_ms"])
        before = {}
        next_at = time.time()
        while running[0]:
            try:
                gauges, buckets = scrape(addr)
            except OSError:
                gauges = None
            if gauges is not None:
                p50, calls = quantile(before, buckets, 0.50)
                p99, _ = quantile(before, buckets, 0.99)
                before = buckets
                ms = lambda name: round(gauges.get(name, 0.0) * 1000, 3)
                out.writerow([f"{time.time():.3f}", int(gauges.get("blitz_db_active_limit", 0)),
                              int(gauges.get("blitz_db_active_limit_settled", 0)),
                              ms("blitz_db_hold_seconds"), ms("blitz_db_hold_baseline_seconds"),
                              calls, p50 and round(p50, 2), p99 and round(p99, 2)])
                f.flush()
            next_at += interval
            time.sleep(max(0.0, next_at - time.time()))


if __name__ == "__main__":
    main()
