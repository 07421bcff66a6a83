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
from unittest import mock

import numpy as np

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


def force_accelerator_bn_path():
    """A scope in which BN takes the kernels a GPU runs, on whatever device runs the test
    (`keras_bninception.layers.kernels.use`). Layers built and steps traced inside it keep them."""
    from keras_bninception.layers import kernels

    return kernels.use(kernels.ACCELERATOR)


@contextlib.contextmanager
def force_cpu_bn_path():
    """A scope in which BN takes a CPU's kernels, on any device, with the blocked reductions for
    every tensor of a block of rows per part (by default only from 2**21 values, which the tests'
    small networks never reach)."""
    from keras_bninception.layers import kernels

    with kernels.use(kernels.CPU), mock.patch.object(kernels, "_BLOCKED_MIN_VALUES", 0):
        yield


def non_accelerator_ops(graph_def) -> list[str]:
    """What in a traced training step a GPU would not run as TensorFlow's own kernels
    (`benchmarks.gpu_check.non_device_ops`: custom ops, host callbacks, loops besides the
    training loop's)."""
    from benchmarks.gpu_check import non_device_ops

    return non_device_ops(graph_def)
