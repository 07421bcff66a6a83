"""Whole BN-Inception training steps: no BN, TF's fused BN kernel, this package's BN, Keras' BN.

    python benchmarks/train_step.py [--sizes 224x32 64x32] [--repeats 5] [--paths loop keras]
        [--mixed_precision bfloat16] [--memory]

For each input size × global batch (`SIZExBATCH`), four BN-Inception models are built, identical
but for their normalization (`BNInception(norm_layer=...)`): none (conv + bias + ReLU),
TensorFlow's fused C++ kernels (`FusedBatchNormV3` / `FusedBatchNormGradV3`, what tf_keras'
`fused=True` ran), the package's own `BatchNormalization`, and `keras.layers.BatchNormalization`.
Each trains with SGD + momentum through one of two paths:

- loop: the package's training loop (`keras_bninception.training.Trainer`, one device), one
  step per call;
- keras: `model.compile` + `model.train_on_batch`.

Steps of the four alternate (interleaved, so machine noise hits all alike) and the median of
`--repeats` steps is reported after one warm-up step, whose time (tracing, XLA compilation) is
reported too. `--memory` runs every network once more in a fresh subprocess and reports its peak
resident memory (`ru_maxrss`) after three steps. `--mixed_precision bfloat16` adds rows under the
`mixed_bfloat16` policy, with the float32 Keras-BN network's time as the reference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.bn_layer import FusedKernelBN, copy_bandwidth, matmul_flops  # noqa: E402
from keras_bninception import BNInception  # noqa: E402
from keras_bninception.layers import BatchNormalization  # noqa: E402
from keras_bninception.training import Trainer  # noqa: E402
from keras_bninception.training.config import TrainerConfig  # noqa: E402

CLASSES = 10
NETWORKS = ("no BN", "fused kernel", "ours", "keras BN")


class _FusedKernelLayer(FusedKernelBN):
    """`FusedKernelBN` taking the BN constructor arguments the network passes its norm layer."""

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, scale=True, synchronized=False, **kw):
        super().__init__(**kw)


def _model(network: str, size: int, policy: str) -> keras.Model:
    norm_layer = {
        "fused kernel": _FusedKernelLayer,
        "keras BN": keras.layers.BatchNormalization,
    }.get(network, BatchNormalization)
    keras.mixed_precision.set_global_policy(policy)
    try:
        return BNInception(
            weights=None,
            classes=CLASSES,
            input_shape=(size, size, 3),
            classifier_activation=None,
            batch_norm=network != "no BN",
            norm_layer=norm_layer,
        )
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _data(size: int, batch: int) -> tuple[tf.Tensor, tf.Tensor]:
    images = tf.random.stateless_uniform([batch, size, size, 3], seed=(0, 1), minval=-1)
    labels = tf.random.stateless_uniform([batch], seed=(0, 2), maxval=CLASSES, dtype=tf.int32)
    return images, labels


def _optimizer() -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(0.01, momentum=0.9)


def _step_fn(path: str, network: str, size: int, batch: int, policy: str, model_dir: str):
    """A callable running one training step of `network` through `path`."""
    images, labels = _data(size, batch)
    if path == "keras":
        model = _model(network, size, policy)
        model.compile(
            optimizer=_optimizer(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        return lambda: model.train_on_batch(images, labels)
    trainer = Trainer(
        tf.distribute.OneDeviceStrategy("/cpu:0"),
        lambda: _model(network, size, policy),
        _optimizer,
        model_dir,
        TrainerConfig(batch_size=batch, weight_decay=0.0, checkpoint_every=10**9, log_every=1),
    )
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    steps = iter(range(1, 10**9))
    return lambda: trainer.train(lambda context, start: dataset, next(steps))


def _memory_child(path: str, network: str, size: int, batch: int, policy: str) -> None:
    with tempfile.TemporaryDirectory() as model_dir:
        step = _step_fn(path, network, size, batch, policy, model_dir)
        for _ in range(3):
            step()
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _peak_memory(path: str, network: str, size: int, batch: int, policy: str) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", path, network, str(size), str(batch), policy],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["224x32"], help="SIZExBATCH, e.g. 64x32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--paths", nargs="+", default=["loop", "keras"], choices=["loop", "keras"])
    parser.add_argument("--mixed_precision", choices=["bfloat16"], default=None)
    parser.add_argument("--memory", action="store_true", help="peak RSS, one process a network")
    parser.add_argument("--memory-child", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        path, network, size, batch, policy = args.memory_child
        _memory_child(path, network, int(size), int(batch), policy)
        return
    if args.repeats < 3:
        parser.error(f"--repeats must be at least 3; received --repeats={args.repeats}")
    policies = ["float32"] + (["mixed_bfloat16"] if args.mixed_precision else [])
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores; "
        f"copy {copy_bandwidth() / 1e9:.1f} GB/s, matmul {matmul_flops() / 1e9:.0f} GFLOP/s "
        f"(float32); median of {args.repeats} interleaved steps, SGD + momentum, {CLASSES} classes"
    )
    header = ["input × batch", "path", "policy", "network", "ms/step", "BN's cost over no BN"]
    header += ["vs keras BN (float32)", "vs fused kernel", "first step s"]
    if args.memory:
        header.append("peak RSS MB")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for spec in args.sizes:
        size, batch = (int(v) for v in spec.lower().split("x"))
        for path in args.paths:
            with tempfile.TemporaryDirectory() as tmp:
                steps, first = {}, {}
                for policy in policies:
                    for network in NETWORKS:
                        key = (policy, network)
                        model_dir = os.path.join(tmp, f"{policy}-{NETWORKS.index(network)}")
                        steps[key] = _step_fn(path, network, size, batch, policy, model_dir)
                        t0 = time.perf_counter()
                        steps[key]()
                        first[key] = time.perf_counter() - t0
                times = {key: [] for key in steps}
                for _ in range(args.repeats):
                    for key, step in steps.items():
                        t0 = time.perf_counter()
                        step()
                        times[key].append(time.perf_counter() - t0)
            ms = {key: statistics.median(t) * 1e3 for key, t in times.items()}
            keras_f32 = ms[("float32", "keras BN")]
            for (policy, network), value in ms.items():
                no_bn = ms[(policy, "no BN")]
                fused = ms[(policy, "fused kernel")]
                row = [
                    f"{size}×{size} × {batch}",
                    path,
                    policy,
                    network,
                    f"{value:.0f}",
                    "—" if network == "no BN" else f"{value - no_bn:.0f} ms",
                    f"{keras_f32 / value:.2f}×",
                    f"{fused / value:.2f}×",
                    f"{first[(policy, network)]:.1f}",
                ]
                if args.memory:
                    row.append(f"{_peak_memory(path, network, size, batch, policy):.0f}")
                print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
