# The same commands locally and in CI. Each target installs what it needs itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: help venv controlplane redis consul helm promtool llama test-tools node-build node-up node-down crd demo demo-down test test-unit test-integration test-e2e lint format bench bench-node clean

help:
	@echo "make demo        start a local control plane, demo backends and the operator; apply a pool"
	@echo "make demo-down   stop everything 'make demo' started"
	@echo "make test        unit, integration and end-to-end tests (builds the control plane, the node and images on first run)"
	@echo "make node-up     a real single-node cluster in a private network namespace (scripts/node.py)"
	@echo "make node-down   stop it and clean up"
	@echo "make lint        ruff check, ruff format --check, mypy --strict"
	@echo "make bench       benchmarks; results under bench/results/"

$(STAMP): pyproject.toml
	@echo "==> virtualenv $(VENV): installing pinned packages (first run takes a minute)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

venv: $(STAMP)

# Each target builds only what it uses; the Go builds print their progress and are cached
# in ~/.cache/clusterpool (scripts/controlplane.py).
controlplane: venv  # kube-apiserver, etcd, kubectl: the demo and the integration tests
	@$(PY) scripts/controlplane.py build >/dev/null

redis: venv  # redis-server from the distribution's packages, when missing
	@$(PY) scripts/redis_servers.py install

consul: venv  # the Consul discovery tests and bench
	@$(PY) scripts/consul.py build >/dev/null

helm: venv  # the chart's tests (integration and end-to-end)
	@$(PY) scripts/helm.py build >/dev/null

promtool: venv  # the chart's alert tests
	@$(PY) scripts/promtool.py build >/dev/null

llama: venv  # llama.cpp's llama-server built from source (about 4 min cold, cached) and the tiny model
	@$(PY) scripts/llama.py build >/dev/null
	@$(PY) scripts/llama.py model >/dev/null

test-tools: controlplane redis consul helm promtool llama  # everything the integration tests run

node-build: controlplane
	@$(PY) scripts/node.py build >/dev/null

node-up: node-build
	@$(PY) scripts/node.py up >/dev/null
	@$(PY) scripts/node.py env

node-down: venv
	@$(PY) scripts/node.py down

crd: venv
	$(PY) -m clusterpool.crd > crds/clusterpool.dev_clusterpools.yaml
	cp crds/clusterpool.dev_clusterpools.yaml charts/clusterpool-operator/crds/

demo: controlplane redis
	@$(PY) scripts/demo.py up

demo-down: venv
	@$(PY) scripts/demo.py down

test: test-tools node-build
	scripts/netns-run $(PY) -m pytest tests

test-unit: venv
	$(PY) -m pytest tests/unit

test-integration: test-tools
	scripts/netns-run $(PY) -m pytest tests/integration

test-e2e: node-build helm
	scripts/netns-run $(PY) -m pytest tests/e2e

bench-node: node-build helm
	CLUSTERPOOL_RECORD=1 scripts/netns-run $(PY) -m pytest tests/e2e/test_node_cluster.py -s

lint: venv
	$(VENV)/bin/ruff check operator tests scripts bench examples
	$(VENV)/bin/ruff format --check operator tests scripts bench examples
	$(VENV)/bin/mypy

format: venv
	$(VENV)/bin/ruff check --fix operator tests scripts bench examples
	$(VENV)/bin/ruff format operator tests scripts bench examples

bench: controlplane redis consul
	@echo "==> installing the bench references: litellm (balancers), cachetools (memory cache), matplotlib, py-spy"
	@# litellm >= 1.105 requires certifi >= 2026.10.19, which the package registry here does not
	@# serve; the routing code does not depend on it, so litellm goes in without dependencies and
	@# its runtime dependencies are listed in bench/requirements.txt.
	@$(PY) -m pip install --quiet --disable-pip-version-check --no-deps 'litellm==1.108.11'
	@$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	LITELLM_LOCAL_MODEL_COST_MAP=True $(PY) bench/balancer_bench.py
	$(PY) bench/probe_bench.py
	$(PY) bench/cache_bench.py
	$(PY) bench/redis_cache_bench.py
	scripts/netns-run $(PY) bench/detection_bench.py
	scripts/netns-run $(PY) bench/discovery_bench.py
	@# 100, 300 and 1,000 pools, 5 create/delete cycles each: about an hour on 2 cores
	@# (a quicker look: $(PY) bench/scale_bench.py --quick)
	$(PY) bench/scale_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
