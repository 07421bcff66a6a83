"""Damaged checkpoints: restore names the damaged file and falls back to the newest intact one.

A tiny Keras model stands in for BN-Inception: what is tested is `CheckpointHandler`.
"""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import logging
from helpers import REPO_ROOT, subprocess_env

from keras_bninception.training.checkpointing import CheckpointHandler
from keras_bninception.training.errors import TrainingError


def _handler(model_dir: str) -> tuple[CheckpointHandler, keras.Model, tf.Variable]:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    handler = CheckpointHandler(
        model_dir, True, max_to_keep=3, model=model, optimizer=optimizer, step=step
    )
    return handler, model, step


def _three_checkpoints(model_dir: str) -> dict[int, list[np.ndarray]]:
    handler, model, step = _handler(model_dir)
    saved = {}
    for i in (1, 2, 3):
        step.assign(i)
        model.set_weights([np.full(w.shape, i, np.float32) for w in model.get_weights()])
        handler.save(i)
        saved[i] = model.get_weights()
    return saved


def _restore(model_dir: str, caplog) -> tuple[str | None, int, keras.Model, str]:
    handler, model, step = _handler(model_dir)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="absl"):
        path = handler.restore()
    return path, int(step.numpy()), model, caplog.text


@pytest.mark.parametrize("damage", ["truncated", "deleted", "index_only"])
def test_damaged_newest_falls_back_to_older(tmp_path, caplog, damage):
    model_dir = str(tmp_path)
    saved = _three_checkpoints(model_dir)
    directory = os.path.join(model_dir, "checkpoints")
    (data,) = glob.glob(os.path.join(directory, "ckpt-3.data-*"))
    if damage == "truncated":
        with open(data, "rb") as f:
            contents = f.read()
        with open(data, "wb") as f:
            f.write(contents[: len(contents) // 2])
    elif damage == "deleted":
        os.remove(data)
    else:  # a save cut short: ckpt-3.index written, the index file not yet pointing at it
        os.remove(data)
        with open(os.path.join(directory, "checkpoint"), "w") as f:
            f.write('model_checkpoint_path: "ckpt-2"\n')
    path, step, model, log = _restore(model_dir, caplog)
    assert path.endswith("ckpt-2") and step == 2
    for restored, expected in zip(model.get_weights(), saved[2], strict=True):
        np.testing.assert_array_equal(restored, expected)
    assert "Skipping the damaged checkpoint" in log
    assert os.path.basename(data) in log  # names the damaged file


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path, caplog):
    model_dir = str(tmp_path)
    _three_checkpoints(model_dir)
    for data in glob.glob(os.path.join(model_dir, "checkpoints", "ckpt-*.data-*")):
        with open(data, "r+b") as f:
            f.truncate(10)
    with pytest.raises(TrainingError, match=r"No checkpoint in .* can be restored") as error:
        _restore(model_dir, caplog)
    message = str(error.value)
    for i in (1, 2, 3):
        assert f"ckpt-{i}.data-00000-of-00001 is truncated or corrupt" in message


def test_mismatched_model_is_not_mistaken_for_damage(tmp_path):
    _three_checkpoints(str(tmp_path))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5)])
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    handler = CheckpointHandler(
        str(tmp_path), True, model=model, optimizer=optimizer, step=tf.Variable(0, tf.int64)
    )
    with pytest.raises(TrainingError, match=r"ckpt-3 does not match this model / optimizer"):
        handler.restore()


_SAVER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tensorflow as tf
    from keras_bninception.training.checkpointing import CheckpointHandler

    # 32 MB of variables: one save takes long enough to be killed in the middle of it.
    big = tf.Variable(np.zeros((8, 1 << 20), np.float32))
    step = tf.Variable(0, dtype=tf.int64)
    handler = CheckpointHandler(sys.argv[1], True, max_to_keep=2, big=big, step=step)
    for i in range(1, 1000):
        step.assign(i)
        big.assign_add(tf.ones_like(big))
        print(f"saving {i}", flush=True)
        handler.save(i)
    """
)


@pytest.mark.slow
def test_kill_in_the_middle_of_a_save_leaves_a_restorable_run(tmp_path, caplog):
    model_dir = str(tmp_path)
    process = subprocess.Popen(
        [sys.executable, "-c", _SAVER, model_dir],
        cwd=REPO_ROOT,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    for line in process.stdout:
        if line.strip() == "saving 3":
            process.send_signal(signal.SIGKILL)  # while ckpt-3 is being written
            break
    process.wait(timeout=120)
    process.stdout.close()
    assert process.returncode == -signal.SIGKILL
    big = tf.Variable(np.zeros((8, 1 << 20), np.float32))
    step = tf.Variable(0, dtype=tf.int64)
    handler = CheckpointHandler(model_dir, True, big=big, step=step)
    path = handler.restore()
    restored = int(step.numpy())
    assert restored in (2, 3) and path.endswith(f"ckpt-{restored}")
    assert float(big[0, 0]) == float(big[-1, -1]) == restored  # all of it, from one save
