"""Evaluation during training (`eval_every`): TensorBoard, metrics.json and the best checkpoint.

The trainer at a tiny size (depth multiplier 0.25, 32x32 digits, 6 steps of 8 images).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_multiplexer

from keras_bninception.training import TrainConfig, build_model, load_run_config, run
from trainers.train import summary


def _config(tmp_path, **kwargs) -> TrainConfig:
    values = dict(
        dataset="digits",
        image_size=32,
        depth_multiplier=0.25,
        batch_size=8,
        bn_momentum=0.5,
        learning_rate=0.05,
        train_steps=6,
        eval_every=2,
        eval_steps=3,  # 3 batches of 8 held-out digits per evaluation
        checkpoint_every=100,
        log_every=2,
        seed=1,
        deterministic=True,
        model_dir=str(tmp_path / "run"),
    )
    values.update(kwargs)
    return TrainConfig().replace(**values)


def _eval_scalars(model_dir: str) -> dict[str, list[tuple[int, float]]]:
    runs = event_multiplexer.EventMultiplexer(size_guidance={"tensors": 0})
    runs.AddRunsFromDirectory(os.path.join(model_dir, "logs"))
    runs.Reload()
    return {
        tag: [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in runs.Tensors("eval", tag)]
        for tag in runs.Runs()["eval"]["tensors"]
    }


@pytest.mark.slow
def test_eval_every_writes_evaluations_and_keeps_the_best_checkpoint(tmp_path):
    config = _config(tmp_path)
    results = run(config)
    model_dir = config.model_dir
    evaluations = results["evaluations"]
    assert [e["step"] for e in evaluations] == [2, 4, 6]
    assert all(e["num_examples"] == 24 and e["split"] == "test" for e in evaluations)
    assert all(e["held_out"] is True for e in evaluations)
    assert results["eval"] == evaluations[-1]  # the final evaluation is not run twice
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert json.load(f)["evaluations"] == evaluations
    # TensorBoard: one point per evaluation.
    scalars = _eval_scalars(model_dir)
    assert [step for step, _ in scalars["top_1_accuracy"]] == [2, 4, 6]
    np.testing.assert_allclose(
        [value for _, value in scalars["top_1_accuracy"]],
        [e["top_1_accuracy"] for e in evaluations],
        rtol=1e-6,
    )
    # best/: the first evaluation with the highest top-1, beside the newest checkpoint.
    top1 = [e["top_1_accuracy"] for e in evaluations]
    best_step = evaluations[int(np.argmax(top1))]["step"]
    with open(os.path.join(model_dir, "best", "best.json")) as f:
        best = json.load(f)
    assert best["step"] == best_step and best["top_1_accuracy"] == max(top1)
    assert best["checkpoint"] == os.path.join(model_dir, "best", f"ckpt-{best_step}")
    assert results["best"] == best
    text = summary(config, results)
    assert (
        f"Best evaluation (--eval_every): top-1 {100 * max(top1):.2f}% at step {best_step}" in text
    )
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-6")
    assert len(tf.io.gfile.glob(os.path.join(model_dir, "best", "ckpt-*.index"))) == 1
    # The best checkpoint restores into the run's network, with its step.
    loaded, class_names = load_run_config(model_dir)
    model = build_model(loaded, len(class_names))
    step = tf.Variable(0, dtype=tf.int64)
    tf.train.Checkpoint(model=model, step=step).restore(
        best["checkpoint"]
    ).assert_existing_objects_matched()
    assert int(step.numpy()) == best_step

    # Training on: the earlier evaluations are kept, and best/ changes only for a better top-1.
    more = run(config.replace(train_steps=8))
    assert [e["step"] for e in more["evaluations"]] == [2, 4, 6, 8]
    assert more["evaluations"][:3] == evaluations
    with open(os.path.join(model_dir, "best", "best.json")) as f:
        best_now = json.load(f)
    if more["evaluations"][3]["top_1_accuracy"] > best["top_1_accuracy"]:
        assert best_now["step"] == 8
    else:
        assert best_now == best


def test_eval_every_needs_train_and_eval(tmp_path):
    with pytest.raises(ValueError, match=r"`eval_every` evaluates during training: it needs "):
        _config(tmp_path, mode="train").validate()
