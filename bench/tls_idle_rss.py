#!/usr/bin/env python3
"""Memory per idle TLS connection of a running blitz-server.

Usage: bench/tls_idle_rss.py HOST:PORT SERVER_PID CA_FILE [N]

Reads the server's RSS, opens N (default 10000) TLS connections (each
verified against CA_FILE as "localhost", with one sys.ping answered so the
handshake is surely done on both sides), reads the RSS again while all N
stay open and idle, and prints (RSS after - RSS before) / N. The server
needs server.max_clients above N and an open-file limit that fits them; the
script raises its own limit to what N needs.
"""
import resource, socket, ssl, sys, time

from idle_rss import ping, rss_kib


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    host, port = sys.argv[1].rsplit(":", 1)
    pid, ca = int(sys.argv[2]), sys.argv[3]
    n = int(sys.argv[4]) if len(sys.argv) > 4 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    ctx = ssl.create_default_context(cafile=ca)
    before = rss_kib(pid)
    t0 = time.monotonic()
    conns = []
    for _ in range(n):
        raw = socket.create_connection((host, int(port)), timeout=60)
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        ping(s)
        conns.append(s)
    opened = time.monotonic() - t0
    time.sleep(2)  # let the loops settle (buffers handed back)
    after = rss_kib(pid)
    print(f"{n} idle TLS connections: server RSS {before} KiB -> {after} KiB, "
          f"{(after - before) / n:.1f} KiB per connection (opened in {opened:.1f} s)")
    for s in conns:
        s.close()


if __name__ == "__main__":
    main()
