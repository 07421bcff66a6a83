"""The one place the trainer reaches into TensorFlow's private modules (no public API exists).

`configure_coordination_service`: MultiWorkerMirroredStrategy starts TensorFlow's coordination
service with its default heartbeat timeout and offers no argument for it; the eager context's
`configure_coordination_service` (private `tensorflow.python.eager.context`) and the
`CoordinatedJob` protocol buffer (private `tensorflow.compiler.xla.tsl.protobuf`) set it.

On a TensorFlow upgrade, `tests/test_strategy.py::test_tf_internals_still_exist` says whether
these still import and take the arguments used here; `tests/test_multi_worker_faults.py` checks
that the timeout still takes effect (a lost worker is named within it).
"""

from __future__ import annotations

from collections.abc import Mapping

from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
from tensorflow.python.eager import context as eager_context


def configure_coordination_service(
    leader: str, jobs: Mapping[str, int], heartbeat_timeout_ms: int, shutdown_timeout_ms: int
) -> None:
    """Has this process's TensorFlow context start (or join) a standalone coordination service.

    Args:
        leader: the task running the service, e.g. `/job:chief/replica:0/task:0`.
        jobs: job name -> number of tasks, for every job the service coordinates.
        heartbeat_timeout_ms: a task sending no heartbeat for this long is declared failed and
            its error passed to every other task.
        shutdown_timeout_ms: at exit, how long each task waits for the others.

    Must run before TensorFlow initializes its context (before any op runs).
    """
    eager_context.context().configure_coordination_service(
        service_type="standalone",
        service_leader=leader,
        heartbeat_timeout_in_ms=heartbeat_timeout_ms,
        shutdown_barrier_timeout_in_ms=shutdown_timeout_ms,
        coordinated_jobs=[
            coordination_config_pb2.CoordinatedJob(name=name, num_tasks=count)
            for name, count in jobs.items()
        ],
    )
