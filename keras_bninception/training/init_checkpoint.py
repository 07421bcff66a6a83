"""Starting a run from pretrained weights, as TF-slim's `--checkpoint_path` and Model Garden's
`init_checkpoint` do.

Three steps, each a function:

1. `resolve_init_source(path)`: what `path` is (`keras_bninception.weights.resolve`): "imagenet"
   (TF-slim's published ImageNet checkpoint, downloaded once), a TF-slim `inception_v2`
   checkpoint (V2 prefix, its `.index` file or a directory holding it; a V1 single file; the
   published tarball), a Keras `.keras` model or `.weights.h5` weights file, or another run's
   `--model_dir` (its newest checkpoint in `checkpoints/`). A path that is none of these is a
   `ValueError`, before anything is built.
2. `load_init_checkpoint(model, source, exclude)`: copies every weight of `model` from the source,
   except those under the `exclude` scopes, which keep their initial values. By default the
   classifier (`Logits`) is excluded when the source's number of classes differs from the
   model's. A source that does not fit (a missing variable, a shape that differs) is a
   `ValueError` listing the variables, raised before anything is assigned.
3. `apply_trainable_scopes(model, trainable_scopes, freeze_batch_norm)`: only the layers under
   `trainable_scopes` train (TF-slim's `--trainable_scopes`); `freeze_batch_norm` freezes every
   Batch Normalization layer. A frozen layer has `trainable=False`, which for Batch Normalization
   means Keras' rule: inference mode, normalizing with the moving statistics, which then do not
   change either. Outside the scopes nothing moves.

Names. Every weight is named by its tf_slim variable without the "InceptionV2/" root, e.g.
"Mixed_5b/Branch_0/Conv2d_0a_1x1/weights", "Conv2d_2b_1x1/BatchNorm/moving_mean",
"Logits/Conv2d_1c_1x1/biases" (`keras_bninception.models.naming`); a Keras weight of another
layer is "<layer name>/<weight name>". A scope pattern is a scope ("Logits", "Mixed_5b",
"Mixed_5b/Branch_3"), matching it and everything under it, or a glob ("Mixed_5*",
"*/BatchNorm"); a leading "InceptionV2/" is ignored, so TF-slim's own flags' values work too.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Sequence

import keras
import numpy as np
from absl import logging

from keras_bninception import weights
from keras_bninception.models import naming
from keras_bninception.weights import tf_slim
from keras_bninception.weights.sources import (
    CLASSIFIER_LAYER,
    KERAS_MODEL,
    KERAS_WEIGHTS,
    RUN,
    TF_SLIM,
    SourceModelFn,
    model_weights,
    weight_name,
)
from keras_bninception.weights.sources import Source as InitSource

__all__ = [
    "CLASSIFIER_LAYER",
    "CLASSIFIER_SCOPE",
    "KERAS_MODEL",
    "KERAS_WEIGHTS",
    "RUN",
    "TF_SLIM",
    "InitReport",
    "InitSource",
    "SourceModelFn",
    "apply_trainable_scopes",
    "check_patterns",
    "default_exclude",
    "has_background_class",
    "layer_scope",
    "load_init_checkpoint",
    "model_num_classes",
    "parse_scopes",
    "resolve_init_source",
    "weight_name",
    "without_background_class",
]

CLASSIFIER_SCOPE = "Logits"
_ROOT = naming.TF_SLIM_SCOPE + "/"


@dataclasses.dataclass(frozen=True)
class InitReport:
    """What `load_init_checkpoint` did: variable names (see the module docstring)."""

    source: InitSource
    loaded: tuple[str, ...]
    left_at_init: tuple[str, ...]


def parse_scopes(scopes: str | Iterable[str] | None) -> tuple[str, ...]:
    """Scope patterns from a comma-separated string or a list, root and slashes trimmed."""
    if scopes is None:
        return ()
    items = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    patterns = []
    for item in items:
        pattern = str(item).strip().strip("/")
        if pattern.startswith(_ROOT):
            pattern = pattern[len(_ROOT) :]
        if pattern:
            patterns.append(pattern)
    return tuple(patterns)


def _matches(name: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(name, pattern + "/*")


def layer_scope(layer: keras.layers.Layer) -> str:
    """The tf_slim scope of `layer` without the root ("Mixed_5b/Branch_0/Conv2d_0a_1x1")."""
    return naming.tf_slim_scope(layer.name) or layer.name


# ------------------------------------------------------------------------------------------------
# 1. Resolving the source.


def resolve_init_source(path: str) -> InitSource:
    """Says what `path` is (see the module docstring); reads only file names and metadata.

    Raises:
        ValueError: `path` does not exist or is none of the accepted sources.
    """
    return weights.resolve(path, "init_checkpoint")


# ------------------------------------------------------------------------------------------------
# 2. Loading.


def model_num_classes(model: keras.Model) -> int | None:
    """The width of `model`'s classifier (the layer "Logits_Conv2d_1c_1x1"), or None."""
    try:
        return int(model.get_layer(CLASSIFIER_LAYER).units)
    except ValueError:
        return None


def default_exclude(source: InitSource, model: keras.Model) -> tuple[str, ...]:
    """("Logits",) when the source's and the model's classifiers differ in width, else ()."""
    classes = model_num_classes(model)
    if classes is not None and source.num_classes is not None and classes != source.num_classes:
        return (CLASSIFIER_SCOPE,)
    return ()


def check_patterns(
    option: str, patterns: Sequence[str], names: Iterable[str], example: str
) -> None:
    """ValueError naming the first pattern that matches none of `names`."""
    names = list(names)
    for pattern in patterns:
        if not any(_matches(name, pattern) for name in names):
            raise ValueError(
                f"`{option}` pattern {pattern!r} matches no layer of the model; patterns are "
                f"tf_slim scopes (e.g. {example}), prefixes of them by whole components, or globs "
                f"(e.g. Mixed_5*); received {option}={','.join(patterns)!r}"
            )


def load_init_checkpoint(
    model: keras.Model,
    source: InitSource,
    exclude: str | Iterable[str] | None = None,
    *,
    build_source_model: SourceModelFn | None = None,
) -> InitReport:
    """Assigns `model`'s weights from `source`, except those under the `exclude` scopes.

    Args:
        model: the model to initialize (a `BNInception`: its layers carry tf_slim scope names).
        source: from `resolve_init_source`.
        exclude: scope patterns left at their initial values (comma-separated or a list);
            None: `default_exclude` (the classifier when the class counts differ).
        build_source_model: for `.weights.h5` and run sources: returns a new model of the
            source's architecture with the given number of classes, into which the source is
            read before its weights are copied by name.

    Returns:
        An `InitReport`; the loaded count and the names left at their initial values are logged.

    Raises:
        ValueError: an `exclude` pattern that matches nothing, or a source that does not fit:
            model variables missing from it, unused source variables, or different shapes, all
            listed. Nothing is assigned then.
    """
    targets = model_weights(model)
    patterns = default_exclude(source, model) if exclude is None else parse_scopes(exclude)
    check_patterns("init_exclude", patterns, targets, "Logits, Mixed_5c")
    excluded = {n for n in targets if any(_matches(n, p) for p in patterns)}
    available = weights.source_variables(source, build_source_model, "init_checkpoint")

    assignments, missing, wrong_shape = [], [], []
    for name, weight in targets.items():
        if name in excluded:
            continue
        model_shape = tuple(weight.shape)
        if name not in available:
            missing.append(f"{name} {model_shape}")
        elif not tf_slim.fits(available[name][0], model_shape):
            wrong_shape.append(f"{name}: source {available[name][0]}, model {model_shape}")
        else:
            assignments.append((name, weight))
    unused = sorted(
        n for n in available if n not in targets and not any(_matches(n, p) for p in patterns)
    )
    if missing or unused or wrong_shape:
        raise ValueError(
            f"`init_checkpoint` {source.path!r} ({source.kind}) does not fit the model: build it "
            "with the source's depth_multiplier and options, or leave the differing layers out "
            "with `init_exclude` (e.g. Logits).\n"
            + tf_slim.mismatch(missing, unused, wrong_shape, "source")
        )
    for name, weight in assignments:
        weight.assign(np.reshape(available[name][1](), weight.shape).astype(weight.dtype))
    left = tuple(sorted(excluded))
    logging.info(
        "Initialized %d of %d variables from %s (%s).%s",
        len(assignments),
        len(targets),
        source.path,
        source.kind,
        "\n" + tf_slim.listing("Left at their initial values", left, limit=50) if left else "",
    )
    return InitReport(source, tuple(name for name, _ in assignments), left)


def has_background_class(source: InitSource, num_classes: int) -> bool:
    """Whether `source` is a TF-slim checkpoint with a background class 0 before `num_classes`.

    TF-slim's ImageNet checkpoints have 1001 outputs: class 0 is "background", class i + 1 is the
    dataset's label i (`labels_offset` in TF-slim's scripts).
    """
    return source.kind == TF_SLIM and tf_slim.drops_background(source.num_classes, num_classes)


def without_background_class(model: keras.Model) -> keras.Model:
    """`model` with its first output column (TF-slim's background class) removed.

    The same layers (hence the same weights and names) followed by weightless, serializable
    Keras layers: [B, C + 1] -> [B, C + 1, 1] -> drop the first row -> [B, C].
    """
    logits = model.output
    classes = int(logits.shape[-1])
    x = keras.layers.Reshape((classes, 1), name="Background_Reshape")(logits)
    x = keras.layers.Cropping1D((1, 0), name="Background_Drop")(x)
    x = keras.layers.Reshape((classes - 1,), name="Background_Dropped")(x)
    return keras.Model(model.input, x, name=model.name)


# ------------------------------------------------------------------------------------------------
# 3. What trains.


def apply_trainable_scopes(
    model: keras.Model,
    trainable_scopes: str | Iterable[str] | None = None,
    freeze_batch_norm: bool = False,
) -> tuple[str, ...]:
    """Freezes every layer outside `trainable_scopes`, and with `freeze_batch_norm` every BN.

    Args:
        model: a `BNInception` (layers named after tf_slim scopes).
        trainable_scopes: scope patterns (comma-separated or a list) of the layers that train;
            None or empty: every layer.
        freeze_batch_norm: every `keras.layers.BatchNormalization` gets `trainable=False`, i.e.
            normalizes with its moving statistics and updates neither them nor beta / gamma.

    Returns:
        The names of the layers with weights that still train.

    Raises:
        ValueError: a pattern that matches no layer.
    """
    patterns = parse_scopes(trainable_scopes)
    weighted = [layer for layer in model.layers if layer.weights]
    check_patterns(
        "trainable_scopes", patterns, [layer_scope(layer) for layer in weighted], "Mixed_5c"
    )
    for layer in weighted:
        if patterns:
            layer.trainable = any(_matches(layer_scope(layer), p) for p in patterns)
        if freeze_batch_norm and isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    training = tuple(layer.name for layer in weighted if layer.trainable)
    if patterns or freeze_batch_norm:
        logging.info(
            "Training %d of %d layers with weights (%d variables)%s.",
            len(training),
            len(weighted),
            len(model.trainable_weights),
            "; Batch Normalization frozen (moving statistics)" if freeze_batch_norm else "",
        )
    return training
