"""Ours with its two reduction passes in C++: is a compiled CPU kernel the lever for small shapes?

    python benchmarks/cpu_reductions.py [--repeats 15] [--batch 32] [--relu]

On a CPU, ours computes μ_B, σ²_B (forward) and ∂ℓ/∂β, ∂ℓ/∂γ (backward) in XLA loops over blocks
of rows, and y and ∂ℓ/∂x in XLA elementwise kernels. This script compiles
`benchmarks/cpu_reductions.cc` (two TensorFlow CPU ops in C++, float32: the same blocked,
shifted, pairwise-merged statistics and the same two gradient sums, the rows shared among the
intra-op pool's threads) with g++ against the installed TensorFlow, and times, as
`bn_layer.py` does (forward + backward, training mode, interleaved, median of `--repeats`):
- keras, fused, ours: as in `bn_layer.py`;
- ours + C++: ours' elementwise kernels, its reductions replaced by the two C++ ops.

Before timing, it checks that ours + C++ computes what ours does (y, ∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β) on
every shape. `--relu` times the BN + ReLU unit (ours and ours + C++ only; Keras' layer and the
fused kernel then get no ReLU). Needs g++ (`-march=native`: the build is for this machine).
The C++ ops are a measurement, not the layer's path.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks import bn_layer  # noqa: E402
from keras_bninception.layers import BatchNormalization, batch_norm_transform  # noqa: E402

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpu_reductions.cc")
NAMES = ("keras", "fused", "ours", "ours + C++")


def build_ops(directory: str):
    """Compiles the C++ ops into `directory` and loads them."""
    compiler = shutil.which("g++")
    if compiler is None:
        raise SystemExit("cpu_reductions.py needs g++ on PATH to compile cpu_reductions.cc")
    library = os.path.join(directory, "cpu_reductions.so")
    command = [
        compiler,
        "-shared",
        "-fPIC",
        "-O3",
        "-march=native",
        "-ffp-contract=off",  # a γ x̂ + β rounded as the XLA kernels round it (ReLU's mask)
        "-w",
        SOURCE,
        "-o",
        library,
        *tf.sysconfig.get_compile_flags(),
        *tf.sysconfig.get_link_flags(),
    ]
    subprocess.run(command, check=True)
    return tf.load_op_library(library)


class CppReductionsBN(keras.layers.Layer):
    """Ours' transform on the [m, C] view, its two reduction passes done by the C++ ops."""

    def __init__(self, ops, relu: bool, **kwargs) -> None:
        super().__init__(**kwargs)
        self.ops = ops
        self.relu = relu

    def build(self, input_shape) -> None:
        channels = input_shape[-1]
        self.gamma = self.add_weight(shape=(channels,), initializer="ones", name="gamma")
        self.beta = self.add_weight(shape=(channels,), initializer="zeros", name="beta")

    def call(self, x):
        # Ours' elementwise kernels (private to the library) keep y and ∂ℓ/∂x as they are.
        normalize = batch_norm_transform._normalize
        grad_input = batch_norm_transform._grad_input
        relu = self.relu

        @tf.custom_gradient
        def transform(x_view, gamma, beta):
            x_view, gamma, beta = (tf.stop_gradient(t) for t in (x_view, gamma, beta))
            mean, variance = self.ops.bn_moments(x_view)
            inv_std = tf.math.rsqrt(variance + bn_layer.EPSILON)
            count = tf.cast(tf.shape(x_view)[0], tf.float32)

            def backward(dy):
                dy = tf.stop_gradient(dy)
                dbeta, dgamma = self.ops.bn_grad_sums(
                    dy, x_view, mean, inv_std, gamma, beta, relu=relu
                )
                statistics = (mean, inv_std, gamma, beta, relu)
                dx = grad_input(dy, x_view, None, *statistics, dbeta, dgamma, count)
                return dx, dgamma, dbeta

            return normalize(x_view, mean, inv_std, gamma, beta, relu), backward

        y = transform(tf.reshape(x, [-1, x.shape[-1]]), self.gamma, self.beta)
        return tf.reshape(y, tf.shape(x))


def _ours(relu: bool) -> keras.layers.Layer:
    return BatchNormalization(epsilon=bn_layer.EPSILON, activation="relu" if relu else None)


def _check(ops, shape: tuple, relu: bool) -> float:
    """Largest difference between ours + C++ and ours, relative to each tensor's largest value;
    exits if above 1e-4. Compared: y, ∂ℓ/∂x, ∂ℓ/∂γ and ∂ℓ/∂β of the layers without ReLU, and, for
    `--relu`, the C++ gradient sums against ours' on the same μ_B and σ²_B. (With ReLU the two
    layers' μ_B differ by rounding, and a pre-activation within rounding of 0 may be clipped by one
    and not the other: a valid difference of a whole ∂ℓ/∂z_i.)"""
    x, dy = bn_layer._inputs(shape, "float32")
    results = []
    for layer in (CppReductionsBN(ops, relu=False), _ours(relu=False)):
        layer.build(shape)
        grads, y = bn_layer._step_fn(layer, dy)(x)
        results.append([y, *grads])
    pairs = list(zip(("y", "dx", "dgamma", "dbeta"), *results, strict=True))
    if relu:
        x_view, dy_view = (tf.reshape(t, [-1, shape[-1]]) for t in (x, dy))
        mean, variance = ops.bn_moments(x_view)
        inv_std = tf.math.rsqrt(variance + bn_layer.EPSILON)
        gamma = tf.linspace(-1.0, 2.0, shape[-1])  # some features mostly clipped, some not
        beta = tf.linspace(0.5, -0.5, shape[-1])
        statistics = (mean, inv_std, gamma, beta)
        cpp = ops.bn_grad_sums(dy_view, x_view, *statistics, relu=True)
        xla = batch_norm_transform._grad_sums(dy_view, x_view, *statistics, True)
        pairs += [("dbeta (ReLU)", cpp[0], xla[0]), ("dgamma (ReLU)", cpp[1], xla[1])]
    worst = 0.0
    for name, a, b in pairs:
        error = float(tf.reduce_max(tf.abs(a - b))) / max(float(tf.reduce_max(tf.abs(b))), 1e-30)
        if not np.isfinite(error) or error > 1e-4:
            raise SystemExit(f"ours + C++ differs from ours in {name} at {shape}: {error:.2e}")
        worst = max(worst, error)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per layer (≥ 5)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--relu", action="store_true", help="ours and ours + C++ with ReLU")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error(f"--repeats must be at least 5; received --repeats={args.repeats}")
    with tempfile.TemporaryDirectory() as directory:
        ops = build_ops(directory)
        print(
            f"TensorFlow {tf.__version__}, {os.cpu_count()} CPU cores; copy "
            f"{bn_layer.copy_bandwidth() / 1e9:.1f} GB/s, matmul "
            f"{bn_layer.matmul_flops() / 1e9:.0f} GFLOP/s (float32); float32, median of "
            f"{args.repeats} interleaved runs, forward + backward"
            + (", ours with ReLU" if args.relu else "")
        )
        header = ["shape", *(f"{n} ms" for n in NAMES), "C++ vs ours", "C++ vs keras"]
        header += ["ours vs keras", "fused vs keras", "C++ vs fused", "C++ max rel. diff"]
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for hwc in bn_layer.SHAPES:
            shape = (args.batch, *hwc)
            difference = _check(ops, shape, args.relu)
            ms = _times(ops, shape, args)
            row = ["×".join(map(str, shape)), *(f"{ms[n]:.1f}" for n in NAMES)]
            row += [
                f"{ms['ours'] / ms['ours + C++']:.2f}×",
                f"{ms['keras'] / ms['ours + C++']:.2f}×",
                f"{ms['keras'] / ms['ours']:.2f}×",
                f"{ms['keras'] / ms['fused']:.2f}×",
                f"{ms['fused'] / ms['ours + C++']:.2f}×",
                f"{difference:.1e}",
            ]
            print("| " + " | ".join(row) + " |", flush=True)


def _times(ops, shape: tuple, args: argparse.Namespace) -> dict[str, float]:
    x, dy = bn_layer._inputs(shape, "float32")
    layers = {
        "keras": bn_layer._layer("keras", "float32"),
        "fused": bn_layer._layer("fused", "float32"),
        "ours": _ours(args.relu),
        "ours + C++": CppReductionsBN(ops, args.relu),
    }
    steps = {}
    for name, layer in layers.items():
        layer.build(shape)
        steps[name] = bn_layer._step_fn(layer, dy)
        for _ in range(2):  # trace, compile, warm up
            bn_layer._run(steps[name], x)
    times = {name: [] for name in NAMES}
    for _ in range(args.repeats):
        for name in NAMES:
            start = time.perf_counter()
            bn_layer._run(steps[name], x)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


if __name__ == "__main__":
    main()
