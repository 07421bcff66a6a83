"""Checkpoints that survive crashes and restarts, written only by the chief.

A checkpoint holds the model (weights and BN moving statistics), the optimizer (slots, iteration
count, loss scale) and the global step. The step is also the data position: the training stream is
rebuilt with `start_step=step`, so a resumed run sees the batches it would have seen.

`tf.train.CheckpointManager` writes the variable files first and then replaces the small
`checkpoint` index file atomically, so a process killed in the middle of a save leaves the previous
checkpoint as the latest valid one. Restarting the same command resumes from it.

Files can still be damaged afterwards (a full disk, a copy cut short, a file system without atomic
renames). `restore` therefore reads every tensor of a checkpoint (TF checks their CRC32C) before
using it, and falls back from a damaged checkpoint to the next older one with a warning naming the
damaged file; only when no checkpoint restores does it stop, with one error listing them.

Under `MultiWorkerMirroredStrategy` every worker must take part in a save (saving may run
collectives), but only the chief writes into `model_dir`; the others write into a private temporary
directory that is deleted afterwards (the pattern of the TensorFlow multi-worker tutorial). All
workers restore from `model_dir`, which must therefore be on a file system they share.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Sequence

import tensorflow as tf
from absl import logging

from keras_bninception.errors import first_line
from keras_bninception.training.errors import TrainingError


class CheckpointHandler:
    """Saves and restores `model`, `optimizer` and `step` for one run.

    Args:
        model_dir: the run's directory (checkpoints go to `model_dir/<subdir>`).
        chief: whether this process writes the real checkpoints.
        max_to_keep: how many recent checkpoints to keep.
        subdir: `checkpoints` (the newest ones) or, e.g., `best` (`BestCheckpoint`).
        **objects: the trackable objects to save (e.g. `model=..., optimizer=..., step=...`).
    """

    def __init__(
        self,
        model_dir: str,
        chief: bool,
        max_to_keep: int = 3,
        subdir: str = "checkpoints",
        **objects,
    ):
        self.directory = os.path.join(model_dir, subdir)
        self._chief = chief
        self._objects = objects
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

    def candidates(self) -> list[str]:
        """Every checkpoint prefix of `model_dir`, newest (highest number) first.

        Those of the `checkpoint` index file and every `ckpt-N.index` on disk: a damaged or
        missing index file does not hide the checkpoints beside it.
        """
        prefixes = set()
        try:
            state = tf.train.get_checkpoint_state(self.directory)
        except (tf.errors.OpError, ValueError) as e:  # an unparsable `checkpoint` file
            logging.warning("Ignoring the unreadable %s (%s).", self._state_file, first_line(e))
            state = None
        if state is not None:
            prefixes.update(state.all_model_checkpoint_paths)
        for index in tf.io.gfile.glob(os.path.join(self.directory, "ckpt-*.index")):
            prefixes.add(index[: -len(".index")])
        return sorted(prefixes, key=_checkpoint_number, reverse=True)

    @property
    def _state_file(self) -> str:
        return os.path.join(self.directory, "checkpoint")

    def restore(self, only: Sequence[str] | None = None) -> str | None:
        """Restores the newest intact checkpoint of `model_dir`, if any; returns its path.

        Every object passed to the constructor (or named in `only`: these alone are restored, the
        checkpoint's others are left unread) must already have its variables (build the model and
        the optimizer first) so that the restore is immediate, not deferred. A damaged
        checkpoint (missing, truncated or corrupt file) is skipped with a warning naming the file.

        Raises:
            TrainingError: checkpoints exist but none is intact, or the newest intact one does not
                match the model / optimizer.
        """
        checkpoint = self.checkpoint
        if only is not None:
            checkpoint = tf.train.Checkpoint(**{name: self._objects[name] for name in only})
        damaged = []
        for path in self.candidates():
            damage = checkpoint_damage(path)
            if damage is not None:
                logging.warning("Skipping the damaged checkpoint %s: %s.", path, damage)
                damaged.append(f"{os.path.basename(path)}: {damage}")
                continue
            try:
                status = checkpoint.restore(path)
                if only is not None:
                    status.expect_partial()  # the checkpoint's other objects: not wanted
                status.assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                raise TrainingError(
                    f"The checkpoint {path} does not match this model / optimizer "
                    f"({first_line(e)}); rerun with the options it was trained with, or use "
                    "another --model_dir."
                ) from e
            if damaged:
                logging.warning(
                    "Resuming from the older checkpoint %s; skipped the damaged: %s.",
                    path,
                    "; ".join(damaged),
                )
            return path
        if damaged:
            raise TrainingError(
                f"No checkpoint in {self.directory} can be restored, all are damaged: "
                f"{'; '.join(damaged)}. Restore them from a backup, or move the directory away "
                "to start from scratch."
            )
        return None

    def save(self, step: int) -> str | None:
        """Writes a checkpoint numbered `step`; returns its path on the chief, None elsewhere."""
        path = self._manager.save(checkpoint_number=step)
        return path if self._chief else None

    def close(self) -> None:
        """Removes a non-chief's temporary directory."""
        if self._temp_dir is not None:
            shutil.rmtree(self._temp_dir, ignore_errors=True)
            self._temp_dir = None


BEST_DIR = "best"
BEST_RECORD = "best.json"


class BestCheckpoint:
    """`<model_dir>/best/`: the model at the evaluation with the highest `metric` so far.

    Beside the newest checkpoints (`checkpoints/`), as the Model Garden's continuous evaluation
    keeps its best one: `best/ckpt-<step>` (the model and the step; a tf.train checkpoint that
    `tf.train.Checkpoint(model=model).restore` reads) and `best/best.json`, the evaluation's
    metrics with `checkpoint`. A resumed run reads `best.json` first, so only a better
    evaluation replaces what an earlier invocation kept. Every worker calls `consider` with the
    same (globally reduced) metrics, hence takes the same decision; only the chief writes.
    """

    def __init__(
        self, model_dir: str, chief: bool, metric: str = "top_1_accuracy", **objects
    ) -> None:
        self.metric = metric
        self._chief = chief
        self._handler = CheckpointHandler(model_dir, chief, 1, subdir=BEST_DIR, **objects)
        self.record_path = os.path.join(model_dir, BEST_DIR, BEST_RECORD)
        self.best: dict | None = None
        try:
            with tf.io.gfile.GFile(self.record_path) as f:
                self.best = json.loads(f.read())
        except (tf.errors.OpError, ValueError):  # none yet, or unreadable: start afresh
            self.best = None

    def consider(self, metrics: dict) -> bool:
        """Saves the model when `metrics[metric]` beats the best so far; returns whether it did."""
        if self.best is not None and metrics[self.metric] <= self.best.get(self.metric, -1.0):
            return False
        path = self._handler.save(int(metrics["step"]))
        self.best = dict(metrics)
        if self._chief and path:
            from keras_bninception.training.run_config import write_json_atomically

            self.best["checkpoint"] = path
            write_json_atomically(self.record_path, self.best)
            logging.info(
                "New best %s %.4f at step %d: %s.",
                self.metric,
                metrics[self.metric],
                metrics["step"],
                path,
            )
        return True

    def close(self) -> None:
        self._handler.close()


def _checkpoint_number(prefix: str) -> int:
    match = re.search(r"-(\d+)$", prefix)
    return int(match.group(1)) if match else -1


def checkpoint_damage(prefix: str) -> str | None:
    """None if every file of the checkpoint `prefix` reads back intact, else what is damaged.

    Reads every tensor: TF verifies each one's CRC32C, and a truncated or missing data file fails.
    """
    index = prefix + ".index"
    if not tf.io.gfile.exists(index):
        return f"{index} is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
        names = list(reader.get_variable_to_shape_map())
    except Exception as e:  # noqa: BLE001 - any failure to parse the index means it is damaged
        return f"{index} is unreadable ({first_line(e)})"
    data_files = sorted(tf.io.gfile.glob(prefix + ".data-*-of-*"))
    for name in names:
        try:
            reader.get_tensor(name)
        except Exception as e:  # noqa: BLE001 - truncation shows as IndexError, OpError, ...
            if not data_files:  # TF's message names the missing file
                return f"its data file is missing ({first_line(e)})"
            shown = data_files[0] if len(data_files) == 1 else f"{prefix}.data-*"
            return f"{shown} is truncated or corrupt ({first_line(e)}, reading {name})"
    return None
