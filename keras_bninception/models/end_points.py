"""tf_slim's end points of a BNInception model, recorded while `BNInception` builds it.

The names are those of `tf_slim.nets.inception_v2.inception_v2_base`: `figure5.END_POINTS`,
Conv2d_1a_7x7 ... Mixed_5c.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import keras

from keras_bninception.models.blocks import ACTIVATION_SUFFIX, BATCH_NORM_SUFFIX
from keras_bninception.models.figure5 import END_POINTS

_ATTRIBUTE = "_bninception_end_points"


def record(model: keras.Model, end_points: dict[str, Any]) -> None:
    """Attaches the end points (name -> KerasTensor) `BNInception` recorded to its `model`."""
    # Past Keras' attribute tracking: graph tensors, not state to track or checkpoint.
    object.__setattr__(model, _ATTRIBUTE, dict(end_points))


def bninception_end_points(model: keras.Model) -> dict[str, Any]:
    """tf_slim's end points of a BNInception model: name -> KerasTensor, Conv2d_1a_7x7 ... Mixed_5c.

    The names are those of `tf_slim.nets.inception_v2.inception_v2_base`; the tensors were
    recorded when `BNInception` built `model`.
    """
    end_points = getattr(model, _ATTRIBUTE, None)
    if end_points is None:
        end_points = _from_layer_names(model)
    return dict(end_points)


def _from_layer_names(model: keras.Model) -> dict[str, Any]:
    """The end points of a BNInception model built elsewhere (e.g. loaded from a .keras file).

    Each end point is the output of the stem convolutions' non-linearity "<end point>_Activation"
    (or of their BN + ReLU unit "<end point>_BatchNorm") or, for the modules and pools, of the
    layer named after it.
    """
    names = {layer.name for layer in model.layers}
    found = {}
    for end_point in END_POINTS:
        layer_name = next(
            (
                n
                for n in (end_point + ACTIVATION_SUFFIX, end_point + BATCH_NORM_SUFFIX, end_point)
                if n in names
            ),
            None,
        )
        if layer_name is None:
            raise ValueError(
                "`model` must be a BNInception model (built by `BNInception` or loaded from one); "
                f"received model={model.name!r}, which has no layer {end_point!r}"
            )
        found[end_point] = model.get_layer(layer_name).output
    return found


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
        end_points: names among `END_POINTS` (Conv2d_1a_7x7 ... Mixed_5c).
        name: the name of the new model (default: "<model name>_end_points").
    """
    end_points = list(end_points)
    unknown = [ep for ep in end_points if ep not in END_POINTS]
    if unknown or not end_points:
        raise ValueError(
            f"Unknown end points {unknown or end_points}; accepted: {', '.join(END_POINTS)}"
        )
    recorded = bninception_end_points(model)
    outputs = {ep: recorded[ep] for ep in end_points}
    return keras.Model(model.input, outputs, name=name or f"{model.name}_end_points")
