"""`python -m trainers.train` as a subprocess: crash safety (SIGKILL, SIGTERM, exact resume).

Small BN-Inception (depth multiplier 0.25, 32x32 digits) so that each process takes seconds. One
uninterrupted reference run per module, which both tests compare with. Multi-worker runs and bad
input: test_train_binary_errors.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    SMALL_TRAIN_ARGS,
    TRAIN_TIMEOUT,
    error_lines,
    run_train,
    start_train,
    weights_digest,
)

# The reference run: 24 deterministic steps, a checkpoint every 4, with dropout (its random state
# must be checkpointed too).
STEPS, EVERY = 24, 4
REFERENCE = [
    *SMALL_TRAIN_ARGS,
    "--dropout_rate=0.4",
    "--deterministic",
    "--mode=train",
    f"--train_steps={STEPS}",
    f"--checkpoint_every={EVERY}",
    "--log_every=1",
]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> tuple[str, str, str]:
    """(model_dir, log, printed summary) of the uninterrupted reference run."""
    model_dir = str(tmp_path_factory.mktemp("reference") / "run")
    result = run_train([*REFERENCE, f"--model_dir={model_dir}"])
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir, result.stderr, result.stdout


@pytest.fixture(scope="module")
def reference(reference_run) -> tuple[str, str]:
    """(model_dir, log) of the uninterrupted reference run."""
    return reference_run[:2]


@pytest.mark.slow
def test_the_printed_tensorboard_command_shows_the_run(reference_run):
    """The summary's `tensorboard --logdir DIR` works: TensorBoard is installed with the package,
    and its own event reader finds the run's scalars in DIR."""
    import shutil

    from tensorboard.backend.event_processing import event_multiplexer

    model_dir, _, stdout = reference_run
    match = re.search(r"^TensorBoard: tensorboard --logdir (\S+)$", stdout, re.MULTILINE)
    assert match, stdout
    assert match.group(1) == os.path.join(model_dir, "logs")
    assert shutil.which("tensorboard") or os.path.exists(
        os.path.join(os.path.dirname(sys.executable), "tensorboard")
    )
    keep_all = {"tensors": 0}  # (by default it keeps a sample of 10 points per tag)
    runs = event_multiplexer.EventMultiplexer(size_guidance=keep_all)
    runs.AddRunsFromDirectory(match.group(1))
    runs.Reload()
    # TF2 summaries are tensors; TensorBoard's scalars dashboard shows those whose metadata
    # names its plugin.
    tags = runs.Runs()["train"]["tensors"]
    assert {"loss", "accuracy", "learning_rate", "images_per_second"} <= set(tags)
    for tag in tags:
        assert runs.SummaryMetadata("train", tag).plugin_data.plugin_name == "scalars"
    assert [event.step for event in runs.Tensors("train", "loss")] == list(range(1, STEPS + 1))


@pytest.mark.slow
def test_sigkill_then_restart_gives_the_uninterrupted_weights(reference, tmp_path):
    ref_dir, ref_log = reference
    model_dir = str(tmp_path / "run")
    args = [*REFERENCE, f"--model_dir={model_dir}"]

    killed = start_train(args)
    last_saved, last_step = 0, 0
    for line in killed.stderr:
        if m := re.search(rf"step (\d+)/{STEPS} ", line):
            last_step = max(last_step, int(m.group(1)))
        if m := re.search(r"Saved checkpoint \S+ \(step (\d+)\)", line):
            last_saved = int(m.group(1))
            if last_saved >= 2 * EVERY:
                killed.send_signal(signal.SIGKILL)
                break
    killed.wait(timeout=TRAIN_TIMEOUT)
    for line in killed.stderr:  # what it printed before dying
        if m := re.search(rf"step (\d+)/{STEPS} ", line):
            last_step = max(last_step, int(m.group(1)))
    killed.stdout.close()
    killed.stderr.close()
    assert killed.returncode == -signal.SIGKILL
    assert 2 * EVERY <= last_step < STEPS  # killed mid-training

    resumed = run_train(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    restored = int(re.search(r"Restored checkpoint \S+ \(step (\d+)\)", resumed.stderr).group(1))
    assert last_saved <= restored <= last_step
    assert last_step - restored <= EVERY  # redoes at most the steps since the last checkpoint
    assert f"Training steps {restored + 1}..{STEPS}," in resumed.stderr
    assert f"step {restored}/{STEPS} " not in resumed.stderr

    # Same final weights, optimizer state and step as the uninterrupted run, bit for bit.
    assert weights_digest(resumed.stderr) == weights_digest(ref_log)
    ref = tf.train.load_checkpoint(os.path.join(ref_dir, "checkpoints"))
    new = tf.train.load_checkpoint(os.path.join(model_dir, "checkpoints"))
    names = [n for n in ref.get_variable_to_shape_map() if "save_counter" not in n]
    assert len(names) > 100 and set(names) <= set(new.get_variable_to_shape_map())
    for name in names:
        np.testing.assert_array_equal(new.get_tensor(name), ref.get_tensor(name), err_msg=name)
    assert int(new.get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == STEPS


@pytest.mark.slow
def test_sigterm_checkpoints_the_step_reached_then_resumes_exactly(reference, tmp_path):
    _, ref_log = reference
    model_dir = str(tmp_path / "run")
    # One tf.function call for all the steps: the stop must happen inside it.
    args = [*REFERENCE, "--checkpoint_every=1000", "--log_every=1000", f"--model_dir={model_dir}"]
    process = start_train(args)
    for line in process.stderr:
        if f"Training steps 1..{STEPS}," in line:
            break
    time.sleep(2.0)
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=TRAIN_TIMEOUT)
    assert process.returncode == 128 + signal.SIGTERM, err[-3000:]
    (line,) = error_lines(err)
    match = re.fullmatch(
        r"error: Interrupted by SIGTERM at step (\d+); checkpoint (\S+) written\. Rerun the "
        r"same command to resume from it\.",
        line,
    )
    assert match, line
    step = int(match.group(1))
    assert 1 <= step < STEPS
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    assert latest == match.group(2) and latest.endswith(f"ckpt-{step}")
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["interrupted"] is True and metrics["step"] == step
    assert metrics["train"]["step"] == step

    resumed = run_train(args)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored checkpoint {latest} (step {step})" in resumed.stderr
    assert weights_digest(resumed.stderr) == weights_digest(ref_log)  # as if never interrupted
    with open(os.path.join(model_dir, "metrics.json")) as f:
        assert "interrupted" not in json.load(f)
