# chital: one entry point per habit. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PY := .venv/bin/python
VENV_BIN := .venv/bin
PYTEST_ARGS ?=

HAND_WRITTEN := proto/python/src/chital/errdefs proto/python/src/chital/security proto/python/src/chital/daemon proto/python/src/chital/version.py agent/src controller/src client/src devcluster/src

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  \033[1m%-14s\033[0m %s\n", $$1, $$2}'

.PHONY: bootstrap
bootstrap: ## Install Debian packages, the venv and the tools (idempotent)
	scripts/bootstrap.sh

.PHONY: launcher
launcher: ## Build agent/launcher/chital-launch (the agent's compiled process launcher)
	$(MAKE) -s -C agent/launcher

.PHONY: protos
protos: ## Regenerate the Python code and stubs from proto/
	scripts/genproto.sh

.PHONY: check-protos
check-protos: ## Fail when the committed generated code is stale
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && scripts/genproto.sh $$tmp >/dev/null 2>&1 && \
	if diff -r -q $$tmp/chital/api proto/python/src/chital/api -x '__pycache__' >/dev/null; then \
		echo "check-protos: generated code is fresh"; \
	else \
		diff -r $$tmp/chital/api proto/python/src/chital/api -x '__pycache__' | head -20; \
		echo "check-protos: generated code is stale; run 'make protos' and commit" >&2; exit 1; \
	fi

.PHONY: version
version: ## Write VERSION into the pyproject files, the _version.py modules and the kernel module
	$(PY) scripts/version.py

.PHONY: api-docs
api-docs: ## Regenerate docs/reference/api.md from the generated descriptors and the protos' comments
	$(PY) scripts/gen-api-docs.py

.PHONY: docs
docs: ## Build the documentation site (mkdocs.yml, docs/) into site/
	NO_MKDOCS_2_WARNING=1 $(VENV_BIN)/mkdocs build --strict

.PHONY: lint
lint: ## ruff, mypy, buf lint, promtool, docker-compose config, ansible-lint, docs, generated files fresh
	$(VENV_BIN)/ruff check .
	$(VENV_BIN)/ruff format --check .
	$(VENV_BIN)/mypy $(HAND_WRITTEN)
	cd proto && ../$(VENV_BIN)/buf lint
	promtool check config deploy/prometheus/prometheus.yml
	promtool check rules deploy/prometheus/rules/*.yml
	promtool test rules deploy/prometheus/tests/*.yml
	docker-compose -f docker-compose.yml config -q
	$(PY) scripts/gen-api-docs.py --check
	$(PY) scripts/version.py --check
	cd playbooks && PATH=$(CURDIR)/$(VENV_BIN):$$PATH ansible-lint --nocolor -q
	NO_MKDOCS_2_WARNING=1 $(VENV_BIN)/mkdocs build --strict --quiet

.PHONY: fmt
fmt: ## Format the Python code
	$(VENV_BIN)/ruff format .
	$(VENV_BIN)/ruff check --fix .

.PHONY: test
test: launcher ## Unit, integration and conformance (FakeDevice) tests on the host
	$(VENV_BIN)/pytest $(PYTEST_ARGS)

.PHONY: test-vm
test-vm: ## The kernel module's tests in real Linux kernels under QEMU (Debian 6.1, then 6.12)
	CHITAL_VM=1 scripts/bootstrap.sh
	$(MAKE) launcher
	scripts/kmod-check.sh
	$(PY) -m chital.devcluster.vmtest tests/vm tests/conformance
	$(PY) -m chital.devcluster.vmtest --kernel 6.12 tests/vm tests/conformance

.PHONY: test-rollout
test-rollout: ## The playbooks over SSH into systemd guests: site, upgrade, a failing host (~15 min)
	CHITAL_VM=1 scripts/bootstrap.sh
	CHITAL_ROLLOUT_GUESTS=1 $(VENV_BIN)/pytest -p no:cacheprovider -s tests/integration/test_rollout_guests.py

.PHONY: test-all
test-all: ## Everything CI runs (the README's test command)
	scripts/test.sh

.PHONY: kmod
KDIR ?= $(shell ls -d /lib/modules/*/build 2>/dev/null | sort -V | head -n 1)

kmod: ## Build chital.ko against the installed Debian kernel's build tree (KDIR=... to choose)
	$(MAKE) -C kmod KDIR=$(KDIR)

.PHONY: kmod-check
kmod-check: ## chital.ko: W=1 and sparse warning-free, checkpatch.pl --no-tree --strict clean
	scripts/kmod-check.sh $(KDIR)

.PHONY: hollow
hollow: ## A controller and 3 hollow agents (FakeDevice) on free loopback ports, until Ctrl-C
	$(PY) -m chital.devcluster.hollow --agents 3

.PHONY: demo
demo: ## The main job: the local multi-host cluster demo
	scripts/demo.sh

# make bench takes one to two hours on 2 cores: the create sweep (5 runs, SQLite and PostgreSQL) about
# 10 min, bench/scale.py at 1,000 hosts and 100,000 containers (4 steps) 30-90 min depending on the
# machine's other load, the two QEMU benchmarks about 10 min. The figures go to docs/benchmarks/data,
# the plots and their summary to docs/benchmarks (bench-plots redraws them from the saved figures).
BENCH_DATA := docs/benchmarks/data
BENCH_THREADS ?= 1 2 4 8 16
BENCH_SCALE_ARGS ?= --hosts 1000 --steps 10000,25000,50000,100000

.PHONY: bench
bench: ## Benchmarks: figures printed, plots and summary in docs/benchmarks (1-2 hours)
	mkdir -p $(BENCH_DATA)
	set -o pipefail; for t in $(BENCH_THREADS); do \
		$(PY) bench/create_throughput.py --seconds 5 --threads $$t | tee $(BENCH_DATA)/create-threads-$$t.txt || exit 1; \
	done
	$(PY) bench/scale.py $(BENCH_SCALE_ARGS) --json $(BENCH_DATA)/scale.json
	$(MAKE) bench-plots
	CHITAL_VM=1 scripts/bootstrap.sh
	$(PY) bench/syscall_overhead.py
	$(PY) bench/exec_latency.py

.PHONY: bench-plots
bench-plots: ## Redraw docs/benchmarks (PNG plots, summary.md) from the figures in docs/benchmarks/data
	$(PY) bench/plots.py --data $(BENCH_DATA) --out docs/benchmarks

.PHONY: dist
dist: ## A wheel and an sdist of each distribution into dist/ (version from VERSION)
	$(PY) scripts/dist.py

.PHONY: wheelhouse
wheelhouse: ## dist/ plus dist/wheelhouse: our wheels and every dependency, for hosts without an index
	$(PY) scripts/dist.py --wheelhouse dist/wheelhouse

.PHONY: migrate
migrate: ## Apply the database migrations (CHITAL_DATABASE_URL or the default SQLite)
	$(VENV_BIN)/chital-controller db upgrade

.PHONY: clean
clean: ## Remove build output and caches
	-$(MAKE) -C kmod clean
	-$(MAKE) -C agent/launcher clean
	rm -rf .state .pytest_cache .mypy_cache .ruff_cache site dist
