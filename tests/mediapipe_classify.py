"""Classifies images with MediaPipe Tasks' `ImageClassifier`, as an Android / iOS app would.

    python tests/mediapipe_classify.py MODEL.tflite IMAGES.npy OUT.json [MODEL2 OUT2 ...]

IMAGES.npy holds uint8 RGB images [N, H, W, 3]; OUT.json receives, per image, the top category's
index, label (from the file's metadata) and score given by MODEL.tflite; OUT2.json those given by
MODEL2, and so on (several files, one MediaPipe start-up). Only `mediapipe` and NumPy are
imported (no TensorFlow, no keras_bninception): the file must be usable as it is. Run in a
subprocess, so that MediaPipe's native libraries never share a process with TensorFlow's.
"""

from __future__ import annotations

import json
import sys

import numpy as np


def classify(model_path: str, images: np.ndarray) -> list[dict]:
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions
    from mediapipe.tasks.python.vision import ImageClassifier, ImageClassifierOptions

    options = ImageClassifierOptions(
        base_options=BaseOptions(model_asset_path=model_path), max_results=1
    )
    answers = []
    with ImageClassifier.create_from_options(options) as classifier:
        for image in images:
            frame = mp.Image(image_format=mp.ImageFormat.SRGB, data=np.ascontiguousarray(image))
            (category,) = classifier.classify(frame).classifications[0].categories
            answers.append(
                {
                    "index": int(category.index),
                    "label": category.category_name,
                    "score": float(category.score),
                }
            )
    return answers


def main(argv: list[str]) -> None:
    if len(argv) < 4 or len(argv) % 2:
        raise SystemExit(f"usage: {argv[0]} MODEL IMAGES OUT [MODEL2 OUT2 ...]; got {argv[1:]}")
    images = np.load(argv[2])
    models, outputs = [argv[1], *argv[4::2]], [argv[3], *argv[5::2]]
    for model_path, out_path in zip(models, outputs, strict=True):
        answers = classify(model_path, images)
        with open(out_path, "w") as f:
            json.dump(answers, f)


if __name__ == "__main__":
    main(sys.argv)
