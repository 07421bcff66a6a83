"""Building blocks of BN-Inception: convolution + BN + non-linearity, and the Inception module.

Layer names follow tf_slim's ``inception_v2`` scopes with "/" replaced by "_" (Keras 3 layer names
cannot contain "/"): the convolution of a unit is named after its scope
("Mixed_3b_Branch_1_Conv2d_0b_3x3"), its BN "<scope>_BatchNorm", its non-linearity
"<scope>_Activation", and the concatenation of a module after the module ("Mixed_3b"). See
:mod:`keras_bninception.models.naming` for the mapping back to tf_slim's variable names.

Where this package's BN is followed by ReLU (every unit of BN-Inception) the two are one layer,
`BatchNormalization(activation="relu")`, named "<scope>_BatchNorm" (same weights and names as the
plain BN): one hand-written gradient for both, and no "<scope>_Activation" layer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import keras

from keras_bninception.layers import BatchNormalization
from keras_bninception.models.figure5 import STEM, InceptionRow, StemRow

BATCH_NORM_SUFFIX = "_BatchNorm"
ACTIVATION_SUFFIX = "_Activation"


@dataclasses.dataclass(frozen=True)
class UnitConfig:
    """How every convolution unit of the network is built.

    Attributes:
        batch_norm: BN after the convolution (conv without bias), as in the paper; False gives the
            paper's "Inception" baseline (conv with bias, no BN).
        activation: the non-linearity (anything `keras.activations.get` accepts).
        momentum, epsilon, scale, synchronized: arguments of the BN layer.
        channel_axis: -1 for channels_last, 1 for channels_first.
        kernel_initializer: initializer of the convolution kernels.
        norm_layer: the BN layer class (or factory), called with Keras BatchNormalization's
            arguments `axis`, `momentum`, `epsilon`, `scale`, `synchronized`, `name`:
            this package's `BatchNormalization` by default, `keras.layers.BatchNormalization`
            to compare with Keras' own. This package's layer (or a subclass) absorbs a following
            ReLU (`activation="relu"`); any other factory is followed by an Activation layer.
        first_batch_norm: whether BN follows the first (separable) convolution; tf_slim's
            checkpoints have a bias and no BN there (False). None: `batch_norm`.
    """

    batch_norm: bool = True
    activation: Any = "relu"
    momentum: float = 0.99
    epsilon: float = 1e-3
    scale: bool = True
    synchronized: bool = False
    channel_axis: int = -1
    kernel_initializer: str = "he_normal"
    norm_layer: Callable[..., keras.layers.Layer] = BatchNormalization
    first_batch_norm: bool | None = None


def _fuses_relu(config: UnitConfig) -> bool:
    """Whether BN and the activation are one `BatchNormalization(activation="relu")` layer."""
    return (
        isinstance(config.norm_layer, type)
        and issubclass(config.norm_layer, BatchNormalization)
        and keras.activations.get(config.activation) is keras.activations.relu
    )


def _normalize_and_activate(x, name: str, config: UnitConfig, batch_norm: bool):
    if batch_norm:
        fused = _fuses_relu(config)
        x = config.norm_layer(
            axis=config.channel_axis,
            momentum=config.momentum,
            epsilon=config.epsilon,
            scale=config.scale,
            synchronized=config.synchronized,
            name=name + BATCH_NORM_SUFFIX,
            **({"activation": "relu"} if fused else {}),
        )(x)
        if fused:
            return x
    return keras.layers.Activation(config.activation, name=name + ACTIVATION_SUFFIX)(x)


def conv_unit(x, filters: int, kernel: int, stride: int, name: str, config: UnitConfig):
    """Conv (SAME padding) -> BN -> non-linearity: z = g(BN(W u)), the paper's section 3.2."""
    x = keras.layers.Conv2D(
        filters,
        kernel,
        strides=stride,
        padding="same",
        use_bias=not config.batch_norm,
        kernel_initializer=config.kernel_initializer,
        name=name,
    )(x)
    return _normalize_and_activate(x, name, config, config.batch_norm)


def separable_conv_unit(x, filters: int, row: StemRow, multiplier: int, config: UnitConfig):
    """The first layer: depthwise `kernel` x `kernel` conv (x `multiplier`), pointwise to `filters`.

    BN follows unless `config.first_batch_norm` is False; the convolution has a bias exactly when
    no BN follows.
    """
    batch_norm = config.batch_norm if config.first_batch_norm is None else config.first_batch_norm
    x = keras.layers.SeparableConv2D(
        filters,
        row.kernel,
        strides=row.stride,
        padding="same",
        depth_multiplier=multiplier,
        use_bias=not batch_norm,
        depthwise_initializer=config.kernel_initializer,
        pointwise_initializer=config.kernel_initializer,
        name=row.scope,
    )(x)
    return _normalize_and_activate(x, row.scope, config, batch_norm)


def stem(x, depth: Callable[[int], int], config: UnitConfig, end_points: dict[str, Any]):
    """The layers of Figure 5 before the Inception modules (`figure5.STEM`), in order.

    The first convolution is depthwise-separable with the paper's channel multiplier ("x8"),
    capped as tf_slim does so that `in_channels * multiplier` stays at most the pointwise depth.
    Records each row's output in `end_points` under its tf_slim scope; returns the last.
    """
    in_channels = x.shape[config.channel_axis]
    for row in STEM:
        if row.kind == "separable_conv":
            multiplier = max(1, min(depth(row.depth) // in_channels, row.separable_multiplier))
            x = separable_conv_unit(x, depth(row.depth), row, multiplier, config)
        elif row.kind == "conv":
            x = conv_unit(x, depth(row.depth), row.kernel, row.stride, row.scope, config)
        else:
            x = keras.layers.MaxPooling2D(
                row.kernel, strides=row.stride, padding="same", name=row.scope
            )(x)
        end_points[row.scope] = x
    return x


def inception_module(x, row: InceptionRow, depth: Callable[[int], int], config: UnitConfig):
    """One Inception module of Figure 5, named like tf_slim's ``row.scope``.

    Branches, numbered Branch_0... over the branches the module has: the 1x1 convolution (absent
    when the table's #1x1 is 0), 1x1 reduce -> 3x3, 1x1 reduce -> 3x3 -> 3x3 (the "double 3x3" that
    replaces GoogLeNet's 5x5), and 3x3 avg/max pool -> 1x1 projection (or pass through). In a
    stride-2 module the last convolution of the two 3x3 branches and the (max) pool have stride 2,
    and tf_slim calls them Conv2d_1a_3x3 / MaxPool_1a_3x3.

    Args:
        x: input tensor.
        row: the module's row of the table.
        depth: the width rule applied to the table's depths (depth multiplier, min depth).
        config: how each convolution unit is built.

    Returns:
        The concatenation of the branches along the channel axis, a layer named ``row.scope``.
    """
    s = row.stride
    stride_name = "1a" if s == 2 else None
    branches = []

    def branch(suffix: str) -> str:
        return f"{row.scope}_Branch_{len(branches)}_{suffix}"

    if row.n_1x1:
        branches.append(conv_unit(x, depth(row.n_1x1), 1, 1, branch("Conv2d_0a_1x1"), config))

    y = conv_unit(x, depth(row.n_3x3_reduce), 1, 1, branch("Conv2d_0a_1x1"), config)
    last = f"Conv2d_{stride_name or '0b'}_3x3"
    branches.append(conv_unit(y, depth(row.n_3x3), 3, s, branch(last), config))

    y = conv_unit(x, depth(row.n_double_3x3_reduce), 1, 1, branch("Conv2d_0a_1x1"), config)
    y = conv_unit(y, depth(row.n_double_3x3), 3, 1, branch("Conv2d_0b_3x3"), config)
    last = f"Conv2d_{stride_name or '0c'}_3x3"
    branches.append(conv_unit(y, depth(row.n_double_3x3), 3, s, branch(last), config))

    pool_layer = keras.layers.AveragePooling2D if row.pool == "avg" else keras.layers.MaxPooling2D
    pool_name = f"{'Avg' if row.pool == 'avg' else 'Max'}Pool_{stride_name or '0a'}_3x3"
    y = pool_layer(3, strides=s, padding="same", name=branch(pool_name))(x)
    if row.pool_proj:
        y = conv_unit(y, depth(row.pool_proj), 1, 1, branch("Conv2d_0b_1x1"), config)
    branches.append(y)

    return keras.layers.Concatenate(axis=config.channel_axis, name=row.scope)(branches)
