# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Each creates .venv if missing and installs what it needs from the package registries.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: demo test pytest lint bazel-test bench clean

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(PY) -m trainers.demo

test: $(VENV)/.test lint pytest bazel-test

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .

pytest: $(VENV)/.test
	$(PY) -m pytest -q tests

bazel-test: $(VENV)/.test
	./tools/bazel_test.sh $(abspath $(PY))

bench: $(VENV)/.base
	$(PY) benchmarks/bn_layer.py

clean:
	rm -rf $(VENV) bazel-*
