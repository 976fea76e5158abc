#!/usr/bin/env bash
# After the test suite: wait (up to 30 s) for the reapers to stop and delete
# every temporary PostgreSQL cluster the tests started (blitz-test-pg-*).
for _ in $(seq 300); do
  pgrep -f 'blitz-test-pg-' >/dev/null || exit 0
  sleep 0.1
done
echo "wait-test-clusters: test PostgreSQL processes still running:" >&2
pgrep -af 'blitz-test-pg-' >&2
exit 1
