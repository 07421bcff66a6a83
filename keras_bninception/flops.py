"""Multiply-adds of a Keras model's forward pass, counted layer by layer from static shapes.

The convention of the literature's "1.94 G multiply-adds" for BN-Inception (and of GoogLeNet's
"1.5 G"): one multiply-add is one product accumulated into a sum, counted for the layers with
weights that multiply:

- convolutions (``Conv1D/2D/3D``, with ``groups``): output positions × kernel size
  (``k_h·k_w·C_in/groups·C_out`` for ``Conv2D``);
- ``DepthwiseConv1D/2D``: output positions × ``k_h·k_w·C_in·depth_multiplier``;
- ``SeparableConv1D/2D``: output positions × (depthwise ``k_h·k_w·C_in·m`` +
  pointwise ``C_in·m·C_out``), both at the (strided) output resolution;
- ``Conv1D/2D/3DTranspose``: input positions × kernel size;
- ``Dense``: positions (all but the batch and last axes) × ``C_in·units``.

Not counted: bias additions, Batch Normalization (at inference it is a per-channel affine map that
folds into the preceding convolution's weights and bias: Algorithm 2's y = γ/sqrt(Var[x]+ε)·x +
(β − γ·E[x]/sqrt(Var[x]+ε))), activations, pooling (average
pooling's additions included), concatenation, dropout, softmax. FLOPs are about twice the
multiply-adds. Counts are per example (the batch axis is ignored).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import keras

__all__ = ["count_multiply_adds"]

_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)
_TRANSPOSED_CONVS = (
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
)
_DEPTHWISE_CONVS = (keras.layers.DepthwiseConv1D, keras.layers.DepthwiseConv2D)
_SEPARABLE_CONVS = (keras.layers.SeparableConv1D, keras.layers.SeparableConv2D)
_SUPPORTED = (
    "Conv1D, Conv2D, Conv3D, Conv1DTranspose, Conv2DTranspose, Conv3DTranspose, "
    "DepthwiseConv1D, DepthwiseConv2D, SeparableConv1D, SeparableConv2D, Dense"
)


def count_multiply_adds(model: keras.Model) -> int:
    """Counts the multiply-adds of one forward pass of ``model`` on one example.

    Args:
        model: a Functional or Sequential Keras model (built on a ``keras.Input``) whose layer
            shapes are static except the batch axis, e.g. ``BNInception(input_shape=(224, 224,
            3))``. Nested Functional/Sequential models are counted once per call.

    Returns:
        The number of multiply-adds of its convolution and ``Dense`` layers (the rules are in the
        module docstring; BN, pooling, activations and bias additions are not counted).

    Raises:
        ValueError: if ``model`` is not a Functional or Sequential model with an input, a
            counted layer's shape is not static, or a layer that is not one of the supported
            types has a ``kernel`` (its multiply-adds would otherwise be silently left out).
    """
    return sum(_node_multiply_adds(node) for node in _graph_nodes(model))


def _graph_nodes(model: keras.Model) -> Iterable:
    """The call nodes of the model's graph (Keras' ``Function`` graph, as ``Model.summary``)."""
    functional = model
    if isinstance(model, keras.Sequential):
        functional = getattr(model, "_functional", None)
    nodes_by_depth = getattr(functional, "_nodes_by_depth", None)
    if nodes_by_depth is None:
        raise ValueError(
            "count_multiply_adds expects a Functional or Sequential model built on a "
            f"keras.Input (a graph of layer calls). Received: {type(model).__name__} "
            f"{model.name!r} without such a graph."
        )
    for depth in sorted(nodes_by_depth, reverse=True):
        yield from nodes_by_depth[depth]


def _static(shape: tuple, what: str, layer: keras.layers.Layer) -> tuple[int, ...]:
    if any(d is None for d in shape[1:]):
        raise ValueError(
            f"count_multiply_adds needs static shapes; layer {layer.name!r} has {what} shape "
            f"{shape}. Build the model with a fixed input size, e.g. input_shape=(224, 224, 3)."
        )
    return tuple(int(d) for d in shape[1:])


def _positions(shape: tuple[int, ...], data_format: str) -> int:
    """Number of spatial positions of a conv input/output shape without the batch axis."""
    spatial = shape[1:] if data_format == "channels_first" else shape[:-1]
    return math.prod(spatial)


def _node_multiply_adds(node) -> int:
    layer = node.operation
    if layer is None or node.is_input:
        return 0
    if isinstance(layer, keras.Model):
        return count_multiply_adds(layer)
    if not isinstance(layer, keras.layers.Layer):  # a keras.ops operation: not counted
        return 0
    if isinstance(layer, _SEPARABLE_CONVS):
        out = _static(tuple(node.outputs[0].shape), "output", layer)
        per_position = math.prod(layer.depthwise_kernel.shape) + math.prod(
            layer.pointwise_kernel.shape
        )
        return _positions(out, layer.data_format) * per_position
    if isinstance(layer, _TRANSPOSED_CONVS):
        inp = _static(tuple(node.input_tensors[0].shape), "input", layer)
        return _positions(inp, layer.data_format) * math.prod(layer.kernel.shape)
    if isinstance(layer, _CONVS + _DEPTHWISE_CONVS):
        out = _static(tuple(node.outputs[0].shape), "output", layer)
        return _positions(out, layer.data_format) * math.prod(layer.kernel.shape)
    if isinstance(layer, keras.layers.Dense):
        out = _static(tuple(node.outputs[0].shape), "output", layer)
        return math.prod(out[:-1]) * math.prod(layer.kernel.shape)
    if any(w.path.rsplit("/", 1)[-1] == "kernel" for w in layer.weights):
        raise ValueError(
            f"count_multiply_adds cannot count layer {layer.name!r} of type "
            f"{type(layer).__name__}, which has a kernel. Supported: {_SUPPORTED}."
        )
    return 0


def main(argv: list[str] | None = None) -> None:
    """Prints BNInception's multiply-adds: ``python -m keras_bninception.flops [--help]``."""
    import argparse

    from keras_bninception.models import BNInception

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--mixed-4c-4d", default="tf_slim", help='"tf_slim" or "paper"')
    args = parser.parse_args(argv)
    model = BNInception(
        weights=None,
        input_shape=(args.image_size, args.image_size, 3),
        classes=args.classes,
        mixed_4c_4d=args.mixed_4c_4d,
    )
    count = count_multiply_adds(model)
    print(
        f"BNInception {args.image_size}x{args.image_size}, {args.classes} classes, "
        f"mixed_4c_4d={args.mixed_4c_4d!r}: {count:,} multiply-adds ({count / 1e9:.3f} G), "
        f"{model.count_params():,} parameters"
    )


if __name__ == "__main__":
    main()
