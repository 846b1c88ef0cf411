# The README's two commands: `make demo` (main job) and `make test` (the test suite).
# Each creates .venv and installs advplug and every plugin under plugins/ when needed.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLUGINS := $(wildcard plugins/*/pyproject.toml)
STAMP := $(VENV)/.installed
export ADVPLUG_DATA ?= $(abspath ../shared/data)

.PHONY: install demo test test-all bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(PLUGINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test]' \
		$(foreach p,$(PLUGINS),-e $(dir $(p))) 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -c "import advplug, torch, torchattacks, pyautoattack, art"
	touch $@

# short robust training + evaluation: PGD-AT on 10k MNIST images, then clean and PGD-20 on 1,000 test images
demo: $(STAMP)
	$(BIN)/advplug plugins
	$(BIN)/advplug train --config examples/demo.toml --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest -q

# the slow tests as well (minutes); the ray extra first, for the study --ray test
test-all: $(STAMP)
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[test,ray]' 2>&1 | { grep -v "^WARNING: Location" || true; }
	$(BIN)/python -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(BIN)/python -m benchmarks --out runs/bench.md

clean:
	rm -rf $(VENV) runs
