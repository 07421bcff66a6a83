"""ImageNet input preprocessing and prediction decoding for BN-Inception, offline.

``preprocess_input`` is Keras' "tf" mode (as ``keras.applications.inception_v3``): pixels in
[0, 255] are scaled to [-1, 1], the input range of tf_slim's Inception checkpoints.

``decode_predictions`` is ``keras.applications.imagenet_utils.decode_predictions`` without the
download: the class index ships with the package (``resources/imagenet_class_index.json``,
byte-identical to Keras' file; provenance in ``resources/README.md``). It also accepts tf_slim's
1001-way outputs, whose class 0 is "background".
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from typing import Any

import keras
import numpy as np

__all__ = ["decode_predictions", "imagenet_classes", "preprocess_input"]

NUM_CLASSES = 1000
_CLASS_INDEX_FILE = "imagenet_class_index.json"


def preprocess_input(x: Any, data_format: str | None = None) -> Any:
    """Preprocesses a batch of images for BN-Inception: scales [0, 255] to [-1, 1].

    Same as ``keras.applications.inception_v3.preprocess_input`` (``mode="tf"``), which it calls.

    Args:
        x: a float or integer NumPy array or tensor of RGB images with values in [0, 255],
            3D or 4D. As in Keras, a float NumPy array is modified in place.
        data_format: ``None`` (Keras' ``image_data_format()``), ``"channels_last"`` or
            ``"channels_first"``; scaling is the same for both.

    Returns:
        The images scaled to [-1, 1] (``x / 127.5 - 1``), float.

    Raises:
        ValueError: for a ``data_format`` other than those.
    """
    return keras.applications.imagenet_utils.preprocess_input(x, data_format=data_format, mode="tf")


@functools.cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """The 1000 ImageNet-1k classes as ``(wordnet_id, name)`` pairs, in the standard order.

    Read from the package data (no download); names as in Keras' ``imagenet_class_index.json``,
    e.g. ``("n01440764", "tench")`` first and ``("n15075141", "toilet_tissue")`` last.
    """
    path = importlib.resources.files("keras_bninception") / "resources" / _CLASS_INDEX_FILE
    index = json.loads(path.read_text(encoding="utf-8"))
    return tuple((index[str(i)][0], index[str(i)][1]) for i in range(NUM_CLASSES))


def decode_predictions(preds: Any, top: int = 5) -> list[list[tuple[str, str, float]]]:
    """Decodes a batch of ImageNet predictions, offline.

    Args:
        preds: NumPy array or tensor of shape ``(samples, 1000)`` (Keras' class order) or
            ``(samples, 1001)`` (tf_slim's: column 0 is "background" and is dropped, column
            ``i + 1`` is Keras' class ``i``). Probabilities or logits.
        top: how many top-scoring classes to return per sample, an integer in [1, 1000].

    Returns:
        One list per sample of ``(wordnet_id, class_name, score)`` tuples, highest score first
        (ties: lower class index first), as ``keras.applications.imagenet_utils``.

    Raises:
        ValueError: if ``preds`` is not of shape ``(N, 1000)`` or ``(N, 1001)``, or ``top`` is
            not an integer in [1, 1000].
    """
    preds = keras.ops.convert_to_numpy(preds)
    if preds.ndim != 2 or preds.shape[1] not in (NUM_CLASSES, NUM_CLASSES + 1):
        raise ValueError(
            "`decode_predictions` expects a batch of predictions of shape (samples, 1000) "
            "(ImageNet classes) or (samples, 1001) (tf_slim's, class 0 = background). "
            f"Received: preds.shape={preds.shape}"
        )
    if isinstance(top, bool) or not isinstance(top, int | np.integer) or not 1 <= top <= 1000:
        raise ValueError(f"`top` must be an integer in [1, {NUM_CLASSES}]. Received: top={top!r}")
    if preds.shape[1] == NUM_CLASSES + 1:
        preds = preds[:, 1:]
    classes = imagenet_classes()
    results = []
    for pred in preds:
        top_indices = np.argsort(-pred, kind="stable")[:top]
        results.append([(*classes[i], pred[i]) for i in top_indices])
    return results
