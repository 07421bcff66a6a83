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
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Mapping

import tensorflow as tf

# Private modules: TensorFlow has no public API for the coordination service's heartbeat timeout
# (MultiWorkerMirroredStrategy configures the service with TensorFlow's defaults, through these).
from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.eager import context as eager_context

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


def _mirrored(num_gpus: int, tpu: str | None, worker_timeout: float) -> tf.distribute.Strategy:
    if num_gpus > 0:
        devices = [f"/gpu:{i}" for i in range(num_gpus)]
    else:
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


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
    eager_context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=f"/job:{jobs[0]}/replica:0/task:0",
        heartbeat_timeout_in_ms=int(worker_timeout * 1000),
        # At exit each worker waits for the others at most this long (none waits for a dead one).
        shutdown_barrier_timeout_in_ms=int(worker_timeout * 1000),
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster.num_tasks(job))
            for job in jobs
        ],
    )


def _multi_worker_mirrored(
    num_gpus: int, tpu: str | None, worker_timeout: float
) -> tf.distribute.Strategy:
    _configure_coordination_service(worker_timeout)
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
    """Creates the strategy named `distribution_strategy`, one of `STRATEGIES` (module docstring).

    Args:
        distribution_strategy: `default`, `one_device`, `mirrored`, `multi_worker_mirrored` or
            `tpu`.
        num_gpus: how many GPUs to use; -1 for all visible ones.
        tpu: the TPU to connect to, for `tpu`.
        worker_timeout_seconds: multi-worker: how long a worker may send no heartbeat before
            the others stop with an error naming it (> 0).

    Raises:
        ValueError: for an unknown name, more GPUs than are visible, or a timeout <= 0.
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
