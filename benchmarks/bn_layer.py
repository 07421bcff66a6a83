"""Forward + backward of keras_bninception's BatchNormalization against Keras' own layer.

    python benchmarks/bn_layer.py [--repeats 15] [--batch 32]

On the BN-Inception activation shapes, float32, training mode, one process: both layers run
interleaved (ours, Keras, ours, Keras, ...) so machine noise hits both alike, and the median of
`--repeats` runs is reported. Each run is a `tf.function` computing y = BN(x) and the gradients of
⟨y, dy⟩ with respect to x, γ and β for a fixed random dy.

"passes" is the memory traffic at op boundaries in the traced graph, in units of one activation
tensor: every op, or XLA computation, counts one pass per full-size tensor it reads or writes.
Inside one XLA computation an input may be read more than once (our forward reads x for Σx, for
Σ(x − μ_B)² and for y), so for our layer it is a lower bound; Keras' ops are all counted. The
bandwidth columns (passes × tensor bytes / time) are therefore lower bounds too, shown against
this machine's copy bandwidth (NumPy copy between two preallocated arrays).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from keras_bninception.layers import BatchNormalization  # noqa: E402

SHAPES = [(56, 56, 192), (28, 28, 256), (14, 14, 576), (7, 7, 1024)]


def _step_fn(layer: keras.layers.Layer, dy: tf.Tensor):
    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
        return tape.gradient(y, [x, *layer.trainable_weights], output_gradients=dy)

    return step


def _passes(step, x: tf.Tensor) -> int:
    """Full-size tensors read or written by the ops of the traced graph (see module docstring)."""
    graph = step.get_concrete_function(x).graph
    size = x.shape.num_elements()

    def full(t):
        return t.shape.is_fully_defined() and t.shape.num_elements() == size

    ignored = {"Placeholder", "Const", "Identity", "IdentityN", "Reshape", "NoOp"}
    return sum(
        sum(map(full, op.inputs)) + sum(map(full, op.outputs))
        for op in graph.get_operations()
        if op.type not in ignored
    )


def _copy_bandwidth(nbytes: int, repeats: int) -> float:
    src = np.random.default_rng(0).random(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t0)
    return 2 * nbytes / statistics.median(times)  # read + write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per layer (≥ 10)")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    if args.repeats < 10:
        parser.error("--repeats must be at least 10")
    rng = np.random.default_rng(0)
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores, "
        f"median of {args.repeats} interleaved runs, forward + backward, float32"
    )
    header = (
        "shape",
        "keras ms",
        "ours ms",
        "speed-up",
        "keras passes",
        "ours passes",
        "keras GB/s",
        "ours GB/s",
        "copy GB/s",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for hwc in SHAPES:
        shape = (args.batch, *hwc)
        x = tf.constant(rng.normal(1.0, 2.0, size=shape).astype("float32"))
        dy = tf.constant(rng.normal(size=shape).astype("float32"))
        layers = {"keras": keras.layers.BatchNormalization(), "ours": BatchNormalization()}
        steps = {}
        for name, layer in layers.items():
            layer.build(shape)
            steps[name] = _step_fn(layer, dy)
            for _ in range(2):  # trace, compile, warm up
                steps[name](x)[0].numpy()
        times = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                t0 = time.perf_counter()
                step(x)[0].numpy()
                times[name].append(time.perf_counter() - t0)
        median = {name: statistics.median(t) for name, t in times.items()}
        passes = {name: _passes(step, x) for name, step in steps.items()}
        nbytes = x.shape.num_elements() * 4
        copy = _copy_bandwidth(nbytes, args.repeats)
        row = [
            "×".join(map(str, shape)),
            f"{median['keras'] * 1e3:.1f}",
            f"{median['ours'] * 1e3:.1f}",
            f"{median['keras'] / median['ours']:.2f}×",
            str(passes["keras"]),
            str(passes["ours"]),
            f"{passes['keras'] * nbytes / median['keras'] / 1e9:.1f}",
            f"{passes['ours'] * nbytes / median['ours'] / 1e9:.1f}",
            f"{copy / 1e9:.1f}",
        ]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
