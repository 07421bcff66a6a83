# The two set-up commands of the README: `make demo` (the main job) and `make test`.
# Each creates .venv if missing and installs what it needs from the package registries.
#
# `make test` (what CI runs): ruff (lint and format), then every test file exactly once, as Bazel
# py_tests (`bazel test //...`, two at a time, long files sharded), closing with one line
# "bazel: N passed, N failed, N skipped". `make pytest` runs the same tests in one pytest process:
# the quick local loop (`make pytest ARGS="tests/test_flops.py -k dense"`), not part of `make test`.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?= tests

.PHONY: demo test pytest lint bazel-test bench clean

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[plots]'
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.base
	$(PY) -m trainers.demo

test: lint bazel-test

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

pytest: $(VENV)/.test
	$(PY) -m pytest -q $(ARGS)

bazel-test: $(VENV)/.test
	./tools/bazel_test.sh $(abspath $(PY))

bench: $(VENV)/.base
	$(PY) benchmarks/bn_layer.py

clean:
	rm -rf $(VENV) bazel-*
