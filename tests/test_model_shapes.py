"""End points and output shapes of BNInception (Figure 5 with SAME padding, tf_slim's names)."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
import tf_slim_reference

from keras_bninception.models import (
    END_POINTS,
    BNInception,
    bninception_end_points,
    feature_extractor,
)

TF_SLIM_END_POINT_SHAPES_224 = tf_slim_reference.END_POINT_SHAPES_224
# Downsampling factor of each end point (SAME padding: a side n becomes ceil(n / factor)).
STRIDES = {name: 224 // shape[0] for name, shape in TF_SLIM_END_POINT_SHAPES_224.items()}


def _shapes(model) -> dict[str, tuple]:
    return {name: tuple(t.shape[1:]) for name, t in bninception_end_points(model).items()}


def test_end_points_at_224_are_tf_slims():
    model = BNInception(weights=None, include_top=False, input_shape=(224, 224, 3))
    assert tuple(END_POINTS) == tuple(TF_SLIM_END_POINT_SHAPES_224)
    assert _shapes(model) == TF_SLIM_END_POINT_SHAPES_224
    assert tuple(model.output.shape) == (None, 7, 7, 1024)
    # The modules are the layers named exactly like tf_slim's end points.
    assert all(model.get_layer(f"Mixed_{m}") is not None for m in ("3b", "4e", "5c"))


def test_classifier_at_default_size():
    model = BNInception(
        weights=None,
    )
    assert tuple(model.input.shape) == (None, 224, 224, 3)
    assert tuple(model.output.shape) == (None, 1000)
    assert model.name == "bninception"
    assert model.layers[-1].name == "Predictions"


@pytest.mark.parametrize("height, width", [(112, 112), (250, 300), (75, 33)])
def test_any_size_becomes_ceil_n_over_stride(height, width):
    model = BNInception(
        weights=None, include_top=False, input_shape=(height, width, 3), depth_multiplier=0.25
    )
    for name, shape in _shapes(model).items():
        stride = STRIDES[name]
        assert shape[:2] == (math.ceil(height / stride), math.ceil(width / stride)), name
    if (height, width) == (112, 112):
        assert tuple(model.output.shape[1:3]) == (4, 4)
    if (height, width) == (250, 300):
        assert tuple(model.output.shape[1:3]) == (8, 10)


def test_250x300_with_avg_pooling():
    model = BNInception(weights=None, include_top=False, input_shape=(250, 300, 3), pooling="avg")
    assert tuple(model.get_layer("Mixed_5c").output.shape) == (None, 8, 10, 1024)
    assert tuple(model.output.shape) == (None, 1024)


@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_unknown_spatial_size_with_pooling_runs(pooling):
    model = BNInception(
        weights=None,
        include_top=False,
        input_shape=(None, None, 3),
        pooling=pooling,
        depth_multiplier=0.25,
    )
    assert tuple(model.output.shape) == (None, 256)
    for height, width in [(32, 32), (45, 70)]:
        x = np.random.default_rng(0).uniform(-1, 1, (1, height, width, 3)).astype("float32")
        y = model(x, training=False)
        assert tuple(y.shape) == (1, 256)
        assert np.all(np.isfinite(y))


@pytest.mark.parametrize("multiplier", [0.5, 2.0])
def test_depth_multiplier_scales_every_end_point(multiplier):
    model = BNInception(
        weights=None, include_top=False, input_shape=(224, 224, 3), depth_multiplier=multiplier
    )
    expected = {
        name: (h, w, int(c * multiplier))
        for name, (h, w, c) in TF_SLIM_END_POINT_SHAPES_224.items()
    }
    assert _shapes(model) == expected


def test_paper_4c_4d_layout_has_608_channels():
    model = BNInception(
        weights=None, include_top=False, input_shape=(224, 224, 3), mixed_4c_4d="paper"
    )
    shapes = _shapes(model)
    # Figure 5's literal "avg + 128" at 4c/4d (tf_slim's Mixed_4d/Mixed_4e), as the Caffe port.
    assert shapes["Mixed_4d"] == (14, 14, 608)
    assert shapes["Mixed_4e"] == (14, 14, 608)
    assert shapes["Mixed_5a"] == (7, 7, 1056)  # 192 + 256 + 608 passed through
    assert shapes["Mixed_5c"] == (7, 7, 1024)
    assert model.get_layer("Mixed_4d_Branch_3_Conv2d_0b_1x1").filters == 128


def test_feature_extractor_outputs_a_dict_of_end_points():
    base = BNInception(
        weights=None, include_top=False, input_shape=(None, None, 3), depth_multiplier=0.25
    )
    backbone = feature_extractor(base)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 64, 96, 3)).astype("float32")
    features = backbone(x, training=False)
    assert set(features) == {"Mixed_3c", "Mixed_4e", "Mixed_5c"}
    assert tuple(features["Mixed_3c"].shape) == (2, 8, 12, 80)
    assert tuple(features["Mixed_4e"].shape) == (2, 4, 6, 144)
    assert tuple(features["Mixed_5c"].shape) == (2, 2, 3, 256)
    # It shares the base's layers: the last end point equals the base model's output.
    np.testing.assert_array_equal(features["Mixed_5c"], base(x, training=False))
    conv = feature_extractor(base, ["Conv2d_1a_7x7"])(x, training=False)["Conv2d_1a_7x7"]
    assert np.min(conv) >= 0.0  # the end point is after the ReLU, as tf_slim's
    with pytest.raises(ValueError, match="accepted: Conv2d_1a_7x7, MaxPool_2a_3x3"):
        feature_extractor(base, ["Mixed_6a"])


def test_feature_extractor_of_a_model_loaded_from_a_keras_file(tmp_path):
    base = BNInception(
        weights=None, include_top=False, input_shape=(64, 64, 3), depth_multiplier=0.25
    )
    path = str(tmp_path / "base.keras")
    base.save(path)
    loaded = keras.saving.load_model(path)
    x = np.random.default_rng(2).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
    expected = feature_extractor(base, END_POINTS)(x, training=False)
    features = feature_extractor(loaded, END_POINTS)(x, training=False)
    for name in END_POINTS:
        np.testing.assert_array_equal(features[name], expected[name], err_msg=name)
    with pytest.raises(ValueError, match="must be a BNInception model"):
        bninception_end_points(keras.Sequential([keras.Input((8,)), keras.layers.Dense(2)]))


def test_input_tensor_with_preceding_layers():
    inputs = keras.Input((64, 64, 3))
    scaled = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    model = BNInception(weights=None, input_tensor=scaled, classes=7, depth_multiplier=0.25)
    assert model.inputs[0] is inputs
    assert tuple(model.output.shape) == (None, 7)
    y = model(np.full((1, 64, 64, 3), 255.0, "float32"), training=False)
    np.testing.assert_allclose(np.sum(y), 1.0, rtol=1e-5)  # softmax


def test_sigmoid_and_baseline_variants():
    sigmoid = BNInception(
        weights=None,
        include_top=False,
        input_shape=(32, 32, 3),
        activation="sigmoid",
        depth_multiplier=0.25,
    )
    activations = [layer for layer in sigmoid.layers if layer.name.endswith("_Activation")]
    assert len(activations) == 1 + 2 + 10 * 7 - 2 * 2  # stem + 7 convs a module (5 in 3c, 4e)
    assert all(layer.activation is keras.activations.sigmoid for layer in activations)
    baseline = BNInception(
        weights=None,
        include_top=False,
        input_shape=(32, 32, 3),
        batch_norm=False,
        depth_multiplier=0.25,
    )
    assert not [layer for layer in baseline.layers if "BatchNorm" in layer.name]
    assert all(
        layer.use_bias for layer in baseline.layers if isinstance(layer, keras.layers.Conv2D)
    )


def test_channels_first_layout():
    # Built symbolically only: TensorFlow's CPU convolutions do not run channels_first.
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format("channels_first")
    try:
        model = BNInception(
            weights=None, include_top=False, input_shape=(3, 64, 96), depth_multiplier=0.25
        )
        default = BNInception(weights=None, classes=3, depth_multiplier=0.25)
    finally:
        keras.config.set_image_data_format(previous)
    shapes = _shapes(model)
    assert shapes["Conv2d_2c_3x3"] == (48, 16, 24)
    assert shapes["Mixed_5c"] == (256, 2, 3)
    assert tuple(default.input.shape) == (None, 3, 224, 224)
