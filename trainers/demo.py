"""`make demo`: BN-Inception on the embedded handwritten digits, on the CPU, in a few minutes.

Trains the full BN-Inception (depth multiplier 1, about 10 M parameters) on scikit-learn's 8x8
digits (1,437 training / 360 held-out images, shipped inside scikit-learn, no download) upsampled
to 32x32, evaluates top-1 / top-5 on the held-out images, and prints where the checkpoints,
TensorBoard logs and metrics.json are. It is `python -m trainers.train` with these flags:

- `--image_size=32 --batch_size=64 --epochs=27` (607 steps);
- SGD with momentum 0.9 at BN-x30's initial learning rate 0.045, decayed exponentially as in the
  paper but compressed into the short run (x0.85 every epoch); L2 weight decay 1e-4, stronger
  than the paper's ImageNet value for a training set of 1,437 images;
- `--bn_momentum=0.9`: the moving statistics used at evaluation converge in a few hundred steps
  (at Keras' default 0.99 they would still be near their initial values and held-out accuracy at
  chance);
- `--seed=0 --deterministic`: the same result on every run of the same machine and TensorFlow
  build (floating-point rounding differs between CPUs, so elsewhere it can move by an image or
  two); checkpoints every 200 steps into `runs/demo-<date>-<time>/`.

It ends by exporting the trained model (`keras_bninception.export`: SavedModel and TFLite
float32 / float16 / int8 into `<model_dir>/export`) and classifying three held-out digits with the
int8 file through the LiteRT interpreter (`ai_edge_litert`), printing the file's size and how often
its top-1 agrees with the Keras model on the 360 held-out digits.

Extra flags are passed on, e.g. `python -m trainers.demo --image_size=64` or
`--model_dir=runs/demo` (rerunning with the same `--model_dir` resumes from its checkpoint).
"""

from __future__ import annotations

import sys
import time

import numpy as np
from absl import app

from trainers import train

# The demo's data and training recipe (also `benchmarks/gpu_check.py`'s), as `TrainConfig` values.
RECIPE = dict(
    dataset="digits",
    image_size=32,
    batch_size=64,
    optimizer="momentum",
    learning_rate=0.045,
    learning_rate_decay_factor=0.85,
    num_epochs_per_decay=1,
    weight_decay=1e-4,
    bn_momentum=0.9,
)
DEMO_FLAGS = [
    *(f"--{name}={value}" for name, value in RECIPE.items()),
    "--epochs=27",
    "--seed=0",
    "--deterministic",
    "--checkpoint_every=200",
    "--log_every=50",
    "--mode=train_and_eval",
]


def demo_argv(extra: list[str]) -> list[str]:
    """The `trainers.train` argv of the demo; flags in `extra` come last and so win."""
    model_dir = f"--model_dir=runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    return ["trainers.demo", *DEMO_FLAGS, model_dir, *extra]


def export_and_classify(model_dir: str) -> None:
    """Exports the run and classifies three held-out digits with the int8 file (LiteRT)."""
    import keras

    import keras_bninception
    from keras_bninception import data, export
    from keras_bninception.export import litert, sources

    source = sources.from_model_dir(model_dir)
    out = f"{model_dir}/export"
    info = export.export(
        source.model,
        source.class_names,
        out,
        calibration_images=source.calibration_images,
        preprocess_config=source.preprocess_config,
        name="digits",
        source=source.description,
        overwrite=True,
    )
    size = int(source.model.inputs[0].shape[1])
    batches = list(
        data.build_dataset("digits", "test", image_size=size, batch_size=360, training=False)
    )
    pixels = np.concatenate([x.numpy() for x, _ in batches])
    pixels = np.round((pixels + 1.0) * 127.5).astype(np.uint8)
    labels = np.concatenate([y.numpy() for _, y in batches])
    logits = source.model(keras_bninception.preprocess_input(pixels.astype(np.float32)))
    keras_top1 = np.asarray(keras.ops.argmax(logits, axis=-1))
    int8 = info["files"]["int8"]
    classifier = litert.TFLiteClassifier(f"{out}/{int8['path']}")
    int8_top1 = classifier.predict(pixels).argmax(1)
    print(f"Exported to {out}:", flush=True)
    for name, entry in info["files"].items():
        print(f"  {entry['path']}: {entry['bytes'] / 1e6:.2f} MB ({name})")
    print(
        f"int8 file ({int8['bytes'] / 1e6:.2f} MB) through ai_edge_litert, three held-out digits:"
    )
    for i in range(3):
        print(
            f"  image {i}: label {labels[i]}, int8 says {source.class_names[int8_top1[i]]}, "
            f"Keras says {source.class_names[keras_top1[i]]}"
        )
    agree = float((int8_top1 == keras_top1).mean())
    print(
        f"int8 top-1 agrees with Keras on {100 * agree:.2f} % of the {len(pixels)} held-out digits."
    )


def _train_then_export(argv: list[str]) -> None:
    train.main(argv)
    export_and_classify(train.FLAGS.model_dir)


def main() -> None:
    argv = demo_argv(sys.argv[1:])
    print("BN-Inception demo: python -m trainers.train " + " ".join(argv[1:]), flush=True)
    app.run(_train_then_export, argv=argv, flags_parser=train.parse_flags)


if __name__ == "__main__":
    main()
