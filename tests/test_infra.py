"""Checks of the test infrastructure itself (tests/conftest.py, packaging metadata)."""

from __future__ import annotations

import os
import tomllib

import keras
import numpy as np
import tensorflow as tf

import keras_bninception
from tests.conftest import NUM_LOGICAL_CPUS, REPO_ROOT, SEED


def test_package_version_matches_pyproject() -> None:
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)
    assert keras_bninception.__version__ == pyproject["project"]["version"]


def test_package_is_imported_from_this_checkout() -> None:
    package_dir = os.path.dirname(os.path.abspath(keras_bninception.__file__))
    assert package_dir == os.path.join(REPO_ROOT, "keras_bninception")


def test_keras_runs_on_tensorflow() -> None:
    assert keras.backend.backend() == "tensorflow"


def test_seed_fixture_reseeds_before_each_test(seed: int) -> None:
    assert seed == SEED
    drawn = (np.random.rand(3), keras.random.uniform((3,), seed=None).numpy())
    keras.utils.set_random_seed(SEED)
    again = (np.random.rand(3), keras.random.uniform((3,), seed=None).numpy())
    np.testing.assert_array_equal(drawn[0], again[0])
    np.testing.assert_array_equal(drawn[1], again[1])


def test_mirrored_strategy_has_two_cpu_replicas(logical_cpus: list[str]) -> None:
    assert len(tf.config.list_logical_devices("CPU")) == NUM_LOGICAL_CPUS
    strategy = tf.distribute.MirroredStrategy(logical_cpus)
    assert strategy.num_replicas_in_sync == NUM_LOGICAL_CPUS

    @tf.function
    def replica_fn() -> tf.Tensor:
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce("sum", tf.cast(ctx.replica_id_in_sync_group, tf.float32) + 1.0)

    per_replica = strategy.run(replica_fn)
    values = [v.numpy() for v in strategy.experimental_local_results(per_replica)]
    assert values == [3.0, 3.0]  # 1 + 2 on each replica
    worker_devices = [tf.DeviceSpec.from_string(d) for d in strategy.extended.worker_devices]
    assert [(d.device_type, d.device_index) for d in worker_devices] == [("CPU", 0), ("CPU", 1)]
