"""One command for a GPU owner: is BN-Inception's training path right and fast on this GPU?

    python -m benchmarks.gpu_check                 # sized for ≤ 10 minutes on one GPU
    python -m benchmarks.gpu_check --device=CPU --size=32 --batch=4 --depth_multiplier=0.25 \\
        --steps=2 --demo_steps=10 --modes float32  # the script itself, on a CPU (its test)

On the first GPU (or `--device=CPU`), in one process, for each mode of `--modes` (float32,
mixed float16 with dynamic loss scaling, mixed bfloat16, float32 with XLA over the whole step):

1. path: the traced training step of the real trainer (`build_trainer`, one device) holds only
   what the device runs as TensorFlow kernels: no custom op (a CPU-only kernel), no host callback
   (`py_function`), no loop kernel besides the training loop (BN's CPU blocked reductions);
2. step: BN-Inception at `--size`×`--size`, global batch `--batch`, 1000 classes: the first call
   and the mean of `--steps` steps, as ms/step and images/s;
3. demo: `--demo_steps` steps of the digits demo's recipe (32×32 digits, batch 64, its learning
   rate); the loss must fall (mean of the last 10 steps below the mean of the first 10).

A step is the trainer's (`--steps` of them in one compiled loop, timed by the trainer itself);
the first call includes tracing, XLA compilation, the first step and one checkpoint written.

And once: the BN layer against cuDNN's fused BN (`FusedBatchNormV3`, the kernel of
`keras.layers.BatchNormalization(fused=True)` in tf_keras) on BN-Inception's largest BN input at
that size: forward + backward time of each (median of `--layer_repeats`, interleaved) and the
largest difference of their outputs and gradients.

Writes `--output` (gpu_report.json: the device, TensorFlow and the results) and prints a Markdown
table to paste into docs/gpu.md. Exits 1 if a check failed, 0 otherwise; on a machine without a
GPU (and `--device=GPU`), says so in one line and exits 0.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.bn_layer import EPSILON, FusedKernelBN  # noqa: E402
from benchmarks.machine import cpu_description  # noqa: E402
from keras_bninception import data  # noqa: E402
from keras_bninception.layers import BatchNormalization, kernels  # noqa: E402
from keras_bninception.training import TrainConfig, build_trainer  # noqa: E402
from trainers import demo  # noqa: E402

MODES = {  # name -> (mixed_precision, jit_compile)
    "float32": (None, False),
    "float16": ("float16", False),
    "bfloat16": ("bfloat16", False),
    "xla": (None, True),
}
HOST_CALLBACK_OPS = frozenset({"PyFunc", "PyFuncStateless", "EagerPyFunc"})
LOOP_OPS = frozenset({"While", "StatelessWhile"})


def bn_path(device: str) -> contextlib.AbstractContextManager:
    """The BN kernels the step is traced with: the layer's own choice on a GPU; on a CPU
    (`--device=CPU`, to test this script), the GPU's single-reduce kernels, forced."""
    if device == "GPU":
        return contextlib.nullcontext()
    return kernels.use(kernels.ACCELERATOR)


def non_device_ops(graph_def) -> list[str]:
    """Op types of a traced step a GPU would not run as TensorFlow's own kernels."""
    functions = {f.signature.name for f in graph_def.library.function}
    nodes = [*graph_def.node, *(n for f in graph_def.library.function for n in f.node_def)]
    types = [n.op for n in nodes if n.op not in functions]
    found = sorted({t for t in types if t in HOST_CALLBACK_OPS or not hasattr(tf.raw_ops, t)})
    loops = sum(t in LOOP_OPS for t in types)
    if loops > 1:
        found.append(f"{loops - 1} loop(s) besides the training loop")
    return found


IMAGENET_CLASSES = 1000


def _random_batches(size: int, batch: int):
    """One random batch of images and ImageNet labels, served again at every step (no input
    cost in the step's time)."""
    images = tf.random.stateless_uniform([batch, size, size, 3], seed=(0, 1), minval=-1)
    labels = tf.random.stateless_uniform(
        [batch], seed=(0, 2), maxval=IMAGENET_CLASSES, dtype=tf.int32
    )

    def dataset_fn(context: tf.distribute.InputContext, start_step: int) -> tf.data.Dataset:
        return tf.data.Dataset.from_tensors((images, labels)).repeat()

    return dataset_fn


def _trainer(strategy, mode: str, model_dir: str, num_classes: int | None = None, **options):
    precision, jit = MODES[mode]
    config = TrainConfig().replace(
        model_dir=model_dir,
        mixed_precision=precision,
        jit_compile=jit,
        checkpoint_every=10**9,
        seed=0,
        **options,
    )
    keras.utils.set_random_seed(0)
    info = data.get_info("digits")
    if num_classes is not None:  # the step at ImageNet's size: only the class count matters
        info = dataclasses.replace(
            info, num_classes=num_classes, class_names=tuple(map(str, range(num_classes)))
        )
    return build_trainer(config, info, strategy)


def check_step(strategy, device, mode, args, workdir) -> dict:
    """Path check and timing of the step at `--size` × `--batch`, 1000 classes."""
    trainer, _, _ = _trainer(
        strategy,
        mode,
        os.path.join(workdir, f"step_{mode}"),
        num_classes=IMAGENET_CLASSES,
        image_size=args.size,
        batch_size=args.batch,
        depth_multiplier=args.depth_multiplier,
        log_every=args.steps,
    )
    dataset_fn = _random_batches(args.size, args.batch)
    with bn_path(device):
        began = time.perf_counter()
        trainer.train(dataset_fn, 1)  # trace, compile, one step (and one checkpoint written)
        first = time.perf_counter() - began
        # `--steps` steps in one compiled loop: the trainer's own measure of the window.
        metrics = trainer.train(dataset_fn, 1 + args.steps)
    iterator = iter(strategy.distribute_datasets_from_function(lambda c: dataset_fn(c, 0)))
    graph = trainer.train_function.get_concrete_function(iterator, tf.constant(1, tf.int64)).graph
    bad = non_device_ops(graph.as_graph_def())
    trainer.close()
    images_per_second = metrics["images_per_second"]
    return {
        "path_ok": not bad,
        "non_device_ops": bad,
        "first_call_s": round(first, 2),
        "ms_per_step": round(1000 * args.batch / images_per_second, 1),
        "images_per_second": round(images_per_second, 1),
    }


def check_demo(strategy, device, mode, args, workdir) -> dict:
    """`--demo_steps` steps of the digits demo; the loss must fall (first window to last)."""
    window = max(1, min(10, args.demo_steps // 2))
    trainer, train_dataset, _ = _trainer(
        strategy,
        mode,
        os.path.join(workdir, f"demo_{mode}"),
        depth_multiplier=args.depth_multiplier,
        log_every=window,
        **demo.RECIPE,
    )
    with bn_path(device):
        # Each call returns the mean loss of its window of steps.
        first = trainer.train(train_dataset, window)["loss"]
        last = trainer.train(train_dataset, args.demo_steps)["loss"]
    trainer.close()
    return {"loss_first": round(first, 4), "loss_last": round(last, 4), "loss_fell": last < first}


def check_layer(device: str, args) -> dict:
    """Ours against the fused kernel on BN-Inception's largest BN input at `--size`."""
    shape = (args.batch, args.size // 4, args.size // 4, max(1, int(192 * args.depth_multiplier)))
    x = tf.random.stateless_normal(shape, seed=(3, 4), mean=0.5)
    dy = tf.random.stateless_normal(shape, seed=(5, 6))
    layers = {
        "ours": BatchNormalization(epsilon=EPSILON),
        "fused kernel (cuDNN on GPU)": FusedKernelBN(),
    }
    steps, results = {}, {}
    for name, layer in layers.items():
        layer.build(shape)

        def step(layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
            return (y, *tape.gradient(y, [x, *layer.trainable_variables], output_gradients=dy))

        steps[name] = tf.function(step)
        with bn_path(device):
            results[name] = [t.numpy() for t in steps[name]()]  # traced here
    times = {name: [] for name in layers}
    for _ in range(args.layer_repeats):  # interleaved: machine noise hits both alike
        for name, step in steps.items():
            began = time.perf_counter()
            step()[-1].numpy()  # a function returns when all its outputs are ready
            times[name].append(time.perf_counter() - began)
    ours, fused = results["ours"], results["fused kernel (cuDNN on GPU)"]
    differences = [float(np.max(np.abs(a - b))) for a, b in zip(ours, fused, strict=True)]
    medians = {name: 1000 * statistics.median(t) for name, t in times.items()}
    return {
        "shape": list(shape),
        "ms": {name: round(ms, 3) for name, ms in medians.items()},
        "fused_over_ours": round(medians["fused kernel (cuDNN on GPU)"] / medians["ours"], 2),
        "max_difference": dict(zip(("y", "dx", "dgamma", "dbeta"), differences, strict=True)),
        "agree": differences[0] < 1e-3 and differences[1] < 1e-3,
    }


def markdown(report: dict) -> str:
    rows = [
        f"{report['device']} (compute capability {report['compute_capability']}), TensorFlow "
        f"{report['tensorflow']}, Keras {report['keras']}; host {report['host']}",
        "",
        "| mode | path | first call (s) | ms/step | images/s | demo loss (first → last 10) |",
        "|---|---|---|---|---|---|",
    ]
    for mode, r in report["modes"].items():
        path = "ok" if r["path_ok"] else "FAIL: " + ", ".join(r["non_device_ops"])
        fell = "" if r["loss_fell"] else " FAIL: did not fall"
        rows.append(
            f"| {mode} | {path} | {r['first_call_s']} | {r['ms_per_step']} | "
            f"{r['images_per_second']} | {r['loss_first']} → {r['loss_last']}{fell} |"
        )
    layer = report["layer"]
    rows.append("")
    rows.append(
        f"BN layer, forward + backward on {layer['shape']}: ours {layer['ms']['ours']} ms, "
        f"fused kernel {layer['ms']['fused kernel (cuDNN on GPU)']} ms "
        f"(fused / ours = {layer['fused_over_ours']}); largest difference "
        + ", ".join(f"{k} {v:.1e}" for k, v in layer["max_difference"].items())
        + ("" if layer["agree"] else " FAIL")
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("GPU", "CPU"), default="GPU")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--depth_multiplier", type=float, default=1.0)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--demo_steps", type=int, default=50)
    parser.add_argument("--layer_repeats", type=int, default=20)
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--output", default="gpu_report.json")
    args = parser.parse_args(argv)
    devices = tf.config.get_visible_devices(args.device)
    if not devices:
        print(
            f"gpu_check: no {args.device} visible to TensorFlow {tf.__version__}; nothing to check."
        )
        return 0
    device = f"/{args.device.lower()}:0"
    details = tf.config.experimental.get_device_details(devices[0]) if args.device == "GPU" else {}
    report = {
        "device": details.get("device_name", platform.processor() or args.device),
        "compute_capability": details.get("compute_capability"),
        "host": cpu_description(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "arguments": vars(args),
        "modes": {},
    }
    strategy = tf.distribute.OneDeviceStrategy(device)
    with tempfile.TemporaryDirectory() as workdir, tf.device(device):
        report["layer"] = check_layer(args.device, args)
        for mode in args.modes:
            report["modes"][mode] = check_step(strategy, args.device, mode, args, workdir)
            report["modes"][mode].update(check_demo(strategy, args.device, mode, args, workdir))
            print(f"gpu_check: {mode}: {report['modes'][mode]}", flush=True)
    report["ok"] = report["layer"]["agree"] and all(
        r["path_ok"] and r["loss_fell"] for r in report["modes"].values()
    )
    with open(args.output, "w") as f:
        json.dump(report, f, indent=2)
    print(markdown(report))
    print(f"gpu_check: {'all checks passed' if report['ok'] else 'FAILED'}; wrote {args.output}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
