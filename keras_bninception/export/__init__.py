"""Deployment: a SavedModel for TF Serving and TFLite files for phones, from a trained model.

    from keras_bninception import export
    export.export(model, class_names, "out", calibration_images=pixels)

writes `out/saved_model/` (signatures `serving_default` and `serve_image_bytes`),
`out/bninception_{float32,float16,int8}.tflite` (builtin ops only, the SignatureDef
`serving_default`: `images` in, `probabilities` out, and TFLite Metadata with the labels and the
input normalization, loadable by MediaPipe Tasks' `ImageClassifier` as they are),
`out/labels.txt` and `out/export.json`. Without calibration images int8 is skipped (unless asked
for in `formats`, then it is an error). `python -m trainers.export` does the same from a training
run, a `.keras` file or the TF-slim checkpoint.
"""

from keras_bninception.export.exporter import (
    DEFAULT_FORMATS,
    FORMATS,
    MIN_CALIBRATION_IMAGES,
    ExportError,
    export,
    parse_formats,
)
from keras_bninception.export.serving import ServingModule
from keras_bninception.export.tflite import ExportCheckError, check_ops, op_list

__all__ = [
    "DEFAULT_FORMATS",
    "FORMATS",
    "MIN_CALIBRATION_IMAGES",
    "ExportCheckError",
    "ExportError",
    "ServingModule",
    "check_ops",
    "export",
    "op_list",
    "parse_formats",
]
