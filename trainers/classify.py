r"""Classifies images: `python -m trainers.classify IMAGE...` (`bninception-classify`).

A thin absl-flags front end of `keras_bninception.classify`. At most one model source; without
one, the ImageNet weights (TF-slim's published checkpoint, downloaded once into the Keras cache):

  python -m trainers.classify cat.jpg dog.png                      # ImageNet, top 5
  python -m trainers.classify --weights=inception_v2.ckpt cat.jpg  # or .tar.gz, or model.keras
  python -m trainers.classify --model_dir=runs/flowers --top_k=3 photos/*.jpg
  python -m trainers.classify --saved_model=out/saved_model cat.jpg
  python -m trainers.classify --tflite=out/bninception_int8.tflite --json cat.jpg

Each image is printed with its top-k classes (probability, label, class id), or with `--json`
one JSON document on stdout. An image that cannot be read is named in an `error:` line on
stderr, the others are still classified, and the exit status is 1. A model that cannot be
loaded ends in one `error:` line (exit status 1); a malformed flag in one (exit status 2).
"""

from __future__ import annotations

import sys

from absl import app, flags

# Its own flag set, as trainers.export: --model_dir is trainers.train's flag too.
FLAGS = flags.FlagValues()
SOURCES = ("weights", "model_dir", "saved_model", "tflite")

flags.DEFINE_string(
    "weights",
    None,
    "'imagenet' (the default when no source is given), a TF-slim inception_v2 checkpoint "
    "(prefix, V1 file or inception_v2_2016_08_28.tar.gz) or a .keras model file.",
    flag_values=FLAGS,
)
flags.DEFINE_string(
    "model_dir", None, "A training run: its newest checkpoint and class names.", flag_values=FLAGS
)
flags.DEFINE_string(
    "saved_model", None, "An exported SavedModel directory (trainers.export).", flag_values=FLAGS
)
flags.DEFINE_string(
    "tflite", None, "An exported .tflite file, run with the LiteRT interpreter.", flag_values=FLAGS
)
flags.DEFINE_string(
    "labels", None, "--weights: class names, one a line (default: ImageNet's).", flag_values=FLAGS
)
flags.DEFINE_integer(
    "image_size", 224, "--weights (a checkpoint): input height and width.", flag_values=FLAGS
)
flags.DEFINE_integer(
    "top_k", 5, "How many classes to print per image.", lower_bound=1, flag_values=FLAGS
)
flags.DEFINE_boolean("json", False, "Print one JSON document instead of text.", flag_values=FLAGS)


def load_classifier():
    """The `keras_bninception.classify.Classifier` the flags name."""
    from keras_bninception import classify

    given = [name for name in SOURCES if getattr(FLAGS, name)]
    if len(given) > 1:
        raise classify.ClassifyError(
            "Give at most one model: --weights, --model_dir, --saved_model or --tflite (none: "
            f"the ImageNet weights); received {', '.join('--' + n for n in given)}"
        )
    if FLAGS.labels and given and given != ["weights"]:
        raise classify.ClassifyError(
            "--labels goes with --weights; the other sources carry their class names"
        )
    if FLAGS.model_dir:
        return classify.from_model_dir(FLAGS.model_dir)
    if FLAGS.saved_model:
        return classify.from_saved_model(FLAGS.saved_model)
    if FLAGS.tflite:
        return classify.from_tflite(FLAGS.tflite)
    return classify.from_weights(FLAGS.weights or "imagenet", FLAGS.image_size, FLAGS.labels)


def main(argv: list[str]) -> None:
    from keras_bninception import classify
    from trainers.cli import fail

    images = argv[1:]
    if not images:
        fail("name at least one image file: python -m trainers.classify IMAGE...", status=2)
    try:
        classifier = load_classifier()
    except ValueError as error:  # ClassifyError, WeightsError and Keras' own
        fail(error)
    results, failures = classify.classify_files(classifier, images, FLAGS.top_k)
    if FLAGS.json:
        print(classify.format_json(results, failures, classifier.description))
    elif results:
        print(classify.format_text(results))
    for path, why in failures.items():
        sys.stderr.write(f"error: cannot classify {path}: {why}\n")
    sys.exit(1 if failures else 0)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses this binary's flags (`trainers.cli.parse_own_flags`)."""
    from trainers.cli import parse_own_flags

    return parse_own_flags(FLAGS, argv, __doc__)


def run() -> None:
    """Console-script entry point (`bninception-classify`)."""
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
