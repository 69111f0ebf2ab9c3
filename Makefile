# Kairos — everything a newcomer needs is `make run` and `make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
PYTHON ?= python3
DEMO_PORT ?= 9101

.PHONY: install system-deps run test soak lint docs reference bench fuzz clean

# The venv marker is rebuilt when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[http2,dev,otel,docs]'
	touch $@

install: $(VENV)/.installed

# Servers, clients and browsers the tests drive for real (redis-server for shared state, memcached for
# the `limits` library's storages, chromium for the dashboard, dnsmasq as an upstream DNS server, dig
# and kdig as DNS clients, PostgreSQL for the LLM request analytics, nginx as the load balancer of the
# rolling restart), from Debian when missing.
system-deps:
	@.ci/apt-install redis-server:redis-server chromium:chromium dnsmasq:dnsmasq-base \
		dig:bind9-dnsutils kdig:knot-dnsutils pg_ctlcluster:postgresql nginx:nginx memcached:memcached

# Starts the demo upstream (HTTP + WebSocket echo on 127.0.0.1:$(DEMO_PORT)) and the gateway on
# 0.0.0.0:5900 with the embedded default config; Ctrl-C stops both.
run: install
	@$(PY) -m kairos.demo --port $(DEMO_PORT) & demo=$$!; \
	trap "kill $$demo 2>/dev/null" EXIT INT TERM; \
	KAIROS_DEMO_UPSTREAM=http://127.0.0.1:$(DEMO_PORT) $(PY) -m kairos run

# The whole suite on the default (raw) upstream engine, then the suites that exercise the engine
# itself (requests, faults, streaming memory, TLS, upstream paths, first byte) again on the aiohttp
# fallback engine so both stay correct. Balancing, policies and the other protocols do not depend
# on the engine and run once.
ENGINE_SUITES := tests/e2e/test_http_proxy.py tests/e2e/test_faults.py tests/e2e/test_streaming_memory.py \
	tests/e2e/test_tls_upstream.py tests/routing/test_upstream_path.py tests/e2e/test_edge_proxy.py

# Coverage covers the gateway processes the suite starts too (pyproject: patch = subprocess); the
# per-package table is printed and the total may not fall below [tool.coverage.report] fail_under.
# Most of the suite waits on real processes, so it runs in TEST_WORKERS pytest-xdist workers, a
# test file per worker at a time (module fixtures start once); tests/processes.free_port gives each
# worker its own port range. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
test: install system-deps
	@rm -f .coverage .coverage.*
	$(PY) -m coverage run -m pytest -q $(XDIST) $(PYTEST_ARGS)
	KAIROS_UPSTREAM_ENGINE=aiohttp $(PY) -m coverage run -m pytest -q $(XDIST) $(ENGINE_SUITES)
	@$(PY) -m coverage combine -q
	@$(PY) .ci/coverage_by_package.py
	$(PY) -m coverage report --format=total

# The long versions of the bounded soaks in `make test` (tests marked `slow`): 50,000 proxied
# requests, 20 s of reloads under load, 1 GiB FTP transfers both ways, 30 minutes of mixed traffic
# through `kairos run --workers 2` sharing a redis-server (tests/e2e/test_replica_soak.py: every
# process's RSS within 10% of its size after warm-up; `make test` runs it for KAIROS_SOAK_SECONDS, 120).
soak: install system-deps
	KAIROS_SOAK=1 $(PY) -m pytest -q -m slow $(PYTEST_ARGS)

# Long fuzzing of the parsers that face hostile input (tests/fuzz/harness.py): atheris when it
# installs, else Hypothesis alone; `make test` replays the checked-in seeds and a bounded run.
FUZZ_SECONDS ?= 600
fuzz: install
	-$(PIP) install --quiet -e '.[fuzz]'
	$(PY) -m tests.fuzz.harness --seconds $(FUZZ_SECONDS) $(FUZZ_ARGS)

# ruff, mypy strict (kairos/ and tests/), the import contracts of the architecture
# ([tool.importlinter] in pyproject.toml), and the docs site built strictly.
lint: install
	$(VENV)/bin/ruff check kairos admin tests bench scripts
	$(VENV)/bin/ruff format --check kairos admin tests bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports
	@$(MAKE) --no-print-directory docs

# The docs site (mkdocs.yml, docs/): built strictly (a broken link or anchor, or a page missing from
# the nav, fails) into site/ (gitignored). docs/configuration.md is generated from the config models:
# `make reference` rewrites it, and a test fails when it is stale.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet -d site

reference: install
	$(PY) -m kairos.config.reference > docs/configuration.md

bench: install system-deps
	@$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info .coverage .coverage.* site
