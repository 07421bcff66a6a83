"""Building the `tf.distribute.Strategy` of a run, and asking it who is the chief.

Names follow the TF Model Garden (`official/common/distribute_utils.py`):

- `default`: `multi_worker_mirrored` when `TF_CONFIG` describes more than one task, else
  `mirrored` over the GPUs when there are several, else `one_device`.
- `one_device`: `OneDeviceStrategy` on the first GPU, or on the CPU when there is none.
- `mirrored`: `MirroredStrategy` over `num_gpus` GPUs (all visible ones by default); with no GPU,
  over every logical CPU device (one, unless the process split its CPU).
- `multi_worker_mirrored`: `MultiWorkerMirroredStrategy` configured by the `TF_CONFIG` environment
  variable, all-reducing with NCCL on GPUs and ring collectives on CPUs.
- `tpu`: `TPUStrategy` on the TPU named by `tpu` (a name, a `grpc://` address, or `local`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping

import tensorflow as tf


def _num_tasks_in_tf_config() -> int:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError) as e:
        raise ValueError(f"The TF_CONFIG environment variable is not valid JSON: {e}") from e
    return sum(len(tasks) for tasks in cluster.values())


def _one_device(num_gpus: int, tpu: str | None) -> tf.distribute.Strategy:
    return tf.distribute.OneDeviceStrategy("/gpu:0" if num_gpus > 0 else "/cpu:0")


def _mirrored(num_gpus: int, tpu: str | None) -> tf.distribute.Strategy:
    if num_gpus > 0:
        devices = [f"/gpu:{i}" for i in range(num_gpus)]
    else:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def _multi_worker_mirrored(num_gpus: int, tpu: str | None) -> tf.distribute.Strategy:
    implementation = (
        tf.distribute.experimental.CommunicationImplementation.NCCL
        if num_gpus > 0
        else tf.distribute.experimental.CommunicationImplementation.RING
    )
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=implementation
        )
    )


def _tpu(num_gpus: int, tpu: str | None) -> tf.distribute.Strategy:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    if tpu not in (None, "", "local"):
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _default(num_gpus: int, tpu: str | None) -> tf.distribute.Strategy:
    if tpu:
        return _tpu(num_gpus, tpu)
    if _num_tasks_in_tf_config() > 1:
        return _multi_worker_mirrored(num_gpus, tpu)
    if num_gpus > 1:
        return _mirrored(num_gpus, tpu)
    return _one_device(num_gpus, tpu)


# name -> (num_gpus >= 0, tpu) -> strategy.
STRATEGIES: Mapping[str, Callable[[int, str | None], tf.distribute.Strategy]] = {
    "default": _default,
    "one_device": _one_device,
    "mirrored": _mirrored,
    "multi_worker_mirrored": _multi_worker_mirrored,
    "tpu": _tpu,
}


def get_strategy(
    distribution_strategy: str = "default", num_gpus: int = -1, tpu: str | None = None
) -> tf.distribute.Strategy:
    """Creates the strategy named `distribution_strategy`, one of `STRATEGIES` (module docstring).

    Args:
        distribution_strategy: `default`, `one_device`, `mirrored`, `multi_worker_mirrored` or
            `tpu`.
        num_gpus: how many GPUs to use; -1 for all visible ones.
        tpu: the TPU to connect to, for `tpu`.

    Raises:
        ValueError: for an unknown name, or more GPUs than are visible.
    """
    if distribution_strategy not in STRATEGIES:
        raise ValueError(
            f"`distribution_strategy` must be one of {list(STRATEGIES)}; "
            f"received distribution_strategy={distribution_strategy!r}"
        )
    # Physical, not logical, devices: listing logical ones initializes the TensorFlow context,
    # after which MultiWorkerMirroredStrategy can no longer configure its collectives.
    gpus = tf.config.list_physical_devices("GPU")
    if num_gpus < 0:
        num_gpus = len(gpus)
    if num_gpus > len(gpus):
        raise ValueError(
            f"`num_gpus` must be at most the {len(gpus)} GPU(s) visible to TensorFlow; "
            f"received num_gpus={num_gpus}"
        )
    return STRATEGIES[distribution_strategy](num_gpus, tpu)


def task_info(strategy: tf.distribute.Strategy) -> tuple[str | None, int | None]:
    """The (task_type, task_id) of this process, or (None, None) on a single machine."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None:
        return None, None
    return resolver.task_type, resolver.task_id


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes the real checkpoints, summaries and metrics.

    The chief is the `chief` task, or `worker` 0 when the cluster has no `chief` task (the rule of
    the TensorFlow multi-worker tutorial); a single-machine run is always its own chief.
    """
    task_type, task_id = task_info(strategy)
    if task_type is None or task_type == "chief":
        return True
    if task_type != "worker" or task_id != 0:
        return False
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return "chief" not in cluster


def agreed_value(strategy: tf.distribute.Strategy, value: int) -> int:
    """Replica 0's `value` (on the chief), given to every worker by one all-reduce.

    Each process passes its own `value`; all get back the one of the process holding replica 0, so
    e.g. a seed drawn at random is the same on every worker.
    """

    def replica_share() -> tf.Tensor:
        first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
        return tf.where(first, tf.constant(value, tf.int64), tf.constant(0, tf.int64))

    total = strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(replica_share), axis=None)
    return int(total)


def any_replica(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """Whether `flag` is True on any worker (one all-reduce; every worker gets the same answer)."""
    # A tensor made in each replica: one captured from outside would come back from `run` as a
    # single value, not one per replica, and `reduce` refuses it under MirroredStrategy.
    per_replica = strategy.run(lambda: tf.constant(1 if flag else 0, tf.int64))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    return int(total) > 0
