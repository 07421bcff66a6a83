"""Repository-wide pytest set-up, loaded before any test module (by ``pytest`` and by Bazel).

At import time, i.e. before any test touches TensorFlow:

- The repository root goes first on ``sys.path``, so ``import keras_bninception`` (and
  ``trainers``, ``tests.*`` helpers) work from a checkout without ``pip install``. The path is not
  resolved through symlinks, so under Bazel the runfiles tree (what ``BUILD`` declares) is what
  gets imported.
- ``TF_CPP_MIN_LOG_LEVEL=2`` hides TensorFlow's C++ INFO and WARNING logs (errors still show) and
  ``KERAS_BACKEND`` defaults to ``tensorflow`` (this package is TensorFlow-only).
- GPUs are hidden from TensorFlow (``tf.config.set_visible_devices([], "GPU")``), and from the
  child processes tests start (``helpers.subprocess_env``), so the suite runs the same on a CPU-only
  machine and on a GPU machine: every test expects the two logical CPUs below, and the GPU's own
  BN path is run on these CPUs by forcing it (``helpers.force_accelerator_bn_path``). The GPU
  itself is checked by ``python -m benchmarks.gpu_check`` (docs/gpu.md).
- The host CPU is split into ``NUM_LOGICAL_CPUS`` (2) logical devices, so ``tf.distribute`` tests
  can run a ``MirroredStrategy`` with two replicas on one machine. This must happen before
  TensorFlow initializes its devices (later it raises ``RuntimeError``), hence here. It is
  harmless to single-device tests: ops without a device scope, Keras and the default strategy all
  place work on ``/device:CPU:0``. The two logical devices share the same cores and thread pools.

Before each test, the autouse fixture ``seed`` calls ``keras.utils.set_random_seed(SEED)``
(Python's ``random``, NumPy and TensorFlow), so every test is deterministic on its own, whatever
ran before it. A test that needs the value asks for the ``seed`` fixture. Tests that need the two
replicas ask for the ``mirrored_cpus`` fixture: the process's one mirrored strategy over the two
logical CPUs, ``get_strategy("mirrored", num_gpus=0)``, the object every ``run()`` of the process
gets too (a second ``MirroredStrategy`` over the same devices would share its collective keys). It
fails (not skips) if the split did not happen.
"""

from __future__ import annotations

import os
import sys

from helpers import NUM_LOGICAL_CPUS, REPO_ROOT, SEED  # noqa: E402  (tests/ is on sys.path)

if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402  (after the environment variables above)
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

LOGICAL_CPUS = [f"/device:CPU:{i}" for i in range(NUM_LOGICAL_CPUS)]


def _split_cpu(num_devices: int) -> str | None:
    """Hides the GPUs and splits the first physical CPU into ``num_devices`` logical ones; returns
    an error or None."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    configured = tf.config.get_logical_device_configuration(cpu)
    if configured is not None and len(configured) == num_devices:
        return None  # Already split (this module imported a second time, as ``tests.conftest``).
    try:
        tf.config.set_visible_devices([], "GPU")
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(num_devices)]
        )
    except RuntimeError as error:  # TensorFlow's devices were initialized before this conftest.
        return str(error)
    return None


_SPLIT_ERROR = _split_cpu(NUM_LOGICAL_CPUS)


@pytest.fixture(autouse=True)
def seed() -> int:
    """Seeds Python, NumPy and TensorFlow with ``SEED`` before every test; returns the seed."""
    keras.utils.set_random_seed(SEED)
    return SEED


@pytest.fixture
def logical_cpus() -> list[str]:
    """The ``NUM_LOGICAL_CPUS`` logical CPU device names, for ``tf.distribute.MirroredStrategy``."""
    devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    if len(devices) < NUM_LOGICAL_CPUS:
        pytest.fail(
            f"expected {NUM_LOGICAL_CPUS} logical CPU devices, found {devices}; "
            f"tests/conftest.py could not split the CPU: {_SPLIT_ERROR}"
        )
    return LOGICAL_CPUS


@pytest.fixture
def mirrored_cpus(logical_cpus: list[str]) -> tf.distribute.Strategy:
    """The process's mirrored strategy over the ``NUM_LOGICAL_CPUS`` logical CPUs (made once)."""
    from keras_bninception.training import get_strategy

    strategy = get_strategy("mirrored", num_gpus=0)
    assert strategy.num_replicas_in_sync == NUM_LOGICAL_CPUS, strategy.extended.worker_devices
    return strategy
