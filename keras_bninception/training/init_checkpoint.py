"""Starting a run from pretrained weights, as TF-slim's `--checkpoint_path` and Model Garden's
`init_checkpoint` do.

Three steps, each a function:

1. `resolve_init_source(path)`: what `path` is: a TF-slim `inception_v2` checkpoint (V2 prefix,
   its `.index` file or a directory holding it; or a V1 single file), a Keras `.keras` model or
   `.weights.h5` weights file, or another run's `--model_dir` (its newest checkpoint in
   `checkpoints/`). A path that is none of these is a `ValueError`, before anything is built.
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
import io
import json
import os
import zipfile
from collections.abc import Callable, Iterable, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from keras_bninception.errors import first_line
from keras_bninception.models import naming, tf_slim_checkpoint

TF_SLIM = "tf_slim"
KERAS_MODEL = "keras_model"
KERAS_WEIGHTS = "keras_weights"
RUN = "run"
KINDS = (TF_SLIM, KERAS_MODEL, KERAS_WEIGHTS, RUN)

CLASSIFIER_SCOPE = "Logits"
CLASSIFIER_LAYER = "Logits_Conv2d_1c_1x1"
RUN_CHECKPOINTS = "checkpoints"  # <model_dir>/checkpoints, as the trainer writes them
_ROOT = naming.TF_SLIM_SCOPE + "/"
# Leaves of tf_slim model variables (not optimizer slots, moving-average shadows, global_step).
_MODEL_VARIABLE_LEAVES = frozenset(
    ("weights", "biases", "depthwise_weights", "pointwise_weights", "gamma", "beta")
    + ("moving_mean", "moving_variance")
)
_ACCEPTED = (
    "a TF-slim inception_v2 checkpoint (the prefix of its .index file, the .index file, a "
    "directory holding it, or a V1 single-file checkpoint), a Keras .keras or .weights.h5 file, "
    "or another run's --model_dir (with a checkpoints/ directory)"
)

# (num_classes) -> a new model of the source's architecture, for Keras weights and runs.
SourceModelFn = Callable[[int | None], keras.Model]


@dataclasses.dataclass(frozen=True)
class InitSource:
    """A resolved `init_checkpoint`.

    Attributes:
        kind: one of `KINDS`: "tf_slim", "keras_model", "keras_weights" or "run".
        path: the checkpoint prefix ("tf_slim", "run") or the file ("keras_*").
        num_classes: the source's classifier width (1001 for the published TF-slim checkpoint),
            or None when it has no classifier.
        model_dir: the run directory, for kind "run".
    """

    kind: str
    path: str
    num_classes: int | None
    model_dir: str | None = None


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


def weight_name(layer: keras.layers.Layer, weight: keras.Variable) -> str:
    """The name of `weight` of `layer` in this module's sense (tf_slim's, without the root)."""
    slim = naming.tf_slim_variable_name(layer.name, weight.name)
    return slim[len(_ROOT) :] if slim else f"{layer.name}/{weight.name}"


def layer_scope(layer: keras.layers.Layer) -> str:
    """The tf_slim scope of `layer` without the root ("Mixed_5b/Branch_0/Conv2d_0a_1x1")."""
    return naming.tf_slim_scope(layer.name) or layer.name


# ------------------------------------------------------------------------------------------------
# 1. Resolving the source.


def _is_tf_slim(prefix: str) -> bool:
    return any(name.startswith(_ROOT) for name, _ in tf.train.list_variables(prefix))


def _h5_num_classes(h5) -> int | None:
    """The width of the one 2-D weight (the Dense classifier) in a Keras weights file."""
    import h5py

    shapes = []
    h5.visititems(
        lambda _, item: (
            shapes.append(item.shape)
            if isinstance(item, h5py.Dataset) and len(item.shape) == 2
            else None
        )
    )
    return int(shapes[0][-1]) if len(shapes) == 1 else None


def _keras_file_num_classes(path: str) -> int | None:
    import h5py

    if path.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
            for layer in config.get("config", {}).get("layers", []):
                if layer.get("config", {}).get("name") == CLASSIFIER_LAYER:
                    return int(layer["config"]["units"])
            with h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
                return _h5_num_classes(h5)
    with h5py.File(path, "r") as h5:
        return _h5_num_classes(h5)


def _run_num_classes(prefix: str) -> int | None:
    # A run's checkpoint holds the model, the optimizer and the step; the classifier's kernel is
    # the model's one 2-D variable (saved under the model's or the optimizer's path, whichever
    # the object graph reaches first; its optimizer slots have its shape).
    shapes = {tuple(shape) for _, shape in tf.train.list_variables(prefix) if len(shape) == 2}
    return int(next(iter(shapes))[-1]) if len(shapes) == 1 else None


def resolve_init_source(path: str | os.PathLike[str]) -> InitSource:
    """Says what `path` is (see the module docstring); reads only file names and metadata.

    Raises:
        ValueError: `path` does not exist or is none of the accepted sources.
    """
    if not isinstance(path, str | os.PathLike) or not os.fspath(path):
        raise ValueError(
            f"`init_checkpoint` must be {_ACCEPTED}; received init_checkpoint={path!r}"
        )
    path = os.path.expanduser(os.fspath(path))
    run_checkpoints = os.path.join(path, RUN_CHECKPOINTS)
    if tf.io.gfile.isdir(run_checkpoints):
        prefix = tf.train.latest_checkpoint(run_checkpoints)
        if prefix is None:
            raise ValueError(
                f"`init_checkpoint` {path!r} is a run directory, but {run_checkpoints} holds no "
                "checkpoint yet; train that run first or pick another source"
            )
        return InitSource(RUN, prefix, _run_num_classes(prefix), model_dir=path)
    if path.endswith((".keras", ".weights.h5")) and os.path.isfile(path):
        kind = KERAS_MODEL if path.endswith(".keras") else KERAS_WEIGHTS
        return InitSource(kind, path, _keras_file_num_classes(path))
    prefix = tf_slim_checkpoint.checkpoint_prefix(path)
    if prefix is not None and _is_tf_slim(prefix):
        return InitSource(TF_SLIM, prefix, tf_slim_checkpoint.checkpoint_num_classes(prefix))
    if prefix is not None:
        raise ValueError(
            f"`init_checkpoint` {path!r} is a TensorFlow checkpoint without tf_slim "
            f"inception_v2 variables ({naming.TF_SLIM_SCOPE}/...); it must be {_ACCEPTED}"
        )
    what = "does not exist" if not tf.io.gfile.exists(path) else "is not a checkpoint"
    raise ValueError(f"`init_checkpoint` {path!r} {what}; it must be {_ACCEPTED}")


# ------------------------------------------------------------------------------------------------
# 2. Loading.


def model_num_classes(model: keras.Model) -> int | None:
    """The width of `model`'s classifier (the layer "Logits_Conv2d_1c_1x1"), or None."""
    try:
        return int(model.get_layer(CLASSIFIER_LAYER).units)
    except ValueError:
        return None


def _model_weights(model: keras.Model) -> dict[str, keras.Variable]:
    return {
        weight_name(layer, weight): weight for layer in model.layers for weight in layer.weights
    }


def _source_values(
    source: InitSource, build_source_model: SourceModelFn | None
) -> dict[str, Callable[[], np.ndarray] | tuple]:
    """name -> (shape, read()) of every model variable the source holds."""
    if source.kind == TF_SLIM:
        reader = tf.train.load_checkpoint(source.path)
        return {
            name[len(_ROOT) :]: (tuple(shape), lambda name=name: reader.get_tensor(name))
            for name, shape in tf.train.list_variables(source.path)
            if name.startswith(_ROOT) and name.rsplit("/", 1)[-1] in _MODEL_VARIABLE_LEAVES
        }
    if source.kind == KERAS_MODEL:
        import keras_bninception  # noqa: F401  (registers the package's serializable layers)

        try:
            source_model = keras.saving.load_model(source.path, compile=False)
        except (ValueError, TypeError, OSError) as error:
            raise ValueError(
                f"`init_checkpoint` {source.path!r} cannot be loaded as a Keras model: "
                f"{str(error)[:300]}"
            ) from error
    else:
        if build_source_model is None:
            raise ValueError(
                f"A {source.kind} source needs `build_source_model` (it holds weights, not an "
                "architecture)"
            )
        source_model = build_source_model(source.num_classes)
        try:
            if source.kind == KERAS_WEIGHTS:
                source_model.load_weights(source.path)
            else:
                tf.train.Checkpoint(model=source_model).restore(
                    source.path
                ).expect_partial().assert_existing_objects_matched()
        except (ValueError, AssertionError, tf.errors.OpError) as error:
            first = first_line(error)
            raise ValueError(
                f"`init_checkpoint` {source.path!r} does not fit the architecture it was taken "
                "for (build options such as depth_multiplier, batch_norm, activation must be "
                f"those it was trained with): {first[:300]}"
            ) from error
    return {
        name: (tuple(w.shape), lambda w=w: keras.ops.convert_to_numpy(w))
        for name, w in _model_weights(source_model).items()
    }


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
    targets = _model_weights(model)
    patterns = default_exclude(source, model) if exclude is None else parse_scopes(exclude)
    check_patterns("init_exclude", patterns, targets, "Logits, Mixed_5c")
    excluded = {n for n in targets if any(_matches(n, p) for p in patterns)}
    available = _source_values(source, build_source_model)

    assignments, missing, wrong_shape = [], [], []
    for name, weight in targets.items():
        if name in excluded:
            continue
        model_shape = tuple(weight.shape)
        if name not in available:
            missing.append(f"{name} {model_shape}")
        elif not tf_slim_checkpoint.fits(available[name][0], model_shape):
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
            + tf_slim_checkpoint.mismatch(missing, unused, wrong_shape, "source")
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
        "\n" + tf_slim_checkpoint.listing("Left at their initial values", left, limit=50)
        if left
        else "",
    )
    return InitReport(source, tuple(name for name, _ in assignments), left)


def has_background_class(source: InitSource, num_classes: int) -> bool:
    """Whether `source` is a TF-slim checkpoint with a background class 0 before `num_classes`.

    TF-slim's ImageNet checkpoints have 1001 outputs: class 0 is "background", class i + 1 is the
    dataset's label i (`labels_offset` in TF-slim's scripts).
    """
    return source.kind == TF_SLIM and source.num_classes == num_classes + 1


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
