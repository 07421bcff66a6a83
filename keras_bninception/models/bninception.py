"""`BNInception`: the GoogLeNet v2 of Ioffe & Szegedy (2015), Figure 5, as a Keras application."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import keras

from keras_bninception import weights as weights_lib
from keras_bninception.layers import BatchNormalization
from keras_bninception.models import blocks, figure5
from keras_bninception.models import end_points as end_points_lib
from keras_bninception.weights import tf_slim

DEFAULT_SIZE = 224
_POOLINGS = (None, "avg", "max")
_WEIGHT_KINDS = (weights_lib.TF_SLIM, weights_lib.KERAS_MODEL, weights_lib.KERAS_WEIGHTS)


def _check_imagenet(include_top: bool, classes: int, depth_multiplier: float) -> None:
    """What `weights="imagenet"` needs of the other arguments, checked before any download."""
    published = weights_lib.imagenet.IMAGENET
    n = published.classes
    _require(
        not include_top or classes in (n - 1, n),
        "classes",
        classes,
        f"{n - 1} (ImageNet's classes) or {n} (TF-slim's, class 0 = background) with "
        'weights="imagenet" and include_top=True',
    )
    _require(
        depth_multiplier == published.depth_multiplier,
        "depth_multiplier",
        depth_multiplier,
        f'{published.depth_multiplier} with weights="imagenet" (the published checkpoint\'s)',
    )


def _require(ok: bool, name: str, value: Any, accepted: str) -> None:
    if not ok:
        raise ValueError(f"`{name}` must be {accepted}; received {name}={value!r}")


def _input(input_tensor: Any, input_shape: Any, include_top: bool, weights: Any) -> tuple:
    """The image input (`input_tensor` or a new `keras.Input`, its shape checked) and the model's
    inputs (those `input_tensor` comes from)."""
    channels_first = keras.backend.image_data_format() == "channels_first"
    if input_tensor is not None:
        x = input_tensor
        if not keras.backend.is_keras_tensor(x):
            x = keras.Input(tensor=x, shape=tuple(x.shape[1:]))
    else:
        if input_shape is None:
            side = DEFAULT_SIZE if include_top else None
            input_shape = (3, side, side) if channels_first else (side, side, 3)
        x = keras.Input(shape=tuple(input_shape))
    shape = tuple(x.shape[1:])
    spatial, channels = (shape[1:], shape[0]) if channels_first else (shape[:-1], shape[-1])
    low = figure5.MIN_INPUT_SIZE
    if len(shape) != 3 or any(s is not None and s < low for s in spatial):
        raise ValueError(
            f"The input must be images of at least {low}x{low} pixels (rank-4 tensors with "
            f"height and width >= {low}, or None); received input shape {shape}"
        )
    if channels is None or (weights is not None and channels != 3):
        raise ValueError(
            "The input must have a known number of channels, 3 channels (RGB) when loading "
            f"weights; received input shape {shape}"
        )
    if input_tensor is None:
        return x, x
    inputs = keras.utils.get_source_inputs(input_tensor)
    return x, inputs[0] if len(inputs) == 1 else inputs


def _load_keras_weights(model, path: str, include_top: bool, classes: int, depth_multiplier: float):
    try:
        model.load_weights(path)
    except ValueError as error:
        raise ValueError(
            f"The Keras weights file {path!r} does not fit this model; build BNInception with the "
            "arguments the weights were saved with (`include_top`, `classes`, `depth_multiplier`, "
            f"...; here include_top={include_top}, classes={classes}, depth_multiplier="
            f"{depth_multiplier}). Keras reports: {str(error)[:300]}"
        ) from error


def BNInception(
    include_top: bool = True,
    weights: str | os.PathLike[str] | weights_lib.Source | None = "imagenet",
    input_tensor: Any = None,
    input_shape: tuple[int | None, int | None, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: Any = "softmax",
    name: str = "bninception",
    *,
    depth_multiplier: float = 1.0,
    min_depth: int = 16,
    dropout_rate: float = 0.0,
    batch_norm: bool = True,
    activation: Any = "relu",
    momentum: float = 0.99,
    epsilon: float = 1e-3,
    scale: bool | None = None,
    synchronized: bool = False,
    mixed_4c_4d: str = "tf_slim",
    slim_compatible: bool = False,
    norm_layer: Callable[..., keras.layers.Layer] = BatchNormalization,
) -> keras.Model:
    """Instantiates the BN-Inception (GoogLeNet v2) architecture.

    Ioffe & Szegedy, Batch Normalization (ICML 2015, arxiv.org/abs/1502.03167), appendix
    Figure 5 (`figure5.py`; each convolution followed by BN and the non-linearity, `blocks.py`),
    SAME padding throughout. Layers carry tf_slim's `inception_v2` scope names with "/" -> "_"
    ("Mixed_3b_Branch_1_Conv2d_0b_3x3"); `feature_extractor` gives its end points.
    1,934,857,216 multiply-adds per 224x224 image (`keras_bninception.flops`).

    Args:
        include_top: whether to include the classifier.
        weights: `"imagenet"` (default: TF-slim's published ImageNet checkpoint, downloaded once
            into the Keras cache, `keras_bninception.weights.imagenet`), `None` (random
            initialization), a Keras weights file (`.weights.h5` / `.keras`) or a TF-slim
            `inception_v2` checkpoint (a V1 file such as the published `inception_v2.ckpt`, a
            V2 prefix, or the published `inception_v2_2016_08_28.tar.gz`: a local copy of the
            ImageNet weights). A TF-slim checkpoint implies `slim_compatible=True`; its 1001
            classes (class 0 "background") fill `classes=1001` as they are, and `classes=1000`
            without the background class (ImageNet's order, for `decode_predictions`). A
            `keras_bninception.weights.Source` already resolved is taken as it is.
        input_tensor, input_shape: the image input (a Keras tensor) or its shape; sides >= 32
            or `None`. Default `(224, 224, 3)` with the top, `(None, None, 3)` without.
        pooling: without the top: `None` (Mixed_5c's 4D output), `"avg"` or `"max"`.
        classes, classifier_activation: the top's classes and activation.
        name: the name of the model.
        depth_multiplier, min_depth: tf_slim's width rule, depth d becomes
            `max(int(d * depth_multiplier), min_depth)`.
        dropout_rate: dropout before the classifier (the paper removed it: 0).
        batch_norm: BN after every convolution; `False`: the paper's "Inception" baseline.
        activation: the non-linearity; `"sigmoid"` is the paper's BN-x5-Sigmoid.
        momentum, epsilon, synchronized: of every BN layer.
        scale: whether BN has γ; default True, False with `slim_compatible`.
        mixed_4c_4d: the table's erratum at 4c/4d: `"tf_slim"` (96-channel pool projections,
            576 channels as the table's output sizes) or `"paper"` (the literal 128, 608).
        slim_compatible: exactly tf_slim's `inception_v2` variables: the separable first
            convolution with a bias and no BN, BN without γ, `mixed_4c_4d="tf_slim"`.
        norm_layer: the BN layer class (default: this package's `BatchNormalization`).
    """
    _require(pooling in _POOLINGS, "pooling", pooling, f"one of {_POOLINGS}")
    _require(
        depth_multiplier > 0, "depth_multiplier", depth_multiplier, "greater than zero (e.g. 0.5)"
    )
    _require(
        isinstance(min_depth, int) and min_depth >= 1, "min_depth", min_depth, "positive integer"
    )
    _require(0.0 <= dropout_rate < 1.0, "dropout_rate", dropout_rate, "in [0, 1)")
    ok = weights is None or not include_top or classifier_activation in (None, "softmax")
    _require(ok, "classifier_activation", classifier_activation, "None or 'softmax' with weights")
    network = dict(
        batch_norm=batch_norm,
        scale=scale,
        mixed_4c_4d=mixed_4c_4d,
        epsilon=epsilon,
        activation=activation,
    )
    img_input, inputs = _input(input_tensor, input_shape, include_top, weights)
    if isinstance(weights, str) and weights == weights_lib.IMAGENET:
        # Everything the published checkpoint needs is checked before it is downloaded.
        _check_imagenet(include_top, classes, depth_multiplier)
        tf_slim.check_slim_network(network, checkpoint=True)
    source = None if weights is None else weights_lib.resolve(weights, "weights", _WEIGHT_KINDS)
    weights_kind = source and source.kind
    slim_compatible = slim_compatible or weights_kind == weights_lib.TF_SLIM
    if slim_compatible:
        tf_slim.check_slim_network(network, checkpoint=weights_kind == weights_lib.TF_SLIM)

    config = blocks.UnitConfig(
        batch_norm=batch_norm,
        activation=activation,
        momentum=momentum,
        epsilon=epsilon,
        scale=not slim_compatible if scale is None else scale,
        synchronized=synchronized,
        channel_axis=1 if keras.backend.image_data_format() == "channels_first" else -1,
        norm_layer=norm_layer,
        first_batch_norm=batch_norm and not slim_compatible,
    )

    depth = functools.partial(
        figure5.scaled_depth, depth_multiplier=depth_multiplier, min_depth=min_depth
    )
    end_points: dict[str, Any] = {}
    x = blocks.stem(img_input, depth, config, end_points)
    for row in figure5.inception_rows(mixed_4c_4d):
        x = end_points[row.scope] = blocks.inception_module(x, row, depth, config)

    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="Logits_GlobalAvgPool")(x)
        if dropout_rate:
            x = keras.layers.Dropout(dropout_rate, name="Logits_Dropout_1b")(x)
        x = keras.layers.Dense(classes, name="Logits_Conv2d_1c_1x1")(x)
        if classifier_activation is not None:
            x = keras.layers.Activation(classifier_activation, name="Predictions")(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)

    model = keras.Model(inputs, x, name=name)
    end_points_lib.record(model, end_points)

    if weights_kind == weights_lib.TF_SLIM:
        tf_slim.load_tf_slim_checkpoint(model, source.path)
    elif source is not None:
        _load_keras_weights(model, source.path, include_top, classes, depth_multiplier)
    return model
