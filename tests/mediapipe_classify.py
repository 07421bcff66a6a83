"""Classifies images with MediaPipe Tasks' `ImageClassifier`, as an Android / iOS app would.

    python tests/mediapipe_classify.py MODEL.tflite IMAGES.npy OUT.json

IMAGES.npy holds uint8 RGB images [N, H, W, 3]; OUT.json receives, per image, the top category's
index, label (from the file's metadata) and score. Only `mediapipe` and NumPy are imported (no
TensorFlow, no keras_bninception): the file must be usable as it is. Run in a subprocess, so that
MediaPipe's native libraries never share a process with TensorFlow's.
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
    model_path, images_path, out_path = argv[1:4]
    answers = classify(model_path, np.load(images_path))
    with open(out_path, "w") as f:
        json.dump(answers, f)


if __name__ == "__main__":
    main(sys.argv)
