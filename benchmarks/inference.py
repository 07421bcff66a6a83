"""Batch-1 inference latency and file sizes of the exported BN-Inception (not a test).

    python benchmarks/inference.py [--image_size=224] [--classes=1000] [--runs=60] [--conv_only]
        [--int8_max_pool]

Builds BN-Inception (depth multiplier 1, 1000 classes, random weights: latency does not depend on
their values), exports it with `keras_bninception.export` (SavedModel, TFLite float32 / float16 /
int8; int8 calibrated on 200 seeded random images, which is enough to time it but not to judge its
accuracy), then times one image at a time, the runners interleaved round by round in this one
process so that they see the same machine load:

- Keras: `model(x, training=False)` (eager call);
- SavedModel: the loaded `serving_default` signature (pixels in, preprocessing inside);
- TFLite float32 / float16 / int8 through the LiteRT interpreter (`ai_edge_litert`, XNNPACK on),
  at 1 and 2 threads.

Prints a Markdown table: median and 90th percentile ms, file size, ratios against the float32
TFLite file at 1 thread and against Keras, and how many partitions XNNPACK split each TFLite graph
into, with the operators it left to TFLite's own kernels.

A second table times single convolutions, float32 against int8, in TFLite at 1 thread: what this
CPU's int8 kernels give at best. It comes first, with the CPU's int8 / bfloat16 dot-product features
(from /proc/cpuinfo): XNNPACK's int8 convolutions gain on CPUs with VNNI (x86) or sdot / i8mm (ARM);
with AVX2 alone they do about as many multiply-adds per cycle as float32 FMA. `--conv_only` prints
only that table (a minute instead of several).

`--int8_max_pool` adds a timing-only int8 file of the same network with its average pools as max
pools: XNNPACK takes no int8 AVERAGE_POOL_2D, so the real int8 graph runs in several partitions,
this one in one; the row shows what the split costs.
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_bninception  # noqa: E402
from benchmarks.machine import cpu_description  # noqa: E402
from keras_bninception import export  # noqa: E402
from keras_bninception.export import exporter, tflite  # noqa: E402
from keras_bninception.export.litert import TFLiteClassifier  # noqa: E402
from keras_bninception.export.serving import ServingModule  # noqa: E402

# Single convolutions (kernel, spatial size, input channels, output channels): BN-Inception's
# Conv2d_2c_3x3, a large 3x3 and a 1x1 of the Mixed_3 modules' size.
CONV_SHAPES = ((3, 56, 64, 192), (3, 56, 192, 192), (1, 28, 256, 256))


def xnnpack_partitions(interpreter, num_ops: int) -> tuple[int, dict[str, int]]:
    """How many XNNPACK partitions an allocated interpreter runs, and the ops left outside them.

    The interpreter's nodes are the file's `num_ops` operators followed by one DELEGATE node per
    partition; a partition holds the operators between its outputs and its inputs (walked back
    through the producers). Uses the interpreter's experimental `_get_ops_details()`.
    """
    nodes = interpreter._get_ops_details()
    original, delegates = (
        nodes[:num_ops],
        [n for n in nodes[num_ops:] if n["op_name"] == "DELEGATE"],
    )
    producer = {int(t): i for i, node in enumerate(original) for t in node["outputs"]}
    taken: set[int] = set()
    for delegate in delegates:
        boundary = {int(t) for t in delegate["inputs"]}
        stack = [int(t) for t in delegate["outputs"]]
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor not in producer or producer[tensor] in taken:
                continue
            taken.add(producer[tensor])
            stack.extend(int(t) for t in original[producer[tensor]]["inputs"])
    left = collections.Counter(n["op_name"] for i, n in enumerate(original) if i not in taken)
    return len(delegates), dict(sorted(left.items()))


def max_pool_copy(model: keras.Model) -> keras.Model:
    """`model` with every AveragePooling2D replaced by a MaxPooling2D of the same window."""

    def clone(layer):
        if isinstance(layer, keras.layers.AveragePooling2D):
            return keras.layers.MaxPooling2D(
                layer.pool_size, layer.strides, layer.padding, name=layer.name
            )
        return layer.__class__.from_config(layer.get_config())

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _interpreter(content: bytes):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=content, num_threads=1)
    interpreter.allocate_tensors()
    return interpreter


def conv_table(runs: int) -> None:
    """Times single convolutions (+ bias, ReLU), float32 against full int8, at 1 thread."""
    rng = np.random.default_rng(0)
    rows = []
    for kernel, size, channels_in, channels_out in CONV_SHAPES:
        inputs = keras.Input((size, size, channels_in), batch_size=1)
        conv = keras.layers.Conv2D(channels_out, kernel, padding="same", activation="relu")
        model = keras.Model(inputs, conv(inputs))
        samples = [rng.uniform(-1, 1, (1, size, size, channels_in)).astype(np.float32)]
        files = {}
        for flavour in ("float32", "int8"):
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            if flavour == "int8":
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                converter.inference_input_type = converter.inference_output_type = tf.int8
                converter.representative_dataset = lambda s=samples: ([x] for x in s * 8)
            files[flavour] = converter.convert()
        interpreters = {}
        for flavour, content in files.items():
            interpreter = _interpreter(content)
            detail = interpreter.get_input_details()[0]
            interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
            partitions, left = xnnpack_partitions(interpreter, len(tflite.op_list(content)))
            assert partitions == 1 and not left, (flavour, partitions, left)
            interpreters[flavour] = interpreter
        times = {flavour: [] for flavour in interpreters}
        for round_ in range(runs + 3):
            for flavour, interpreter in interpreters.items():
                start = time.perf_counter()
                interpreter.invoke()
                if round_ >= 3:
                    times[flavour].append(time.perf_counter() - start)
        macs = size * size * kernel * kernel * channels_in * channels_out
        rows.append((kernel, size, channels_in, channels_out, macs, times))
    print(
        f"\nOne convolution (+ bias, ReLU), batch 1, TFLite with XNNPACK at 1 thread, median of "
        f"{runs} interleaved runs after 3 warm-up:\n"
    )
    print(
        "| convolution | M multiply-adds | float32 ms | int8 ms | float32 GMAC/s | int8 GMAC/s "
        "| int8 / float32 |"
    )
    print("|---|---|---|---|---|---|---|")
    for kernel, size, channels_in, channels_out, macs, times in rows:
        f32, i8 = statistics.median(times["float32"]), statistics.median(times["int8"])
        print(
            f"| {kernel}x{kernel}, {size}x{size}x{channels_in} -> {channels_out} | "
            f"{macs / 1e6:.0f} | {f32 * 1e3:.2f} | {i8 * 1e3:.2f} | {macs / f32 / 1e9:.1f} | "
            f"{macs / i8 / 1e9:.1f} | {i8 / f32:.2f} |",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=60, help="timed rounds (after 5 warm-up)")
    parser.add_argument(
        "--conv_only", action="store_true", help="only the single-convolution table"
    )
    parser.add_argument(
        "--int8_max_pool",
        action="store_true",
        help="also time an int8 file with max instead of average pools (one XNNPACK partition)",
    )
    args = parser.parse_args()
    print(cpu_description(), flush=True)
    conv_table(min(args.runs, 30))
    if args.conv_only:
        return
    size = args.image_size
    keras.utils.set_random_seed(0)
    model = keras_bninception.BNInception(
        weights=None, classes=args.classes, input_shape=(size, size, 3)
    )
    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 255, (200, size, size, 3)).astype(np.float32)
    out = os.path.join(tempfile.mkdtemp(prefix="bninception_bench_"), "export")
    began = time.perf_counter()
    class_names = [f"class {i}" for i in range(args.classes)]
    info = export.export(model, class_names, out, calibration_images=calibration)
    print(f"export: {time.perf_counter() - began:.0f} s into {out}", flush=True)

    pixels = rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    x = keras_bninception.preprocess_input(pixels.copy())
    serving = tf.saved_model.load(os.path.join(out, "saved_model")).signatures["serving_default"]
    pixels_tensor = tf.constant(pixels)
    runners = {"Keras model(x, training=False)": lambda: model(x, training=False).numpy()}
    runners["SavedModel serving_default"] = lambda: serving(images=pixels_tensor)
    sizes = {"SavedModel serving_default": info["files"]["saved_model"]["bytes"]}
    partitions: dict[str, tuple[int, dict[str, int]]] = {}
    for flavour in ("float32", "float16", "int8"):
        entry = info["files"][flavour]
        for threads in (1, 2):
            classifier = TFLiteClassifier(os.path.join(out, entry["path"]), num_threads=threads)
            tensor = classifier.prepare(pixels[0])
            name = f"TFLite {flavour}, {threads} thread{'s' if threads > 1 else ''}"
            runners[name] = lambda c=classifier, t=tensor: c.invoke(t)
            sizes[name] = entry["bytes"]
            with open(os.path.join(out, entry["path"]), "rb") as f:
                num_ops = len(tflite.op_list(f.read()))
            partitions[name] = xnnpack_partitions(classifier.interpreter, num_ops)
    if args.int8_max_pool:
        content = tflite.convert(
            ServingModule(max_pool_copy(model), class_names).tflite_model("int8"),
            "int8",
            exporter._calibration_batches(calibration[:16], size),
        )
        classifier = TFLiteClassifier(content, num_threads=1)
        tensor = classifier.prepare(pixels[0])
        name = "TFLite int8, average pools as max pools (timing only), 1 thread"
        runners[name] = lambda c=classifier, t=tensor: c.invoke(t)
        sizes[name] = len(content)
        partitions[name] = xnnpack_partitions(classifier.interpreter, len(tflite.op_list(content)))

    times: dict[str, list[float]] = {name: [] for name in runners}
    for round_ in range(args.runs + 5):
        for name, run in runners.items():
            start = time.perf_counter()
            run()
            if round_ >= 5:
                times[name].append((time.perf_counter() - start) * 1e3)

    medians = {name: statistics.median(t) for name, t in times.items()}
    reference = medians["TFLite float32, 1 thread"]
    keras_ms = medians["Keras model(x, training=False)"]
    print(
        f"\nBatch 1, {size}x{size}, {args.classes} classes, median of {args.runs} interleaved "
        "runs after 5 warm-up:\n"
    )
    print(
        "| runner | median ms | p90 ms | file MB | × TFLite float32 1 thread | × Keras "
        "| XNNPACK partitions (ops left out) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, t in times.items():
        size_mb = f"{sizes[name] / 1e6:.1f}" if name in sizes else "–"
        p90 = float(np.percentile(t, 90))
        split = "–"
        if name in partitions:
            count, left = partitions[name]
            split = f"{count}" + (
                f" ({', '.join(f'{n} {op}' for op, n in left.items())})" if left else ""
            )
        print(
            f"| {name} | {medians[name]:.1f} | {p90:.1f} | {size_mb} | "
            f"{medians[name] / reference:.2f} | {medians[name] / keras_ms:.2f} | {split} |"
        )


if __name__ == "__main__":
    main()
