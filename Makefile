# Set-up is two commands: `make demo` (the main job on the bundled example) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test test-fast bench runtime-wheel system-deps clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(PY) examples/demo.py

system-deps:
	scripts/system-deps.sh

test: $(VENV)/.installed system-deps
	$(PY) -m pytest -q

# Everything but the slow, MXNet, qemu and CUDA tests (markers in setup.cfg): a few minutes
test-fast: $(VENV)/.installed system-deps
	$(PY) -m pytest -q -m "not slow and not mxnet and not qemu and not cuda"

bench: $(VENV)/.installed
	$(PY) benchmarks/cpu.py

# kiln-runtime for this machine, into dist/ (README: Runtime-only install)
runtime-wheel: $(VENV)/.installed
	$(PY) -m kiln.runtime_wheel -o dist

clean:
	rm -rf $(VENV) examples/out .pytest_cache dist
