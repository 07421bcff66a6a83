"""What `trainers/export.py` exports from: a training run, a `.keras` file or a TF-slim checkpoint.

Each loader returns an `ExportSource`: the Keras model, its class names, the evaluation
preprocessing of its data and, when the source has training data, calibration pixels for int8.

- `from_model_dir(model_dir)`: the run's configuration (`<model_dir>/config.json`) rebuilds the
  model exactly as it was trained (`training.experiment.build_model`), its newest checkpoint in
  `<model_dir>/checkpoints` gives the weights; class names and calibration images come from the
  run's dataset (its training split, evaluation preprocessing).
- `from_keras_file(path)`: a model saved with `model.save("x.keras")`.
- `from_tf_slim_checkpoint(path)`: a TF-slim inception_v2 checkpoint, e.g. "imagenet" (the
  published ImageNet one, downloaded once; 1001 classes, class 0 "background"), tf_slim's
  network, depth multiplier read from the checkpoint.

The sources are resolved and loaded by `keras_bninception.weights`; its errors become
`ExportError`s here.
- `calibration_from_folder(directory, image_size)`: JPEG / PNG images under a folder, for sources
  without training data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from keras_bninception import weights
from keras_bninception.data import preprocessing
from keras_bninception.export.exporter import MIN_CALIBRATION_IMAGES, ExportError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass
class ExportSource:
    """A model ready to export, with what the exporter needs to know about it."""

    model: keras.Model
    class_names: list[str]
    description: dict
    preprocess_config: preprocessing.PreprocessConfig = preprocessing.DEFAULT_CONFIG
    # Pixels, or a callable reading them (called by `export.export` only if it writes int8).
    calibration_images: np.ndarray | Callable[[], np.ndarray] | None = None


def imagenet_class_names(num_classes: int) -> list[str]:
    """The ImageNet names of a 1000- or 1001-way classifier (1001: class 0 is "background")."""
    from keras_bninception.imagenet_utils import imagenet_classes

    names = [name for _, name in imagenet_classes()]
    if num_classes == len(names) + 1:
        return ["background", *names]
    if num_classes == len(names):
        return names
    raise ExportError(f"ImageNet names exist for 1000 or 1001 classes, not {num_classes}")


def read_labels(path: str, num_classes: int) -> list[str]:
    """Class names from a text file, one a line; their number must match the model's."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.rstrip("\r\n") for line in f if line.strip()]
    except OSError as error:
        raise ExportError(f"Cannot read the labels file {path}: {error.strerror}") from error
    if len(names) != num_classes:
        raise ExportError(
            f"The labels file {path} must have one name a line for each of the model's "
            f"{num_classes} classes; received {len(names)} names"
        )
    return names


def default_class_names(num_classes: int) -> list[str]:
    """ImageNet names for 1000 / 1001 classes, else the class ids as names ("0", "1", ...)."""
    if num_classes in (1000, 1001):
        return imagenet_class_names(num_classes)
    return [str(i) for i in range(num_classes)]


def _num_classes(model: keras.Model) -> int:
    return int(model.outputs[0].shape[-1])


@contextlib.contextmanager
def _as_export_error():
    try:
        yield
    except weights.WeightsError as error:
        raise ExportError(str(error)) from error


def from_keras_file(path: str, labels: str | None = None) -> ExportSource:
    """Loads a `.keras` model file (saved by Keras 3, e.g. `BNInception(...).save(path)`)."""
    if not os.path.isfile(path):
        raise ExportError(f"--keras_model must be an existing .keras file; received {path!r}")
    with _as_export_error():
        model = weights.sources.load_keras_model(path, "--keras_model")
    classes = _num_classes(model)
    names = read_labels(labels, classes) if labels else default_class_names(classes)
    return ExportSource(model, names, {"kind": "keras_model", "path": os.path.abspath(path)})


def from_model_dir(
    model_dir: str, calibration_count: int = 500, calibrate: bool = True
) -> ExportSource:
    """The newest checkpoint of a training run, rebuilt from the run's `config.json`.

    Class names, the evaluation preprocessing and, with `calibrate`, the int8 calibration images
    (the first `calibration_count` images of the training split, evaluation-preprocessed) come
    from the run's dataset. The model is built in float32 whatever the run's mixed precision.
    """
    from keras_bninception import data

    with _as_export_error():
        run = weights.sources.load_run(model_dir, "--model_dir")
    config = run.config
    d = config.data

    def read_calibration() -> np.ndarray:
        info = data.get_info(d.dataset, data_dir=d.data_dir, manual_dir=d.manual_dir)
        return calibration_from_dataset(
            d.dataset,
            info.train_split,
            d.image_size,
            count=calibration_count,
            data_dir=d.data_dir,
            manual_dir=d.manual_dir,
        )

    description = {
        "kind": "model_dir",
        "path": os.path.abspath(model_dir),
        "checkpoint": run.checkpoint,
        "step": run.step,
        "dataset": d.dataset,
    }
    calibration = read_calibration if calibrate else None
    return ExportSource(
        run.model, run.class_names, description, run_preprocess_config(config), calibration
    )


def run_preprocess_config(config) -> preprocessing.PreprocessConfig:
    """The evaluation preprocessing of a run's dataset (`config`: its `TrainConfig`), without
    reading the data."""
    from keras_bninception.data.sources import preprocess_config

    return preprocess_config(config.data.dataset)


def from_tf_slim_checkpoint(path: str, image_size: int = 224) -> ExportSource:
    """A TF-slim inception_v2 checkpoint as BNInception with all its classes (TF-slim's 1001 for
    "imagenet", class 0 "background"), ImageNet names."""
    from keras_bninception.models import BNInception

    with _as_export_error():
        source = weights.resolve(path, "--tf_slim_checkpoint", kinds=(weights.TF_SLIM,))
    if source.num_classes is None:
        raise ExportError(f"{source.path} has no classifier (InceptionV2/Logits) to export")
    model = BNInception(
        weights=source.path,
        classes=source.num_classes,
        input_shape=(image_size, image_size, 3),
        depth_multiplier=weights.tf_slim.checkpoint_depth_multiplier(source.path),
    )
    return ExportSource(
        model,
        default_class_names(source.num_classes),
        {"kind": "tf_slim_checkpoint", "path": os.path.abspath(source.path)},
    )


def calibration_from_folder(directory: str, image_size: int, limit: int = 1000) -> np.ndarray:
    """Pixels [N, S, S, 3] (float32, 0..255) of the JPEG / PNG images under `directory`.

    Images are sorted by path, at most `limit` are used, each decoded, centrally cropped and
    resized like evaluation images. At least `MIN_CALIBRATION_IMAGES` must be readable.
    """
    if not os.path.isdir(directory):
        raise ExportError(
            f"--calibration_images must be a directory of images; received {directory!r}"
        )
    paths = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(directory)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )[:limit]
    if len(paths) < MIN_CALIBRATION_IMAGES:
        raise ExportError(
            f"--calibration_images {directory} must hold at least {MIN_CALIBRATION_IMAGES} .jpg / "
            f".png images; found {len(paths)}"
        )
    pixels = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                contents = tf.constant(f.read())
            x = preprocessing.decode_and_preprocess_for_eval(contents, image_size)
        except (OSError, tf.errors.OpError) as error:
            message = getattr(error, "message", None) or str(error)
            raise ExportError(
                f"Calibration image {path} cannot be read: {message.strip().splitlines()[0]}"
            ) from error
        pixels.append((x.numpy() + 1.0) * 127.5)
    return np.stack(pixels).astype(np.float32)


def calibration_from_dataset(
    dataset: str,
    split: str,
    image_size: int,
    count: int = 500,
    data_dir: str | None = None,
    manual_dir: str | None = None,
) -> np.ndarray:
    """Pixels [N, S, S, 3] of the first `count` images of a split, evaluation-preprocessed."""
    from keras_bninception import data

    ds = data.build_dataset(
        dataset,
        split,
        image_size=image_size,
        batch_size=min(count, 256),
        training=False,
        data_dir=data_dir,
        manual_dir=manual_dir,
    )
    images: list[np.ndarray] = []
    total = 0
    for x, _ in ds:
        images.append(x.numpy())
        total += images[-1].shape[0]
        if total >= count:
            break
    return ((np.concatenate(images)[:count] + 1.0) * 127.5).astype(np.float32)
