#!/usr/bin/env bash
# After the test suite: wait (up to 30 s) for the reapers to stop and delete
# every temporary PostgreSQL cluster the tests started. A cluster lives in
# /tmp/blitz-test-pg-<pid>-*, where <pid> is the test process that made it;
# the suite has finished, so a cluster whose test process is still alive
# belongs to another run on this machine and is not waited for.
leftovers() {
  pgrep -af 'blitz-test-pg-' | while read -r pid cmd; do
    owner=$(grep -o 'blitz-test-pg-[0-9]*' <<<"$cmd" | head -1 | grep -o '[0-9]*$')
    [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null && continue
    echo "$pid $cmd"
  done
}
for _ in $(seq 300); do
  [ -z "$(leftovers)" ] && exit 0
  sleep 0.1
done
echo "wait-test-clusters: test PostgreSQL processes still running after the suite:" >&2
leftovers >&2
exit 1
