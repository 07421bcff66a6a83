r"""Exports BN-Inception for serving and phones: `python -m trainers.export` (`bninception-export`).

A thin absl-flags front end of `keras_bninception.export`. Exactly one source:

  # A training run (its newest checkpoint; the model rebuilt from the run's config.json):
  python -m trainers.export --model_dir=runs/demo --export_dir=/tmp/digits_export

  # A Keras model file, with its class names (one a line):
  python -m trainers.export --keras_model=model.keras --labels=labels.txt \
      --export_dir=/tmp/keras_export

  # The published TF-slim ImageNet checkpoint (1001 classes; downloaded once into the Keras
  # cache, or a local inception_v2.ckpt / inception_v2_2016_08_28.tar.gz), int8 calibrated:
  python -m trainers.export --tf_slim_checkpoint=imagenet \
      --calibration_images=imagenet_val_sample/ --export_dir=/tmp/inception_v2

`--formats` picks any of saved_model,float32,float16,int8. By default every format is written that
can be: saved_model, float32 and float16, and int8 when calibration images are at hand (a
`--model_dir` run's training data, read only then, or `--calibration_images`, a folder of at least
200 .jpg/.png images); otherwise one line says that int8 was skipped and how to get it. Asking for
int8 (in `--formats`, or by giving `--calibration_images`) without usable calibration images is an
error. Every .tflite file has the signature `serving_default` (input `images`, output
`probabilities`) and the TFLite Metadata MediaPipe's ImageClassifier reads. The output is written
into a temporary directory next to `--export_dir` and renamed into place at the end; an existing
`--export_dir` is refused unless `--overwrite`. Problems end with one `error:` line on stderr, exit
status 1, and nothing written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

from absl import app, flags, logging

from trainers.cli import fail, no_arguments, parse_own_flags

if TYPE_CHECKING:
    import numpy as np

# Its own flag set, not absl's global one: `trainers.train` defines --model_dir and --image_size
# too, and both modules may be imported in one process (the demo, a test run).
FLAGS = flags.FlagValues()
SOURCES = ("model_dir", "keras_model", "tf_slim_checkpoint")

flags.DEFINE_string(
    "model_dir", None, "A training run: its newest checkpoint and config.json.", flag_values=FLAGS
)
flags.DEFINE_string("keras_model", None, "A .keras model file.", flag_values=FLAGS)
flags.DEFINE_string(
    "tf_slim_checkpoint",
    None,
    "A TF-slim inception_v2 checkpoint: 'imagenet' (the published one, downloaded once into the "
    "Keras cache), a checkpoint prefix or V1 file, or inception_v2_2016_08_28.tar.gz.",
    flag_values=FLAGS,
)
flags.DEFINE_string("export_dir", None, "The output directory (must not exist).", flag_values=FLAGS)
flags.DEFINE_string(
    "formats",
    None,
    "Comma-separated subset of saved_model,float32,float16,int8 (default: saved_model,float32,"
    "float16, and int8 when calibration images are at hand).",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "calibration_images",
    None,
    "Folder of .jpg/.png images (>= 200) calibrating the int8 file (asks for int8).",
    flag_values=FLAGS,
)
flags.DEFINE_alias("calibration_dir", "calibration_images", flag_values=FLAGS)
flags.DEFINE_string(
    "labels", None, "--keras_model: class names, one a line (default: ids).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "image_size", 224, "--tf_slim_checkpoint: input height and width.", flag_values=FLAGS
)
flags.DEFINE_string("name", "bninception", "Prefix of the .tflite file names.", flag_values=FLAGS)
flags.DEFINE_boolean("overwrite", False, "Replace an existing --export_dir.", flag_values=FLAGS)


def _source():
    from keras_bninception.export import ExportError, sources

    given = [name for name in SOURCES if getattr(FLAGS, name)]
    if len(given) != 1:
        raise ExportError(
            "Give exactly one source: --model_dir, --keras_model or --tf_slim_checkpoint; "
            f"received {', '.join('--' + n for n in given) or 'none'}"
        )
    if FLAGS.model_dir:
        return sources.from_model_dir(FLAGS.model_dir)
    if FLAGS.keras_model:
        return sources.from_keras_file(FLAGS.keras_model, FLAGS.labels)
    return sources.from_tf_slim_checkpoint(FLAGS.tf_slim_checkpoint, FLAGS.image_size)


INT8_HINT = "pass --calibration_images=DIR (a folder of at least {} .jpg/.png images)"


def export_from_flags() -> dict:
    """Runs the export the flags describe; returns the contents of export.json."""
    from keras_bninception import export
    from keras_bninception.export import sources

    if not FLAGS.export_dir:
        raise export.ExportError("--export_dir must name the output directory")
    formats = export.parse_formats(FLAGS.formats) if FLAGS.formats is not None else None
    if formats is None and FLAGS.calibration_images:
        formats = export.FORMATS  # calibration images given: int8 is asked for
    if FLAGS.calibration_images and "int8" not in formats:
        logging.warning("--calibration_images is unused: int8 is not among --formats.")
    export.exporter.check_export_dir(FLAGS.export_dir, FLAGS.overwrite)
    source = _source()
    # The source's own calibration images (a run's training data): an array, or a callable that
    # reads them, called by `export` only if it writes int8.
    calibration = source.calibration_images
    if FLAGS.calibration_images and "int8" in formats:
        size = int(source.model.inputs[0].shape[1])
        calibration = sources.calibration_from_folder(FLAGS.calibration_images, size)
    asked = formats is not None and "int8" in formats
    if asked and calibration is None:
        hint = INT8_HINT.format(export.MIN_CALIBRATION_IMAGES)
        raise export.ExportError(
            f"int8 needs calibration images: {hint}, or leave int8 out of --formats"
        )
    if callable(calibration):
        calibration = run_calibration(calibration, asked)
    return export.export(
        source.model,
        source.class_names,
        FLAGS.export_dir,
        formats=formats,
        calibration_images=calibration if formats is None or "int8" in formats else None,
        preprocess_config=source.preprocess_config,
        name=FLAGS.name,
        source=source.description,
        overwrite=FLAGS.overwrite,
    )


def run_calibration(load: Callable[[], np.ndarray], asked: bool) -> Callable[[], np.ndarray]:
    """A run's calibration loader, failing with one line that names the run and the flag.

    Args:
        load: reads the source's calibration images (a run's training data).
        asked: int8 was asked for (then a failure is an error, else int8 is skipped).
    """
    import tensorflow as tf

    from keras_bninception.errors import first_line
    from keras_bninception.export import MIN_CALIBRATION_IMAGES, ExportError

    def calibration() -> np.ndarray:
        try:
            return load()
        except (ValueError, OSError, tf.errors.OpError) as error:  # DataError, ExportError, ...
            reason = f"the training data of --model_dir cannot be read ({first_line(error)})"
            if asked:
                hint = INT8_HINT.format(MIN_CALIBRATION_IMAGES)
                reason = f"int8 needs calibration images: {reason}; {hint}, or leave int8 out"
            raise ExportError(reason) from error

    return calibration


def summary(info: dict, export_dir: str) -> list[str]:
    """The lines printed after an export: each file's size, then each skipped format and why."""
    from keras_bninception.export import MIN_CALIBRATION_IMAGES

    lines = [f"Exported to {os.path.abspath(export_dir)}:"]
    for name, entry in info["files"].items():
        lines.append(f"  {entry['path']}: {entry['bytes'] / 1e6:.2f} MB ({name})")
    for name, reason in info.get("skipped", {}).items():
        lines.append(f"{name} skipped: {reason}; {INT8_HINT.format(MIN_CALIBRATION_IMAGES)}")
    lines.append(json.dumps({"image_size": info["image_size"], "num_classes": info["num_classes"]}))
    return lines


def main(argv: list[str]) -> None:
    no_arguments(argv)
    from keras_bninception.export import ExportError

    try:
        info = export_from_flags()
    except (ExportError, ValueError) as error:
        fail(error)
    print("\n".join(summary(info, FLAGS.export_dir)))


def parse_flags(argv: list[str]) -> list[str]:
    """Parses this binary's own flags (`trainers.cli.parse_own_flags`)."""
    return parse_own_flags(FLAGS, argv, __doc__)


def run() -> None:
    """Console-script entry point (`bninception-export`)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
