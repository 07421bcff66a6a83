"""The reference implementation for checkpoint tests: TF-slim's ``inception_v2``.

``build_checkpoint`` builds ``tf_slim.nets.inception_v2.inception_v2`` (the network of the
published ``inception_v2_2016_08_28`` checkpoint) in a fresh ``tf.compat.v1`` graph and session,
gives every variable a seeded random value, saves a checkpoint with
``tf.compat.v1.train.Saver`` and returns tf_slim's logits (inference mode) on a seeded random
input. A Keras model that loads the checkpoint must reproduce those logits.

Random values, chosen so that a mapping mistake changes the logits:

- conv / depthwise / pointwise weights: normal, std ``sqrt(2 / fan_in)`` (``sqrt(1 / fan_in)``
  for the linear logits layer), so activations neither vanish nor explode through the network;
- biases (the first separable conv, the logits): normal, std 0.1;
- BatchNorm ``beta``: normal, std 0.1; ``moving_mean``: normal, std 0.2 (non-zero);
  ``moving_variance``: ``exp(uniform(-0.5, 0.5))`` (positive, not 1).

tf_slim's own arg scope (``inception_v2_arg_scope``) is used, so BN is as in the published
checkpoint: no gamma (``scale=False``), ``epsilon=0.001``; the first separable conv has a bias
and a ReLU but no BN.

Under TF 2.21, ``tf_slim``'s ``batch_norm`` creates its layer through
``tensorflow.python.layers.normalization``, which lazily imports
``tf_keras.legacy_tf_layers.normalization``; ``tf-keras`` 2.21 ships that module only as
``tf_keras.src.legacy_tf_layers.normalization``. ``install_tf_keras_aliases`` puts the alias in
``sys.modules`` (the other ``tensorflow.python.layers`` modules import TF's bundled
``tensorflow.python.keras.legacy_tf_layers`` and need nothing; their ``tf_keras`` names are
aliased too, harmlessly, in case a TF patch release switches them to lazy loading as well).

In-process vs. subprocess: the graph is built in its own ``tf.Graph`` and ``tf.compat.v1.Session``
and eager mode is never disabled, so ``build_checkpoint`` can run in the same process as Keras 3
code, before or after it (``tests/test_tf_slim_reference.py`` checks both orders).
``build_checkpoint_subprocess`` runs this file as a script in a fresh interpreter and reads the
result back from a ``.npz``; it gives identical arrays (also tested) and is there for callers that
want no TF1-style state (tf_keras' legacy layers, graph collections) in their process.

Run as a script: ``python tests/tf_slim_reference.py DIRECTORY [--image-size 224 ...]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import subprocess
import sys
import warnings

import numpy as np

_LEGACY_LAYER_MODULES = ("base", "convolutional", "core", "normalization", "pooling")

# File names inside ``directory``.
CHECKPOINT_NAME = "inception_v2.ckpt"
_ARRAYS_NAME = "reference.npz"
_META_NAME = "reference.json"


# tf_slim's own expectations (tf_slim/nets/inception_v2_test.py,
# testBuildAndCheckAllEndPointsUptoMixed5c), without the batch dimension.
END_POINT_SHAPES_224 = {
    "Conv2d_1a_7x7": (112, 112, 64),
    "MaxPool_2a_3x3": (56, 56, 64),
    "Conv2d_2b_1x1": (56, 56, 64),
    "Conv2d_2c_3x3": (56, 56, 192),
    "MaxPool_3a_3x3": (28, 28, 192),
    "Mixed_3b": (28, 28, 256),
    "Mixed_3c": (28, 28, 320),
    "Mixed_4a": (14, 14, 576),
    "Mixed_4b": (14, 14, 576),
    "Mixed_4c": (14, 14, 576),
    "Mixed_4d": (14, 14, 576),
    "Mixed_4e": (14, 14, 576),
    "Mixed_5a": (7, 7, 1024),
    "Mixed_5b": (7, 7, 1024),
    "Mixed_5c": (7, 7, 1024),
}


@dataclasses.dataclass(frozen=True)
class SlimReference:
    """A random tf_slim ``inception_v2`` checkpoint and its inference-mode outputs.

    Attributes:
        checkpoint: checkpoint path prefix (pass it to ``tf.train.load_checkpoint``).
        images: the input batch, ``(batch_size, image_size, image_size, 3)`` float32 in [-1, 1].
        logits: tf_slim's logits on ``images`` (``is_training=False``),
            ``(batch_size, num_classes)`` float32.
        end_point_shapes: end point name (``Conv2d_1a_7x7`` … ``Mixed_5c``, ``Logits``,
            ``Predictions``) -> static shape.
        variable_shapes: checkpoint variable name (e.g.
            ``InceptionV2/Mixed_3b/Branch_0/Conv2d_0a_1x1/weights``) -> shape.
        end_points: end point name -> value on ``images``; empty unless requested.
    """

    checkpoint: str
    images: np.ndarray
    logits: np.ndarray
    end_point_shapes: dict[str, tuple[int, ...]]
    variable_shapes: dict[str, tuple[int, ...]]
    end_points: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


def install_tf_keras_aliases() -> None:
    """Alias ``tf_keras.legacy_tf_layers[.*]`` to ``tf_keras.src.legacy_tf_layers[.*]``."""
    package = importlib.import_module("tf_keras.src.legacy_tf_layers")
    sys.modules.setdefault("tf_keras.legacy_tf_layers", package)
    for name in _LEGACY_LAYER_MODULES:
        module = importlib.import_module(f"tf_keras.src.legacy_tf_layers.{name}")
        sys.modules.setdefault(f"tf_keras.legacy_tf_layers.{name}", module)


def _random_value(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A seeded random value for the tf_slim variable ``name`` (see the module docstring)."""
    leaf = name.rsplit("/", 1)[-1]
    if leaf == "moving_variance":
        value = np.exp(rng.uniform(-0.5, 0.5, shape))
    elif leaf == "moving_mean":
        value = rng.normal(0.0, 0.2, shape)
    elif leaf in ("beta", "biases"):
        value = rng.normal(0.0, 0.1, shape)
    elif leaf == "gamma":  # not created by inception_v2_arg_scope (scale=False), kept for safety
        value = np.exp(rng.uniform(-0.5, 0.5, shape))
    elif leaf == "depthwise_weights":  # (kh, kw, in, multiplier): each filter sees one channel
        value = rng.normal(0.0, np.sqrt(2.0 / (shape[0] * shape[1])), shape)
    elif leaf in ("weights", "pointwise_weights"):  # (kh, kw, in, out)
        fan_in = int(np.prod(shape[:-1]))
        gain = 1.0 if "/Logits/" in name else 2.0
        value = rng.normal(0.0, np.sqrt(gain / fan_in), shape)
    else:
        raise ValueError(f"No random-value rule for tf_slim variable {name!r} {shape}.")
    return value.astype(np.float32)


def random_images(rng: np.random.Generator, batch_size: int, image_size: int) -> np.ndarray:
    """Seeded random images in [-1, 1]: blocky low-frequency noise plus white noise.

    White noise alone gives nearly the same logits for every image (the network averages it
    away); the low-frequency part, different in each image, makes the logits depend on the input.
    """
    images = np.empty((batch_size, image_size, image_size, 3), np.float32)
    for i in range(batch_size):
        cells = int(rng.integers(2, 9))
        index = np.arange(image_size) * cells // image_size
        coarse = rng.uniform(-1.0, 1.0, (cells, cells, 3))[index][:, index]
        fine = rng.uniform(-1.0, 1.0, (image_size, image_size, 3))
        images[i] = 0.7 * coarse + 0.3 * fine
    return images


def build_checkpoint(
    directory: str | os.PathLike[str],
    *,
    image_size: int = 224,
    batch_size: int = 2,
    num_classes: int = 1001,
    seed: int = 0,
    depth_multiplier: float = 1.0,
    return_end_points: bool = False,
    write_version: str = "V2",
) -> SlimReference:
    """Builds tf_slim's inception_v2 with random weights, saves a checkpoint, runs it.

    Args:
        directory: where the checkpoint is written (``directory/inception_v2.ckpt*``); created
            if missing.
        image_size: height and width of the square random input (tf_slim needs >= 32).
        batch_size: number of random images.
        num_classes: logits width (the published checkpoint has 1001, class 0 = background).
        seed: seeds the variable values and the input.
        depth_multiplier: tf_slim's width multiplier (``min_depth`` stays 16).
        return_end_points: also return every end point's value on the input.
        write_version: "V2" (a prefix with ``.index`` and ``.data-*`` files) or "V1" (one file,
            the format of the published ``inception_v2.ckpt``).

    Returns:
        A ``SlimReference``.
    """
    import tensorflow as tf

    install_tf_keras_aliases()
    import tf_slim
    from tf_slim.nets import inception_v2

    rng = np.random.default_rng(seed)
    images = random_images(rng, batch_size, image_size)
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(os.fspath(directory), CHECKPOINT_NAME)

    graph = tf.Graph()
    with graph.as_default():
        inputs = tf.compat.v1.placeholder(tf.float32, (batch_size, image_size, image_size, 3))
        with (
            tf_slim.arg_scope(inception_v2.inception_v2_arg_scope()),
            warnings.catch_warnings(),
        ):
            # tf_slim calls the deprecated `layer.apply` of TF's legacy layers.
            warnings.filterwarnings("ignore", message=".*layer.apply.*", category=UserWarning)
            logits, end_points = inception_v2.inception_v2(
                inputs,
                num_classes=num_classes,
                is_training=False,
                depth_multiplier=depth_multiplier,
            )
        variables = tf.compat.v1.global_variables()
        values = {
            v.op.name: _random_value(v.op.name, tuple(v.shape.as_list()), rng) for v in variables
        }
        feeds = {v.op.name: tf.compat.v1.placeholder(tf.float32, v.shape) for v in variables}
        assign = tf.group(*[v.assign(feeds[v.op.name]) for v in variables])
        saver = tf.compat.v1.train.Saver(
            var_list=variables, write_version=getattr(tf.compat.v1.train.SaverDef, write_version)
        )
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(assign, {feeds[name]: values[name] for name in values})
            checkpoint = saver.save(session, prefix, write_meta_graph=False)
            fetches = {"logits": logits}
            if return_end_points:
                fetches["end_points"] = end_points
            out = session.run(fetches, {inputs: images})

    return SlimReference(
        checkpoint=checkpoint,
        images=images,
        logits=out["logits"],
        end_point_shapes={k: tuple(t.shape.as_list()) for k, t in end_points.items()},
        variable_shapes={v.op.name: tuple(v.shape.as_list()) for v in variables},
        end_points=dict(out.get("end_points", {})),
    )


def _save(reference: SlimReference, directory: str) -> None:
    arrays = {"images": reference.images, "logits": reference.logits}
    arrays.update({f"end_points/{k}": v for k, v in reference.end_points.items()})
    np.savez(os.path.join(directory, _ARRAYS_NAME), **arrays)
    meta = {
        "checkpoint": reference.checkpoint,
        "end_point_shapes": reference.end_point_shapes,
        "variable_shapes": reference.variable_shapes,
    }
    with open(os.path.join(directory, _META_NAME), "w") as f:
        json.dump(meta, f)


def _load(directory: str) -> SlimReference:
    with open(os.path.join(directory, _META_NAME)) as f:
        meta = json.load(f)
    with np.load(os.path.join(directory, _ARRAYS_NAME)) as arrays:
        end_points = {
            k.split("/", 1)[1]: arrays[k] for k in arrays.files if k.startswith("end_points/")
        }
        images, logits = arrays["images"], arrays["logits"]
    return SlimReference(
        checkpoint=meta["checkpoint"],
        images=images,
        logits=logits,
        end_point_shapes={k: tuple(v) for k, v in meta["end_point_shapes"].items()},
        variable_shapes={k: tuple(v) for k, v in meta["variable_shapes"].items()},
        end_points=end_points,
    )


def build_checkpoint_subprocess(
    directory: str | os.PathLike[str],
    *,
    image_size: int = 224,
    batch_size: int = 2,
    num_classes: int = 1001,
    seed: int = 0,
    depth_multiplier: float = 1.0,
    return_end_points: bool = False,
    timeout: float = 600.0,
) -> SlimReference:
    """``build_checkpoint`` run in a fresh Python process (same arguments, same result).

    The child writes ``reference.npz`` and ``reference.json`` next to the checkpoint.

    Raises:
        RuntimeError: if the child process fails (its stderr tail is in the message).
    """
    directory = os.fspath(directory)
    command = [
        sys.executable,
        os.path.abspath(__file__),
        directory,
        f"--image-size={image_size}",
        f"--batch-size={batch_size}",
        f"--num-classes={num_classes}",
        f"--seed={seed}",
        f"--depth-multiplier={depth_multiplier}",
    ]
    if return_end_points:
        command.append("--end-points")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    if result.returncode != 0:
        raise RuntimeError(
            f"{' '.join(command)} failed with exit code {result.returncode}:\n"
            f"{result.stderr[-4000:]}"
        )
    return _load(directory)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("directory")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=1001)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--depth-multiplier", type=float, default=1.0)
    parser.add_argument("--end-points", action="store_true")
    args = parser.parse_args(argv)
    reference = build_checkpoint(
        args.directory,
        image_size=args.image_size,
        batch_size=args.batch_size,
        num_classes=args.num_classes,
        seed=args.seed,
        depth_multiplier=args.depth_multiplier,
        return_end_points=args.end_points,
    )
    _save(reference, args.directory)


if __name__ == "__main__":
    main()
