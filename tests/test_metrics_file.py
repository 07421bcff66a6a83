"""`metrics.json`: written through tf.io.gfile, atomically, never losing the other run's section."""

from __future__ import annotations

import json
import os

import pytest
import tensorflow as tf

from keras_bninception.training import TrainingError, write_metrics


def _read(path: str) -> dict:
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)


def test_a_url_model_dir_is_written_there_not_in_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model_dir = "ram://metrics_test/run"  # an in-memory TF file system, like gs:// for gfile
    path = write_metrics(model_dir, {"step": 3})
    assert path == "ram://metrics_test/run/metrics.json"
    assert _read(path) == {"step": 3}
    assert os.listdir(tmp_path) == []  # no local "ram:" folder
    assert tf.io.gfile.listdir(model_dir) == ["metrics.json"]  # no temporary file left


def test_eval_and_nothing_to_train_keep_the_training_metrics(tmp_path):
    model_dir = str(tmp_path)
    train = {"loss": 0.5, "accuracy": 0.9, "step": 20, "train_seconds": 7.0}
    write_metrics(model_dir, {"step": 20, "train": train})
    evaluation = {"top_1_accuracy": 0.8, "step": 20}
    write_metrics(model_dir, {"step": 20, "eval": evaluation})  # --mode=eval
    written = _read(os.path.join(model_dir, "metrics.json"))
    assert written["train"] == train and written["eval"] == evaluation
    # Rerunning a finished run trains nothing: the earlier training metrics stay.
    write_metrics(model_dir, {"step": 20, "train": {"step": 20, "train_seconds": 0.0}})
    written = _read(os.path.join(model_dir, "metrics.json"))
    assert written["train"] == train and written["eval"] == evaluation
    # A run that trains replaces them.
    newer = {"loss": 0.4, "accuracy": 0.95, "step": 30, "train_seconds": 3.0}
    write_metrics(model_dir, {"step": 30, "train": newer})
    assert _read(os.path.join(model_dir, "metrics.json"))["train"] == newer


def test_a_write_failure_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(TrainingError, match=r"^Cannot write the metrics file .*/metrics\.json"):
        write_metrics(str(blocker), {"step": 1})
