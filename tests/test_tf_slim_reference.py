"""Checks of the tf_slim reference harness (tests/tf_slim_reference.py) itself."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_slim_reference


def _size(shape):
    return int(np.prod(shape, dtype=np.int64))


@pytest.fixture(scope="module")
def reference_224(tmp_path_factory):
    directory = tmp_path_factory.mktemp("slim224")
    return tf_slim_reference.build_checkpoint(directory, image_size=224, batch_size=2)


def test_variable_counts(reference_224):
    shapes = reference_224.variable_shapes
    moving = {k: s for k, s in shapes.items() if k.endswith(("/moving_mean", "/moving_variance"))}
    base = {k: s for k, s in shapes.items() if not k.startswith("InceptionV2/Logits/")}
    trainable_base = {k: s for k, s in base.items() if k not in moving}
    assert sum(map(_size, base.values())) == 10_173_112
    assert sum(map(_size, trainable_base.values())) == 10_153_336
    assert sum(map(_size, moving.values())) == 19_776
    assert sum(map(_size, shapes.values())) == 11_199_137
    # The published checkpoint's BN: no gamma; the first separable conv has a bias and no BN.
    assert not any(k.endswith("/gamma") for k in shapes)
    assert shapes["InceptionV2/Conv2d_1a_7x7/depthwise_weights"] == (7, 7, 3, 8)
    assert shapes["InceptionV2/Conv2d_1a_7x7/pointwise_weights"] == (1, 1, 24, 64)
    assert shapes["InceptionV2/Conv2d_1a_7x7/biases"] == (64,)
    assert not any(k.startswith("InceptionV2/Conv2d_1a_7x7/BatchNorm") for k in shapes)
    assert shapes["InceptionV2/Logits/Conv2d_1c_1x1/weights"] == (1, 1, 1024, 1001)
    assert shapes["InceptionV2/Logits/Conv2d_1c_1x1/biases"] == (1001,)


def test_end_point_shapes_224(reference_224):
    shapes = reference_224.end_point_shapes
    for name, expected in tf_slim_reference.END_POINT_SHAPES_224.items():
        assert shapes[name] == (2, *expected), name
    assert shapes["Logits"] == (2, 1001)
    assert reference_224.logits.shape == (2, 1001)


def test_checkpoint_holds_the_random_values(reference_224):
    reader = tf.train.load_checkpoint(reference_224.checkpoint)
    stored = {k: tuple(v) for k, v in reader.get_variable_to_shape_map().items()}
    assert stored == reference_224.variable_shapes
    bn = "InceptionV2/Mixed_4b/Branch_0/Conv2d_0a_1x1/BatchNorm/"
    variance = reader.get_tensor(bn + "moving_variance")
    mean = reader.get_tensor(bn + "moving_mean")
    beta = reader.get_tensor(bn + "beta")
    assert np.all(variance > 0) and np.std(variance) > 0.1
    assert np.all(mean != 0) and not np.allclose(mean, beta)
    images = reference_224.images
    assert images.dtype == np.float32 and images.min() >= -1.0 and images.max() <= 1.0
    logits = reference_224.logits
    assert np.all(np.isfinite(logits))
    # The logits depend on the input: the two images' logits differ clearly (relative to 1e-4).
    assert np.abs(logits[0] - logits[1]).max() > 1e-2 * np.abs(logits).max()


def _keras_outputs():
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3), keras.layers.BatchNormalization()]
    )
    x = np.linspace(-1, 1, 2 * 8 * 8 * 3, dtype=np.float32).reshape(2, 8, 8, 3)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(x, np.zeros((2, 6, 6, 4), np.float32), epochs=1, verbose=0)
    return model, x, model.predict(x, verbose=0)


@pytest.mark.slow  # starts a second Python process (about 10 s alone, 25 s on a busy machine)
def test_same_process_as_keras_and_subprocess_agree(tmp_path):
    """Keras 3 works before and after build_checkpoint; the subprocess gives the same result."""
    model, x, before = _keras_outputs()
    in_process = tf_slim_reference.build_checkpoint(
        tmp_path / "a", image_size=64, batch_size=2, seed=3, return_end_points=True
    )
    assert tf.executing_eagerly()
    np.testing.assert_array_equal(model.predict(x, verbose=0), before)
    _keras_outputs()  # building and training a new Keras model still works

    child = tf_slim_reference.build_checkpoint_subprocess(
        tmp_path / "b", image_size=64, batch_size=2, seed=3, return_end_points=True
    )
    np.testing.assert_array_equal(child.images, in_process.images)
    np.testing.assert_allclose(child.logits, in_process.logits, rtol=1e-5, atol=1e-5)
    assert child.variable_shapes == in_process.variable_shapes
    assert child.end_point_shapes == in_process.end_point_shapes
    assert child.end_point_shapes["Mixed_5c"] == (2, 2, 2, 1024)  # ceil(64 / 32)
    np.testing.assert_allclose(
        child.end_points["Mixed_5c"], in_process.end_points["Mixed_5c"], rtol=1e-5, atol=1e-5
    )
    a = tf.train.load_checkpoint(in_process.checkpoint)
    b = tf.train.load_checkpoint(child.checkpoint)
    name = "InceptionV2/Mixed_5c/Branch_3/Conv2d_0b_1x1/weights"
    np.testing.assert_array_equal(a.get_tensor(name), b.get_tensor(name))
