# tpbench: `make bench` runs the default suite, `make test` passes the tests.
# Both run `setup` first when it has not been done (or pyproject.toml / the setup script changed).
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.setup-done
# A quick run by default; BENCH_ARGS adds options, e.g. make bench BENCH_ARGS="--trials 5"
BENCH_ARGS ?=

.PHONY: setup bench benchmarks test test-kernels test-unit lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup.sh $(wildcard harness/agents/traffic/c/*.c harness/backends/*_consumer.c)
	bash scripts/setup.sh
	touch $@

bench: $(STAMP)
	$(VENV)/bin/tpbench bench $(BENCH_ARGS)

# The suite on this kernel (~9 minutes on 2 vCPUs); the emulated-VM kernel matrix is test-kernels.
test: $(STAMP) lint
	$(PY) -m pytest tests -m "not vm"

# The kprobe backend on Debian's 6.1 and 6.12 kernels in emulated VMs (~11 minutes: qemu TCG boots
# and bcc compiles under emulation); CI runs it after `make test`.
test-kernels: $(STAMP)
	$(PY) -m pytest tests -m vm

# ruff's lint and import-linter's layering contracts (pyproject.toml); part of `make test`
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

# pytest-benchmark suite (root): generators against C and iperf3 references; never part of `make test`
benchmarks: $(STAMP)
	$(PY) -m pytest benchmarks --benchmark-only

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

# Removes the venv and any leftovers of crashed runs (namespaces, veths); keeps results/.
clean:
	-@[ -x $(VENV)/bin/tpbench ] && [ "$$(id -u)" = 0 ] && $(VENV)/bin/tpbench cleanup || true
	rm -rf $(VENV) build *.egg-info .pytest_cache .benchmarks
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
