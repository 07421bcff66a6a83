"""`python -m trainers.export`: the three sources; bad input: one clear error, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import export_helpers as h
import numpy as np
import pytest
import tensorflow as tf
import tf_slim_reference
from PIL import Image

from keras_bninception.export import ExportError
from keras_bninception.training.config import TrainConfig
from keras_bninception.training.run_config import save_run_config

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("keras") / "small.keras")
    h.small_model(seed=4).save(path)
    return path


@pytest.mark.slow
def test_tf_slim_checkpoint_exported_with_imagenet_labels(tmp_path):
    reference = tf_slim_reference.build_checkpoint_subprocess(
        tmp_path / "slim", image_size=64, batch_size=3, depth_multiplier=0.5, seed=2
    )
    out = tmp_path / "out"
    info = h.run_export_binary(
        f"--tf_slim_checkpoint={reference.checkpoint}",
        "--image_size=64",
        "--formats=saved_model",
        f"--export_dir={out}",
    )
    assert info["num_classes"] == 1001 and info["source"]["kind"] == "tf_slim_checkpoint"
    labels = (out / "labels.txt").read_text().splitlines()
    assert len(labels) == 1001
    assert labels[:3] == ["background", "tench", "goldfish"] and labels[-1] == "toilet_tissue"
    loaded = tf.saved_model.load(str(out / "saved_model"))
    pixels = (reference.images + 1.0) * 127.5
    answer = loaded.signatures["serving_default"](images=tf.constant(pixels, tf.float32))
    expected = tf.nn.softmax(reference.logits).numpy()
    np.testing.assert_allclose(answer["probabilities"].numpy(), expected, atol=1e-4, rtol=0)
    top = answer["class_names"].numpy()[:, 0].astype(str)
    assert list(top) == [labels[i] for i in expected.argmax(1)]


@pytest.mark.slow
def test_keras_model_with_labels_and_calibration_folder(keras_file, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"{name}\n" for name in h.CLASS_NAMES))
    pixels, _ = h.digits_pixels("train", count=200)
    folder = tmp_path / "calibration" / "digits"
    folder.mkdir(parents=True)
    for i, image in enumerate(pixels):
        Image.fromarray(image.round().astype(np.uint8)).save(folder / f"{i:03d}.png")
    out = tmp_path / "out"
    info = h.run_export_binary(
        f"--keras_model={keras_file}",
        f"--labels={labels}",
        f"--calibration_dir={tmp_path / 'calibration'}",
        "--formats=int8",
        "--name=small",
        f"--export_dir={out}",
    )
    assert sorted(os.listdir(out)) == ["export.json", "labels.txt", "small_int8.tflite"]
    assert info["files"]["int8"]["calibration_images"] == 200
    assert (out / "labels.txt").read_text().splitlines() == h.CLASS_NAMES


def _nothing_written(parent, before: list[str]) -> None:
    assert sorted(os.listdir(parent)) == before  # no output, no temporary directory


@pytest.mark.parametrize(
    "case, message",
    [
        ("no_checkpoint", "has no checkpoint"),
        ("not_a_model", "is not a Keras model file"),
        ("two_sources", "exactly one source"),
        ("no_source", "received none"),
        ("unknown_format", "subset of saved_model,float32,float16,int8"),
        ("unreadable_calibration", "cannot be read"),
        ("existing_output", "already exists"),
    ],
)
def test_bad_input(case, message, keras_file, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    argv = [f"--export_dir={out}", "--formats=float32"]
    if case == "no_checkpoint":
        run = tmp_path / "run"
        save_run_config(str(run), TrainConfig().replace(image_size=32), h.CLASS_NAMES)
        argv.append(f"--model_dir={run}")
    elif case == "not_a_model":
        not_model = tmp_path / "model.keras"
        not_model.write_text("this is not a model")
        argv.append(f"--keras_model={not_model}")
    elif case == "two_sources":
        argv += [f"--keras_model={keras_file}", f"--model_dir={tmp_path}"]
    elif case == "unknown_format":
        argv = [f"--export_dir={out}", "--formats=float32,float64", f"--keras_model={keras_file}"]
    elif case == "unreadable_calibration":
        folder = tmp_path / "calibration"
        folder.mkdir()
        (folder / "000.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
        pixel = np.zeros((8, 8, 3), np.uint8)
        for i in range(1, 200):
            Image.fromarray(pixel + i).save(folder / f"{i:03d}.png")
        argv = [
            f"--export_dir={out}",
            "--formats=int8",
            f"--keras_model={keras_file}",
            f"--calibration_dir={folder}",
        ]
    elif case == "existing_output":
        out.mkdir()
        argv.append(f"--keras_model={keras_file}")
    before = sorted(os.listdir(work))
    with pytest.raises(ExportError, match=message):
        h.run_export_binary(*argv)
    _nothing_written(work, before)


def test_binary_error_line_and_exit_status(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "trainers.export", f"--export_dir={tmp_path / 'out'}"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
        timeout=300,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: Give exactly one source: --model_dir, --keras_model or --tf_slim_checkpoint; "
        "received none"
    )
    assert not (tmp_path / "out").exists()
