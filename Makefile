PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo bench install clean system-packages

# Debian's Python makes no virtualenv with pip without python3.X-venv
# (installed by tools/venv-module.sh as root). A half-made .venv is removed,
# or every later run would take it for a good one.
$(BIN)/python:
	PYTHON=$(PYTHON) bash tools/venv-module.sh
	$(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python setup.py
	$(BIN)/python -m pip install --quiet -e '.[test]' --config-settings editable_mode=compat
	touch $(STAMP)

install: $(STAMP)

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
	$(BIN)/python -m linchpin_connector.demo --download-mib 100 --results var/bench/e2e.json
	$(BIN)/python -m bench.charts var/bench/e2e.json docs/benchmarks

bench-quick: $(STAMP)
	$(BIN)/python -m bench.run --quick
