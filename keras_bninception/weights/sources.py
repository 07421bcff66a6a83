"""Where weights come from: one resolver for the model, the trainer, export and classify.

`resolve(spec, option)` says what `spec` is and returns a `Source`; it reads only file names and
metadata (the ImageNet weights are downloaded once, `imagenet.py`):

- ``"imagenet"``: TF-slim's published ImageNet checkpoint (1001 classes, class 0 "background");
- a ``.tar.gz`` / ``.tgz`` file: a local copy of that tarball (checked against its SHA-384 and
  unpacked into the Keras cache, as a download would be);
- a TF-slim ``inception_v2`` checkpoint: a V2 prefix, its ``.index`` file, a directory holding
  it, or a V1 single file (the published ``inception_v2.ckpt``);
- a Keras ``.keras`` model or ``.weights.h5`` weights file;
- a training run's ``model_dir`` (its newest checkpoint in ``checkpoints/``).

`source_variables(source, ...)` reads a source's model variables by name (tf_slim's, without the
"InceptionV2/" root: "Mixed_5b/Branch_0/Conv2d_0a_1x1/weights"; `weight_name`), whatever its kind.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from collections.abc import Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from keras_bninception.errors import first_line
from keras_bninception.models import naming
from keras_bninception.weights import imagenet, tf_slim
from keras_bninception.weights.errors import WeightsError

IMAGENET = "imagenet"
TF_SLIM = "tf_slim"
KERAS_MODEL = "keras_model"
KERAS_WEIGHTS = "keras_weights"
RUN = "run"
KINDS = (TF_SLIM, KERAS_MODEL, KERAS_WEIGHTS, RUN)

CLASSIFIER_LAYER = "Logits_Conv2d_1c_1x1"
RUN_CHECKPOINTS = "checkpoints"  # <model_dir>/checkpoints, as the trainer writes them
KERAS_SUFFIXES = (".keras", ".weights.h5", ".h5")
TARBALL_SUFFIXES = (".tar.gz", ".tgz")
_ROOT = naming.TF_SLIM_SCOPE + "/"
_DESCRIPTIONS = {
    TF_SLIM: (
        'a TF-slim inception_v2 checkpoint ("imagenet": the published one, downloaded once; or '
        "the prefix of its .index file, the .index file, a directory holding it, a V1 "
        "single-file checkpoint such as inception_v2.ckpt, or inception_v2_2016_08_28.tar.gz)"
    ),
    KERAS_MODEL: "a Keras .keras file",
    KERAS_WEIGHTS: "a Keras .weights.h5 file",
    RUN: "a training run's --model_dir (with a checkpoints/ directory)",
}

# (num_classes) -> a new model of the source's architecture, for Keras weights and runs.
SourceModelFn = Callable[[int | None], keras.Model]


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved source of weights.

    Attributes:
        kind: one of `KINDS`: "tf_slim", "keras_model", "keras_weights" or "run".
        path: the checkpoint prefix ("tf_slim", "run") or the file ("keras_*").
        num_classes: the source's classifier width (1001 for the published TF-slim checkpoint),
            or None when it has no classifier or it cannot be read from metadata.
        model_dir: the run directory, for kind "run".
    """

    kind: str
    path: str
    num_classes: int | None
    model_dir: str | None = None


def accepted(kinds: Sequence[str]) -> str:
    """What `kinds` are, in words, for error messages."""
    words = [_DESCRIPTIONS[k] for k in kinds]
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def resolve(
    spec: str | os.PathLike[str] | Source, option: str = "weights", kinds: Sequence[str] = KINDS
) -> Source:
    """Says what `spec` is (see the module docstring), as one of `kinds`.

    Args:
        spec: "imagenet", a path, or a `Source` resolved before (taken as it is).
        option: how the caller names `spec` in error messages ("weights", "init_checkpoint",
            "--tf_slim_checkpoint", ...).
        kinds: the kinds the caller accepts.

    Raises:
        WeightsError: `spec` does not exist, is none of `kinds`, or cannot be downloaded.
    """
    if isinstance(spec, Source):
        source = spec
    elif not isinstance(spec, str | os.PathLike) or not os.fspath(spec):
        raise WeightsError(f"`{option}` must be {accepted(kinds)}; received {option}={spec!r}")
    else:
        source = _resolve(os.path.expanduser(os.fspath(spec)), option, kinds)
    if source.kind not in kinds:
        raise WeightsError(
            f"`{option}` {spec!r} is {_DESCRIPTIONS[source.kind]}; it must be {accepted(kinds)}"
        )
    return source


def _tf_slim_source(prefix: str) -> Source:
    return Source(TF_SLIM, prefix, tf_slim.checkpoint_num_classes(prefix))


def _resolve(path: str, option: str, kinds: Sequence[str]) -> Source:
    if path == IMAGENET:
        return _tf_slim_source(imagenet.checkpoint())
    if path.endswith(TARBALL_SUFFIXES) and os.path.isfile(path):
        return _tf_slim_source(imagenet.from_tarball(path))
    run_checkpoints = os.path.join(path, RUN_CHECKPOINTS)
    if tf.io.gfile.isdir(run_checkpoints):
        prefix = tf.train.latest_checkpoint(run_checkpoints)
        if prefix is None:
            raise WeightsError(
                f"`{option}` {path!r} is a run directory, but {run_checkpoints} holds no "
                "checkpoint yet; train that run first or pick another source"
            )
        return Source(RUN, prefix, _run_num_classes(prefix), model_dir=path)
    if path.endswith(KERAS_SUFFIXES) and os.path.isfile(path):
        kind = KERAS_MODEL if path.endswith(".keras") else KERAS_WEIGHTS
        return Source(kind, path, _keras_file_num_classes(path))
    prefix = tf_slim.checkpoint_prefix(path)
    if prefix is not None and tf_slim.model_variables(prefix):
        return _tf_slim_source(prefix)
    if prefix is not None:
        raise WeightsError(
            f"`{option}` {path!r} is a TensorFlow checkpoint without tf_slim inception_v2 "
            f"variables ({_ROOT}...); it must be {accepted(kinds)}"
        )
    what = "does not exist" if not tf.io.gfile.exists(path) else "is not a checkpoint"
    raise WeightsError(f"`{option}` {path!r} {what}; it must be {accepted(kinds)}")


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

    try:
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
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise WeightsError(
            f"{path} is not a Keras {'model' if path.endswith('.keras') else 'weights'} file "
            f"(saved by Keras 3): {first_line(error)[:200]}"
        ) from error


def _run_num_classes(prefix: str) -> int | None:
    # A run's checkpoint holds the model, the optimizer and the step; the classifier's kernel is
    # the model's one 2-D variable (saved under the model's or the optimizer's path, whichever
    # the object graph reaches first; its optimizer slots have its shape).
    shapes = {tuple(shape) for _, shape in tf.train.list_variables(prefix) if len(shape) == 2}
    return int(next(iter(shapes))[-1]) if len(shapes) == 1 else None


# ------------------------------------------------------------------------------------------------
# Reading a source's variables by name.


def weight_name(layer: keras.layers.Layer, weight: keras.Variable) -> str:
    """The name of `weight` of `layer`: tf_slim's variable without the "InceptionV2/" root; for a
    layer of another name, "<layer name>/<weight name>"."""
    slim = naming.tf_slim_variable_name(layer.name, weight.name)
    return slim[len(_ROOT) :] if slim else f"{layer.name}/{weight.name}"


def model_weights(model: keras.Model) -> dict[str, keras.Variable]:
    """`weight_name` -> weight of every weight of `model`."""
    return {
        weight_name(layer, weight): weight for layer in model.layers for weight in layer.weights
    }


def load_keras_model(path: str, option: str = "weights") -> keras.Model:
    """The Keras model saved at `path` (`model.save("x.keras")`), with this package's layers."""
    import keras_bninception  # noqa: F401  (registers the package's serializable layers)

    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as error:  # noqa: BLE001 - Keras raises several types for non-model files
        raise WeightsError(
            f"`{option}` {path} is not a Keras model file (.keras, saved by model.save): "
            f"{first_line(error)[:300]}"
        ) from error
    if not isinstance(model, keras.Model) or len(model.inputs) != 1:
        raise WeightsError(f"`{option}` {path} must hold a Keras model with one image input")
    return model


def restore_run(model: keras.Model, prefix: str) -> None:
    """Restores a training run's checkpoint `prefix` into `model` (the run's architecture)."""
    status = tf.train.Checkpoint(model=model).restore(prefix)
    status.expect_partial().assert_existing_objects_matched()


@dataclasses.dataclass
class Run:
    """A training run's newest checkpoint in the model it was trained as (`load_run`)."""

    model: keras.Model
    class_names: list[str]
    config: object  # keras_bninception.training.TrainConfig
    checkpoint: str

    @property
    def step(self) -> int | None:
        """The training step of the checkpoint (its suffix "-<step>")."""
        tail = self.checkpoint.rsplit("-", 1)[-1]
        return int(tail) if tail.isdigit() else None


def load_run(model_dir: str, option: str = "--model_dir") -> Run:
    """The newest checkpoint of the training run `model_dir`, in the model its `config.json`
    describes (built in float32 whatever the run's mixed precision: its variables are float32
    either way), with the run's class names.

    Raises:
        WeightsError: not a run, no checkpoint yet, or a checkpoint that does not fit the config.
    """
    from keras_bninception.training.experiment import build_model
    from keras_bninception.training.run_config import load_run_config

    if not tf.io.gfile.isdir(model_dir):
        raise WeightsError(f"{option} must be a training run's directory; received {model_dir!r}")
    try:
        config, class_names = load_run_config(model_dir)
    except ValueError as error:
        raise WeightsError(str(error)) from error
    checkpoints = tf.io.gfile.join(model_dir, RUN_CHECKPOINTS)
    latest = tf.train.latest_checkpoint(checkpoints)
    if latest is None:
        raise WeightsError(
            f"{option} {model_dir} has no checkpoint in {checkpoints}; train first (python -m "
            "trainers.train --model_dir=...)"
        )
    model = build_model(config, len(class_names))
    try:
        restore_run(model, latest)
    except (AssertionError, ValueError, tf.errors.OpError) as error:
        raise WeightsError(
            f"The checkpoint {latest} does not match the model of {model_dir}/config.json: "
            f"{first_line(error)[:300]}"
        ) from error
    return Run(model, class_names, config, latest)


def source_variables(
    source: Source, build_source_model: SourceModelFn | None = None, option: str = "weights"
) -> dict[str, tuple[tuple[int, ...], Callable[[], np.ndarray]]]:
    """name -> (shape, read()) of every model variable `source` holds (names: `weight_name`).

    Args:
        source: from `resolve`.
        build_source_model: for "keras_weights" and "run" sources (weights without an
            architecture): returns a new model of the source's architecture with the given number
            of classes, into which the source is read.
        option: how the caller names the source in error messages.
    """
    if source.kind == TF_SLIM:
        reader = tf.train.load_checkpoint(source.path)
        return {
            name[len(_ROOT) :]: (shape, lambda name=name: reader.get_tensor(name))
            for name, shape in tf_slim.model_variables(source.path).items()
        }
    if source.kind == KERAS_MODEL:
        source_model = load_keras_model(source.path, option)
    else:
        if build_source_model is None:
            raise WeightsError(
                f"A {source.kind} source needs `build_source_model` (it holds weights, not an "
                "architecture)"
            )
        source_model = build_source_model(source.num_classes)
        try:
            if source.kind == KERAS_WEIGHTS:
                source_model.load_weights(source.path)
            else:
                restore_run(source_model, source.path)
        except (ValueError, AssertionError, tf.errors.OpError) as error:
            raise WeightsError(
                f"`{option}` {source.path!r} does not fit the architecture it was taken for "
                "(build options such as depth_multiplier, batch_norm, activation must be those "
                f"it was trained with): {first_line(error)[:300]}"
            ) from error
    return {
        name: (tuple(w.shape), lambda w=w: keras.ops.convert_to_numpy(w))
        for name, w in model_weights(source_model).items()
    }
