# jobgate: `make run` starts the whole system, `make test` runs every test.
# Both install what they need first (redis-server, the Python venv).

SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PYTHON_SOURCES := workers/python examples/pricing examples/__init__.py proto-schemas/conformance

.PHONY: run test deps redis-server venv build lint test-rust test-python test-run test-lab test-client test-dashboard test-api-fuzz test-fuzz test-k8s bench bench-compare bench-cluster lab clean

run: deps build
	@scripts/run.sh

test: deps lint test-k8s test-rust test-client test-dashboard test-python test-run test-lab test-api-fuzz test-fuzz
	@echo "make test: all checks passed"

deps: redis-server venv

redis-server:
	@scripts/install-redis.sh

venv: $(VENV)/.installed

$(VENV)/.installed: workers/python/pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 is required" >&2; exit 1; }
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e 'workers/python[dev]'
	@touch $@

build:
	cargo build --release --bin jobgate

lint: venv
	python3 scripts/check-import-cycles.py crates/*/src workers/python/src/jobgate_worker
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	$(VENV)/bin/ruff check $(PYTHON_SOURCES)
	$(VENV)/bin/ruff format --check $(PYTHON_SOURCES)
	$(VENV)/bin/mypy --strict workers/python/src examples/pricing

test-rust: deps
	cargo test --workspace --locked

# ~4 minutes. Each test is bounded (workers/python/pyproject.toml); the suite
# as a whole too, in case no Python code can run to end a test: SIGABRT makes
# faulthandler print every thread's stack before the process dies.
test-python: deps
	timeout --signal=ABRT --kill-after=30 1200 $(VENV)/bin/pytest -q workers/python/tests

# The `make run` supervisor (scripts/test-run.sh, ~30 s): kills the worker and
# the gateway and checks they come back, a clean stop, a crash loop. It runs
# the debug gateway that `cargo test` built, hence after test-rust.
test-run: test-rust
	scripts/test-run.sh

# The short lab (deploy/lab/lab.sh, ~1 min, needs root): a Redis master
# killed and a gateway stopped under load in a multi-host deployment made of
# network namespaces (deploy/README.md, "The lab"); first ruff on the lab's
# Python and the unit tests of its accounting.
test-lab: deps build
	$(VENV)/bin/ruff check deploy/lab
	$(VENV)/bin/ruff format --check deploy/lab
	cd deploy/lab && ../../$(PY) -m pytest -q -p no:cacheprovider test_ledger.py
	LAB_SHORT=1 LAB_SKIP_BUILD=1 LAB_SCENARIOS="redis-master-kill gateway-sigterm" deploy/lab/lab.sh

# The TypeScript client @jobgate/client (clients/typescript/scripts/test.sh:
# build, unit tests, npm pack, and its integration tests against the debug
# gateway that `cargo test` built, hence after test-rust), then the
# conformance suite (proto-schemas/conformance/run-all.sh): every scenario
# against the scripted fake gateway, then replayed against the real one.
test-client: test-rust venv
	clients/typescript/scripts/test.sh
	proto-schemas/conformance/run-all.sh

# The dashboard in headless Chromium (scripts/test-dashboard.sh, installs
# chromium and playwright-core when missing): the admin views against the
# debug gateway that `cargo test` built, hence after test-rust.
test-dashboard: test-rust
	scripts/test-dashboard.sh

# Property-based API fuzzing (schemathesis) against /openapi.json: no 5xx,
# every answer as documented.
test-api-fuzz: deps
	scripts/api-fuzz.sh

# A short cargo-fuzz run of each parser target (corpus in fuzz/corpus).
test-fuzz:
	scripts/fuzz-smoke.sh

# The Kubernetes manifests in deploy/k8s, offline (scripts/test-k8s.sh, a few
# seconds once its pinned validators are in .venv-k8s): strict schemas for the
# built-in kinds and the DaskCluster's CRD, the rules schemas cannot state,
# and broken copies that must be refused.
test-k8s:
	scripts/test-k8s.sh

clean:
	cargo clean
	rm -rf $(VENV) .jobgate

# The standard benchmark scenarios (benches/run.sh): one table, and the same
# figures in target/bench/latest.json. See benches/RESULTS.md.
bench: deps
	@benches/run.sh

# jobgate, BullMQ and Celery on this machine in one sitting: three rounds back
# to back, the medians, the target ratios (benches/compare/README.md);
# target/bench/compare.json. It builds and installs what it needs first.
bench-compare:
	@bash benches/compare/run.sh

# What one job costs Redis (per master), the gateway and the workers on a
# single server and on a 3-master Redis Cluster, in one sitting
# (benches/cluster-sizing.sh; target/bench/cluster-sizing.json).
bench-cluster: deps
	@benches/cluster-sizing.sh

# The whole lab (deploy/lab/lab.sh, under 6 min, needs root): every fault
# scenario under load, one table, target/lab/latest.json.
lab: deps build
	@LAB_SKIP_BUILD=1 deploy/lab/lab.sh
