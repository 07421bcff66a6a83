"""`python -m trainers.train` as subprocesses: two workers of a local cluster, and bad input.

Small BN-Inception (depth multiplier 0.25, 32x32 digits) so that each process takes seconds. One
two-worker run per module (`two_workers`); the tests that need a run directory with checkpoints
start from a copy of it. Refusals that come before any training step, and the resumed run whose
loss becomes NaN, run the binary's own flag parsing and `main` in this process
(`_train_in_process`): each child would spend its seconds importing TensorFlow first. Crash
safety: test_train_binary.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    REPO_ROOT,
    SMALL_TRAIN_ARGS,
    TRAIN_TIMEOUT,
    error_lines,
    free_ports,
    subprocess_env,
    train_command,
    weights_digest,
)
from PIL import Image

# The two-worker run: 6 steps, a checkpoint every 3, then an evaluation.
STEPS = 6
TWO_WORKERS = [
    *SMALL_TRAIN_ARGS,
    "--sync_batch_norm",
    f"--train_steps={STEPS}",
    "--checkpoint_every=3",
    "--log_every=3",
    "--mode=train_and_eval",
]


def _tree_hash(directory: str) -> dict[str, str]:
    """File name -> SHA-256 of its bytes, for every file under `directory`."""
    hashes = {}
    for root, _, files in os.walk(directory):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                hashes[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
    return hashes


def _workers(
    args: list[str], log_dir, per_worker: tuple[list[str], list[str]] = ([], [])
) -> list[tuple[int, str, str]]:
    """Runs `args` (+ `per_worker[i]`) as the two workers of a local cluster; returns (status,
    stdout, stderr).

    Output goes to files, not pipes: a worker blocked on a full pipe would stall the collectives
    of the other.
    """
    cluster = {"worker": [f"127.0.0.1:{port}" for port in free_ports(2)]}
    processes, logs = [], []
    for i in range(2):
        out = open(os.path.join(log_dir, f"worker{i}.out"), "w+")
        err = open(os.path.join(log_dir, f"worker{i}.err"), "w+")
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})
        processes.append(
            subprocess.Popen(
                train_command(
                    ["--distribution_strategy=multi_worker_mirrored", *args, *per_worker[i]]
                ),
                cwd=REPO_ROOT,
                env=subprocess_env(TF_CONFIG=tf_config),
                stdout=out,
                stderr=err,
                text=True,
            )
        )
        logs.append((out, err))
    results = []
    for process, (out, err) in zip(processes, logs, strict=True):
        try:
            process.wait(timeout=TRAIN_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
        out.seek(0)
        err.seek(0)
        results.append((process.returncode, out.read(), err.read()))
        out.close()
        err.close()
    return results


def _train_in_process(args: list[str], capsys) -> tuple[int, str, str]:
    """`python -m trainers.train ARGS` in this process, as `app.run` does it (`parse_flags`, then
    `main`) up to its `sys.exit`: (exit status, stdout, stderr). Any other exception (a traceback
    in a child) fails the test."""
    from trainers import train

    capsys.readouterr()
    train.FLAGS.unparse_flags()
    try:
        with pytest.raises(SystemExit) as exit_info:
            train.main(train.parse_flags(["trainers.train", *args]))
    finally:
        train.FLAGS.unparse_flags()
    out, err = capsys.readouterr()
    return exit_info.value.code, out, err


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory) -> tuple[str, list[tuple[int, str, str]]]:
    """(model_dir, [(status, stdout, stderr)] per worker) of a two-worker training run."""
    log_dir = tmp_path_factory.mktemp("two_workers")
    model_dir = str(log_dir / "run")
    return model_dir, _workers([*TWO_WORKERS, f"--model_dir={model_dir}"], log_dir)


@pytest.mark.slow
def test_multi_worker_mirrored_two_processes(two_workers, tmp_path):
    model_dir, ((status0, out0, err0), (status1, out1, err1)) = two_workers
    assert status0 == 0, err0[-3000:]
    assert status1 == 0, err1[-3000:]
    assert "group_size = 2" in err0  # the all-reduces spanned both processes
    # Identical weights on both workers (synchronized BN: moving statistics included).
    assert weights_digest(err0) == weights_digest(err1)
    evaluation = [re.search(r"Evaluation at step 6 on 360 examples: .*%", e) for e in (err0, err1)]
    assert evaluation[0] and evaluation[0].group(0) == evaluation[1].group(0)
    # Only the chief (worker 0) wrote into model_dir.
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["num_replicas"] == 2 and metrics["eval"]["num_examples"] == 360
    assert metrics["weights_sha256"] == weights_digest(err0)
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-6")
    assert "Metrics:" in out0 and "Metrics:" in out1

    # A global batch the 2 replicas cannot share: both workers stop with one clear line.
    bad_batch = [*TWO_WORKERS, "--batch_size=15", f"--model_dir={tmp_path}/b"]
    for status, _, err in _workers(bad_batch, tmp_path):
        assert status == 1
        assert error_lines(err) == [
            "error: The global batch size (15) must be divisible by the number of replicas (2); "
            "received batch_size=15"
        ]


@pytest.mark.slow
def test_multi_worker_model_dir_not_shared_is_one_clear_error(two_workers, tmp_path):
    run_dir, _ = two_workers
    shutil.copytree(run_dir, tmp_path / "chief")  # the chief finds step 6, worker 1 nothing
    args = [*TWO_WORKERS, f"--train_steps={STEPS + 4}"]
    dirs = ([f"--model_dir={tmp_path}/chief"], [f"--model_dir={tmp_path}/worker1"])
    for status, _, err in _workers(args, tmp_path, dirs):
        assert status == 1, err[-3000:]
        (line,) = error_lines(err)
        assert re.match(
            rf"error: The workers restored different steps from --model_dir=\S+ \(the chief "
            rf"step {STEPS}, this worker step (0|{STEPS}), at least one differs\): every worker "
            "must use the same directory",
            line,
        ), line


def _image_folder(root, corrupt: bool) -> str:
    for split in ("train", "validation"):
        for label in ("a", "b"):
            os.makedirs(root / split / label)
            for i in range(3):
                pixels = np.full((40, 40, 3), 80 * i + (label == "b") * 30, np.uint8)
                Image.fromarray(pixels).save(root / split / label / f"{i}.jpg")
    if corrupt:
        (root / "train" / "b" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    return str(root)


@pytest.mark.slow
def test_bad_input_one_line_nonzero_exit_checkpoint_intact(two_workers, tmp_path, capsys):
    run_dir, _ = two_workers
    model_dir = str(tmp_path / "run")
    shutil.copytree(run_dir, model_dir)
    before = _tree_hash(os.path.join(model_dir, "checkpoints"))
    (tmp_path / "empty").mkdir()
    corrupt = _image_folder(tmp_path / "corrupt", corrupt=True)
    # (The run's synchronized BN: a resume must keep the model's options.)
    small = [*SMALL_TRAIN_ARGS, "--sync_batch_norm", "--train_steps=40", f"--model_dir={model_dir}"]
    cases = {
        "unknown dataset": (
            [*small, "--dataset=imagenet2013"],
            1,
            r"^error: unknown dataset 'imagenet2013'; choose 'digits' .*imagenet2012",
        ),
        "missing manual files": (
            [
                *small,
                "--dataset=imagenet2012",
                f"--data_dir={tmp_path}/tfds",
                f"--manual_dir={tmp_path}/empty",
            ],
            1,
            r"^error: .*ILSVRC2012_img_train\.tar.*ILSVRC2012_img_val\.tar",
        ),
        "empty image folder": (
            [*small, "--dataset=image_folder", f"--data_dir={tmp_path}/empty"],
            1,
            r"^error: image folder .*empty has no images",
        ),
        "unreadable image folder": (
            [*small, "--dataset=image_folder", f"--data_dir={tmp_path}/missing"],
            1,
            r"^error: image folder .*missing is missing or unreadable",
        ),
        "corrupt image": (
            # A fresh model_dir: this folder has 2 classes, the run's checkpoint 10.
            [
                *SMALL_TRAIN_ARGS,
                "--train_steps=2",
                "--dataset=image_folder",
                f"--data_dir={corrupt}",
                f"--model_dir={tmp_path}/fresh",
            ],
            1,
            r"^error: corrupt image file .*/train/b/broken\.jpg",
        ),
        "learning rate out of range": (
            [*small, "--learning_rate=-0.1"],
            1,
            r"^error: `learning_rate` must be a finite number > 0; "
            r"received learning_rate=-0\.1$",
        ),
        "image size out of range": (
            [*small, "--image_size=16"],
            1,
            r"^error: `image_size` must be an integer >= 32; received "
            r"image_size=16$",
        ),
        "malformed flag": ([*small, "--mode=predict"], 2, r"^error: flag --mode=predict: "),
    }
    for name, (args, status, pattern) in cases.items():
        returncode, out, err = _train_in_process(args, capsys)
        assert returncode == status, (name, err[-2000:])
        lines = error_lines(err)
        assert len(lines) == 1, (name, err[-2000:])
        assert re.search(pattern, lines[0]), (name, lines[0])
        assert "Traceback" not in err and "Done:" not in out, name
    assert not os.path.exists(tmp_path / "fresh" / "checkpoints")
    assert _tree_hash(os.path.join(model_dir, "checkpoints")) == before

    # A loss that becomes NaN: stop at once, say at which step, keep the last good checkpoint.
    # (In this process too: the run, not the process, is what is checked.)
    returncode, _, err = _train_in_process(
        [*small, "--learning_rate=1e38", "--checkpoint_every=4", "--log_every=1"], capsys
    )
    assert returncode == 1, err[-2000:]
    (line,) = error_lines(err)
    step = int(re.search(r"NaN or infinite at step (\d+)", line).group(1))
    assert STEPS < step <= 40
    assert f"the last good checkpoint {model_dir}/checkpoints/ckpt-" in line
    latest = tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints"))
    saved = int(latest.rsplit("-", 1)[1])
    assert saved < step and f"ckpt-{saved} is kept" in line
    # Every checkpoint written is finite, and the run's own ones are untouched.
    after = _tree_hash(os.path.join(model_dir, "checkpoints"))
    for name, digest in before.items():
        if name in after and name != "checkpoint":  # (rotation may delete the oldest)
            assert after[name] == digest, name
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if np.issubdtype(np.asarray(value).dtype, np.floating):
            assert np.isfinite(value).all(), name
