"""BNInception as a Keras model: saving, weights files, tf.distribute, model.fit, bad arguments."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from keras_bninception.layers import BatchNormalization
from keras_bninception.models import BNInception

SMALL = {"input_shape": (32, 32, 3), "classes": 5, "depth_multiplier": 0.25}


def _randomize(model: keras.Model, seed: int = 0) -> None:
    """Seeded random values for every weight (positive moving variances), so saving is tested."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        value = rng.normal(0.0, 0.1, w.shape)
        if w.name == "moving_variance":
            value = np.exp(value)
        w.assign(value.astype("float32"))


def _images(n: int = 2, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 3)).astype("float32")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    model = BNInception(weights=None, **SMALL)
    _randomize(model)
    path = str(tmp_path_factory.mktemp("weights") / "small.weights.h5")
    model.save_weights(path)
    return path, np.asarray(model(_images(), training=False))


def test_keras_file_round_trip_without_custom_objects(tmp_path):
    model = BNInception(weights=None, **SMALL)
    _randomize(model, seed=1)
    x = _images()
    expected = np.asarray(model(x, training=False))
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(
        loaded.get_layer("Mixed_3b_Branch_0_Conv2d_0a_1x1_BatchNorm"), BatchNormalization
    )
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(np.asarray(loaded(x, training=False)), expected)
    # A .keras file is also accepted as `weights`.
    rebuilt = BNInception(weights=path, **SMALL)
    np.testing.assert_array_equal(np.asarray(rebuilt(x, training=False)), expected)


def test_weights_h5_file(weights_file):
    path, expected = weights_file
    model = BNInception(weights=path, **SMALL)
    np.testing.assert_array_equal(np.asarray(model(_images(), training=False)), expected)
    with pytest.raises(ValueError, match=r"build BNInception with the arguments .* classes=7"):
        BNInception(weights=path, **{**SMALL, "classes": 7})


@pytest.mark.slow
def test_fit_inside_mirrored_strategy(mirrored_cpus):
    # Two replicas (per-replica BN statistics, Keras' default), dropout on. synchronized=True
    # works too but takes about twice as long to trace (4 all-reduces per BN layer, 69 layers);
    # the BN layer's own tests cover it.
    strategy = mirrored_cpus
    assert strategy.num_replicas_in_sync == 2
    with strategy.scope():
        model = BNInception(
            weights=None,
            input_shape=(32, 32, 3),
            classes=4,
            dropout_rate=0.2,
            depth_multiplier=0.25,
        )
        model.compile(
            optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
            loss="sparse_categorical_crossentropy",
        )
    x = _images(8, seed=2)
    y = np.arange(8) % 4
    bn = model.get_layer("Conv2d_2c_3x3_BatchNorm")
    kernel = model.get_layer("Mixed_5c_Branch_0_Conv2d_0a_1x1").kernel
    before = np.array(kernel.numpy())
    history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
    losses = history.history["loss"]
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert not np.array_equal(kernel.numpy(), before)
    # BN's moving statistics were updated (they start at 0 and 1).
    assert np.max(np.abs(bn.moving_mean.numpy())) > 1e-3


BAD_ARGUMENTS = [
    # weights="imagenet": what the published checkpoint fits is checked before any download.
    (
        {"weights": "imagenet", "classes": 10},
        r"`classes` must be 1000 \(ImageNet's classes\) or 1001",
    ),
    ({"weights": "imagenet", "depth_multiplier": 0.5}, r"must be 1.0 with weights=\"imagenet\""),
    ({"weights": "imagenet", "activation": "sigmoid"}, r"activation='sigmoid' \(needs 'relu'\)"),
    ({"weights": "imagenet", "input_shape": (224, 224, 1)}, r"3 channels"),
    (
        {"weights": "no/such/file.weights.h5"},
        r"does not exist; it must be a TF-slim .*\.weights\.h5",
    ),
    ({"weights": 3}, r"`weights` must be a TF-slim .*; received weights=3"),
    ({"include_top": False, "pooling": "mean"}, r"one of \(None, 'avg', 'max'\)"),
    ({"depth_multiplier": 0}, r"greater than zero .*received depth_multiplier=0"),
    ({"depth_multiplier": -0.5}, r"greater than zero"),
    ({"input_shape": (31, 64, 3)}, r"at least 32x32"),
    ({"include_top": False, "input_shape": (64, 16, 3)}, r"at least 32x32"),
    ({"input_tensor": keras.Input((20, 20, 3))}, r"at least 32x32"),
    ({"mixed_4c_4d": "caffe"}, r"one of \('tf_slim', 'paper'\)"),
    ({"activation": "no_such_activation"}, r"Could not interpret activation .*no_such_activation"),
    ({"dropout_rate": 1.0}, r"\[0, 1\)"),
    ({"classes": 0}, r"positive integer"),
    ({"slim_compatible": True, "scale": True}, r"scale=True \(needs False\)"),
    ({"slim_compatible": True, "mixed_4c_4d": "paper"}, r"mixed_4c_4d='paper' \(needs 'tf_slim'\)"),
]


@pytest.mark.parametrize("kwargs, message", BAD_ARGUMENTS)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BNInception(**{"weights": None, **kwargs})


def test_bad_arguments_with_weights(weights_file):
    path, _ = weights_file
    with pytest.raises(ValueError, match=r"3 channels"):
        BNInception(weights=path, **{**SMALL, "input_shape": (32, 32, 1)})
    with pytest.raises(
        ValueError, match=r"`classifier_activation` must be None or 'softmax' with weights"
    ):
        BNInception(weights=path, classifier_activation="relu", **SMALL)
    # Without weights, any channel count and any classifier activation are fine.
    model = BNInception(
        weights=None,
        input_shape=(32, 32, 1),
        classifier_activation="sigmoid",
        classes=2,
        depth_multiplier=0.25,
    )
    assert tuple(model.output.shape) == (None, 2)


def test_norm_layer_is_injectable():
    """`norm_layer` builds the same network with another BN layer (benchmarks/train_step.py)."""
    ours = BNInception(weights=None, **SMALL)
    theirs = BNInception(weights=None, norm_layer=keras.layers.BatchNormalization, **SMALL)
    kinds = {type(layer) for layer in theirs.layers if "BatchNorm" in layer.name}
    assert kinds == {keras.layers.BatchNormalization}
    assert any(isinstance(layer, BatchNormalization) for layer in ours.layers)
    assert [w.shape for w in theirs.weights] == [w.shape for w in ours.weights]
