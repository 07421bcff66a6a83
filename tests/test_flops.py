"""keras_bninception.flops.count_multiply_adds on small models whose counts are worked by hand."""

import keras
import pytest

from keras_bninception.flops import count_multiply_adds


def _model(input_shape, *layers):
    inputs = keras.Input(input_shape)
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


def test_conv2d():
    # 'valid' 3x3 on 10x12: 8x10 outputs, each 3*3*4 products for each of 6 filters.
    model = _model((10, 12, 4), keras.layers.Conv2D(6, 3))
    assert count_multiply_adds(model) == 8 * 10 * 3 * 3 * 4 * 6


def test_conv2d_strided_same_and_groups():
    # 'same', stride 2 on 9x9: ceil(9/2) = 5 -> 5x5; groups=2 halves the input channels seen.
    model = _model((9, 9, 4), keras.layers.Conv2D(6, 3, strides=2, padding="same", groups=2))
    assert count_multiply_adds(model) == 5 * 5 * 3 * 3 * (4 // 2) * 6


def test_conv2d_channels_first():
    model = _model((4, 10, 12), keras.layers.Conv2D(6, 3, data_format="channels_first"))
    assert count_multiply_adds(model) == 8 * 10 * 3 * 3 * 4 * 6


def test_depthwise_conv2d():
    # 7x7/2 'same' on 16x16 -> 8x8; each of 3*2 output channels sees one input channel.
    model = _model(
        (16, 16, 3),
        keras.layers.DepthwiseConv2D(7, strides=2, padding="same", depth_multiplier=2),
    )
    assert count_multiply_adds(model) == 8 * 8 * 7 * 7 * 3 * 2


def test_separable_conv2d():
    # BN-Inception's first layer on a 32x32 input: 16x16 outputs,
    # depthwise 7*7*3*8 and pointwise 24*64 products per output position.
    model = _model(
        (32, 32, 3),
        keras.layers.SeparableConv2D(64, 7, strides=2, padding="same", depth_multiplier=8),
    )
    assert count_multiply_adds(model) == 16 * 16 * (7 * 7 * 3 * 8 + 3 * 8 * 64)


def test_dense_and_dense_on_sequences():
    assert count_multiply_adds(_model((20,), keras.layers.Dense(7))) == 20 * 7
    assert count_multiply_adds(_model((5, 20), keras.layers.Dense(7))) == 5 * 20 * 7


def test_conv2d_transpose():
    # Every input position scatters a 3x3x(5 out)x(4 in) kernel: 6*6*3*3*4*5.
    model = _model((6, 6, 4), keras.layers.Conv2DTranspose(5, 3, strides=2))
    assert count_multiply_adds(model) == 6 * 6 * 3 * 3 * 5 * 4


def test_not_counted_layers_and_sum():
    """BN, activations, pooling, bias, concatenation, dropout add nothing; layers add up."""
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 1, use_bias=True)(inputs)  # 8*8*3*4
    a = keras.layers.BatchNormalization()(a)
    a = keras.layers.ReLU()(a)
    b = keras.layers.AveragePooling2D(3, 1, padding="same")(inputs)
    b = keras.layers.Conv2D(2, 3, padding="same", use_bias=False)(b)  # 8*8*3*3*3*2
    x = keras.layers.Concatenate()([a, b])
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dropout(0.5)(x)
    x = keras.layers.Dense(10, activation="softmax")(x)  # 6*10
    model = keras.Model(inputs, x)
    assert count_multiply_adds(model) == 8 * 8 * 3 * 4 + 8 * 8 * 3 * 3 * 3 * 2 + 6 * 10


def test_sequential_nested_and_shared_layers():
    conv = keras.layers.Conv2D(2, 1)
    sequential = keras.Sequential([keras.Input((4, 4, 3)), conv])
    assert count_multiply_adds(sequential) == 4 * 4 * 3 * 2
    inputs = keras.Input((4, 4, 3))
    # The nested model is called twice, a shared Dense twice.
    dense = keras.layers.Dense(5)
    x = keras.layers.Concatenate()([sequential(inputs), sequential(inputs)])
    y = keras.layers.Add()([dense(x), dense(x)])
    outer = keras.Model(inputs, y)
    assert count_multiply_adds(outer) == 2 * (4 * 4 * 3 * 2) + 2 * (4 * 4 * 4 * 5)


def test_dynamic_shape_is_an_error():
    model = _model((None, None, 3), keras.layers.Conv2D(2, 3))
    with pytest.raises(ValueError, match="static shapes.*input_shape=\\(224, 224, 3\\)"):
        count_multiply_adds(model)


def test_unsupported_layer_with_kernel_is_an_error():
    model = _model((4, 6), keras.layers.EinsumDense("ab,bc->ac", output_shape=(4, 3)))
    with pytest.raises(ValueError, match="EinsumDense.*Supported: Conv1D"):
        count_multiply_adds(model)


def test_subclassed_model_is_an_error():
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Tiny()
    model(keras.ops.zeros((1, 3)))
    with pytest.raises(ValueError, match="Functional or Sequential"):
        count_multiply_adds(model)


# Figure 5 of the paper (appendix), written out independently of keras_bninception.models:
# (name, stride, #1x1, #3x3 reduce, #3x3, double #3x3 reduce, double #3x3, pool projection);
# stride-2 modules have no 1x1 branch and a max pool "pass through" (projection 0).
FIGURE_5 = [
    ("3a", 1, 64, 64, 64, 64, 96, 32),
    ("3b", 1, 64, 64, 96, 64, 96, 64),
    ("3c", 2, 0, 128, 160, 64, 96, 0),
    ("4a", 1, 224, 64, 96, 96, 128, 128),
    ("4b", 1, 192, 96, 128, 96, 128, 128),
    (
        "4c",
        1,
        160,
        128,
        160,
        128,
        160,
        96,
    ),  # tf_slim's 96 (the table says 128: an erratum, see figure5.py)
    ("4d", 1, 96, 128, 192, 160, 192, 96),  # idem
    ("4e", 2, 0, 128, 192, 192, 256, 0),
    ("5a", 1, 352, 192, 320, 160, 224, 128),
    ("5b", 1, 352, 192, 320, 192, 224, 128),
]


def figure_5_multiply_adds(classes=1000, pool_projection_4c_4d=96):
    """Multiply-adds at 224x224 from the table, by the rules of keras_bninception.flops."""
    total = 112 * 112 * (7 * 7 * 3 * 8 + 3 * 8 * 64)  # separable 7x7/2, depth multiplier 8
    total += 56 * 56 * 64 * 64  # 1x1 after the 3x3/2 max pool
    total += 56 * 56 * 3 * 3 * 64 * 192  # 3x3
    side, channels = 28, 192  # after the second 3x3/2 max pool
    for name, stride, n1, r3, n3, rd, nd, proj in FIGURE_5:
        if name in ("4c", "4d"):
            proj = pool_projection_4c_4d
        positions, out_positions = side * side, (side // stride) ** 2
        total += positions * channels * (n1 + r3 + rd + proj)  # the 1x1 convs
        total += out_positions * 9 * r3 * n3  # the 3x3 (stride 2 in 3c/4e)
        total += positions * 9 * rd * nd + out_positions * 9 * nd * nd  # double 3x3
        side //= stride
        channels = n1 + n3 + nd + (proj if stride == 1 else channels)
    assert (side, channels) == (7, 1024)
    return total + channels * classes  # global average pool, then the classifier


@pytest.mark.parametrize("mixed_4c_4d, projection", [("tf_slim", 96), ("paper", 128)])
def test_bninception_224_matches_figure_5(mixed_4c_4d, projection):
    from keras_bninception.models import BNInception

    model = BNInception(weights=None, input_shape=(224, 224, 3), mixed_4c_4d=mixed_4c_4d)
    expected = figure_5_multiply_adds(pool_projection_4c_4d=projection)
    assert count_multiply_adds(model) == expected
    if mixed_4c_4d == "tf_slim":
        # The literature's "about 1.94 G multiply-adds" for BN-Inception.
        assert abs(expected - 1.94e9) < 0.01 * 1.94e9
