"""Keras layer names -> tf_slim ``inception_v2`` variable names."""

from __future__ import annotations

import re

TF_SLIM_SCOPE = "InceptionV2"

# One scope component of tf_slim's inception_v2, e.g. Mixed_3b, Branch_1, Conv2d_0b_3x3, BatchNorm.
_COMPONENT = re.compile(
    r"Mixed_\d[a-z]|Branch_\d|(?:Conv2d|MaxPool|AvgPool)_\d[a-z]_\d+x\d+|Logits|BatchNorm"
)

# Keras weight name -> tf_slim variable name.
WEIGHT_NAMES = {
    "kernel": "weights",
    "bias": "biases",
    "depthwise_kernel": "depthwise_weights",
    "pointwise_kernel": "pointwise_weights",
    "gamma": "gamma",
    "beta": "beta",
    "moving_mean": "moving_mean",
    "moving_variance": "moving_variance",
}


def tf_slim_scope(layer_name: str) -> str | None:
    """tf_slim's scope of the Keras layer `layer_name`, without the "InceptionV2/" root.

    ("Mixed_3b_Branch_1_Conv2d_0b_3x3_BatchNorm") -> "Mixed_3b/Branch_1/Conv2d_0b_3x3/BatchNorm";
    None when the name is not made of tf_slim scope components.
    """
    parts = _COMPONENT.findall(layer_name)
    if not parts or "_".join(parts) != layer_name:
        return None
    return "/".join(parts)


def tf_slim_variable_name(layer_name: str, weight_name: str) -> str | None:
    """The tf_slim variable that holds Keras weight `weight_name` of layer `layer_name`.

    The layer name is tf_slim's scope with "/" replaced by "_"; the BN of a convolution is
    "<conv>_BatchNorm". Examples::

        ("Mixed_3b_Branch_1_Conv2d_0b_3x3", "kernel")
            -> "InceptionV2/Mixed_3b/Branch_1/Conv2d_0b_3x3/weights"
        ("Conv2d_2b_1x1_BatchNorm", "moving_mean")
            -> "InceptionV2/Conv2d_2b_1x1/BatchNorm/moving_mean"
        ("Conv2d_1a_7x7", "depthwise_kernel") -> "InceptionV2/Conv2d_1a_7x7/depthwise_weights"
        ("Logits_Conv2d_1c_1x1", "bias") -> "InceptionV2/Logits/Conv2d_1c_1x1/biases"

    Returns:
        The variable name, or None when the layer name is not made of tf_slim scope components or
        the weight has no tf_slim counterpart.
    """
    parts = _COMPONENT.findall(layer_name)
    if not parts or "_".join(parts) != layer_name or weight_name not in WEIGHT_NAMES:
        return None
    return "/".join([TF_SLIM_SCOPE, *parts, WEIGHT_NAMES[weight_name]])
