#!/usr/bin/env python3
"""Memory per idle connection of a running blitz-server, over TLS or not.

Usage: bench/tls_idle_rss.py HOST:PORT SERVER_PID (CA_FILE | --plain) [N] [--json]

Reads the server's RSS, opens N (default 10000) connections (over TLS:
verified against CA_FILE as "localhost"; with --plain: plaintext), each
answered one sys.ping so the handshake is surely done on both sides,
reads the RSS again while all N stay open and idle, and prints (RSS after
- RSS before) / N (one JSON object with --json). The server needs
server.max_clients above N and an open-file limit that fits them; the
script raises its own limit to what N needs.
"""
import json, resource, socket, ssl, sys, time

from idle_rss import ping, rss_kib


def main():
    args = [a for a in sys.argv[1:] if a != "--json"]
    if len(args) < 3:
        sys.exit(__doc__)
    host, port = args[0].rsplit(":", 1)
    pid, ca = int(args[1]), args[2]
    n = int(args[3]) if len(args) > 3 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    ctx = None if ca == "--plain" else ssl.create_default_context(cafile=ca)
    before = rss_kib(pid)
    t0 = time.monotonic()
    conns = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=60)
        if ctx:
            s = ctx.wrap_socket(s, server_hostname="localhost")
        ping(s)
        conns.append(s)
    opened = time.monotonic() - t0
    time.sleep(2)  # let the loops settle (buffers handed back)
    after = rss_kib(pid)
    kind = "plaintext" if ctx is None else "TLS"
    figures = {"kind": kind, "connections": n, "rss_before_kib": before,
               "rss_after_kib": after, "kib_per_connection": (after - before) / n,
               "open_s": opened}
    if "--json" in sys.argv:
        print(json.dumps(figures))
    else:
        print(f"{n} idle {kind} connections: server RSS {before} KiB -> {after} KiB, "
              f"{(after - before) / n:.1f} KiB per connection (opened in {opened:.1f} s)")
    for s in conns:
        s.close()


if __name__ == "__main__":
    main()
