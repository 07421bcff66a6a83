"""Forward + backward of the project's BatchNormalization against Keras' layer and TF's kernel.

    python benchmarks/bn_layer.py [--repeats 15] [--batch 32] [--dtypes float32 bfloat16] [--memory]
        [--kernels cpu|accelerator] [--all_shapes]

On four BN-Inception activation shapes (`--all_shapes`: all 21 input shapes of its 69 BN layers
at 224×224), training mode, one process: the implementations run in turn (Keras, fused kernel,
ours, ..., then the same in reverse order) so machine noise, and the state one leaves the caches
in, hit all alike, and the median of `--repeats` runs is reported. Each run is a `tf.function`
returning y = BN(x) and the gradients of ⟨y, dy⟩ with respect to x, γ and β for a fixed random
dy, as in a network:
- y is returned, as if the next layer read it. The gradients do not need y, and TensorFlow would
  otherwise prune whatever of the forward only y needs (it did in this script's earlier versions,
  for Keras' layer and ours, not for the fused kernel, whose one op writes y and the statistics
  together);
- the backward waits for y, as it waits for the layers after it in a network. Otherwise it may
  start while y is still being written.

- keras: `keras.layers.BatchNormalization` (Keras 3, TensorFlow backend).
- fused: TensorFlow's C++ kernels `FusedBatchNormV3` / `FusedBatchNormGradV3` (what tf_keras'
  `fused=True` ran), as an anchor to measure against: never the layer's path.
- ours: `keras_bninception.layers.BatchNormalization`.
- one pass: half a run of y = 2x, interleaved with the others; a run is two passes, each a read
  and a write of the tensor (x to y, then ∂ℓ/∂y to ∂ℓ/∂x = 2 ∂ℓ/∂y). "ours in passes" is ours'
  time in units of it. The algorithm reads or writes a full-size tensor 8 times (forward: x for
  μ_B and σ²_B, x again and y; backward: ∂ℓ/∂y and x for the two sums, both again and ∂ℓ/∂x),
  i.e. 4 such passes. The unit is TensorFlow's multiply op, not the memory's limit: a layer can
  take fewer than 4 of them if it moves data faster than that op does.

"ours, accelerator kernels" is ours constructed with `kernels="accelerator"`: what a GPU runs
(single reduces, one XLA launch a pass), here on the CPU, interleaved with the others: "ours vs
ours, accelerator kernels" is what the CPU's path gains over it. "ours, blocked at any size" is
ours on the CPU's path traced with the blocked reductions for every shape (on the default path
tensors under `kernels._BLOCKED_MIN_VALUES` values take the single reduces): "ours vs ours,
blocked at any size" is what that choice gains or loses on a shape.

"fused vs keras" is the anchor's own speed-up over Keras' layer: how far a hand-written BN can
get on the machine with TensorFlow's C++ kernels as the bar.

"cores" is the process's CPU time over the wall time of a layer's timed runs: how many of the
machine's cores it kept busy.

bfloat16 rows run each under the `mixed_bfloat16` policy (x and y in bfloat16, γ, β and the
statistics in float32). `--kernels` gives ours that path instead of the device's (`cpu`: the
blocked reductions; `accelerator`: single reduces), to compare them on a machine.
`--memory` measures (ours on `--kernels`' path), in a fresh subprocess per cell, the growth of
the peak resident memory over one warm-up and three forward + backward runs, minus the inputs. The
machine's copy bandwidth (NumPy copy between two preallocated arrays, read + write) and float32
matmul throughput (2048² `tf.matmul`) are printed with the table, to compare machines.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.machine import cpu_description  # noqa: E402
from keras_bninception.layers import BatchNormalization, kernels  # noqa: E402

SHAPES = [(56, 56, 192), (28, 28, 256), (14, 14, 576), (7, 7, 1024)]


def network_shapes() -> list[tuple[int, int, int]]:
    """Each input shape (H, W, C) of BN-Inception's BN layers at 224×224, once, biggest first."""
    from keras_bninception import BNInception

    model = BNInception(weights=None)
    shapes = {
        tuple(layer.input.shape[1:])
        for layer in model.layers
        if isinstance(layer, BatchNormalization)
    }
    return sorted(shapes, key=lambda hwc: (-np.prod(hwc), hwc))


LAYERS = ("keras", "fused", "ours")  # the BN implementations (one memory column each)
# "ours, accelerator kernels": ours with `kernels="accelerator"`, what a GPU runs.
ACCELERATOR = "ours, accelerator kernels"
# "ours, blocked at any size": ours on the CPU's path, traced with the blocked reductions for any
# tensor of a block of rows per part (`kernels._BLOCKED_MIN_VALUES` = 0), what smaller shapes skip.
BLOCKED = "ours, blocked at any size"
NAMES = (*LAYERS, ACCELERATOR, BLOCKED, "y = 2x")
EPSILON = 1e-3


@contextlib.contextmanager
def blocked_at_any_size() -> Iterator[None]:
    """Inside, ours traces the CPU's blocked reductions for every tensor of a block of rows per
    part (`kernels._BLOCKED_MIN_VALUES` at 0); on the way out it waits for the compilations the
    tracing handed to the background, which read the same constant."""
    threshold, kernels._BLOCKED_MIN_VALUES = kernels._BLOCKED_MIN_VALUES, 0
    try:
        yield
        kernels.wait_for_compilations()
    finally:
        kernels._BLOCKED_MIN_VALUES = threshold


class FusedKernelBN(keras.layers.Layer):
    """BN in training mode through TensorFlow's fused C++ kernels (forward and gradient), the
    moving statistics updated as tf_keras' `fused=True` did: the forward op averages them in
    (`exponential_avg_factor` = 1 − momentum), then they are assigned."""

    def __init__(self, momentum: float = 0.99, **kwargs) -> None:
        super().__init__(**kwargs)
        self.momentum = momentum

    def build(self, input_shape) -> None:
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")
        moving = dict(shape=(channels,), trainable=False, autocast=False)
        self.moving_mean = self.add_weight(initializer="zeros", name="moving_mean", **moving)
        self.moving_variance = self.add_weight(initializer="ones", name="moving_variance", **moving)

    def call(self, x):
        @tf.custom_gradient
        def fused(x, gamma, beta, moving_mean, moving_variance):
            y, mean, variance, r1, r2, r3 = tf.raw_ops.FusedBatchNormV3(
                x=x,
                scale=gamma,
                offset=beta,
                mean=moving_mean,
                variance=moving_variance,
                epsilon=EPSILON,
                exponential_avg_factor=1.0 - self.momentum,
                is_training=True,
            )

            def backward(dy, *_):
                dx, dgamma, dbeta = tf.raw_ops.FusedBatchNormGradV3(
                    y_backprop=dy,
                    x=x,
                    scale=gamma,
                    reserve_space_1=r1,
                    reserve_space_2=r2,
                    reserve_space_3=r3,
                    epsilon=EPSILON,
                    is_training=True,
                )[:3]
                return dx, dgamma, dbeta, None, None

            return (y, mean, variance), backward

        y, mean, variance = fused(
            x,
            tf.cast(self.gamma, "float32"),
            tf.cast(self.beta, "float32"),
            tf.convert_to_tensor(self.moving_mean),
            tf.convert_to_tensor(self.moving_variance),
        )
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return y


class TwoPasses(keras.layers.Layer):
    """y = 2x: a run writes y from x and then 2 ∂ℓ/∂y from ∂ℓ/∂y, two reads and two writes of the
    tensor; half of it is the unit in which the BN layers' times are read (the section-3
    algorithm needs 4)."""

    def call(self, x):
        return x * tf.constant(2.0, x.dtype)


def _layer(name: str, dtype: str, path: str | None = None) -> keras.layers.Layer:
    """The layer `name` in `dtype`; ours runs `path` (--kernels; None: the device's)."""
    policy = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
    if name == "keras":
        return keras.layers.BatchNormalization(epsilon=EPSILON, dtype=policy)
    if name == "fused":
        return FusedKernelBN(dtype=policy)
    if name == "y = 2x":
        return TwoPasses(dtype=policy)
    if name == ACCELERATOR:
        return BatchNormalization(epsilon=EPSILON, dtype=policy, kernels=kernels.ACCELERATOR)
    if name == BLOCKED:
        return BatchNormalization(epsilon=EPSILON, dtype=policy, kernels=kernels.CPU)
    return BatchNormalization(epsilon=EPSILON, dtype=policy, kernels=path)


def _step_fn(layer: keras.layers.Layer, dy: tf.Tensor):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        with tf.control_dependencies([y]):  # as in a network: ∂ℓ/∂y exists only once y does
            dy_after_y = tf.identity(dy)
        return tape.gradient(y, [x, *layer.trainable_weights], output_gradients=dy_after_y), y

    return step


def _run(step, x: tf.Tensor) -> None:
    """One forward + backward run, waited for by fetching one value of ∂ℓ/∂x: `.numpy()` on
    the whole gradient would copy it into fresh memory, a cost that is no layer's and that was
    8.2 ms at 32×56×56×192 on machine B (a quarter of ours' time there)."""
    tf.reshape(step(x)[0][0], [-1])[:1].numpy()


def _inputs(shape: tuple, dtype: str) -> tuple[tf.Tensor, tf.Tensor]:
    # Generated by TensorFlow in place: no float64 temporaries to set the memory peak.
    x = tf.random.stateless_normal(shape, seed=(0, 1), mean=1.0, stddev=2.0)
    dy = tf.random.stateless_normal(shape, seed=(0, 2))
    return tf.cast(x, dtype), tf.cast(dy, dtype)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _memory_child(name: str, shape: tuple, dtype: str, path: str | None) -> None:
    """In a fresh process: peak RSS growth of forward + backward runs, minus x and dy."""
    x, dy = _inputs(shape, dtype)
    layer = _layer(name, dtype, path)
    layer.build(shape)
    step = _step_fn(layer, dy)
    step.get_concrete_function(x)  # trace outside the measurement
    kernels.wait_for_compilations()  # and what tracing handed to the background
    before = _peak_rss_mb()
    for _ in range(4):
        _run(step, x)
    print(json.dumps({"peak_growth_mb": _peak_rss_mb() - before}))


def _memory(name: str, shape: tuple, dtype: str, path: str | None) -> float:
    child = [name, "x".join(map(str, shape)), dtype, path or "device"]
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", *child],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_growth_mb"]


def copy_bandwidth(nbytes: int = 1 << 27, repeats: int = 9) -> float:
    """Bytes per second of a NumPy copy between preallocated arrays (read + write)."""
    src = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times)


def matmul_flops(n: int = 2048, repeats: int = 9) -> float:
    """float32 FLOP/s of an n×n by n×n `tf.matmul` (median of `repeats`)."""
    a = tf.random.stateless_normal([n, n], seed=(0, 0))
    matmul = tf.function(lambda a: tf.matmul(a, a))
    matmul(a).numpy()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a).numpy()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per layer (≥ 5)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16"])
    parser.add_argument("--memory", action="store_true", help="peak memory, one process a cell")
    parser.add_argument(
        "--kernels", choices=kernels.PATHS, help="ours' path (default: the device's)"
    )
    parser.add_argument(
        "--all_shapes", action="store_true", help="every BN input shape of BN-Inception at 224"
    )
    parser.add_argument("--memory-child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        name, shape, dtype, path = args.memory_child
        path = None if path == "device" else path
        _memory_child(name, tuple(int(v) for v in shape.split("x")), dtype, path)
        return
    if args.repeats < 5:
        parser.error(f"--repeats must be at least 5; received --repeats={args.repeats}")
    print(cpu_description())
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores; "
        f"copy {copy_bandwidth() / 1e9:.1f} GB/s, matmul {matmul_flops() / 1e9:.0f} GFLOP/s "
        f"(float32); median of {args.repeats} interleaved runs, forward + backward"
    )
    header = [
        "shape",
        "dtype",
        "keras ms",
        "fused kernel ms",
        "ours ms",
        "ours vs keras",
        "ours vs fused",
        "fused vs keras",
        "fused cores",
        "ours cores",
        "one pass ms",
        "ours in passes",
        "ours, accelerator kernels ms",
        "ours vs ours, accelerator kernels",
        "ours, blocked at any size ms",
        "ours vs ours, blocked at any size",
    ]
    if args.memory:
        header += ["keras MB", "fused MB", "ours MB"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    _table(args)


def _table(args: argparse.Namespace) -> None:
    shapes = network_shapes() if args.all_shapes else SHAPES
    for dtype in args.dtypes:
        for hwc in shapes:
            shape = (args.batch, *hwc)
            x, dy = _inputs(shape, dtype)
            steps = {}
            for name in NAMES:
                layer = _layer(name, dtype, args.kernels)
                layer.build(shape)
                steps[name] = _step_fn(layer, dy)
                with blocked_at_any_size() if name == BLOCKED else contextlib.nullcontext():
                    for _ in range(2):  # trace, compile, warm up
                        _run(steps[name], x)
            times = {name: [] for name in NAMES}
            cpu_times = {name: [] for name in NAMES}
            for repeat in range(args.repeats):
                # In turn, the order reversed every other round: no layer always runs after
                # the same one (the one before leaves the caches and threads in its state).
                for name in NAMES if repeat % 2 == 0 else NAMES[::-1]:
                    t0, cpu0 = time.perf_counter(), time.process_time()
                    _run(steps[name], x)
                    times[name].append(time.perf_counter() - t0)
                    cpu_times[name].append(time.process_time() - cpu0)
            ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
            cores = {name: sum(cpu_times[name]) / sum(times[name]) for name in NAMES}
            row = [
                "×".join(map(str, shape)),
                dtype,
                f"{ms['keras']:.1f}",
                f"{ms['fused']:.1f}",
                f"{ms['ours']:.1f}",
                f"{ms['keras'] / ms['ours']:.2f}×",
                f"{ms['fused'] / ms['ours']:.2f}×",
                f"{ms['keras'] / ms['fused']:.2f}×",
                f"{cores['fused']:.2f}",
                f"{cores['ours']:.2f}",
                f"{ms['y = 2x'] / 2:.1f}",
                f"{ms['ours'] / (ms['y = 2x'] / 2):.1f}",
                f"{ms[ACCELERATOR]:.1f}",
                f"{ms[ACCELERATOR] / ms['ours']:.2f}×",
                f"{ms[BLOCKED]:.1f}",
                f"{ms[BLOCKED] / ms['ours']:.2f}×",
            ]
            if args.memory:
                row += [f"{_memory(name, shape, dtype, args.kernels):.0f}" for name in LAYERS]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
