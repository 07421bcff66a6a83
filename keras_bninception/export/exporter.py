"""`export(...)`: a trained classifier to a SavedModel and TFLite files, written atomically.

Everything is written into a temporary directory next to `export_dir` and renamed into place at
the end, so a failed export leaves nothing behind; an existing `export_dir` is refused unless
`overwrite=True` (then it is replaced only once the new export is complete).

Layout of `export_dir`:

- `saved_model/`: signatures `serving_default` (float32 pixels) and `serve_image_bytes`;
- `<name>_float32.tflite`, `<name>_float16.tflite`, `<name>_int8.tflite` with TFLite Metadata
  (labels, normalization) inside and the SignatureDef `serving_default` (`images` ->
  `probabilities`);
- `labels.txt` (one class name a line, in class-id order) and `export.json` (source, input size,
  classes, file sizes, the op-list checks of each TFLite file, and the formats skipped and why).

By default every format is written that can be: int8 needs calibration images, so without them
the default formats are `DEFAULT_FORMATS` (no int8) and `export.json` says why int8 was skipped;
asking for int8 explicitly without calibration images is an error.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_bninception.data import preprocessing
from keras_bninception.errors import first_line
from keras_bninception.export import metadata, tflite
from keras_bninception.export.serving import ServingModule

FORMATS = ("saved_model", "float32", "float16", "int8")
# The formats written when `formats` is not given, plus int8 when calibration images are at hand.
DEFAULT_FORMATS = ("saved_model", "float32", "float16")
MIN_CALIBRATION_IMAGES = 200
NO_CALIBRATION = "no calibration images"

# Calibration pixels [N, S, S, 3] in 0..255, or a callable producing them (called at most once,
# and only if int8 is written: e.g. reading a run's training data).
CalibrationImages = np.ndarray | Callable[[], np.ndarray]


class ExportError(ValueError):
    """The export cannot be done as asked (bad argument, existing output, unreadable input)."""


def parse_formats(formats: str | Sequence[str]) -> tuple[str, ...]:
    """`"saved_model,int8"` or a sequence of names -> a tuple in `FORMATS` order."""
    if formats is None:
        raise ExportError(
            f"`formats` must be a non-empty subset of {','.join(FORMATS)}; received None"
        )
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [n.strip() for n in names if n.strip()]
    unknown = [n for n in names if n not in FORMATS]
    if unknown or not names:
        raise ExportError(
            f"`formats` must be a non-empty subset of {','.join(FORMATS)}; received "
            f"formats={formats!r}"
        )
    return tuple(f for f in FORMATS if f in names)


def check_export_dir(export_dir: str, overwrite: bool) -> str:
    """The absolute `export_dir`; ExportError if it exists and `overwrite` is False."""
    if not export_dir:
        raise ExportError("`export_dir` must name the output directory; received ''")
    path = os.path.abspath(export_dir)
    if os.path.lexists(path) and not overwrite:
        raise ExportError(
            f"The export directory {path} already exists; choose a new one or pass overwrite=True "
            "(--overwrite) to replace it"
        )
    return path


def _calibration_batches(images: np.ndarray, image_size: int) -> Callable[[], Iterable[np.ndarray]]:
    """The int8 converter's representative dataset: raw pixels [1, S, S, 3], float32 0..255.

    A first sample, a ramp from 0 to 255, pins the input's calibrated range to exactly [0, 255], so
    that the uint8 input's quantization is scale 1, zero point 0 (a byte is its pixel value) even if
    no calibration image reaches both ends; the real images follow.
    """
    ramp = np.broadcast_to(
        np.linspace(0.0, 255.0, image_size, dtype=np.float32)[None, None, :, None],
        (1, image_size, image_size, 3),
    )

    def batches():
        yield ramp
        for image in images:
            yield image[None].astype(np.float32)

    return batches


def export(
    model: keras.Model,
    class_names: Sequence[str],
    export_dir: str,
    *,
    formats: str | Sequence[str] | None = None,
    calibration_images: CalibrationImages | None = None,
    preprocess_config: preprocessing.PreprocessConfig = preprocessing.DEFAULT_CONFIG,
    name: str = "bninception",
    source: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Exports a BN-Inception classifier for serving (SavedModel) and for phones (TFLite).

    Args:
        model: a Keras classifier with input [N, S, S, 3] in [-1, 1] and logits or softmax
            probabilities as output (a softmax is added to logits).
        class_names: one name per class, in class-id order.
        export_dir: the output directory (must not exist unless `overwrite`).
        formats: a subset of `FORMATS` (a comma-separated string or a sequence). Default:
            `DEFAULT_FORMATS`, and int8 too when `calibration_images` are given (if there are
            none, or a callable cannot produce enough, int8 is skipped and `export.json`'s
            "skipped" says why).
        calibration_images: for `int8`: at least 200 RGB images [N, S, S, 3] with pixels in
            0..255 (uint8 or float), e.g. of the training data; or a callable returning them,
            called only if int8 is written.
        preprocess_config: the evaluation preprocessing of the training data (central crop), used
            by the `serve_image_bytes` signature.
        name: prefix of the TFLite file names and the metadata's model name.
        source: a description of where the model comes from, stored in `export.json`.
        overwrite: replace an existing `export_dir`.

    Returns:
        The contents of `export.json` (its "skipped" maps a format left out by default to why).

    Raises:
        ExportError: a bad argument, an existing `export_dir`, or int8 asked for explicitly
            without usable calibration images; nothing is written.
        tflite.ExportCheckError: a converted file fails a check; nothing is written.
    """
    parsed = parse_formats(formats) if formats is not None else None
    export_dir = check_export_dir(export_dir, overwrite)
    module = ServingModule(model, class_names, preprocess_config)
    formats, calibration_images, skipped = resolve_formats(
        parsed, calibration_images, module.image_size
    )
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    temp = tempfile.mkdtemp(prefix=f".{os.path.basename(export_dir)}.tmp-", dir=parent)
    try:
        info = _write(module, list(class_names), temp, formats, calibration_images, name)
        info["skipped"] = skipped
        info["source"] = source or {"kind": "keras_model_in_memory"}
        info["preprocess_config"] = {
            "central_fraction": preprocess_config.central_fraction,
            "upsample_first": preprocess_config.upsample_first,
        }
        with open(os.path.join(temp, "export.json"), "w") as f:
            json.dump(info, f, indent=2, sort_keys=True)
            f.write("\n")
        if os.path.lexists(export_dir):
            old = tempfile.mkdtemp(prefix=f".{os.path.basename(export_dir)}.old-", dir=parent)
            os.rename(export_dir, os.path.join(old, "previous"))
            os.rename(temp, export_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(temp, export_dir)
    except BaseException:
        shutil.rmtree(temp, ignore_errors=True)
        raise
    return info


def resolve_formats(
    formats: tuple[str, ...] | None,
    calibration_images: CalibrationImages | None,
    image_size: int,
) -> tuple[tuple[str, ...], np.ndarray | None, dict[str, str]]:
    """The formats to write, the checked calibration pixels, and the formats skipped and why.

    `formats=None` (the default) is every format that can be written: int8 is skipped, with the
    reason, if there are no calibration images or a callable cannot produce enough (e.g. a run's
    training data is gone). Explicit formats are written as asked: int8 without usable
    calibration images raises ExportError, and so do unusable images given as an array. A
    callable is called only if int8 is to be written.
    """
    if formats is not None and "int8" not in formats:
        return formats, None, {}
    lenient = formats is None and (calibration_images is None or callable(calibration_images))
    try:
        pixels = _calibration(calibration_images, image_size)
    except ExportError as error:
        if not lenient:
            raise
        reason = NO_CALIBRATION if calibration_images is None else str(error)
        return DEFAULT_FORMATS, None, {"int8": reason}
    return formats or FORMATS, pixels, {}


def _calibration(images: CalibrationImages | None, image_size: int) -> np.ndarray:
    """The checked calibration pixels; ExportError if there are none or they are unusable."""
    if images is None:
        raise ExportError(
            f"The int8 format needs at least {MIN_CALIBRATION_IMAGES} calibration images "
            "(pixels 0..255); received none"
        )
    if callable(images):
        try:
            images = images()
        except ExportError:
            raise
        except (ValueError, OSError, tf.errors.OpError) as error:
            raise ExportError(f"calibration images cannot be read: {first_line(error)}") from error
    return _check_calibration(images, image_size)


def _check_calibration(images: np.ndarray, image_size: int) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1:] != (image_size, image_size, 3):
        raise ExportError(
            f"Calibration images must be an array [N, {image_size}, {image_size}, 3]; received "
            f"shape {images.shape}"
        )
    if images.shape[0] < MIN_CALIBRATION_IMAGES:
        raise ExportError(
            f"The int8 format needs at least {MIN_CALIBRATION_IMAGES} calibration images; "
            f"received {images.shape[0]}"
        )
    if images.min() < 0 or images.max() > 255:
        raise ExportError(
            "Calibration images must have pixels in 0..255; received values in "
            f"[{images.min()}, {images.max()}]"
        )
    return images


def _write(
    module: ServingModule,
    class_names: list[str],
    directory: str,
    formats: tuple[str, ...],
    calibration_images: np.ndarray | None,
    name: str,
) -> dict[str, Any]:
    size = module.image_size
    info: dict[str, Any] = {
        "format_version": 1,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tensorflow_version": tf.__version__,
        "image_size": size,
        "num_classes": module.num_classes,
        "labels_file": "labels.txt",
        "files": {},
    }
    with open(os.path.join(directory, "labels.txt"), "w", encoding="utf-8") as f:
        f.write("".join(f"{c}\n" for c in class_names))
    if "saved_model" in formats:
        path = os.path.join(directory, "saved_model")
        tf.saved_model.save(module, path, signatures=module.signatures())
        info["files"]["saved_model"] = {
            "path": "saved_model",
            "bytes": _tree_size(path),
            "signatures": {
                "serving_default": "images: float32 [N, S, S, 3] pixels 0..255",
                "serve_image_bytes": "image_bytes: string [N] JPEG/PNG/GIF/BMP",
            },
            "outputs": ["probabilities", "class_ids", "class_names"],
        }
    for flavour in tflite.FLAVOURS:
        if flavour not in formats:
            continue
        representative = None
        if flavour == "int8":
            representative = _calibration_batches(calibration_images, size)
        content = tflite.convert(module.tflite_model(flavour), flavour, representative)
        checks = tflite.check_ops(content, flavour)
        io = tflite.io_details(content)
        if flavour == "int8" and (io["input"]["scale"], io["input"]["zero_point"]) != (1.0, 0):
            raise tflite.ExportCheckError(
                "the int8 file's uint8 input must be raw pixels (scale 1, zero point 0); the "
                f"converter chose {io['input']}"
            )
        tflite.check_signature(content, flavour)
        content = metadata.add_metadata(
            content,
            class_names,
            name=f"{name}_{flavour}",
            quantized_input=flavour == "int8",
        )
        signatures = tflite.check_signature(content, flavour)  # kept by the metadata's rewrite
        filename = f"{name}_{flavour}.tflite"
        with open(os.path.join(directory, filename), "wb") as f:
            f.write(content)
        info["files"][flavour] = {
            "path": filename,
            "bytes": len(content),
            "io": io,
            "signatures": signatures,
            "checks": checks,
        }
        if flavour == "int8":
            info["files"][flavour]["calibration_images"] = int(len(calibration_images))
    return info


def _tree_size(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, f)) for root, _, files in os.walk(path) for f in files
    )
