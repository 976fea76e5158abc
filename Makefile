# blitz: `make run` starts the server on a working database, `make test` runs
# every check. See README.md.

CARGO ?= cargo
SERVER := target/release/blitz-server

.PHONY: run test bench build lint prereqs haproxy db-start db-stop db-clean

## run: build, start the project-local PostgreSQL (unless BLITZ_DB_URL is set), serve on 127.0.0.1:4063
run: prereqs
	$(CARGO) build --release --bins
	@scripts/run.sh

## bench: blitz vs PgBouncer vs direct PostgreSQL on a throw-away cluster; table + bench/results/
bench: prereqs build
	@bench/run.sh

## test: formatting, lints, and the whole suite against a PostgreSQL the suite starts itself
test: prereqs lint haproxy
	$(CARGO) test --all-targets
	@scripts/wait-test-clusters.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

build:
	$(CARGO) build --release --bins

prereqs:
	@command -v $(CARGO) >/dev/null || { echo "make: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
	@$(CARGO) fmt --version >/dev/null 2>&1 || { echo "make: rustfmt missing; run: rustup component add rustfmt" >&2; exit 1; }
	@$(CARGO) clippy --version >/dev/null 2>&1 || { echo "make: clippy missing; run: rustup component add clippy" >&2; exit 1; }
	@scripts/localdb.sh check >/dev/null

## haproxy: the load balancer tests/cluster.rs runs in front of two instances (installed with apt-get as root)
haproxy:
	@command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make: haproxy missing; installing it with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; \
	  else \
	    echo "make: haproxy not found; the scale-out test needs it: install it (Debian/Ubuntu: sudo apt-get install haproxy; elsewhere your package manager's haproxy, 2.x)" >&2; \
	    exit 1; \
	  fi; }

## db-start / db-stop / db-clean: the project-local PostgreSQL in .blitz/pg
db-start:
	@scripts/localdb.sh start
db-stop:
	@scripts/localdb.sh stop
db-clean:
	@scripts/localdb.sh clean
