"""Classifying image files with BN-Inception in any of its forms (`python -m trainers.classify`).

    classifier = classify.from_weights("imagenet")  # or from_model_dir / from_saved_model / ...
    results, failures = classify.classify_files(classifier, ["cat.jpg"], top_k=5)

A `Classifier` turns one encoded image (JPEG / PNG / GIF / BMP bytes) into class probabilities
with the model's own preprocessing (`keras_bninception.data.preprocessing`'s evaluation function:
central crop, resize, [-1, 1], with the configuration of the data the model was trained on):

- `from_weights(spec)`: "imagenet" (the default of the binary: TF-slim's published checkpoint,
  downloaded once, its background class left out so that the classes are ImageNet's 1000), a
  TF-slim checkpoint or a Keras `.keras` file (`keras_bninception.weights` resolves it);
- `from_model_dir(model_dir)`: a training run's newest checkpoint, its class names and its
  dataset's preprocessing;
- `from_saved_model(path)`: an exported SavedModel, through its `serve_image_bytes` signature
  (the preprocessing is inside it);
- `from_tflite(path)`: an exported `.tflite` file through the LiteRT interpreter (the file a
  phone runs), its `serving_default` signature when it has one, else its sole input and output;
  labels from the file's TFLite Metadata, the preprocessing from the `export.json` beside it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import zipfile
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from keras_bninception import weights
from keras_bninception.data import preprocessing
from keras_bninception.errors import first_line

LABELS_FILE = "labels.txt"
EXPORT_INFO_FILE = "export.json"
DEFAULT_IMAGE_SIZE = 224


class ClassifyError(ValueError):
    """A model that cannot be loaded for classification (one line, what is accepted)."""


@dataclasses.dataclass
class Classifier:
    """A model that classifies one encoded image.

    Attributes:
        probabilities: encoded image bytes -> probabilities [classes] (float32).
        class_names: one name per class.
        description: what the model is, e.g. "saved_model /tmp/out/saved_model".
    """

    probabilities: Callable[[bytes], np.ndarray]
    class_names: list[str]
    description: str


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One of the top-k classes of an image."""

    class_id: int
    label: str
    probability: float


def _pixels(contents: bytes, size: int, config: preprocessing.PreprocessConfig) -> np.ndarray:
    """The evaluation-preprocessed image [1, S, S, 3] in [-1, 1]."""
    x = preprocessing.decode_and_preprocess_for_eval(tf.constant(contents), size, config)
    return x.numpy()[None]


def _softmax(y: np.ndarray) -> np.ndarray:
    e = np.exp(y - y.max())
    return e / e.sum()


def _keras_classifier(
    model, class_names: Sequence[str], config: preprocessing.PreprocessConfig, description: str
) -> Classifier:
    from keras_bninception.export.serving import outputs_probabilities

    size = int(model.inputs[0].shape[1])
    softmax = not outputs_probabilities(model)

    def probabilities(contents: bytes) -> np.ndarray:
        y = np.asarray(model(_pixels(contents, size, config), training=False), np.float32)[0]
        return _softmax(y) if softmax else y

    return Classifier(probabilities, list(class_names), description)


def _labels(path: str | None, num_classes: int) -> list[str]:
    from keras_bninception.export import ExportError, sources

    try:
        return sources.read_labels(path, num_classes) if path else _default_names(num_classes)
    except ExportError as error:
        raise ClassifyError(str(error)) from error


def _default_names(num_classes: int) -> list[str]:
    from keras_bninception.export.sources import default_class_names

    return default_class_names(num_classes)


def from_weights(
    spec: str = weights.IMAGENET, image_size: int = DEFAULT_IMAGE_SIZE, labels: str | None = None
) -> Classifier:
    """ "imagenet", a TF-slim inception_v2 checkpoint (1001 classes become ImageNet's 1000) or a
    Keras `.keras` model; `labels`: a file of class names, one a line (default: ImageNet's names
    for 1000 / 1001 classes, else the class ids)."""
    from keras_bninception.models import BNInception

    source = weights.resolve(spec, "--weights", kinds=(weights.TF_SLIM, weights.KERAS_MODEL))
    if source.kind == weights.KERAS_MODEL:
        model = weights.sources.load_keras_model(source.path, "--weights")
    else:
        classes = source.num_classes
        if classes is None:
            raise ClassifyError(f"{source.path} has no classifier (InceptionV2/Logits)")
        if classes == 1001:
            classes = 1000  # TF-slim's background class 0 left out: ImageNet's classes
        model = BNInception(
            weights=source,
            classes=classes,
            input_shape=(image_size, image_size, 3),
            depth_multiplier=weights.tf_slim.checkpoint_depth_multiplier(source.path),
        )
    names = _labels(labels, int(model.outputs[0].shape[-1]))
    return _keras_classifier(
        model, names, preprocessing.DEFAULT_CONFIG, f"{source.kind} {source.path}"
    )


def from_model_dir(model_dir: str) -> Classifier:
    """The newest checkpoint of a training run, with the run's class names and preprocessing."""
    from keras_bninception.export.sources import run_preprocess_config

    run = weights.sources.load_run(model_dir, "--model_dir")
    description = f"model_dir {model_dir} (step {run.step})"
    return _keras_classifier(
        run.model, run.class_names, run_preprocess_config(run.config), description
    )


def _labels_beside(directory: str, num_classes: int) -> list[str]:
    path = os.path.join(directory, LABELS_FILE)
    return _labels(path if os.path.isfile(path) else None, num_classes)


def from_saved_model(path: str) -> Classifier:
    """An exported SavedModel (`trainers.export`'s `saved_model/`), through `serve_image_bytes`;
    class names from `labels.txt` in it or in the export directory around it."""
    if not tf.saved_model.contains_saved_model(path):
        raise ClassifyError(f"--saved_model must be a SavedModel directory; received {path!r}")
    loaded = tf.saved_model.load(path)
    if "serve_image_bytes" not in loaded.signatures:
        raise ClassifyError(
            f"{path} has no serve_image_bytes signature (signatures: "
            f"{', '.join(loaded.signatures)}); export it with python -m trainers.export"
        )
    serve = loaded.signatures["serve_image_bytes"]
    num_classes = int(serve.structured_outputs["probabilities"].shape[-1])
    # labels.txt inside the SavedModel directory, else in the export directory around it.
    inside = os.path.isfile(os.path.join(path, LABELS_FILE))
    directory = path if inside else os.path.dirname(os.path.abspath(path))
    names = _labels_beside(directory, num_classes)

    def probabilities(contents: bytes) -> np.ndarray:
        out = serve(image_bytes=tf.constant([contents]))
        return out["probabilities"].numpy()[0].astype(np.float32)

    return Classifier(probabilities, names, f"saved_model {path}")


def _export_preprocessing(directory: str) -> preprocessing.PreprocessConfig:
    """The preprocessing an export directory's `export.json` records (default: ImageNet's)."""
    path = os.path.join(directory, EXPORT_INFO_FILE)
    if not os.path.isfile(path):
        return preprocessing.DEFAULT_CONFIG
    with open(path, encoding="utf-8") as f:
        recorded = json.load(f).get("preprocess_config") or {}
    fields = {f.name for f in dataclasses.fields(preprocessing.PreprocessConfig)}
    return dataclasses.replace(
        preprocessing.DEFAULT_CONFIG, **{k: v for k, v in recorded.items() if k in fields}
    )


def _tflite_labels(path: str, num_classes: int) -> list[str]:
    """The labels file of the TFLite Metadata (a zip appended to the model), else the export
    directory's labels.txt, else defaults."""
    try:
        with zipfile.ZipFile(path) as archive:
            text = archive.read(LABELS_FILE).decode("utf-8")
        names = [line.rstrip("\r") for line in text.split("\n") if line.strip()]
        if len(names) == num_classes:
            return names
    except (zipfile.BadZipFile, KeyError):
        pass
    return _labels_beside(os.path.dirname(os.path.abspath(path)), num_classes)


def from_tflite(path: str, num_threads: int = 1) -> Classifier:
    """A .tflite classifier through `ai_edge_litert`: the `serving_default` signature runner when
    the file has that signature, else its sole input and output tensors."""
    from ai_edge_litert.interpreter import Interpreter

    if not os.path.isfile(path):
        raise ClassifyError(f"--tflite must be a .tflite file; received {path!r}")
    try:
        interpreter = Interpreter(model_path=path, num_threads=num_threads)
    except (ValueError, RuntimeError) as error:
        raise ClassifyError(f"{path} is not a TFLite model: {first_line(error)[:200]}") from error
    if "serving_default" in interpreter.get_signature_list():
        runner = interpreter.get_signature_runner("serving_default")
        ((input_name, input_details),) = runner.get_input_details().items()
        outputs = runner.get_output_details()
        output_name = "probabilities" if "probabilities" in outputs else next(iter(outputs))
        output_details = outputs[output_name]

        def run(tensor: np.ndarray) -> np.ndarray:
            return runner(**{input_name: tensor})[output_name]

    else:
        interpreter.allocate_tensors()
        inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ClassifyError(
                f"{path} must have one image input and one output (or a serving_default "
                f"signature); it has {len(inputs)} inputs and {len(outputs)} outputs"
            )
        input_details, output_details = inputs[0], outputs[0]

        def run(tensor: np.ndarray) -> np.ndarray:
            interpreter.set_tensor(input_details["index"], tensor)
            interpreter.invoke()
            return interpreter.get_tensor(output_details["index"])

    size = int(input_details["shape"][1])
    config = _export_preprocessing(os.path.dirname(os.path.abspath(path)))
    scale, zero_point = output_details["quantization"]

    def probabilities(contents: bytes) -> np.ndarray:
        x = _pixels(contents, size, config)  # [-1, 1]
        if input_details["dtype"] == np.uint8:  # the int8 file normalizes inside its graph
            tensor = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
        else:  # (pixel - 127.5) / 127.5, as its metadata says
            tensor = x.astype(np.float32)
        y = run(tensor)[0]
        if output_details["dtype"] != np.float32 and scale:
            return (y.astype(np.float32) - zero_point) * scale
        return y.astype(np.float32)

    num_classes = int(output_details["shape"][-1])
    return Classifier(probabilities, _tflite_labels(path, num_classes), f"tflite {path}")


def top_k(classifier: Classifier, contents: bytes, k: int) -> list[Prediction]:
    """The `k` most probable classes of one encoded image, most probable first."""
    p = classifier.probabilities(contents)
    order = np.argsort(-p, kind="stable")[:k]
    return [Prediction(int(i), classifier.class_names[i], float(p[i])) for i in order]


def classify_files(
    classifier: Classifier, paths: Sequence[str], k: int = 5
) -> tuple[dict[str, list[Prediction]], dict[str, str]]:
    """Classifies each image file; returns ({path: top-k}, {path: why it could not be read}).

    An unreadable or undecodable file is recorded in the second dict and the others are still
    classified.
    """
    results: dict[str, list[Prediction]] = {}
    failures: dict[str, str] = {}
    for path in paths:
        try:
            with open(path, "rb") as f:
                contents = f.read()
            results[path] = top_k(classifier, contents, k)
        except OSError as error:
            failures[path] = error.strerror or str(error)
        except (tf.errors.OpError, ValueError) as error:
            reason = re.sub(r"\{\{.*?\}\}\s*", "", first_line(error)).strip()
            failures[path] = f"not a JPEG, PNG, GIF or BMP image ({reason[:120]})"
    return results, failures


def format_text(results: dict[str, list[Prediction]]) -> str:
    """Per image: its path, then one line per class: probability, label, class id."""
    lines = []
    for path, predictions in results.items():
        lines.append(path)
        lines += [f"  {p.probability:.4f}  {p.label} ({p.class_id})" for p in predictions]
    return "\n".join(lines)


def format_json(
    results: dict[str, list[Prediction]], failures: dict[str, str], description: str
) -> str:
    """{"model": ..., "results": [{"image", "predictions": [{"class_id", "label",
    "probability"}]}], "errors": [{"image", "error"}]}."""
    return json.dumps(
        {
            "model": description,
            "results": [
                {"image": path, "predictions": [dataclasses.asdict(p) for p in predictions]}
                for path, predictions in results.items()
            ],
            "errors": [{"image": path, "error": why} for path, why in failures.items()],
        },
        indent=2,
    )
