"""Batch-1 inference latency and file sizes of the exported BN-Inception (not a test).

    python benchmarks/inference.py [--image_size=224] [--classes=1000] [--runs=60]

Builds BN-Inception (depth multiplier 1, 1000 classes, random weights: latency does not depend on
their values), exports it with `keras_bninception.export` (SavedModel, TFLite float32 / float16 /
int8; int8 calibrated on 200 seeded random images, which is enough to time it but not to judge its
accuracy), then times one image at a time, the runners interleaved round by round in this one
process so that they see the same machine load:

- Keras: `model(x, training=False)` (eager call);
- SavedModel: the loaded `serving_default` signature (pixels in, preprocessing inside);
- TFLite float32 / float16 / int8 through the LiteRT interpreter (`ai_edge_litert`, XNNPACK on),
  at 1 and 2 threads.

Prints a Markdown table: median and 90th percentile ms, file size, and ratios against the float32
TFLite file at 1 thread and against Keras.
"""

from __future__ import annotations

import argparse
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
from keras_bninception import export  # noqa: E402
from keras_bninception.export.litert import TFLiteClassifier  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=60, help="timed rounds (after 5 warm-up)")
    args = parser.parse_args()
    size = args.image_size
    keras.utils.set_random_seed(0)
    model = keras_bninception.BNInception(
        weights=None, classes=args.classes, input_shape=(size, size, 3)
    )
    rng = np.random.default_rng(0)
    calibration = rng.uniform(0, 255, (200, size, size, 3)).astype(np.float32)
    out = os.path.join(tempfile.mkdtemp(prefix="bninception_bench_"), "export")
    began = time.perf_counter()
    info = export.export(
        model, [f"class {i}" for i in range(args.classes)], out, calibration_images=calibration
    )
    print(f"export: {time.perf_counter() - began:.0f} s into {out}", flush=True)

    pixels = rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    x = keras_bninception.preprocess_input(pixels.copy())
    serving = tf.saved_model.load(os.path.join(out, "saved_model")).signatures["serving_default"]
    pixels_tensor = tf.constant(pixels)
    runners = {"Keras model(x, training=False)": lambda: model(x, training=False).numpy()}
    runners["SavedModel serving_default"] = lambda: serving(images=pixels_tensor)
    sizes = {"SavedModel serving_default": info["files"]["saved_model"]["bytes"]}
    for flavour in ("float32", "float16", "int8"):
        entry = info["files"][flavour]
        for threads in (1, 2):
            classifier = TFLiteClassifier(os.path.join(out, entry["path"]), num_threads=threads)
            tensor = classifier.prepare(pixels[0])
            name = f"TFLite {flavour}, {threads} thread{'s' if threads > 1 else ''}"
            runners[name] = lambda c=classifier, t=tensor: c.invoke(t)
            sizes[name] = entry["bytes"]

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
    print("| runner | median ms | p90 ms | file MB | × TFLite float32 1 thread | × Keras |")
    print("|---|---|---|---|---|---|")
    for name, t in times.items():
        size_mb = f"{sizes[name] / 1e6:.1f}" if name in sizes else "–"
        p90 = float(np.percentile(t, 90))
        print(
            f"| {name} | {medians[name]:.1f} | {p90:.1f} | {size_mb} | "
            f"{medians[name] / reference:.2f} | {medians[name] / keras_ms:.2f} |"
        )


if __name__ == "__main__":
    main()
