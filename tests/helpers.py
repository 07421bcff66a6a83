"""What several test files share. Imported as `import helpers` (pytest puts tests/ on sys.path,
as for `tf_slim_reference`), never as `tests.helpers`."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 1337  # the autouse `seed` fixture of conftest.py
NUM_LOGICAL_CPUS = 2  # conftest.py splits the CPU into this many logical devices
TRAIN_TIMEOUT = 600  # seconds for one `python -m trainers.train` process (a loaded machine)
# A small deterministic training run of the binary: full network at a quarter width, 32x32 digits.
SMALL_TRAIN_ARGS = [
    "--dataset=digits",
    "--image_size=32",
    "--depth_multiplier=0.25",
    "--bn_momentum=0.9",
    "--batch_size=16",
    "--seed=3",
]


@functools.cache
def _xla_cache_dir() -> str:
    """A directory, removed at exit, where this test process's children keep XLA's compiled
    kernels: each training child would otherwise compile the same BN kernels again."""
    path = tempfile.mkdtemp(prefix="xla-cache-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child Python process running this checkout's code.

    The repository first on PYTHONPATH, TensorFlow's C++ INFO/WARNING logs off, no TF_CONFIG
    inherited (a child is a single-machine run unless `extra` gives it one), no GPU (hidden as in
    this process, conftest.py), and XLA's compiled kernels shared through `_xla_cache_dir`.
    """
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["CUDA_VISIBLE_DEVICES"] = "-1"
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    cache = f"--tf_xla_persistent_cache_directory={_xla_cache_dir()}"
    env["TF_XLA_FLAGS"] = f"{env.get('TF_XLA_FLAGS', '')} {cache}".strip()
    env.update(extra)
    return env


def run_python(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """`python *args` in a child process of this checkout (`subprocess_env`), run from the
    repository root; stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_command(args: list[str]) -> list[str]:
    """`python -m trainers.train ARGS` with this interpreter."""
    return [sys.executable, "-m", "trainers.train", *args]


def start_train(args: list[str], **env: str) -> subprocess.Popen:
    """Starts `python -m trainers.train ARGS`; stdout and stderr are text pipes."""
    return subprocess.Popen(
        train_command(args),
        cwd=REPO_ROOT,
        env=subprocess_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run_train(args: list[str]) -> subprocess.CompletedProcess:
    """Runs `python -m trainers.train ARGS` to its end (at most `TRAIN_TIMEOUT` seconds)."""
    return run_python(["-m", "trainers.train", *args], TRAIN_TIMEOUT)


def weights_digest(log: str) -> str:
    """The final weights' SHA-256 a training run logs."""
    return re.findall(r"Final weights sha256 (\w+)", log)[-1]


def error_lines(stderr: str) -> list[str]:
    """The `error: ...` lines of a binary's stderr."""
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_same_batches(a: list[tuple], b: list[tuple]) -> None:
    """Two lists of (images, labels) batches are equal, batch by batch."""
    for (x1, y1), (x2, y2) in zip(a, b, strict=True):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 now (for a local multi-worker cluster)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def cpu_ops_or_skip():
    """The C++ CPU ops' module (`keras_bninception.layers.cpu_ops`), or skips the test with the
    reason none can run here: the library is not built (no g++ when `make` ran, a wheel install),
    or was built for another TensorFlow."""
    import tensorflow as tf

    from keras_bninception.layers import cpu_ops

    library = cpu_ops.load()
    if library is None:
        state = "does not load" if cpu_ops.LIBRARY.exists() else "is not built"
        pytest.skip(
            f"the C++ CPU ops cannot run here: {cpu_ops.LIBRARY.name} {state} for TensorFlow "
            f"{tf.__version__} (`make`, or `python -m keras_bninception.layers.cpu_ops`, builds it)"
        )
    return library


@contextlib.contextmanager
def force_accelerator_bn_path():
    """Within the block, BN traces the kernels a GPU runs, on whatever device runs the test.

    A GPU takes BN's single-reduce XLA kernels; a CPU takes blocked reductions (C++ ops or XLA
    loops). Today the layer chooses per process through `batch_norm_transform`'s switches; this
    is the one place tests force the GPU's choice (swap its body when the layer's API changes).
    Read when a function is traced: trace the step inside the block.
    """
    from keras_bninception.layers import batch_norm_transform

    with (
        batch_norm_transform.use_blocked_reductions(False),
        batch_norm_transform.use_cpu_ops(False),
    ):
        yield


@contextlib.contextmanager
def force_cpu_bn_path(cpu_ops: bool):
    """Within the block, BN traces a CPU's kernels: blocked reductions, through the C++ ops
    (`cpu_ops=True`, where they load) or XLA loops (False). Swap with `force_accelerator_bn_path`
    when the layer's API changes."""
    from keras_bninception.layers import batch_norm_transform

    with (
        batch_norm_transform.use_blocked_reductions(True),
        batch_norm_transform.use_cpu_ops(None if cpu_ops else False),
    ):
        yield


# Op types a GPU cannot run on the hot path: host callbacks (Python on every step).
HOST_CALLBACK_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
LOOP_OPS = frozenset({"While", "StatelessWhile"})


def graph_op_types(graph_def) -> list[str]:
    """The op type of every node of `graph_def` and of the functions in its library (repeats
    kept), calls of library functions by name excluded."""
    functions = {f.signature.name for f in graph_def.library.function}
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    return [node.op for node in nodes if node.op not in functions]


def non_accelerator_ops(graph_def) -> list[str]:
    """What in a traced training step a GPU would not run as TensorFlow's own device kernels:
    ops TensorFlow does not define (custom ops such as BN's C++ CPU reductions), host callbacks
    (`tf.py_function`, `tf.numpy_function`), and loops beyond the one of the training loop
    itself (XLA loop kernels, e.g. BN's blocked reductions)."""
    import tensorflow as tf

    types = graph_op_types(graph_def)
    found = sorted({t for t in types if t in HOST_CALLBACK_OPS or not hasattr(tf.raw_ops, t)})
    loops = [t for t in types if t in LOOP_OPS]
    if len(loops) > 1:
        found.append(f"{len(loops) - 1} loop(s) besides the training loop")
    return found
