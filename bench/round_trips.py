#!/usr/bin/env python3
"""Round trips to PostgreSQL per api call, counted with strace.

Usage: bench/round_trips.py SERVER_BIN DB_URL [CALLS]

Runs SERVER_BIN under `strace -f -yy` (which names each socket's peer),
makes CALLS calls of api.transfer on one connection after a warm-up, and
counts the writes that went to PostgreSQL's port: each is one flight of
messages, i.e. one round trip. Prints one line of figures.
"""
import json, os, re, socket, subprocess, sys, tempfile, time
from urllib.parse import urlparse


def call(sock, reader, i):
    req = {"jsonrpc": "2.0", "id": i, "method": "api.transfer",
           "params": {"aid": 1 + i % 1000, "tid": 1 + i % 10, "bid": 1, "delta": 1}}
    sock.sendall((json.dumps(req) + "\n").encode())
    reply = json.loads(reader.readline())
    assert "result" in reply, reply


def pg_writes(trace, pg_port):
    pattern = re.compile(r"^\d+\s+(sendto|write|writev|sendmsg)\(\d+<TCP(v6)?:\[[^\]]*->[^\]]*:%d\]>" % pg_port)
    with open(trace) as f:
        return sum(1 for line in f if pattern.search(line))


def main():
    server_bin, db_url = sys.argv[1], sys.argv[2]
    calls = int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    pg_port = urlparse(db_url).port or 5432
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    trace = tempfile.NamedTemporaryFile(prefix="blitz-strace-", delete=False).name
    proc = subprocess.Popen(["strace", "-f", "-yy", "-e", "trace=sendto,write,writev,sendmsg",
                             "-e", "signal=none", "-o", trace, server_bin, "--listen", f"127.0.0.1:{port}",
                             "--db-url", db_url, "--set", "auth.mode=trust"], stderr=subprocess.DEVNULL,
                            env={**os.environ, "RUST_LOG": "warn"})
    try:
        for _ in range(400):
            try:
                sock = socket.create_connection(("127.0.0.1", port)); break
            except OSError:
                time.sleep(0.05)
        reader = sock.makefile("r")
        sock.sendall(b'{"jsonrpc":"2.0","id":0,"method":"session.login","params":{"user":"bench"}}\n')
        assert "result" in json.loads(reader.readline())
        for i in range(200):
            call(sock, reader, i)
        time.sleep(0.5)
        before = pg_writes(trace, pg_port)
        for i in range(calls):
            call(sock, reader, i)
        time.sleep(0.5)
        after = pg_writes(trace, pg_port)
        print(json.dumps({"calls": calls, "writes_to_postgres": after - before,
                          "round_trips_per_call": round((after - before) / calls, 3)}))
    finally:
        subprocess.run(["pkill", "-TERM", "-P", str(proc.pid)])  # the server, not strace
        proc.wait(timeout=60); os.unlink(trace)


if __name__ == "__main__":
    main()
