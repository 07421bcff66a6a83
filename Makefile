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

# BN's C++ CPU ops (keras_bninception/layers/cpu_ops.py), built against the venv's TensorFlow.
CPU_OPS := keras_bninception/layers/_cpu_reductions.so

$(VENV)/.base: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[plots]'
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Without g++ the build fails with a message, and the layer runs its XLA kernels instead (the
# demo runs; the tests of the ops fail, saying the library is not built).
$(CPU_OPS): keras_bninception/layers/cpu_reductions.cc keras_bninception/layers/cpu_ops.py $(VENV)/.base
	$(PY) -m keras_bninception.layers.cpu_ops || \
		echo "BN's C++ CPU ops were not built (above): the layer runs its XLA kernels" >&2

demo: $(VENV)/.base $(CPU_OPS)
	$(PY) -m trainers.demo

test: lint bazel-test

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

pytest: $(VENV)/.test $(CPU_OPS)
	$(PY) -m pytest -q $(ARGS)

bazel-test: $(VENV)/.test $(CPU_OPS)
	./tools/bazel_test.sh $(abspath $(PY))

bench: $(VENV)/.base $(CPU_OPS)
	$(PY) benchmarks/bn_layer.py

clean:
	rm -rf $(VENV) bazel-* $(CPU_OPS)
