"""Checkpoints that survive crashes and restarts, written only by the chief.

A checkpoint holds the model (weights and BN moving statistics), the optimizer (slots, iteration
count, loss scale) and the global step. The step is also the data position: the training stream is
rebuilt with `start_step=step`, so a resumed run sees the batches it would have seen.

`tf.train.CheckpointManager` writes the variable files first and then replaces the small
`checkpoint` index file atomically, so a process killed in the middle of a save leaves the previous
checkpoint as the latest valid one. Restarting the same command resumes from it.

Under `MultiWorkerMirroredStrategy` every worker must take part in a save (saving may run
collectives), but only the chief writes into `model_dir`; the others write into a private temporary
directory that is deleted afterwards (the pattern of the TensorFlow multi-worker tutorial). All
workers restore from `model_dir`, which must therefore be on a file system they share.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

from keras_bninception.training.errors import TrainingError


class CheckpointHandler:
    """Saves and restores `model`, `optimizer` and `step` for one run.

    Args:
        model_dir: the run's directory (checkpoints go to `model_dir/checkpoints`).
        chief: whether this process writes the real checkpoints.
        max_to_keep: how many recent checkpoints to keep.
        **objects: the trackable objects to save (e.g. `model=..., optimizer=..., step=...`).
    """

    def __init__(self, model_dir: str, chief: bool, max_to_keep: int = 3, **objects):
        self.directory = os.path.join(model_dir, "checkpoints")
        self._chief = chief
        self.checkpoint = tf.train.Checkpoint(**objects)
        if chief:
            self._write_dir = self.directory
            self._temp_dir = None
        else:
            self._temp_dir = tempfile.mkdtemp(prefix="bninception_worker_ckpt_")
            self._write_dir = self._temp_dir
        self._manager = tf.train.CheckpointManager(
            self.checkpoint, self._write_dir, max_to_keep=max_to_keep if chief else 1
        )

    @property
    def latest(self) -> str | None:
        """Path prefix of the newest complete checkpoint in `model_dir`, or None."""
        return tf.train.latest_checkpoint(self.directory)

    def restore(self) -> str | None:
        """Restores the newest checkpoint of `model_dir`, if any; returns its path.

        Every object passed to the constructor must already have its variables (build the model
        and the optimizer first) so that the restore is immediate, not deferred.
        """
        path = self.latest
        if path is not None:
            try:
                self.checkpoint.restore(path).assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise TrainingError(
                    f"The checkpoint {path} does not match this model / optimizer ({first_line}); "
                    "rerun with the options it was trained with, or use another --model_dir."
                ) from e
        return path

    def save(self, step: int) -> str | None:
        """Writes a checkpoint numbered `step`; returns its path on the chief, None elsewhere."""
        path = self._manager.save(checkpoint_number=step)
        return path if self._chief else None

    def close(self) -> None:
        """Removes a non-chief's temporary directory."""
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None
