"""`BNInception`: the GoogLeNet v2 of Ioffe & Szegedy (2015), Figure 5, as a Keras application."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import keras
from keras.src.applications import imagenet_utils
from keras.src.ops import operation_utils

from keras_bninception.models import blocks, figure5, tf_slim_checkpoint
from keras_bninception.models.naming import end_point_layer_name

DEFAULT_SIZE = 224
MIN_SIZE = 32
_POOLINGS = (None, "avg", "max")
_KERAS_WEIGHTS_SUFFIXES = (".weights.h5", ".keras", ".h5")


def _weights_kind(weights: Any) -> tuple[str | None, str | None]:
    """("tf_slim", prefix), ("keras", path) or (None, None); ValueError for anything else."""
    if weights is None:
        return None, None
    if isinstance(weights, str) and weights == "imagenet":
        raise ValueError(
            'weights="imagenet" cannot be downloaded: no Keras ImageNet weights are published for '
            "BNInception. Download the TF-slim checkpoint inception_v2_2016_08_28.tar.gz "
            "(http://download.tensorflow.org/models/inception_v2_2016_08_28.tar.gz), unpack it and "
            'pass its path: BNInception(weights="inception_v2.ckpt", classes=1001).'
        )
    if isinstance(weights, str | os.PathLike):
        path = os.fspath(weights)
        if path.endswith(_KERAS_WEIGHTS_SUFFIXES) and os.path.isfile(path):
            return "keras", path
        prefix = tf_slim_checkpoint.checkpoint_prefix(weights)
        if prefix is not None:
            return "tf_slim", prefix
    raise ValueError(
        "The `weights` argument should be either `None` (random initialization), the path to a "
        "Keras weights file (.weights.h5 or .keras) or the path of a TF-slim inception_v2 "
        "checkpoint (a V1 checkpoint file such as the published inception_v2.ckpt, or a V2 prefix, "
        f"the prefix of its .index file); received weights={weights!r}"
    )


def _check_input(img_input, channel_axis: int, weights: Any) -> int:
    """Validates the input tensor's shape; returns its number of channels."""
    shape = tuple(img_input.shape[1:])
    channels = shape[channel_axis]
    spatial = shape[1:] if channel_axis == 0 else shape[:-1]
    if len(shape) != 3 or any(s is not None and s < MIN_SIZE for s in spatial):
        raise ValueError(
            f"The input must be images of at least {MIN_SIZE}x{MIN_SIZE} pixels (rank-4 tensors "
            f"with height and width >= {MIN_SIZE}, or None); received input shape {shape}"
        )
    if channels is None:
        raise ValueError(
            f"The number of input channels must be known; received input shape {shape}"
        )
    if weights is not None and channels != 3:
        raise ValueError(
            "The input must have 3 channels (RGB) when loading weights; received input shape "
            f"{shape}"
        )
    return int(channels)


def BNInception(
    include_top: bool = True,
    weights: str | os.PathLike[str] | None = None,
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
) -> keras.Model:
    """Instantiates the BN-Inception (GoogLeNet v2) architecture.

    Reference:
    - [Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
      Shift](https://arxiv.org/abs/1502.03167) (ICML 2015), appendix Figure 5.

    The network is the table of Figure 5 (`keras_bninception.models.figure5`), every convolution
    followed by `keras_bninception.layers.BatchNormalization` and the non-linearity. Layers are
    named after tf_slim's `inception_v2` scopes with "/" replaced by "_" (e.g.
    "Mixed_3b_Branch_1_Conv2d_0b_3x3" and its "..._BatchNorm"); the modules are the layers
    "Mixed_3b" ... "Mixed_5c", and `bninception_end_points` / `feature_extractor` give tf_slim's
    end points. All convolutions and pools use SAME padding: each side of the last feature map is
    ceil(n / 32) (224 -> 7, 112 -> 4, 250x300 -> 8x10). The classifier is global average pooling
    and a Dense layer (tf_slim's 1x1 convolution "Logits/Conv2d_1c_1x1"); for inputs up to 224x224
    that equals tf_slim's 7x7 VALID average pool. Convolution kernels start from "he_normal"
    (truncated normal, variance 2 / fan_in: tf_slim's `variance_scaling_initializer()`).

    Compute: 1,934,857,216 multiply-adds per 224x224 image with the 1000-way classifier (about
    1.93 G, so about 3.9 GFLOPs), counted by `keras_bninception.flops.count_multiply_adds(
    BNInception())` (convolutions and Dense; `tests/test_model_params.py` checks this number).

    Pretrained weights: Keras ImageNet weights are not published and nothing is downloaded. Use
    TF-slim's ImageNet checkpoint (73.9 % top-1, 1001 classes, class 0 = background): download
    http://download.tensorflow.org/models/inception_v2_2016_08_28.tar.gz (listed in the TF-slim
    model zoo, https://github.com/tensorflow/models/tree/master/research/slim), unpack it, and
    pass the checkpoint prefix:

    ```python
    model = BNInception(weights="inception_v2.ckpt", classes=1001)
    probabilities = model(keras_bninception.preprocess_input(images))  # [-1, 1] inputs
    ```

    Every variable is mapped by name; a checkpoint that does not fit raises a ValueError listing
    the missing, unused and wrong-shape variables. With `classifier_activation=None` the model's
    outputs equal tf_slim's `inception_v2` logits (inference mode) within 1e-4 relative error.

    Note: call `keras_bninception.preprocess_input` on your inputs (it scales pixels to [-1, 1]).

    Args:
        include_top: whether to include the classifier (global average pool + Dense).
        weights: `None` (random initialization), the path to a Keras weights file
            (`.weights.h5` / `.keras`), or the path of a TF-slim `inception_v2` checkpoint (a
            V1 checkpoint file such as the published `inception_v2.ckpt`, or a V2 prefix). A
            TF-slim checkpoint implies `slim_compatible=True`. `"imagenet"` raises a ValueError
            that explains where to get the checkpoint.
        input_tensor: optional Keras tensor (output of `keras.Input()`) to use as image input.
        input_shape: optional shape tuple, e.g. `(224, 224, 3)`; height and width at least 32 or
            `None`; 3 channels when loading weights. Defaults to `(224, 224, 3)` with
            `include_top=True` and `(None, None, 3)` without. Ignored if `input_tensor` is given.
        pooling: feature-extraction pooling when `include_top=False`: `None` (the 4D output of
            Mixed_5c), `"avg"` or `"max"` (global pooling, 2D output).
        classes: number of classes to classify images into (1001 for TF-slim's checkpoint).
        classifier_activation: activation of the top layer (`None` returns the logits). Only
            `None` or `"softmax"` when loading weights.
        name: the name of the model.
        depth_multiplier: tf_slim's width multiplier: every depth d becomes
            `max(int(d * depth_multiplier), min_depth)`. Must be > 0.
        min_depth: minimum depth of every convolution (active when `depth_multiplier < 1`).
        dropout_rate: dropout before the classifier. The paper removed dropout (default 0).
        batch_norm: BN after every convolution (default). `False` builds the paper's
            "Inception" baseline: the same network with conv biases and no BN.
        activation: the non-linearity (any name `keras.activations.get` accepts);
            `"sigmoid"` builds the paper's BN-x5-Sigmoid.
        momentum: BN moving-average momentum (tf_slim trains with 0.9997).
        epsilon: BN epsilon (0.001 as tf_slim).
        scale: whether BN has gamma. Default: True, or False with `slim_compatible`
            (tf_slim's checkpoints have no gamma).
        synchronized: BN statistics over the global batch of a `tf.distribute` strategy.
        mixed_4c_4d: the channel layout of modules 4c/4d (the table's erratum): `"tf_slim"`
            (96-channel pool projections, 576 channels as the table's output sizes; default) or
            `"paper"` (the table's literal 128: 608 channels, as the Caffe port).
        slim_compatible: build exactly tf_slim's `inception_v2` variables: the first (separable)
            convolution has a bias and no BN, BN has no gamma, `mixed_4c_4d="tf_slim"`.

    Returns:
        A `keras.Model` instance.
    """
    weights_kind, weights_path = _weights_kind(weights)
    if pooling not in _POOLINGS:
        raise ValueError(
            f"The `pooling` argument should be one of {_POOLINGS}; received pooling={pooling!r}"
        )
    if not depth_multiplier > 0:
        raise ValueError(
            "`depth_multiplier` must be greater than zero (e.g. 0.5, 1.0, 2.0); received "
            f"depth_multiplier={depth_multiplier!r}"
        )
    if not (isinstance(min_depth, int) and min_depth >= 1):
        raise ValueError(
            f"`min_depth` must be a positive integer; received min_depth={min_depth!r}"
        )
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(
            "`dropout_rate` must be in [0, 1) (0: no dropout); "
            f"received dropout_rate={dropout_rate!r}"
        )
    if mixed_4c_4d not in figure5.MIXED_4C_4D_CHOICES:
        raise ValueError(
            f"`mixed_4c_4d` must be one of {figure5.MIXED_4C_4D_CHOICES}; received "
            f"mixed_4c_4d={mixed_4c_4d!r}"
        )
    try:
        keras.activations.get(activation)
    except (ValueError, TypeError) as error:
        raise ValueError(
            "`activation` must be a name keras.activations.get accepts (e.g. 'relu', 'sigmoid', "
            f"'tanh', 'elu') or a callable; received activation={activation!r}"
        ) from error
    if include_top and not (isinstance(classes, int) and classes >= 1):
        raise ValueError(f"`classes` must be a positive integer; received classes={classes!r}")

    if weights_kind == "tf_slim":
        conflicts = {
            "batch_norm": (batch_norm, True),
            "scale": (scale, False),
            "mixed_4c_4d": (mixed_4c_4d, "tf_slim"),
            "epsilon": (epsilon, 1e-3),
        }
        wrong = [
            f"{k}={v!r} (needs {need!r})"
            for k, (v, need) in conflicts.items()
            if v is not None and v != need
        ]
        if keras.activations.get(activation) is not keras.activations.get("relu"):
            wrong.append(f"activation={activation!r} (needs 'relu')")
        if wrong:
            raise ValueError(
                "A TF-slim inception_v2 checkpoint needs the tf_slim-compatible network; these "
                f"arguments contradict it: {', '.join(wrong)}"
            )
        slim_compatible = True
        if include_top:
            ckpt_classes = tf_slim_checkpoint.checkpoint_num_classes(weights_path)
            if ckpt_classes is None:
                raise ValueError(
                    f"The TF-slim checkpoint {weights_path!r} has no logits layer "
                    f"({tf_slim_checkpoint.LOGITS_BIASES}); use include_top=False."
                )
            if classes != ckpt_classes:
                raise ValueError(
                    f"The TF-slim checkpoint has {ckpt_classes} classes, so with include_top=True "
                    f"`classes` should be {ckpt_classes}; received classes={classes}"
                )
    if slim_compatible:
        if scale:
            raise ValueError("slim_compatible=True needs scale=False (tf_slim's BN has no gamma)")
        if not batch_norm:
            raise ValueError("slim_compatible=True needs batch_norm=True")
        if mixed_4c_4d != "tf_slim":
            raise ValueError('slim_compatible=True needs mixed_4c_4d="tf_slim"')
    if scale is None:
        scale = not slim_compatible
    if include_top:
        imagenet_utils.validate_activation(classifier_activation, weights)

    data_format = keras.backend.image_data_format()
    channel_axis = 1 if data_format == "channels_first" else -1
    if input_shape is None and input_tensor is None and include_top:
        input_shape = (
            (3, DEFAULT_SIZE, DEFAULT_SIZE)
            if channel_axis == 1
            else (DEFAULT_SIZE, DEFAULT_SIZE, 3)
        )
    input_shape = imagenet_utils.obtain_input_shape(
        input_shape,
        default_size=DEFAULT_SIZE,
        min_size=MIN_SIZE,
        data_format=data_format,
        require_flatten=False,
        weights=None,
    )
    if input_tensor is None:
        img_input = keras.layers.Input(shape=input_shape)
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = keras.layers.Input(tensor=input_tensor, shape=input_shape)
    else:
        img_input = input_tensor
    in_channels = _check_input(img_input, 0 if channel_axis == 1 else -1, weights)

    config = blocks.UnitConfig(
        batch_norm=batch_norm,
        activation=activation,
        momentum=momentum,
        epsilon=epsilon,
        scale=scale,
        synchronized=synchronized,
        channel_axis=channel_axis,
    )

    def depth(d: int) -> int:
        return figure5.scaled_depth(d, depth_multiplier, min_depth)

    x = img_input
    for row in figure5.STEM:
        if row.kind == "separable_conv":
            # The paper's "x8" depthwise multiplier, capped as tf_slim does for narrow networks.
            multiplier = figure5.separable_multiplier(depth_multiplier, min_depth, in_channels)
            # tf_slim's checkpoints: bias and ReLU, no BN, on this layer only (SPEC §2 quirks).
            x = blocks.separable_conv_unit(
                x,
                depth(row.depth),
                row.kernel,
                row.stride,
                multiplier,
                row.scope,
                config,
                batch_norm=batch_norm and not slim_compatible,
            )
        elif row.kind == "conv":
            x = blocks.conv_unit(x, depth(row.depth), row.kernel, row.stride, row.scope, config)
        else:
            x = keras.layers.MaxPooling2D(
                row.kernel, strides=row.stride, padding="same", name=row.scope
            )(x)
    for row in figure5.inception_rows(mixed_4c_4d):
        x = blocks.inception_module(x, row, depth, config)

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

    if input_tensor is not None:
        inputs = operation_utils.get_source_inputs(input_tensor)
        if len(inputs) == 1:
            inputs = inputs[0]
    else:
        inputs = img_input
    model = keras.Model(inputs, x, name=name)

    if weights_kind == "tf_slim":
        tf_slim_checkpoint.load_tf_slim_checkpoint(model, weights_path)
    elif weights_kind == "keras":
        try:
            model.load_weights(weights_path)
        except ValueError as error:
            raise ValueError(
                f"The Keras weights file {weights_path!r} does not fit this model; build "
                "BNInception with the arguments the weights were saved with (`include_top`, "
                f"`classes`, `depth_multiplier`, ...; here include_top={include_top}, "
                f"classes={classes}, depth_multiplier={depth_multiplier}). Keras reports: "
                f"{str(error)[:300]}"
            ) from error
    return model


def bninception_end_points(model: keras.Model) -> dict[str, Any]:
    """tf_slim's end points of a BNInception model: name -> KerasTensor, Conv2d_1a_7x7 ... Mixed_5c.

    The names are those of `tf_slim.nets.inception_v2.inception_v2_base`.
    """
    return {ep: model.get_layer(end_point_layer_name(ep)).output for ep in figure5.END_POINTS}


def feature_extractor(
    model: keras.Model,
    end_points: Iterable[str] = ("Mixed_3c", "Mixed_4e", "Mixed_5c"),
    name: str | None = None,
) -> keras.Model:
    """A model sharing `model`'s layers whose output is a dict of tf_slim end points.

    For example, a detection backbone with the 28x28, 14x14 and 7x7 feature maps (at 224x224)::

        backbone = feature_extractor(BNInception(include_top=False, input_shape=(None, None, 3)))
        features = backbone(images)  # {"Mixed_3c": ..., "Mixed_4e": ..., "Mixed_5c": ...}

    Args:
        model: a model built by `BNInception`.
        end_points: names among Conv2d_1a_7x7, MaxPool_2a_3x3, Conv2d_2b_1x1, Conv2d_2c_3x3,
            MaxPool_3a_3x3, Mixed_3b, Mixed_3c, Mixed_4a ... Mixed_4e, Mixed_5a ... Mixed_5c.
        name: the name of the new model (default: "<model name>_end_points").

    Returns:
        A `keras.Model` with the same input and a dict output keyed by end-point name.
    """
    end_points = list(end_points)
    unknown = [ep for ep in end_points if ep not in figure5.END_POINTS]
    if unknown or not end_points:
        raise ValueError(
            f"Unknown end points {unknown or end_points}; accepted: {', '.join(figure5.END_POINTS)}"
        )
    all_end_points = bninception_end_points(model)
    return keras.Model(
        model.input,
        {ep: all_end_points[ep] for ep in end_points},
        name=name or f"{model.name}_end_points",
    )
