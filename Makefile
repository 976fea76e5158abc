# blitz: `make run` starts the server on a working database, `make test` runs
# every check. See README.md.

CARGO ?= cargo
SERVER := target/release/blitz-server

.PHONY: run test bench build lint prereqs db-start db-stop db-clean

## run: build, start the project-local PostgreSQL (unless BLITZ_DB_URL is set), serve on 127.0.0.1:4063
run: prereqs
	$(CARGO) build --release --bins
	@scripts/run.sh

## bench: blitz vs PgBouncer vs direct PostgreSQL on a throw-away cluster; table + bench/results/
bench: prereqs build
	@bench/run.sh

## test: formatting, lints, and the whole suite against a PostgreSQL the suite starts itself
test: prereqs lint
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

## db-start / db-stop / db-clean: the project-local PostgreSQL in .blitz/pg
db-start:
	@scripts/localdb.sh start
db-stop:
	@scripts/localdb.sh stop
db-clean:
	@scripts/localdb.sh clean
