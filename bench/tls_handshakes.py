#!/usr/bin/env python3
"""TLS handshakes per second against a running blitz-server, and sys.ping
latency on an open TLS connection during the storm.

Usage: bench/tls_handshakes.py HOST:PORT SERVER_PID CA_FILE [SECONDS] [PROCS]

For SECONDS (default 5) each of PROCS (default 2) client processes
connects, handshakes (verified against CA_FILE, name "localhost"), sends
one sys.ping, reads the reply and closes, over and over: first with full
handshakes (no session reused), then resumed (each process keeps the
session of its last connection). Meanwhile one more connection, opened
before the storm, sends a sys.ping every 10 ms and times each answer.
Prints, per kind: handshakes per second achieved, blitz-server CPU time
per handshake (utime + stime of SERVER_PID's router threads from /proc:
the acceptor and event loops, where handshakes run; so the server's
capacity on C cores is about C / cpu_per_handshake whatever the client's
own cost), and the ping latencies p50 / p99 / max. The clients run on the
same machine and cost more CPU per handshake than the server (they verify
the chain), so the achieved rate is a floor, not the server's ceiling.
"""
import multiprocessing as mp
import os, socket, ssl, sys, threading, time

from idle_rss import ping


def cpu_seconds(pid):
    """utime + stime of the router's threads (blitz-router-*, blitz-accept):
    where the handshakes run, without the housekeeper and workers."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/comm") as f:
            if not f.read().startswith(("blitz-router", "blitz-accept")):
                continue
        with open(f"/proc/{pid}/task/{task}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def context(ca):
    ctx = ssl.create_default_context(cafile=ca)
    return ctx


def call(ctx, host, port, session=None):
    raw = socket.create_connection((host, port), timeout=30)
    with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
        ping(s)
        return s.session, s.session_reused


def storm(host, port, ca, seconds, resume, out):
    ctx = context(ca)
    n = reused = 0
    session = None
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        session, was_reused = call(ctx, host, port, session if resume else None)
        n += 1
        reused += was_reused
    out.put((n, reused))


def pinger(host, port, ca, stop, latencies):
    raw = socket.create_connection((host, port), timeout=30)
    s = context(ca).wrap_socket(raw, server_hostname="localhost")
    while not stop.is_set():
        t = time.perf_counter()
        ping(s)
        latencies.append(time.perf_counter() - t)
        time.sleep(0.01)
    s.close()


def run(host, port, pid, ca, seconds, procs, resume):
    stop, latencies = threading.Event(), []
    ping = threading.Thread(target=pinger, args=(host, port, ca, stop, latencies))
    ping.start()
    out = mp.Queue()
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    workers = [mp.Process(target=storm, args=(host, port, ca, seconds, resume, out))
               for _ in range(procs)]
    for w in workers:
        w.start()
    results = [out.get() for _ in workers]
    for w in workers:
        w.join()
    elapsed, cpu = time.monotonic() - t0, cpu_seconds(pid) - cpu0
    stop.set()
    ping.join()
    n = sum(r[0] for r in results)
    reused = sum(r[1] for r in results)
    lat = sorted(latencies)
    pct = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1000
    kind = "resumed" if resume else "full"
    print(f"{kind:8} handshakes: {n / elapsed:7.0f}/s ({n} in {elapsed:.1f} s, {reused} resumed); "
          f"router CPU {cpu / n * 1e6:6.0f} us/handshake (2 cores: ~{2 * n / cpu:5.0f}/s); "
          f"ping on an open connection p50 {pct(0.5):.2f} ms p99 {pct(0.99):.2f} ms "
          f"max {lat[-1] * 1000:.2f} ms ({len(lat)} pings)")


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    pid, ca = int(sys.argv[2]), sys.argv[3]
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 5
    procs = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    for resume in (False, True):
        run(host, int(port), pid, ca, seconds, procs, resume)


if __name__ == "__main__":
    main()
