# moedeploy. `make demo` runs the main job, `make test` the tests; both set up what they need.
SHELL := /bin/bash
PY_VERSION ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha1sum | cut -c1-12)
TESTBIN = $(shell bash hack/testbin.sh)
PYTEST_ARGS ?=
# e.g. CLUSTER_ARGS="--scrape-interval 2s --served-nodes gpu-node-0" (hack/localcluster.py up --help)
CLUSTER_ARGS ?=

.PHONY: install test unit integration lint testbin prometheus vllm cluster-up cluster-down demo bench images push-images chart clean

install: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PY_VERSION) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-* && touch $@

testbin:
	@bash hack/testbin.sh

prometheus:
	@bash hack/ensure-prometheus.sh

# vLLM's CPU build in a venv outside the repo (prints its folder); a no-op when installed
vllm:
	@bash hack/ensure-vllm.sh

test: install testbin prometheus vllm
	KUBEBUILDER_ASSETS=$(TESTBIN) $(PY) -m pytest $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

integration: install testbin prometheus vllm
	KUBEBUILDER_ASSETS=$(TESTBIN) $(PY) -m pytest tests/integration $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check operator runtime tests bench hack
	$(VENV)/bin/ruff format --check operator runtime tests bench hack

cluster-up: install testbin prometheus
	KUBEBUILDER_ASSETS=$(TESTBIN) $(PY) hack/localcluster.py up --state-dir .cluster $(CLUSTER_ARGS)

cluster-down: install
	$(PY) hack/localcluster.py down --state-dir .cluster

demo: install testbin prometheus
	KUBEBUILDER_ASSETS=$(TESTBIN) $(PY) hack/demo $(DEMO_ARGS)

bench: install testbin
	KUBEBUILDER_ASSETS=$(TESTBIN) bash bench/run_all.sh

# The images and the chart carry the project's version (pyproject.toml); the chart's appVersion names the image tag.
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
REGISTRY ?= ghcr.io/moedeploy

images:
	docker build -f images/operator.Dockerfile -t $(REGISTRY)/operator:$(VERSION) .
	docker build -f images/runtime.Dockerfile -t $(REGISTRY)/runtime:$(VERSION) .

push-images: images
	docker push $(REGISTRY)/operator:$(VERSION)
	docker push $(REGISTRY)/runtime:$(VERSION)

chart: testbin
	mkdir -p dist
	$(TESTBIN)/helm package helm/moedeploy --version $(VERSION) --app-version $(VERSION) -d dist

clean: cluster-down
	rm -rf $(VENV) .pytest_cache .ruff_cache
