PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench install lock clean system-packages

# Debian's Python makes no virtualenv with pip without python3.X-venv
# (installed by tools/venv-module.sh as root). A half-made .venv is removed,
# or every later run would take it for a good one.
$(BIN)/python:
	PYTHON=$(PYTHON) bash tools/venv-module.sh
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip

# The dependencies come from requirements.lock, the exact versions (and
# their files' hashes) that CI tested, setuptools (the build backend)
# included; then this checkout, editable, without its dependencies, built by
# that locked setuptools (no build isolation: nothing unpinned is fetched). `pip check` catches a requirement of setup.py that the
# lock lacks (run `make lock` after changing setup.py). The editable install
# compiles the hot path in place (Cython, setup.py's COMPILED), so a change
# to one of those sources builds again (LINCHPIN_PURE_PYTHON=1: compile none).
COMPILED_SOURCES := linchpin_common/_wsmask.pyx linchpin_common/wsframes.py linchpin_common/wsframes.pxd \
	linchpin_common/contract/wire.py linchpin_common/contract/wire.pxd
$(STAMP): $(BIN)/python setup.py pyproject.toml requirements.lock $(COMPILED_SOURCES)
	$(BIN)/python -m pip install --quiet --require-hashes -r requirements.lock
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	$(BIN)/python -m pip check
	touch $(STAMP)

install: $(STAMP)

# Re-resolve requirements.lock from setup.py (install_requires, the test
# extra and the build dependencies) with pip-tools, installed into .venv for this only: by default every
# package goes to the newest version setup.py allows; LOCK_FLAGS= keeps the
# current pins and only adds or drops what setup.py changed, and
# LOCK_FLAGS='--upgrade-package NAME' moves one package.
LOCK_FLAGS ?= --upgrade
lock: $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip-tools
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --generate-hashes --strip-extras --extra test \
		--all-build-deps --allow-unsafe --no-emit-index-url --no-emit-find-links $(LOCK_FLAGS) \
		--output-file requirements.lock setup.py

# The Debian packages the tests start on loopback (the list is in
# tools/system-packages.sh): installed when missing and running as root,
# else named.
system-packages:
	bash tools/system-packages.sh

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q tests

demo: $(STAMP)
	$(BIN)/python -m linchpin_connector.demo

clean:
	rm -rf var build *.egg-info
	find linchpin_common \( -name '*.so' -o -name '*.c' \) -delete

# Benchmarks (bench/run.py; docs/benchmarks.md). `bench` first tries to
# install py-spy and the optional brokers (mosquitto, amqtt in its own venv);
# without network it goes on and skips them.
.PHONY: bench-quick
# The last step of `bench` is the demo with a 100 MiB download: end-to-end
# latency and throughput through device -> gateway -> connector -> backend.

bench: $(STAMP)
	-$(BIN)/python -m pip install --quiet --retries 1 --timeout 15 -r bench/requirements.txt
	-bash bench/install-brokers.sh
	$(BIN)/python -m bench.run --charts docs/benchmarks
	$(BIN)/python -m bench.scaleout
	$(BIN)/python -m bench.failover
	$(BIN)/python -m linchpin_connector.demo --download-mib 100 --results var/bench/e2e.json
	$(BIN)/python -m bench.charts var/bench/e2e.json docs/benchmarks

# Several connectors for one instance: drain, kill -9, SIGSTOP, joining, spread.
.PHONY: bench-failover
bench-failover: $(STAMP)
	$(BIN)/python -m bench.failover

# Capacity of one node at 10,000 sessions (bench/capacity.py; about 8 minutes;
# needs 11,000 open files: `ulimit -n`).
.PHONY: bench-capacity
bench-capacity: $(STAMP)
	$(BIN)/python -m bench.capacity

# bench-quick installs the comparison brokers too (best effort, as bench):
# its efficiency figure is a ratio to mosquitto in the same run.
bench-quick: $(STAMP)
	-bash bench/install-brokers.sh
	$(BIN)/python -m bench.run --quick
