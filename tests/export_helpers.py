"""Shared pieces of the export tests: a small BN-Inception with non-trivial BN, digits as pixels."""

from __future__ import annotations

import keras
import numpy as np

import keras_bninception
from keras_bninception import data

IMAGE_SIZE = 32
CLASS_NAMES = [f"digit {i}" for i in range(10)]


def run_export_binary(*argv: str) -> dict:
    """`python -m trainers.export` with these flags, in this process; returns export.json."""
    from trainers import export as export_binary

    export_binary.FLAGS.unparse_flags()
    export_binary.FLAGS(["trainers.export", *argv])
    try:
        return export_binary.export_from_flags()
    finally:
        export_binary.FLAGS.unparse_flags()


def small_model(seed: int = 0, classes: int = 10) -> keras.Model:
    """BN-Inception at depth multiplier 0.25, 32x32, logits, with random BN statistics.

    Random moving statistics, gamma and beta make every BN a non-trivial affine map, so a BN the
    converter failed to fold, or folded wrongly, shows in the op list and in the outputs.
    """
    keras.utils.set_random_seed(seed)
    model = keras_bninception.BNInception(
        weights=None,
        classes=classes,
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        depth_multiplier=0.25,
        classifier_activation=None,
    )
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            for variable in layer.weights:
                leaf = variable.path.rsplit("/", 1)[-1]
                shape = tuple(variable.shape)
                if leaf == "moving_variance":
                    variable.assign(np.exp(rng.uniform(-0.5, 0.5, shape)).astype(np.float32))
                elif leaf in ("moving_mean", "beta"):
                    variable.assign(rng.normal(0.0, 0.2, shape).astype(np.float32))
                elif leaf == "gamma":
                    variable.assign(rng.uniform(0.5, 1.5, shape).astype(np.float32))
    return model


def digits_pixels(split: str, count: int | None = None, image_size: int = IMAGE_SIZE):
    """(pixels float32 [N, S, S, 3] in 0..255, labels) of the digits' evaluation preprocessing."""
    dataset = data.build_dataset(
        "digits", split, image_size=image_size, batch_size=512, training=False
    )
    images, labels = [], []
    for x, y in dataset:
        images.append(x.numpy())
        labels.append(y.numpy())
    pixels = (np.concatenate(images) + 1.0) * 127.5
    labels = np.concatenate(labels)
    if count is not None:
        pixels, labels = pixels[:count], labels[:count]
    return pixels.astype(np.float32), labels


def random_pixels(count: int, seed: int = 0, image_size: int = IMAGE_SIZE) -> np.ndarray:
    """Seeded random RGB images, float32 0..255: blocky low-frequency noise plus white noise."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, image_size, image_size, 3), np.float32)
    for i in range(count):
        cells = int(rng.integers(2, 9))
        index = np.arange(image_size) * cells // image_size
        coarse = rng.uniform(0.0, 255.0, (cells, cells, 3))[index][:, index]
        images[i] = 0.7 * coarse + 0.3 * rng.uniform(0.0, 255.0, (image_size, image_size, 3))
    return images


def keras_probabilities(model: keras.Model, pixels: np.ndarray) -> np.ndarray:
    """softmax(model(x / 127.5 - 1)) in float64-free float32, batch by batch."""
    logits = model(keras_bninception.preprocess_input(np.array(pixels)), training=False)
    return np.asarray(keras.ops.softmax(logits, axis=-1))
