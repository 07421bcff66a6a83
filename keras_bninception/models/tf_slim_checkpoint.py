"""Loading a TF-slim ``inception_v2`` checkpoint into a Keras BNInception, variable by variable.

The published checkpoint is ``inception_v2_2016_08_28.tar.gz`` from the TF-slim model zoo
(https://github.com/tensorflow/models/tree/master/research/slim#pre-trained-models, file
http://download.tensorflow.org/models/inception_v2_2016_08_28.tar.gz). It unpacks to one file,
``inception_v2.ckpt``: a V1 checkpoint (TF-slim's 2016 models were saved that way), not a V2
prefix with ``.index`` / ``.data-*`` files. Both formats are read with ``tf.train.load_checkpoint``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_bninception.models.naming import TF_SLIM_SCOPE, tf_slim_variable_name

LOGITS_BIASES = f"{TF_SLIM_SCOPE}/Logits/Conv2d_1c_1x1/biases"

# Leaf names of tf_slim model variables; anything else under InceptionV2/ (optimizer slots such as
# ".../weights/RMSProp", ".../ExponentialMovingAverage" shadows) and anything outside it
# (global_step) is not a model variable and is ignored.
_MODEL_VARIABLE_LEAVES = frozenset(
    {
        "weights",
        "biases",
        "depthwise_weights",
        "pointwise_weights",
        "gamma",
        "beta",
        "moving_mean",
        "moving_variance",
    }
)

# What tf_slim's inception_v2 variables need of `BNInception`'s arguments (`slim_compatible`),
# and, to load its checkpoint, what its computation needs too.
SLIM_VARIABLES = {"batch_norm": True, "scale": False, "mixed_4c_4d": "tf_slim"}
SLIM_CHECKPOINT = {**SLIM_VARIABLES, "epsilon": 1e-3, "activation": "relu"}


def slim_conflicts(arguments: Mapping[str, Any], checkpoint: bool) -> list[str]:
    """The `BNInception` `arguments` that contradict tf_slim's network, as `name=value (needs v)`.

    `checkpoint`: loading its weights (`SLIM_CHECKPOINT`), not only its variables. A value of
    None or none (a default that follows `slim_compatible`) contradicts nothing.
    """
    required = SLIM_CHECKPOINT if checkpoint else SLIM_VARIABLES
    given = {k: getattr(arguments.get(k), "__name__", arguments.get(k)) for k in required}
    return [
        f"{k}={given[k]!r} (needs {v!r})" for k, v in required.items() if given[k] not in (None, v)
    ]


def check_slim_network(arguments: Mapping[str, Any], checkpoint: bool) -> None:
    """Raises ValueError listing every `slim_conflicts` of `BNInception(slim_compatible=True)`."""
    wrong = slim_conflicts(arguments, checkpoint)
    if wrong:
        raise ValueError(
            "slim_compatible=True (implied by a TF-slim checkpoint) needs tf_slim's network; "
            f"these arguments contradict it: {', '.join(wrong)}"
        )


def checkpoint_prefix(path: str | os.PathLike[str]) -> str | None:
    """The TF checkpoint `path` designates, or None when it is not a TF checkpoint.

    Accepts a V2 prefix (``.../model.ckpt``, detected by its ``.index`` file) or its ``.index``
    file, a V1 checkpoint (one file, e.g. the published ``inception_v2.ckpt``), or a directory
    holding a checkpoint (its latest one). Paths go through ``tf.io.gfile`` (``gs://`` works).
    """
    path = os.fspath(path)
    if path.endswith(".index"):
        path = path[: -len(".index")]
    if tf.io.gfile.isdir(path):
        return tf.train.latest_checkpoint(path)
    if tf.io.gfile.exists(path + ".index"):
        return path
    if tf.io.gfile.exists(path) and _is_v1_checkpoint(path):
        return path
    return None


def _is_v1_checkpoint(path: str) -> bool:
    # A V1 checkpoint is a table of tensor slices; any other file fails to open as one.
    try:
        tf.train.load_checkpoint(path)
    except (tf.errors.OpError, ValueError):
        return False
    return True


def _model_variables(prefix: str) -> dict[str, tuple[int, ...]]:
    return {
        name: tuple(shape)
        for name, shape in tf.train.list_variables(prefix)
        if name.startswith(TF_SLIM_SCOPE + "/")
        and name.rsplit("/", 1)[-1] in _MODEL_VARIABLE_LEAVES
    }


def checkpoint_num_classes(prefix: str) -> int | None:
    """Number of classes of the checkpoint's logits layer (1001 for the published one), or None."""
    shape = _model_variables(prefix).get(LOGITS_BIASES)
    return None if shape is None else int(shape[0])


def fits(checkpoint_shape: tuple[int, ...], keras_shape: tuple[int, ...]) -> bool:
    """Whether a checkpoint value of `checkpoint_shape` fills a Keras weight of `keras_shape`."""
    # The logits are a 1x1 conv in tf_slim, (1, 1, 1024, C), and a Dense in Keras, (1024, C).
    return checkpoint_shape == keras_shape or checkpoint_shape == (1, 1, *keras_shape)


def listing(title: str, items: Sequence[str], limit: int = 20) -> str:
    """`title (n):` and the first `limit` items, one per indented line."""
    shown = "\n".join(f"  {item}" for item in items[:limit])
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return f"{title} ({len(items)}):\n{shown}{more}"


def mismatch(
    missing: Sequence[str], unused: Sequence[str], wrong_shape: Sequence[str], source: str
) -> str:
    """The listings of what does not match between a model and a `source` of variables."""
    return "\n".join(
        listing(title, items)
        for title, items in (
            (f"missing from the {source}", missing),
            (f"unused {source} variables", unused),
            ("wrong shape", wrong_shape),
        )
        if items
    )


def _check_classes(prefix: str, checkpoint_shape: tuple[int, ...] | None, classes: int) -> None:
    if checkpoint_shape is None:
        raise ValueError(
            f"The TF-slim checkpoint {prefix!r} has no logits layer ({LOGITS_BIASES}); use "
            "include_top=False."
        )
    if checkpoint_shape[0] != classes:
        raise ValueError(
            f"The TF-slim checkpoint has {checkpoint_shape[0]} classes, so with include_top=True "
            f"`classes` must be {checkpoint_shape[0]}; received classes={classes}"
        )


def load_tf_slim_checkpoint(model: keras.Model, prefix: str) -> None:
    """Assigns every weight of `model` from the tf_slim ``inception_v2`` checkpoint at `prefix`.

    The variable of each Keras weight is ``naming.tf_slim_variable_name(layer.name, weight.name)``.
    Every tf_slim model variable of the checkpoint must be used, except the logits when the model
    has no classifier (``include_top=False``).

    Raises:
        ValueError: a model with a classifier and a checkpoint without logits or with another
            number of classes; otherwise listing the checkpoint variables that are missing,
            unused or of the wrong shape (nothing is assigned then).
    """
    available = _model_variables(prefix)
    reader = tf.train.load_checkpoint(prefix)
    assignments = []
    missing, wrong_shape, used = [], [], set()
    has_top = False
    for layer in model.layers:
        for weight in layer.weights:
            name = tf_slim_variable_name(layer.name, weight.name)
            if name is None:
                continue
            has_top = has_top or name.startswith(f"{TF_SLIM_SCOPE}/Logits/")
            keras_shape = tuple(weight.shape)
            if name == LOGITS_BIASES:
                _check_classes(prefix, available.get(name), keras_shape[0])
            if name not in available:
                missing.append(f"{name} {keras_shape} (for {weight.path})")
                continue
            used.add(name)
            if not fits(available[name], keras_shape):
                wrong_shape.append(
                    f"{name}: checkpoint {available[name]}, model {keras_shape} (for {weight.path})"
                )
                continue
            assignments.append((weight, name))
    unused = sorted(
        name
        for name in available
        if name not in used and (has_top or not name.startswith(f"{TF_SLIM_SCOPE}/Logits/"))
    )
    if missing or unused or wrong_shape:
        raise ValueError(
            f"The TF-slim checkpoint {prefix!r} does not match the model {model.name!r}. It must "
            "be a tf_slim inception_v2 checkpoint built with the same depth_multiplier, min_depth "
            "and (with include_top=True) the same number of classes.\n"
            + mismatch(missing, unused, wrong_shape, "checkpoint")
        )
    for weight, name in assignments:
        weight.assign(np.reshape(reader.get_tensor(name), weight.shape))
