"""TF-slim ``inception_v2`` checkpoints: reading them and loading them into a Keras BNInception.

The published checkpoint is ``inception_v2_2016_08_28.tar.gz`` from the TF-slim model zoo
(https://github.com/tensorflow/models/tree/master/research/slim#pre-trained-models), fetched by
`keras_bninception.weights.imagenet`. It unpacks to one file, ``inception_v2.ckpt``: a V1
checkpoint (TF-slim's 2016 models were saved that way), not a V2 prefix with ``.index`` /
``.data-*`` files. Both formats are read with ``tf.train.load_checkpoint``.

Its 1001 classes are TF-slim's: class 0 is "background", class i + 1 is ImageNet's class i.
`load_tf_slim_checkpoint` fills a 1000-way classifier from it by leaving that class out.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from keras_bninception.models.naming import TF_SLIM_SCOPE, WEIGHT_NAMES, tf_slim_variable_name

LOGITS = f"{TF_SLIM_SCOPE}/Logits/Conv2d_1c_1x1/"
LOGITS_BIASES = LOGITS + "biases"
# Conv2d_2c_3x3 has 192 * depth_multiplier output channels (Figure 5's second convolution).
_DEPTH_PROBE = (f"{TF_SLIM_SCOPE}/Conv2d_2c_3x3/weights", 192)

# Leaf names of tf_slim model variables; anything else under InceptionV2/ (optimizer slots such as
# ".../weights/RMSProp", ".../ExponentialMovingAverage" shadows) and anything outside it
# (global_step) is not a model variable and is ignored.
MODEL_VARIABLE_LEAVES = frozenset(WEIGHT_NAMES.values())

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


def model_variables(prefix: str) -> dict[str, tuple[int, ...]]:
    """tf_slim variable name -> shape of the checkpoint's model variables (see
    `MODEL_VARIABLE_LEAVES`); empty for a TF checkpoint that is not tf_slim's inception_v2."""
    return {
        name: tuple(shape)
        for name, shape in tf.train.list_variables(prefix)
        if name.startswith(TF_SLIM_SCOPE + "/") and name.rsplit("/", 1)[-1] in MODEL_VARIABLE_LEAVES
    }


def checkpoint_num_classes(prefix: str) -> int | None:
    """Number of classes of the checkpoint's logits layer (1001 for the published one), or None."""
    shape = model_variables(prefix).get(LOGITS_BIASES)
    return None if shape is None else int(shape[0])


def checkpoint_depth_multiplier(prefix: str) -> float | None:
    """The depth multiplier the checkpoint was built with (1.0 for the published one), or None."""
    name, depth = _DEPTH_PROBE
    shape = model_variables(prefix).get(name)
    return None if shape is None else shape[-1] / depth


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


def drops_background(checkpoint_classes: int | None, classes: int) -> bool:
    """Whether a `classes`-way classifier is filled from TF-slim's logits without class 0."""
    return checkpoint_classes is not None and classes == checkpoint_classes - 1


def _check_classes(prefix: str, checkpoint_shape: tuple[int, ...] | None, classes: int) -> None:
    if checkpoint_shape is None:
        raise ValueError(
            f"The TF-slim checkpoint {prefix!r} has no logits layer ({LOGITS_BIASES}); use "
            "include_top=False."
        )
    n = checkpoint_shape[0]
    if classes not in (n, n - 1):
        raise ValueError(
            f"The TF-slim checkpoint has {n} classes (class 0 = background), so with "
            f"include_top=True `classes` must be {n} (TF-slim's outputs) or {n - 1} (background "
            f"class left out); received classes={classes}"
        )


def load_tf_slim_checkpoint(model: keras.Model, prefix: str) -> None:
    """Assigns every weight of `model` from the tf_slim ``inception_v2`` checkpoint at `prefix`.

    The variable of each Keras weight is ``naming.tf_slim_variable_name(layer.name, weight.name)``.
    Every tf_slim model variable of the checkpoint must be used, except the logits when the model
    has no classifier (``include_top=False``). A classifier with one class fewer than the
    checkpoint's gets its logits without TF-slim's background class 0 (`drops_background`), so
    that its class i is ImageNet's class i, as in `keras.applications`.

    Raises:
        ValueError: a model with a classifier and a checkpoint without logits or with a number of
            classes other than the checkpoint's or one fewer; otherwise listing the checkpoint
            variables that are missing, unused or of the wrong shape (nothing is assigned then).
    """
    available = model_variables(prefix)
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
            checkpoint_shape = available[name]
            background = name.startswith(LOGITS) and drops_background(
                checkpoint_shape[-1], keras_shape[-1]
            )
            if background:
                checkpoint_shape = (*checkpoint_shape[:-1], checkpoint_shape[-1] - 1)
            if not fits(checkpoint_shape, keras_shape):
                wrong_shape.append(
                    f"{name}: checkpoint {available[name]}, model {keras_shape} (for {weight.path})"
                )
                continue
            assignments.append((weight, name, background))
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
    for weight, name, background in assignments:
        value = reader.get_tensor(name)
        weight.assign(np.reshape(value[..., 1:] if background else value, weight.shape))
