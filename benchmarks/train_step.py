"""A whole BN-Inception training step with this package's BatchNormalization against Keras' layer.

    python benchmarks/train_step.py [--sizes 32x64 64x64 224x8] [--repeats 10]

For each input size × global batch (`SIZExBATCH`), two BN-Inception models are built, identical but
for their BN layer (`BNInception(norm_layer=...)`): `keras_bninception.layers.BatchNormalization`
(the model's own) and `keras.layers.BatchNormalization`. Each trains with SGD in a `tf.function`
step; steps of the two alternate (ours, Keras, ours, ...), and the median of
`--repeats` steps is reported after a warm-up step, whose time (tracing + XLA compilation) is
reported too.
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
import tensorflow as tf  # noqa: E402

from keras_bninception import BNInception  # noqa: E402
from keras_bninception.layers import BatchNormalization  # noqa: E402


def _train_step(model: keras.Model):
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(images, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, model(images, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        return loss

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes",
        nargs="+",
        default=["32x64", "64x64", "224x8"],
        help="SIZExBATCH pairs, e.g. 224x8",
    )
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores; "
        f"median of {args.repeats} interleaved training steps, float32, 10 classes"
    )
    header = (
        "input × batch",
        "keras ms/step",
        "ours ms/step",
        "speed-up",
        "keras first step s",
        "ours first step s",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for spec in args.sizes:
        size, batch = (int(v) for v in spec.lower().split("x"))
        images = tf.random.stateless_uniform([batch, size, size, 3], seed=(0, 1), minval=-1)
        labels = tf.random.stateless_uniform([batch], seed=(0, 2), maxval=10, dtype=tf.int32)
        steps, first = {}, {}
        layers = (("ours", BatchNormalization), ("keras", keras.layers.BatchNormalization))
        for name, norm_layer in layers:
            model = BNInception(
                weights=None,
                classes=10,
                input_shape=(size, size, 3),
                classifier_activation=None,
                norm_layer=norm_layer,
            )
            steps[name] = _train_step(model)
            t0 = time.perf_counter()
            steps[name](images, labels).numpy()
            first[name] = time.perf_counter() - t0
        times = {name: [] for name in steps}
        for _ in range(args.repeats):
            for name, step in steps.items():
                t0 = time.perf_counter()
                step(images, labels).numpy()
                times[name].append(time.perf_counter() - t0)
        median = {name: statistics.median(t) for name, t in times.items()}
        row = [
            f"{size}×{size} × {batch}",
            f"{median['keras'] * 1e3:.0f}",
            f"{median['ours'] * 1e3:.0f}",
            f"{median['keras'] / median['ours']:.2f}×",
            f"{first['keras']:.1f}",
            f"{first['ours']:.1f}",
        ]
        print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
