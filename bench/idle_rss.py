#!/usr/bin/env python3
"""Threads, RSS and sys.ping latency of blitz-server holding N idle connections.

Usage: bench/idle_rss.py SERVER_BIN DB_URL [N] [--json]

Starts SERVER_BIN on a free loopback port (in a session of its own), reads
its RSS and thread count, opens N idle connections (spread over source
addresses 127.0.0.1-127.0.0.16, so that N may exceed one address's
ephemeral ports; every hundredth is checked with one sys.ping), reads RSS
and threads again, then times 200 sys.ping calls, each on a fresh
connection (connect, send, read the reply) while the N stay open. Then it
closes everything and stops the server. Prints one line of figures (one
JSON object with --json). The open-file limit is raised to what N needs
(as root with CAP_SYS_RESOURCE, the hard limit too); where it cannot be,
the largest N that fits is measured and the output says what limited it.
"""
import json, os, resource, signal, socket, subprocess, sys, time

IP_BIND_ADDRESS_NO_PORT = 24   # Linux: pick the port at connect, per 4-tuple
SOURCES = [f"127.0.0.{i}" for i in range(1, 17)]
PING = b'{"jsonrpc":"2.0","method":"sys.ping","id":1}\n'


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 2000
    if hard < want and os.geteuid() == 0:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, want), hard))
    return min(hard, want)


def connect(port, i):
    s = socket.socket()
    s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    s.bind((SOURCES[i % len(SOURCES)], 0))
    s.connect(("127.0.0.1", port))
    return s


def ping(s):
    s.sendall(PING)
    data = b""
    while not data.endswith(b"\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("connection closed before the sys.ping reply")
        data += chunk
    if b"pong" not in data:
        raise RuntimeError(f"not a pong: {data[:200]!r}")


def percentile(values, q):
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    as_json = "--json" in sys.argv
    server_bin, db_url = args[0], args[1]
    n = int(args[2]) if len(args) > 2 else 10000
    requested = n
    limit = raise_nofile(n)
    limited_by = None
    if limit < n + 1000:
        # Both this process and the server hold one descriptor per connection.
        n = max(0, limit - 1000)
        limited_by = (f"open-file limit {limit} (the hard limit; raising it needs "
                      "CAP_SYS_RESOURCE)")
        print(f"idle_rss: {requested} connections do not fit under the {limited_by}; "
              f"measuring {n}", file=sys.stderr)
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    log = open(os.environ.get("IDLE_RSS_LOG", "/tmp/idle_rss_server.log"), "w")
    proc = subprocess.Popen(
        [server_bin, "--listen", f"127.0.0.1:{port}", "--db-url", db_url,
         "--set", f"server.max_clients={n + 1000}"],
        stderr=log, env={**os.environ, "RUST_LOG": "warn"}, start_new_session=True)
    conns = []
    try:
        for _ in range(200):
            try:
                c = socket.create_connection(("127.0.0.1", port)); ping(c); c.close(); break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)
        before, threads_before = rss_kib(proc.pid), threads(proc.pid)
        t0 = time.monotonic()
        for i in range(n):
            conns.append(connect(port, i))
        connect_s = time.monotonic() - t0
        for c in conns[:: max(1, n // 100)]:
            ping(c)
        time.sleep(1)
        after, threads_after = rss_kib(proc.pid), threads(proc.pid)
        fresh = []
        for i in range(200):
            t = time.monotonic()
            c = connect(port, n + i)
            ping(c)
            fresh.append((time.monotonic() - t) * 1000)
            c.close()
        out = {"connections": n, "requested": requested, "limited_by": limited_by,
               "threads_idle_server": threads_before,
               "threads": threads_after,
               "rss_idle_server_mib": round(before / 1024, 1),
               "rss_with_connections_mib": round(after / 1024, 1),
               "kib_per_connection": round((after - before) / n, 2),
               "connect_s": round(connect_s, 2),
               "fresh_ping_p50_ms": round(percentile(fresh, 0.50), 3),
               "fresh_ping_p99_ms": round(percentile(fresh, 0.99), 3),
               "fresh_ping_max_ms": round(max(fresh), 3)}
        print(json.dumps(out) if as_json else
              " ".join(f"{k}={v}" for k, v in out.items()))
    finally:
        for c in conns:
            c.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    main()
