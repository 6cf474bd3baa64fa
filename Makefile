# Flowkeeper: `make demo` runs the main job locally, `make test` runs every test.
SHELL := /bin/bash
PY := .venv/bin/python
PYTEST_ARGS ?=
# Workers of `make test` (pytest-xdist): the suite mostly waits on clusters and brokers, so more
# workers than cores pay; each worker starts its own control plane (tests/support/worker_groups.py).
TEST_WORKERS ?= 3

.PHONY: help setup test unit crds cluster cluster-down bin-dir demo bench bench-peers clean

help:
	@echo "make demo         local control plane + Prometheus + RabbitMQ + operator, scaling consumer pods you can watch (root)"
	@echo "make test         every test (unit, property, and against the real control plane and Prometheus)"
	@echo "make unit         the fast tests only (no I/O)"
	@echo "make crds         regenerate crds/ from the API models"
	@echo "make cluster      start the local control plane in the background (prints export KUBECONFIG=...);"
	@echo "                  REAL_NODE=1 also starts one real node (kubelet, containerd) beside kwok (root)"
	@echo "make cluster-down stop it"
	@echo "make bin-dir      print the folder with kubectl and the control-plane binaries"
	@echo "make bench        benchmarks; writes bench/results.json"
	@echo "make bench-peers Flowkeeper and KEDA side by side (root); writes bench/peers.json, docs/bench.png"

setup:
	@bash scripts/setup.sh

test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder $(PYTEST_ARGS)

unit: setup
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

crds: setup
	.venv/bin/flowkeeper crd --kind IntegrationFlow > crds/flowkeeper.io_integrationflows.yaml
	.venv/bin/flowkeeper crd --kind DeadLetterRedrive > crds/flowkeeper.io_deadletterredrives.yaml
	cp crds/flowkeeper.io_*.yaml charts/flowkeeper/crds/

cluster: setup
	@mkdir -p $${TMPDIR:-/tmp}
	@ready=$$(mktemp); rm -f $$ready; \
	nohup $(PY) -m tests.support.cluster up $(if $(REAL_NODE),--real-node) --detach-ready-file $$ready > $${TMPDIR:-/tmp}/flowkeeper-cluster.log 2>&1 & \
	for i in $$(seq 1 240); do [ -s $$ready ] && break; sleep 0.5; done; \
	if [ -s $$ready ]; then echo "export KUBECONFIG=$$(cat $$ready)"; rm -f $$ready; \
	else echo "the local cluster did not start; see $${TMPDIR:-/tmp}/flowkeeper-cluster.log"; exit 1; fi

bin-dir: setup
	@bash tests/cluster/build-binaries.sh k8s

cluster-down:
	@$(PY) -m tests.support.cluster down

bench: setup
	$(PY) -m bench.run $(BENCH_ARGS)

demo: setup
	$(PY) -m examples.demo.run $(DEMO_ARGS)

clean:
	rm -rf .venv .pytest_cache .hypothesis

bench-peers: setup
	$(PY) -m bench.peers.run $(BENCH_ARGS)
