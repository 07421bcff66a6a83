"""A run's configuration saved beside its checkpoints: `<model_dir>/config.json`.

As the TF Model Garden saves `params.yaml`, the chief writes the whole `TrainConfig` (its sections
`model`, `data`, `trainer`, `optimizer`, `runtime`, plus `mode` and `model_dir`) when a training
run starts, with the dataset's `num_classes` and `class_names`. Whoever holds only the run
directory can then rebuild the trained network:

    config, class_names = load_run_config(model_dir)
    model = build_model(config, len(class_names))  # then restore the checkpoint

Files go through `tf.io.gfile` (local paths, gs://, ...) and are replaced atomically.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import tensorflow as tf

from keras_bninception.training.config import TrainConfig

CONFIG_FILE = "config.json"


def write_json_atomically(path: str, value: object) -> str:
    """Writes `value` as JSON to `path` through a temporary file and a rename; returns `path`."""
    tf.io.gfile.makedirs(os.path.dirname(path) or ".")
    temp = path + ".tmp"
    with tf.io.gfile.GFile(temp, "w") as f:
        f.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    tf.io.gfile.rename(temp, path, overwrite=True)
    return path


def save_run_config(model_dir: str, config: TrainConfig, class_names: Sequence[str]) -> str:
    """Writes `<model_dir>/config.json` (the config, `num_classes`, `class_names`); returns it."""
    value = {
        **config.to_dict(),
        "num_classes": len(class_names),
        "class_names": [str(name) for name in class_names],
    }
    return write_json_atomically(tf.io.gfile.join(model_dir, CONFIG_FILE), value)


def load_run_config(model_dir: str) -> tuple[TrainConfig, list[str]]:
    """Reads `<model_dir>/config.json`: the run's `TrainConfig` and its class names.

    Raises:
        ValueError: the file is missing, not JSON, or not a configuration this package wrote.
    """
    path = tf.io.gfile.join(model_dir, CONFIG_FILE)
    if not tf.io.gfile.exists(path):
        raise ValueError(
            f"`model_dir` must hold the {CONFIG_FILE} a training run writes; received "
            f"model_dir={model_dir!r}, where {path} does not exist"
        )
    try:
        with tf.io.gfile.GFile(path) as f:
            value = json.loads(f.read())
        class_names = [str(name) for name in value.pop("class_names")]
        num_classes = value.pop("num_classes")
        if num_classes != len(class_names):
            raise ValueError(f"num_classes={num_classes} but {len(class_names)} class names")
        return TrainConfig.from_dict(value), class_names
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(
            f"{path} is not a run configuration written by keras_bninception: {error}"
        ) from error
