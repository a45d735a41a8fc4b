# The same commands locally and in CI. Each target installs what it needs itself.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: help version stamp lock release wheelhouse venv controlplane redis consul helm promtool llama test-tools node-build node-up node-down crd demo demo-down test test-unit test-integration test-e2e lint format bench bench-node bench-tools bench-peers bench-gateway bench-routing clean

help:
	@echo "make demo        start a local control plane, demo backends and the operator; apply a pool"
	@echo "make demo-down   stop everything 'make demo' started"
	@echo "make test        unit, integration and end-to-end tests (builds the control plane, the node and images on first run)"
	@echo "make node-up     a real single-node cluster in a private network namespace (scripts/node.py)"
	@echo "make node-down   stop it and clean up"
	@echo "make lint        ruff check, ruff format --check, mypy --strict, the docs' names, classes' sizes"
	@echo "make bench       benchmarks; results under bench/results/"
	@echo "make release     wheels, sdists, the chart, the install manifests and the image into dist/"
	@echo "make bench-gateway  the gateway next to HAProxy, vllm-router and LiteLLM's proxy (docs/gateway-bench.md)"
	@echo "make bench-routing  the routing strategies on eight fake engines, with LiteLLM's Router and vllm-router (docs/routing-bench.md)"

version:  # the one version (operator/clusterpool/__init__.py)
	@python3 distributions/layout.py --version

$(STAMP): pyproject.toml
	@echo "==> virtualenv $(VENV): installing pinned packages (first run takes a minute)"
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@# the development install was called clusterpool-operator before the two distributions
	@$(PY) -m pip uninstall --quiet --disable-pip-version-check -y clusterpool-operator 2>/dev/null || true
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

wheelhouse: venv  # the wheels of the client's dependencies: the client-only install test installs offline
	@$(PY) scripts/release.py wheelhouse >/dev/null

test-tools: controlplane redis consul helm promtool llama wheelhouse  # everything the integration tests run

node-build: controlplane
	@$(PY) scripts/node.py build >/dev/null

node-up: node-build
	@$(PY) scripts/node.py up >/dev/null
	@$(PY) scripts/node.py env

node-down: venv
	@$(PY) scripts/node.py down

crd: venv
	$(PY) -m clusterpool.crd > crds/clusterpool.dev_clusterpools.yaml
	cp crds/clusterpool.dev_clusterpools.yaml charts/clusterpool-operator/files/crds/  # the chart renders it (templates/crd.yaml)

demo: controlplane redis
	@$(PY) scripts/demo.py up

demo-down: venv
	@$(PY) scripts/demo.py down

test: test-tools node-build bench-tools
	scripts/netns-run $(PY) -m pytest tests

test-unit: venv
	$(PY) -m pytest tests/unit

test-integration: test-tools bench-tools
	scripts/netns-run $(PY) -m pytest tests/integration

test-e2e: node-build helm
	scripts/netns-run $(PY) -m pytest tests/e2e

bench-node: node-build helm
	CLUSTERPOOL_RECORD=1 scripts/netns-run $(PY) -m pytest tests/e2e/test_node_cluster.py tests/e2e/test_gateway_node.py -s

lint: venv
	$(VENV)/bin/ruff check operator tests scripts bench examples distributions
	$(VENV)/bin/ruff format --check operator tests scripts bench examples distributions
	$(VENV)/bin/mypy
	$(PY) scripts/check_docs.py
	@cmp -s crds/clusterpool.dev_clusterpools.yaml charts/clusterpool-operator/files/crds/clusterpool.dev_clusterpools.yaml \
		|| { echo "the chart's copy of the CRD is stale: run make crd"; exit 1; }
	@# the chart: helm lint --strict with the default values and with every value set, when helm
	@# is built (make helm); tests/integration/test_helm.py has the API server check what it renders
	@helm=$$($(PY) scripts/helm.py path); if [ -x "$$helm" ]; then \
		echo "$$helm lint --strict charts/clusterpool-operator"; \
		"$$helm" lint --strict --quiet charts/clusterpool-operator \
		&& "$$helm" lint --strict --quiet charts/clusterpool-operator -f tests/chart/values-full.yaml; \
	else echo "helm is not built (make helm): helm lint --strict skipped"; fi
	@# last: the checks above still run while a class under operator/ holds too many attributes
	$(PY) scripts/check_attrs.py

format: venv
	$(VENV)/bin/ruff check --fix operator tests scripts bench examples distributions
	$(VENV)/bin/ruff format operator tests scripts bench examples distributions

stamp: venv  # after changing __version__: write it into Chart.yaml and the install manifests
	$(PY) scripts/release.py stamp

lock: venv  # requirements/*.lock (the image's packages, with hashes) from distributions/ and the dev pins
	$(PY) scripts/release.py lock

# dist/: both wheels and sdists, the chart (.tgz), the install manifests (one file), the image
# (an OCI archive, its digest beside it); all of one version. SKIP_IMAGE=1 leaves the image out;
# BASE_IMAGE=python:3.11-slim@sha256:... builds over the real base (default: the local stand-in).
release: venv helm
	$(PY) scripts/release.py build $(if $(SKIP_IMAGE),--skip-image) $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE))

bench: controlplane redis consul
	@echo "==> installing the bench references: litellm (balancers), cachetools (memory cache), matplotlib, py-spy"
	@# The gateway benchmark is `make bench-gateway`: it installs wrk and HAProxy (apt), and
	@# LiteLLM's proxy and vllm-router into .venv-peers (bench/requirements-peers.txt).
	@# litellm >= 1.105 requires certifi >= 2026.10.19, which the package registry here does not
	@# serve; the routing code does not depend on it, so litellm goes in without dependencies and
	@# its runtime dependencies are listed in bench/requirements.txt.
	@$(PY) -m pip install --quiet --disable-pip-version-check --no-deps 'litellm==1.108.11'
	@$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	LITELLM_LOCAL_MODEL_COST_MAP=True $(PY) bench/balancer_bench.py
	$(PY) bench/probe_bench.py
	$(PY) bench/cache_bench.py
	$(PY) bench/redis_cache_bench.py
	$(PY) bench/sdk_overhead_bench.py
	scripts/netns-run $(PY) bench/detection_bench.py
	scripts/netns-run $(PY) bench/discovery_bench.py
	@# 100, 300 and 1,000 pools, 5 create/delete cycles each: about an hour on 2 cores
	@# (a quicker look: $(PY) bench/scale_bench.py --quick)
	$(PY) bench/scale_bench.py

# wrk (the load generator) and HAProxy (the native reference) from Debian's packages: the
# gateway benchmark and its --quick test (tests/integration/test_gateway_bench.py) use them.
bench-tools:
	@command -v wrk >/dev/null && command -v haproxy >/dev/null || { \
		echo "==> apt-get install wrk haproxy"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk haproxy >/dev/null; }

# The proxies the gateway is compared with, in a virtualenv of their own (.venv-peers), so that
# LiteLLM's proxy extras (websockets < 16, its own fastapi and uvicorn) leave .venv alone:
# litellm 1.108.11 with --no-deps (it requires a certifi release the registry here does not
# serve) plus bench/requirements-peers.txt (its runtime dependencies, its [proxy] extras and
# vllm-router).
PEERS := .venv-peers
$(PEERS)/.installed: bench/requirements-peers.txt
	@echo "==> $(PEERS): litellm[proxy] and vllm-router (first run takes a few minutes)"
	@test -x $(PEERS)/bin/python || $(PYTHON) -m venv $(PEERS)
	@$(PEERS)/bin/pip install --quiet --disable-pip-version-check --no-deps 'litellm==1.108.11'
	@$(PEERS)/bin/pip install --quiet --disable-pip-version-check -r bench/requirements-peers.txt
	@touch $@

bench-peers: $(PEERS)/.installed

# Each proxy pinned to core 0, wrk and the backend on core 1, all in a network namespace of
# its own (LiteLLM's proxy cannot reach out); about 15 minutes. A look in a minute:
# $(PY) bench/gateway_bench.py --quick. Another gateway build: --gateway-cmd, PYTHONPATH.
bench-gateway: venv bench-tools bench-peers
	@$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	scripts/netns-run $(PY) bench/gateway_bench.py

# The strategies on eight fake engines next to LiteLLM's Router (the library, in .venv, as
# `make bench` installs it) and vllm-router (.venv-peers), in a network namespace of its own,
# about 13 minutes on 2 shared cores; then four real llama-servers (the cached build), about
# 2 more. A look in two: $(PY) bench/routing_bench.py --quick. The sweep of the defaults:
# $(PY) bench/routing_bench.py --sweep (about 7 minutes).
bench-routing: venv bench-peers llama
	@$(PY) -m pip install --quiet --disable-pip-version-check --no-deps 'litellm==1.108.11'
	@$(PY) -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	LITELLM_LOCAL_MODEL_COST_MAP=True scripts/netns-run $(PY) bench/routing_bench.py
	scripts/netns-run $(PY) bench/routing_bench.py --llama

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
