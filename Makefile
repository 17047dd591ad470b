# The two README commands: `make demo` (the main job on the embedded default) and
# `make test` (everything CI runs). Both install what they need on first use.
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
VENV = $(shell hack/venv.sh)
PY = $(VENV)/bin/python

.PHONY: test demo lint crds crds-check unit integration e2e cluster-up cluster-down bins venv vllm

venv:
	@hack/venv.sh >/dev/null

bins:
	@hack/fetch-bins.sh all >/dev/null

# The CPU vLLM engine the local cluster runs for `vllm/vllm-openai` pods.
vllm:
	@hack/vllm-venv.sh >/dev/null

lint: venv
	.venv/bin/ruff check .
	.venv/bin/mypy

# Every generated file: CRDs and docs/api.md, the operator's ClusterRole, the Helm chart's
# generated parts. One style: no flag writes, --check fails when a committed file is stale.
crds: venv
	.venv/bin/python -m loraf_operator.api.crdgen
	.venv/bin/python -m loraf_operator.rbac_rules
	.venv/bin/python hack/chart_gen.py

crds-check: venv
	.venv/bin/python -m loraf_operator.api.crdgen --check
	.venv/bin/python -m loraf_operator.rbac_rules --check
	.venv/bin/python hack/chart_gen.py --check

unit: venv
	.venv/bin/pytest -q tests/unit

integration: venv bins
	.venv/bin/pytest -q tests/integration

e2e: venv bins vllm
	.venv/bin/pytest -q tests/e2e

# Everything CI runs, in one pytest session so the control plane starts once.
test: venv bins vllm lint
	.venv/bin/pytest -q -ra --durations=15

demo: venv bins vllm
	.venv/bin/python -m loraf_dev.demo

cluster-up: bins
	@hack/cluster.sh up

cluster-down:
	@hack/cluster.sh down
