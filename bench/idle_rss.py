#!/usr/bin/env python3
"""RSS of blitz-server holding N idle client connections.

Usage: bench/idle_rss.py SERVER_BIN DB_URL [N]

Starts SERVER_BIN on a free loopback port, reads its RSS, opens N idle
connections (each checked with one sys.ping), reads the RSS again, then
closes everything and stops the server. Prints one line of figures.
"""
import json, os, resource, socket, subprocess, sys, time


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def main():
    server_bin, db_url = sys.argv[1], sys.argv[2]
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 10000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard))
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    proc = subprocess.Popen(
        [server_bin, "--listen", f"127.0.0.1:{port}", "--db-url", db_url,
         "--set", f"server.max_clients={n + 100}"],
        stderr=open("/tmp/idle_rss_server.log", "w"), env={**os.environ, "RUST_LOG": "warn"},
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1000), hard)))
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port)).close(); break
            except OSError:
                time.sleep(0.05)
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        conns = []
        for i in range(n):
            c = socket.create_connection(("127.0.0.1", port))
            conns.append(c)
        for c in conns[:: max(1, n // 100)]:
            c.sendall(b'{"jsonrpc":"2.0","method":"sys.ping","id":1}\n')
            assert b"pong" in c.recv(4096)
        time.sleep(1)
        after = rss_kib(proc.pid)
        print(json.dumps({"connections": n, "threads": threads(proc.pid),
                          "rss_idle_server_mib": round(before / 1024, 1),
                          "rss_with_connections_mib": round(after / 1024, 1),
                          "kib_per_connection": round((after - before) / n, 1)}))
        for c in conns:
            c.close()
    finally:
        proc.terminate(); proc.wait(timeout=60)


if __name__ == "__main__":
    main()
