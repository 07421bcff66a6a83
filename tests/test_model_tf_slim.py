"""BNInception loads TF-slim inception_v2 checkpoints and then computes what tf_slim computes.

The reference is tf_slim.nets.inception_v2 itself (tests/tf_slim_reference.py builds it in a
tf.compat.v1 graph, gives every variable a seeded random value, saves a checkpoint and runs it in
inference mode).
"""

from __future__ import annotations

import os

import keras
import numpy as np
import pytest
import tf_slim_reference

from keras_bninception.models import END_POINTS, BNInception, feature_extractor
from keras_bninception.models.naming import tf_slim_variable_name
from keras_bninception.weights.tf_slim import load_tf_slim_checkpoint


def relative_error(actual, expected) -> float:
    """max |actual - expected| / max |expected|."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def _logits_error(
    ref: tf_slim_reference.SlimReference, size: int, depth_multiplier: float
) -> float:
    """relative_error of BNInception's logits with `ref`'s checkpoint loaded against tf_slim's."""
    model = BNInception(
        weights=ref.checkpoint,
        classes=1001,
        classifier_activation=None,
        input_shape=(size, size, 3),
        depth_multiplier=depth_multiplier,
    )
    return relative_error(model(ref.images, training=False), ref.logits)


@pytest.fixture(scope="module")
def ref224(tmp_path_factory):
    return tf_slim_reference.build_checkpoint(
        tmp_path_factory.mktemp("slim224"), image_size=224, batch_size=2, return_end_points=True
    )


@pytest.fixture(scope="module")
def model224(ref224):
    return BNInception(weights=ref224.checkpoint, classes=1001, classifier_activation=None)


def test_logits_equal_tf_slims(ref224, model224):
    logits = np.asarray(model224(ref224.images, training=False))
    assert logits.shape == ref224.logits.shape == (2, 1001)
    assert relative_error(logits, ref224.logits) < 1e-4
    # The comparison is not vacuous: the logits vary over classes and between the two images.
    assert np.std(ref224.logits) > 0.1
    assert relative_error(ref224.logits[0], ref224.logits[1]) > 1e-2


def test_end_points_equal_tf_slims(ref224, model224):
    features = feature_extractor(model224, END_POINTS)(ref224.images, training=False)
    for name in END_POINTS:
        assert tuple(features[name].shape) == ref224.end_point_shapes[name], name
        assert relative_error(features[name], ref224.end_points[name]) < 1e-4, name


def test_every_checkpoint_variable_has_one_keras_weight(ref224, model224):
    names = {}
    for layer in model224.layers:
        for weight in layer.weights:
            name = tf_slim_variable_name(layer.name, weight.name)
            assert name is not None, weight.path
            assert name not in names, (name, weight.path, names.get(name))
            names[name] = tuple(weight.shape)
    assert set(names) == set(ref224.variable_shapes)
    assert names["InceptionV2/Logits/Conv2d_1c_1x1/weights"] == (1024, 1001)  # Dense, not 1x1 conv


def test_softmax_head_and_no_top(ref224, model224):
    probabilities = BNInception(weights=ref224.checkpoint, classes=1001)(
        ref224.images, training=False
    )
    np.testing.assert_allclose(
        probabilities, keras.ops.softmax(ref224.logits), rtol=1e-4, atol=1e-7
    )
    # Without the classifier the logits variables are simply not used; the checkpoint can be
    # given as its directory or its .index file.
    directory = os.path.dirname(ref224.checkpoint)
    for weights in (directory, ref224.checkpoint + ".index"):
        base = BNInception(include_top=False, weights=weights, input_shape=(None, None, 3))
        features = base(ref224.images[:1], training=False)
        assert relative_error(features, ref224.end_points["Mixed_5c"][:1]) < 1e-4


def test_1000_classes_leave_the_background_class_out(ref224, model224):
    # classes=1000 (the default): TF-slim's logits without class 0, in ImageNet's class order, so
    # that softmax and decode_predictions are those of any keras.applications model.
    model = BNInception(weights=ref224.checkpoint, classifier_activation=None)
    logits = np.asarray(model(ref224.images, training=False))
    assert logits.shape == (2, 1000)
    np.testing.assert_allclose(logits, ref224.logits[:, 1:], rtol=1e-4, atol=1e-4)
    kernel = model.get_layer("Logits_Conv2d_1c_1x1").kernel
    np.testing.assert_array_equal(
        kernel, model224.get_layer("Logits_Conv2d_1c_1x1").kernel.numpy()[:, 1:]
    )


def test_odd_size_and_depth_multiplier(tmp_path):
    # SAME padding at an odd size (75 -> 38 -> 19 -> 10 -> 5 -> 3), and tf_slim's width rule.
    ref = tf_slim_reference.build_checkpoint(
        tmp_path, image_size=75, batch_size=1, depth_multiplier=0.5, seed=3
    )
    assert _logits_error(ref, 75, 0.5) < 1e-4


def test_mismatched_checkpoints_are_rejected(ref224):
    ckpt = ref224.checkpoint
    with pytest.raises(ValueError, match=r"`classes` must be 1001 .* or 1000 .*received classes=7"):
        BNInception(weights=ckpt, classes=7)
    with pytest.raises(ValueError, match=r"wrong shape \(\d+\):\n  InceptionV2/"):
        BNInception(weights=ckpt, classes=1001, depth_multiplier=0.5, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match=r"scale=True \(needs False\)"):
        BNInception(weights=ckpt, classes=1001, scale=True)
    with pytest.raises(ValueError, match=r"mixed_4c_4d='paper' \(needs 'tf_slim'\)"):
        BNInception(weights=ckpt, classes=1001, mixed_4c_4d="paper")
    with pytest.raises(ValueError, match=r"activation='sigmoid' \(needs 'relu'\)"):
        BNInception(weights=ckpt, classes=1001, activation="sigmoid")

    # A model with BN (and no bias) on the first convolution: the loader lists what is missing
    # from the checkpoint and what the checkpoint has that the model does not use.
    model = BNInception(weights=None, include_top=False, input_shape=(32, 32, 3), scale=False)
    before = [w.numpy() for w in model.weights]
    with pytest.raises(ValueError) as error:
        load_tf_slim_checkpoint(model, ckpt)
    message = str(error.value)
    assert "missing from the checkpoint (3):" in message
    assert "InceptionV2/Conv2d_1a_7x7/BatchNorm/moving_mean" in message
    assert "unused checkpoint variables (1):\n  InceptionV2/Conv2d_1a_7x7/biases" in message
    # Nothing was assigned.
    for w, value in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(w.numpy(), value)


def test_v1_checkpoint_file_loads(tmp_path):
    # The published inception_v2.ckpt is a V1 checkpoint: one file, no .index.
    ref = tf_slim_reference.build_checkpoint(
        tmp_path, image_size=32, batch_size=2, depth_multiplier=0.25, seed=5, write_version="V1"
    )
    assert os.path.isfile(ref.checkpoint)
    assert not os.path.exists(ref.checkpoint + ".index")
    assert _logits_error(ref, 32, 0.25) < 1e-4
    # A file that is neither a checkpoint nor Keras weights is still rejected clearly.
    junk = tmp_path / "not_a_checkpoint.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"`weights` '.*not_a_checkpoint.ckpt' is not a check"):
        BNInception(weights=str(junk), classes=1001)
