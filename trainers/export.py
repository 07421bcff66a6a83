r"""Exports BN-Inception for serving and phones: `python -m trainers.export` (`bninception-export`).

A thin absl-flags front end of `keras_bninception.export`. Exactly one source:

  # A training run (its newest checkpoint; the model rebuilt from the run's config.json):
  python -m trainers.export --model_dir=runs/demo --export_dir=/tmp/digits_export

  # A Keras model file, with its class names (one a line):
  python -m trainers.export --keras_model=model.keras --labels=labels.txt \
      --calibration_dir=images/ --export_dir=/tmp/keras_export

  # The published TF-slim ImageNet checkpoint (1001 classes), int8 calibrated on a folder:
  python -m trainers.export --tf_slim_checkpoint=inception_v2.ckpt \
      --calibration_dir=imagenet_val_sample/ --export_dir=/tmp/inception_v2

`--formats` picks any of saved_model,float32,float16,int8 (default all); int8 needs calibration
images: the run's training data, or `--calibration_dir` (at least 200 .jpg/.png files). The output
is written into a temporary directory next to `--export_dir` and renamed into place at the end; an
existing `--export_dir` is refused unless `--overwrite`. Problems end with one `error:` line on
stderr, exit status 1, and nothing written.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

# Its own flag set, not absl's global one: `trainers.train` defines --model_dir and --image_size
# too, and both modules may be imported in one process (the demo, a test run).
FLAGS = flags.FlagValues()
SOURCES = ("model_dir", "keras_model", "tf_slim_checkpoint")

flags.DEFINE_string(
    "model_dir", None, "A training run: its newest checkpoint and config.json.", flag_values=FLAGS
)
flags.DEFINE_string("keras_model", None, "A .keras model file.", flag_values=FLAGS)
flags.DEFINE_string(
    "tf_slim_checkpoint", None, "A TF-slim inception_v2 checkpoint prefix.", flag_values=FLAGS
)
flags.DEFINE_string("export_dir", None, "The output directory (must not exist).", flag_values=FLAGS)
flags.DEFINE_string(
    "formats",
    "saved_model,float32,float16,int8",
    "Comma-separated subset of the formats.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "calibration_dir",
    None,
    "Folder of .jpg/.png images calibrating int8 (>= 200 images).",
    flag_values=FLAGS,
)
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


def export_from_flags() -> dict:
    """Runs the export the flags describe; returns the contents of export.json."""
    from keras_bninception import export
    from keras_bninception.export import sources

    if not FLAGS.export_dir:
        raise export.ExportError("--export_dir must name the output directory")
    formats = export.parse_formats(FLAGS.formats)
    export.exporter.check_export_dir(FLAGS.export_dir, FLAGS.overwrite)
    if FLAGS.calibration_dir and "int8" not in formats:
        logging.warning("--calibration_dir is unused: int8 is not among --formats.")
    source = _source()
    calibration = source.calibration_images
    if "int8" in formats and FLAGS.calibration_dir:
        size = int(source.model.inputs[0].shape[1])
        calibration = sources.calibration_from_folder(FLAGS.calibration_dir, size)
    if "int8" in formats and calibration is None:
        raise export.ExportError(
            "int8 needs calibration images: pass --calibration_dir (a folder of at least "
            f"{export.MIN_CALIBRATION_IMAGES} .jpg/.png images), or drop int8 from --formats"
        )
    return export.export(
        source.model,
        source.class_names,
        FLAGS.export_dir,
        formats=formats,
        calibration_images=calibration if "int8" in formats else None,
        preprocess_config=source.preprocess_config,
        name=FLAGS.name,
        source=source.description,
        overwrite=FLAGS.overwrite,
    )


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    from keras_bninception.export import ExportError

    try:
        info = export_from_flags()
    except (ExportError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
    print(f"Exported to {os.path.abspath(FLAGS.export_dir)}:")
    for name, entry in info["files"].items():
        print(f"  {entry['path']}: {entry['bytes'] / 1e6:.2f} MB ({name})")
    print(json.dumps({"image_size": info["image_size"], "num_classes": info["num_classes"]}))


def parse_flags(argv: list[str]) -> list[str]:
    """Parses this binary's flags; a malformed flag is one `error:` line (exit status 2)."""
    flags.FLAGS(argv[:1])  # absl's own (logging) flags at their defaults
    try:
        return FLAGS(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def run() -> None:
    """Console-script entry point (`bninception-export`)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
