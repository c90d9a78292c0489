# busgen-monai: set-up and the two commands from the README.
#   make main   install everything (first time) and run the main job end to end on the embedded phantom
#   make test   install everything (first time) and run the test suite
# torch is installed first and pinned to the CPU build so that no multi-GB CUDA wheel is pulled in.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
PLUGINS := $(wildcard plugins/*/setup.cfg)
STAMP := $(VENV)/.busgen-installed

.PHONY: install main test test-slow test-all clean-demo

$(STAMP): setup.cfg pyproject.toml $(PLUGINS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[test]" $(foreach p,$(dir $(PLUGINS)),-e $(p))
	touch $(STAMP)

install: $(STAMP)

main: $(STAMP)
	$(BIN)/busgen demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -m slow -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

clean-demo:
	rm -rf runs/demo
