"""Building the `tf.distribute.Strategy` of a run, and asking it who is the chief.

Names follow the TF Model Garden (`official/common/distribute_utils.py`):

- `default`: `multi_worker_mirrored` when `TF_CONFIG` describes more than one task, else
  `mirrored` over the GPUs when there are several, else `one_device`.
- `one_device`: `OneDeviceStrategy` on the first GPU, or on the CPU when there is none.
- `mirrored`: `MirroredStrategy` over `num_gpus` GPUs (all visible ones by default); with no GPU,
  over every logical CPU device (one, unless the process split its CPU).
- `multi_worker_mirrored`: `MultiWorkerMirroredStrategy` configured by the `TF_CONFIG` environment
  variable, all-reducing with NCCL on GPUs and ring collectives on CPUs. A worker that stops
  sending heartbeats to the coordination service for `worker_timeout_seconds` (it died, hangs, or
  its machine is gone) ends every other worker with an error naming it.
- `tpu`: `TPUStrategy` on the TPU named by `tpu` (a name, a `grpc://` address, or `local`).

One strategy per set of devices per process. TensorFlow numbers the collectives of every
`MirroredStrategy` from the same group and instance keys, and its runtime remembers each key's
shape for the life of the process: a second strategy over the same GPUs (a second `run()` in a
notebook or a sweep) would meet the first one's all-reduces ("Shape mismatch in the collective
instance 100", tensorflow/tensorflow#62790). So `get_strategy` creates each mirrored strategy
once and returns it again to later calls, whose all-reduces then continue its key sequence;
any number of runs and models can share it. Over CPU devices the mirrored strategy all-reduces
with `tf.distribute.ReductionToOneDevice` (copies and adds, no collective keys), so CPU
strategies never collide, even with ones made elsewhere. A mirrored strategy over a *different*
set of GPUs than one already made in the process is refused (its keys would collide); use one
process per GPU set.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Callable, Mapping

import tensorflow as tf

from keras_bninception.training import tf_internals
from keras_bninception.training.errors import TrainingError

DEFAULT_WORKER_TIMEOUT_SECONDS = 60


def _num_tasks_in_tf_config() -> int:
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return 0
    try:
        cluster = json.loads(raw).get("cluster", {})
    except (ValueError, AttributeError) as e:
        raise ValueError(f"The TF_CONFIG environment variable is not valid JSON: {e}") from e
    return sum(len(tasks) for tasks in cluster.values())


def _one_device(num_gpus: int, tpu: str | None, worker_timeout: float) -> tf.distribute.Strategy:
    return tf.distribute.OneDeviceStrategy("/gpu:0" if num_gpus > 0 else "/cpu:0")


# The strategies made in this process (module docstring): key -> strategy.
_MADE: dict[tuple, tf.distribute.Strategy] = {}
_MADE_LOCK = threading.Lock()


def _once(key: tuple, make: Callable[[], tf.distribute.Strategy]) -> tf.distribute.Strategy:
    with _MADE_LOCK:
        if key not in _MADE:
            _MADE[key] = make()
        return _MADE[key]


def _mirrored(num_gpus: int, tpu: str | None, worker_timeout: float) -> tf.distribute.Strategy:
    if num_gpus == 0:
        devices = tuple(d.name for d in tf.config.list_logical_devices("CPU"))
        return _once(
            ("mirrored", devices),
            lambda: tf.distribute.MirroredStrategy(
                devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
            ),
        )
    devices = tuple(f"/gpu:{i}" for i in range(num_gpus))
    other = next((key[1] for key in _MADE if key[0] == "mirrored_gpus" and key[1] != devices), None)
    if other is not None:
        raise ValueError(
            f"This process already made a mirrored strategy over {list(other)}; one over "
            f"{list(devices)} would reuse its TensorFlow collective keys (an all-reduce shape "
            "mismatch). Use the same `num_gpus` in every run of a process, or one process per "
            f"set of GPUs; received num_gpus={num_gpus}"
        )
    # TensorFlow's default all-reduce on GPUs: collectives over NCCL (what XLA steps use too).
    return _once(("mirrored_gpus", devices), lambda: tf.distribute.MirroredStrategy(devices))


def _configure_coordination_service(worker_timeout: float) -> None:
    """The coordination service MultiWorkerMirroredStrategy would start, with our heartbeat timeout.

    The service (run by the first chief or worker) declares a task failed when it has sent no
    heartbeat for `worker_timeout` seconds and passes the error to every other task, which aborts
    its pending collectives. Heartbeats come from a C++ thread: a long step does not delay them.
    """
    cluster = tf.distribute.cluster_resolver.TFConfigClusterResolver().cluster_spec()
    jobs = [job for job in ("chief", "worker") if job in cluster.jobs]
    if not jobs:
        return  # no cluster: the strategy runs on this machine alone
    tf_internals.configure_coordination_service(
        leader=f"/job:{jobs[0]}/replica:0/task:0",
        jobs={job: cluster.num_tasks(job) for job in jobs},
        heartbeat_timeout_ms=int(worker_timeout * 1000),
        # At exit each worker waits for the others at most this long (none waits for a dead one).
        shutdown_timeout_ms=int(worker_timeout * 1000),
    )


def _multi_worker_mirrored(
    num_gpus: int, tpu: str | None, worker_timeout: float
) -> tf.distribute.Strategy:
    implementation = (
        tf.distribute.experimental.CommunicationImplementation.NCCL
        if num_gpus > 0
        else tf.distribute.experimental.CommunicationImplementation.RING
    )

    def make() -> tf.distribute.Strategy:
        _configure_coordination_service(worker_timeout)
        return tf.distribute.MultiWorkerMirroredStrategy(
            communication_options=tf.distribute.experimental.CommunicationOptions(
                implementation=implementation
            )
        )

    # One per process: its collectives are configured once, before TensorFlow starts.
    key = ("multi_worker_mirrored", os.environ.get("TF_CONFIG"), num_gpus, worker_timeout)
    return _once(key, make)


def _tpu(num_gpus: int, tpu: str | None, worker_timeout: float) -> tf.distribute.Strategy:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    if tpu not in (None, "", "local"):
        tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def _default(num_gpus: int, tpu: str | None, worker_timeout: float) -> tf.distribute.Strategy:
    if tpu:
        return _tpu(num_gpus, tpu, worker_timeout)
    if _num_tasks_in_tf_config() > 1:
        return _multi_worker_mirrored(num_gpus, tpu, worker_timeout)
    if num_gpus > 1:
        return _mirrored(num_gpus, tpu, worker_timeout)
    return _one_device(num_gpus, tpu, worker_timeout)


# name -> (num_gpus >= 0, tpu, worker_timeout_seconds > 0) -> strategy.
STRATEGIES: Mapping[str, Callable[[int, str | None, float], tf.distribute.Strategy]] = {
    "default": _default,
    "one_device": _one_device,
    "mirrored": _mirrored,
    "multi_worker_mirrored": _multi_worker_mirrored,
    "tpu": _tpu,
}


def get_strategy(
    distribution_strategy: str = "default",
    num_gpus: int = -1,
    tpu: str | None = None,
    worker_timeout_seconds: float = DEFAULT_WORKER_TIMEOUT_SECONDS,
) -> tf.distribute.Strategy:
    """The strategy named `distribution_strategy`, one of `STRATEGIES` (module docstring).

    A mirrored or multi-worker strategy is made once per process and set of devices, and the
    same object is returned to every later call asking for it (their collectives must not
    collide, see the module docstring).

    Args:
        distribution_strategy: `default`, `one_device`, `mirrored`, `multi_worker_mirrored` or
            `tpu`.
        num_gpus: how many GPUs to use; -1 for all visible ones.
        tpu: the TPU to connect to, for `tpu`.
        worker_timeout_seconds: multi-worker: how long a worker may send no heartbeat before
            the others stop with an error naming it (> 0).

    Raises:
        ValueError: for an unknown name, more GPUs than are visible, a timeout <= 0, or a
            mirrored strategy over other GPUs than the one this process already made.
    """
    if distribution_strategy not in STRATEGIES:
        raise ValueError(
            f"`distribution_strategy` must be one of {list(STRATEGIES)}; "
            f"received distribution_strategy={distribution_strategy!r}"
        )
    # The visible physical devices (a process may hide some with `tf.config.set_visible_devices`),
    # not logical ones: listing those initializes the TensorFlow context, after which
    # MultiWorkerMirroredStrategy can no longer configure its collectives.
    gpus = tf.config.get_visible_devices("GPU")
    if num_gpus < 0:
        num_gpus = len(gpus)
    if num_gpus > len(gpus):
        raise ValueError(
            f"`num_gpus` must be at most the {len(gpus)} GPU(s) visible to TensorFlow; "
            f"received num_gpus={num_gpus}"
        )
    if not worker_timeout_seconds > 0:
        raise ValueError(
            "`worker_timeout_seconds` must be > 0; "
            f"received worker_timeout_seconds={worker_timeout_seconds!r}"
        )
    return STRATEGIES[distribution_strategy](num_gpus, tpu, worker_timeout_seconds)


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


_UNHEALTHY = re.compile(r"tasks are unhealthy \(stopped sending heartbeats\):\s*((?:/job:\S+\s*)+)")
_REMOTE = re.compile(r"remote target (/job:[\w/:]+)")
_CONNECTION_LOST = ("Connection reset by peer", "Socket closed", "failed to connect", "Broken pipe")


def explain_worker_failure(error: BaseException, worker_timeout: float) -> TrainingError | None:
    """One `TrainingError` naming the lost worker, when `error` says another worker was lost.

    The coordination service's heartbeat timeout ("tasks are unhealthy") and a connection to a
    worker that broke (its process died) both abort this worker's collectives with a long
    TensorFlow error; anything else gives None.
    """
    text = str(getattr(error, "message", None) or error)
    resume = (
        "This worker stops too; restart every worker with the same command to resume from the "
        "last checkpoint."
    )
    unhealthy = _UNHEALTHY.search(text)
    if unhealthy:
        tasks = ", ".join(dict.fromkeys(unhealthy.group(1).split()))
        return TrainingError(
            f"Lost worker {tasks}: no heartbeat for {worker_timeout:g} s "
            f"(--worker_timeout_seconds={worker_timeout:g}); it died, hangs or is unreachable. "
            + resume
        )
    remote = _REMOTE.search(text)
    lost = next((reason for reason in _CONNECTION_LOST if reason in text), None)
    if remote and lost:
        return TrainingError(
            f"Lost worker {remote.group(1)}: the connection to it broke ({lost}); its process "
            "probably died (see its log). " + resume
        )
    return None
