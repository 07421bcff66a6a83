"""Inception preprocessing (`keras_bninception.data.preprocessing`) on known images."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from sklearn.datasets import load_sample_image

from keras_bninception.data import preprocessing
from keras_bninception.data.sources import DIGITS_CONFIG


def _coordinate_image(size: int) -> np.ndarray:
    """uint8 [size, size, 3]: red = column, green = row, blue = 0."""
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    return np.stack([cols, rows, np.zeros_like(rows)], axis=-1).astype(np.uint8)


def _to_uint8_scale(image: tf.Tensor) -> np.ndarray:
    return (image.numpy() + 1.0) / 2.0 * 255.0


def test_eval_central_crop_geometry():
    # 160 x 160 with a 0.875 central crop keeps rows/columns 10..149; resizing the 140 x 140 crop
    # to 140 is the identity, so every output pixel tells where it came from.
    out = _to_uint8_scale(preprocessing.preprocess_for_eval(_coordinate_image(160), 140))
    assert out.shape == (140, 140, 3)
    np.testing.assert_allclose(
        out[..., 0], np.broadcast_to(np.arange(10, 150), (140, 140)), atol=1e-3
    )
    np.testing.assert_allclose(
        out[..., 1], np.broadcast_to(np.arange(10, 150)[:, None], (140, 140)), atol=1e-3
    )
    np.testing.assert_allclose(out[..., 2], 0.0, atol=1e-3)


def test_eval_crop_window_is_tf_image_central_crop():
    # The evaluation crop computes tf.image.central_crop's window itself (fewer ops per image):
    # the same window for every height and width, fraction, and static or unknown shape.
    unknown = tf.function(
        lambda image, fraction: preprocessing._central_crop(image, fraction),
        input_signature=[tf.TensorSpec([None, None, 1], tf.int32), tf.TensorSpec([], tf.float64)],
    )
    for fraction in (0.875, 0.5, 0.3, 0.999):
        for h, w in [(1, 1), (7, 9), (8, 8), (75, 101), (224, 299), (375, 500), (333, 1)]:
            image = tf.reshape(tf.range(h * w), [h, w, 1])
            expected = tf.image.central_crop(image, fraction).numpy()
            np.testing.assert_array_equal(preprocessing._central_crop(image, fraction), expected)
            np.testing.assert_array_equal(unknown(image, fraction), expected)


def test_eval_maps_black_and_white_to_minus_one_and_one():
    image = np.zeros([50, 60, 3], np.uint8)
    image[:, 30:] = 255
    out = preprocessing.preprocess_for_eval(image, 64).numpy()
    assert out.min() == -1.0 and out.max() == 1.0
    assert out.dtype == np.float32


@pytest.mark.parametrize("fraction", [0.875, 1.0])
def test_eval_of_uint8_equals_eval_of_floats(fraction):
    # uint8 images are cropped and resized as integers and scaled at the output size; floats in
    # [0, 1] are scaled first: the same pixels up to float rounding, within [-1, 1] unclipped.
    image = np.random.default_rng(2).integers(0, 256, size=[75, 101, 3], dtype=np.uint8)
    image[0, 0], image[-1, -1] = 0, 255
    config = preprocessing.PreprocessConfig(central_fraction=fraction)
    for size in (32, 101, 150):
        ints = preprocessing.preprocess_for_eval(image, size, config).numpy()
        floats = preprocessing.preprocess_for_eval(image / np.float32(255), size, config).numpy()
        np.testing.assert_allclose(ints, floats, rtol=0, atol=1e-6)
        assert ints.min() >= -1.0 and ints.max() <= 1.0


def test_train_output_range_shape_and_seed_dependence():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=[90, 120, 3], dtype=np.uint8)
    image[0, 0] = 0
    image[-1, -1] = 255
    outs = [
        preprocessing.preprocess_for_train(image, 48, tf.constant([1, s], tf.int64)).numpy()
        for s in range(8)
    ]
    for out in outs:
        assert out.shape == (48, 48, 3) and out.dtype == np.float32
        assert out.min() >= -1.0 and out.max() <= 1.0
    again = preprocessing.preprocess_for_train(image, 48, tf.constant([1, 0], tf.int64)).numpy()
    np.testing.assert_array_equal(outs[0], again)
    assert len({out.tobytes() for out in outs}) == len(outs)


def test_grey_images_get_three_equal_channels():
    image = np.arange(64, dtype=np.uint8).reshape(8, 8, 1) * 4
    out = preprocessing.preprocess_for_eval(image, 32).numpy()
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 1])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def _left_brighter(config: preprocessing.PreprocessConfig, seeds: int) -> list[bool]:
    image = np.zeros([8, 8, 1], np.float32)
    image[:, :3] = 1.0  # a bright left third, like a stroke: mirrored, it would be on the right
    results = []
    for s in range(seeds):
        out = preprocessing.preprocess_for_train(
            image, 32, tf.constant([5, s], tf.int64), config
        ).numpy()
        results.append(bool(out[:, :16].mean() > out[:, 16:].mean()))
    return results


def test_digits_are_never_flipped_other_images_are():
    assert all(_left_brighter(DIGITS_CONFIG, 40))
    flips = _left_brighter(preprocessing.PreprocessConfig(area_range=(0.9, 1.0)), 40)
    assert 5 <= flips.count(False) <= 35  # a fair coin, 40 tosses


@pytest.mark.parametrize("seed", range(5))
def test_digit_crops_are_mild(seed):
    # The crop keeps at least 75 % of the area: a centred bright square stays mostly visible.
    image = np.zeros([8, 8, 1], np.float32)
    image[2:6, 2:6] = 1.0
    out = preprocessing.preprocess_for_train(
        image, 64, tf.constant([9, seed], tf.int64), DIGITS_CONFIG
    ).numpy()
    bright = (out[..., 0] > 0.0).mean()
    full = (preprocessing.preprocess_for_eval(image, 64, DIGITS_CONFIG).numpy()[..., 0] > 0).mean()
    assert full <= bright <= full / 0.75 + 0.02


def _jpeg_and_png(image: np.ndarray) -> tuple[bytes, bytes]:
    import io

    from PIL import Image

    encoded = []
    for fmt in ("JPEG", "PNG"):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=fmt, quality=90)
        encoded.append(buffer.getvalue())
    return encoded[0], encoded[1]


@pytest.mark.parametrize("fmt", [0, 1], ids=["jpeg", "png"])
@pytest.mark.parametrize("source", ["noise", "photo"])
def test_fused_decode_crop_equals_decode_then_preprocess(fmt, source):
    if source == "photo":  # a real photograph bundled with scikit-learn
        image = load_sample_image("flower.jpg")[::2, ::2]
    else:
        image = np.random.default_rng(1).integers(0, 256, size=[75, 101, 3], dtype=np.uint8)
    contents = tf.constant(_jpeg_and_png(image)[fmt])
    decoded = preprocessing.decode_image(contents)
    for s in range(4):
        seed = tf.constant([3, s], tf.int64)
        fused = preprocessing.decode_and_preprocess_for_train(contents, 40, seed).numpy()
        plain = preprocessing.preprocess_for_train(decoded, 40, seed).numpy()
        if fmt == 0 and source == "noise":
            # libjpeg's chroma upsampling sees no pixels outside the crop window, so with a crop
            # at an odd column the outermost output pixels differ on pure colour noise.
            fused, plain = fused[1:-1, 1:-1], plain[1:-1, 1:-1]
        np.testing.assert_allclose(fused, plain, atol=1e-6)
    np.testing.assert_allclose(
        preprocessing.decode_and_preprocess_for_eval(contents, 40).numpy(),
        preprocessing.preprocess_for_eval(decoded, 40).numpy(),
        atol=1e-6,
    )
