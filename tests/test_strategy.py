"""Strategies in library use: any number of runs, strategies and models in one process.

TensorFlow's `MirroredStrategy` objects all number their collectives from the same keys, which the
runtime remembers for the life of the process; `get_strategy` makes each mirrored strategy once
(and all-reduces over CPUs without collective keys), so runs in one process never meet each
other's all-reduces. Also: the private TensorFlow modules the trainer still needs
(`training/tf_internals.py`) are where it expects them.
"""

from __future__ import annotations

import inspect

import pytest
import tensorflow as tf

from keras_bninception.training import TrainConfig, get_strategy, run


def _all_reduce(strategy: tf.distribute.Strategy, size: int) -> list[float]:
    @tf.function
    def step():
        ctx = tf.distribute.get_replica_context
        return strategy.run(lambda: ctx().all_reduce("sum", tf.ones([size])))

    return [float(v[0]) for v in strategy.experimental_local_results(step())]


def test_mirrored_strategy_is_made_once_and_its_all_reduces_never_collide(mirrored_cpus):
    assert get_strategy("mirrored", num_gpus=0) is mirrored_cpus
    assert get_strategy("default", num_gpus=0) is not mirrored_cpus  # one device: no collectives
    # Shapes as two runs' first all-reduces (widths 0.25 and 0.5): with a second
    # MirroredStrategy, "Shape mismatch in the collective instance 100".
    assert _all_reduce(mirrored_cpus, 33) == [2.0, 2.0]
    assert _all_reduce(get_strategy("mirrored", num_gpus=0), 17) == [2.0, 2.0]


def test_a_mirrored_strategy_over_other_gpus_is_refused(monkeypatch):
    """One mirrored strategy per GPU set per process: another set would reuse its collective keys.

    Without GPUs: `get_strategy` is told two are visible (its count check), and makes a real
    `MirroredStrategy` over /gpu:0 and /gpu:1, which TensorFlow constructs without the devices
    (nothing runs on it here). The process's record of made strategies is a copy for this test.
    """
    from keras_bninception.training import strategy as strategy_module

    monkeypatch.setattr(strategy_module, "_MADE", dict(strategy_module._MADE))
    visible = tf.config.get_visible_devices

    def two_gpus(device_type=None):
        if device_type == "GPU":
            return [tf.config.PhysicalDevice(f"/physical_device:GPU:{i}", "GPU") for i in (0, 1)]
        return visible(device_type)

    monkeypatch.setattr(tf.config, "get_visible_devices", two_gpus)
    both = get_strategy("mirrored", num_gpus=2)
    assert both.extended.worker_devices[1].endswith("GPU:1")
    assert get_strategy("default", num_gpus=2) is both  # the same set: the same object
    with pytest.raises(
        ValueError,
        match=r"already made a mirrored strategy over \['/gpu:0', '/gpu:1'\]; one over "
        r"\['/gpu:0'\] would reuse its TensorFlow collective keys .*received num_gpus=1$",
    ):
        get_strategy("mirrored", num_gpus=1)


@pytest.mark.slow
def test_two_runs_of_different_networks_in_one_process(mirrored_cpus, tmp_path):
    """The sweep or notebook case of issue 30: `run()` at width 0.25, then 0.5, synchronized BN."""
    losses = []
    for width in (0.25, 0.5):
        config = TrainConfig().replace(
            dataset="digits",
            image_size=32,
            depth_multiplier=width,
            batch_size=4,
            train_steps=1,
            checkpoint_every=1,
            log_every=1,
            model_dir=str(tmp_path / f"width_{width}"),
            seed=0,
            distribution_strategy="mirrored",
            num_gpus=0,
            sync_batch_norm=True,
            mode="train",
        )
        results = run(config)
        assert results["num_replicas"] == 2 and results["step"] == 1
        losses.append(results["train"]["loss"])
    assert losses[0] != losses[1]  # two different networks trained, both to a finite loss
    assert all(0 < loss < 10 for loss in losses)


def test_tf_internals_still_exist():
    """What to check on a TensorFlow upgrade: the private pieces of `training/tf_internals.py`.

    If this fails, TensorFlow moved or renamed them: find where `MultiWorkerMirroredStrategy`
    now configures its coordination service (`tensorflow/python/distribute/
    collective_all_reduce_strategy.py`, `configure_coordination_service`), update
    `tf_internals.py`, and run `tests/test_multi_worker_faults.py`, which checks that the
    heartbeat timeout still stops the surviving worker. Better: use a public API if one exists.
    """
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.eager import context as eager_context

    from keras_bninception.training import tf_internals  # imports the same modules

    parameters = inspect.signature(eager_context.Context.configure_coordination_service).parameters
    for name in (
        "service_type",
        "service_leader",
        "heartbeat_timeout_in_ms",
        "shutdown_barrier_timeout_in_ms",
        "coordinated_jobs",
    ):
        assert name in parameters, f"configure_coordination_service lost `{name}`"
    job = coordination_config_pb2.CoordinatedJob(name="worker", num_tasks=2)
    assert (job.name, job.num_tasks) == ("worker", 2)
    config = coordination_config_pb2.CoordinationServiceConfig(heartbeat_timeout_in_ms=1500)
    assert config.heartbeat_timeout_in_ms == 1500
    assert callable(tf_internals.configure_coordination_service)
