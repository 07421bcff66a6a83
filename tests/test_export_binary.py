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
from ai_edge_litert.interpreter import Interpreter
from PIL import Image

from keras_bninception.data.errors import DataError
from keras_bninception.export import ExportError
from keras_bninception.training.config import TrainConfig
from keras_bninception.training.experiment import build_model
from keras_bninception.training.run_config import save_run_config
from trainers import export as export_binary

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def keras_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("keras") / "small.keras")
    h.small_model(seed=4).save(path)
    return path


@pytest.mark.slow
def test_tf_slim_checkpoint_bare_export_skips_int8_and_says_how(tmp_path):
    # No --formats and no calibration images: every format but int8, and one line on how to
    # get int8 (this export failed before for want of calibration images).
    # Built in this process (tf_slim_reference.py: the same arrays as in a child, which would
    # spend its first seconds importing TensorFlow).
    reference = tf_slim_reference.build_checkpoint(
        tmp_path / "slim", image_size=64, batch_size=3, depth_multiplier=0.25, seed=2
    )
    out = tmp_path / "out"
    info = h.run_export_binary(
        f"--tf_slim_checkpoint={reference.checkpoint}", "--image_size=64", f"--export_dir={out}"
    )
    assert sorted(info["files"]) == ["float16", "float32", "saved_model"]
    assert info["skipped"] == {"int8": "no calibration images"}
    lines = export_binary.summary(info, str(out))
    assert (
        "int8 skipped: no calibration images; pass --calibration_images=DIR (a folder of at "
        "least 200 .jpg/.png images)"
    ) in lines
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
    # The float32 file through its signature, as an app runs it.
    runner = Interpreter(model_path=str(out / "bninception_float32.tflite")).get_signature_runner()
    for image, probabilities in zip(reference.images, expected, strict=True):
        answer = runner(images=image[None].astype(np.float32))["probabilities"]
        np.testing.assert_allclose(answer[0], probabilities, atol=1e-4, rtol=0)


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
        f"--calibration_images={tmp_path / 'calibration'}",
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
        ("int8_without_calibration", "int8 needs calibration images: pass --calibration_images"),
        ("too_few_calibration_images", "must hold at least 200 .jpg / .png images; found 3"),
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
            f"--calibration_dir={folder}",  # the flag's former name
        ]
    elif case == "int8_without_calibration":
        argv = [f"--export_dir={out}", "--formats=float32,int8", f"--keras_model={keras_file}"]
    elif case == "too_few_calibration_images":
        # Calibration images given: int8 is asked for, so too few is an error, not a skip.
        folder = tmp_path / "calibration"
        folder.mkdir()
        for i in range(3):
            Image.fromarray(np.full((8, 8, 3), i, np.uint8)).save(folder / f"{i}.png")
        argv = [
            f"--export_dir={out}",
            f"--keras_model={keras_file}",
            f"--calibration_images={folder}",
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


def test_model_dir_without_its_data_exports_float(tmp_path):
    # A run whose image folder was removed after training: the model, class names and
    # preprocessing come from the run; its data is read only to calibrate int8.
    run = tmp_path / "run"
    config = TrainConfig().replace(
        dataset="image_folder",
        data_dir=str(tmp_path / "photos_removed"),
        image_size=h.IMAGE_SIZE,
        depth_multiplier=0.25,
    )
    save_run_config(str(run), config, h.CLASS_NAMES)
    model = build_model(config, len(h.CLASS_NAMES))
    tf.train.Checkpoint(model=model).save(str(run / "checkpoints" / "ckpt"))
    out = tmp_path / "out"
    info = h.run_export_binary(f"--model_dir={run}", "--formats=float32", f"--export_dir={out}")
    assert sorted(os.listdir(out)) == ["bninception_float32.tflite", "export.json", "labels.txt"]
    assert info["source"]["kind"] == "model_dir" and info["skipped"] == {}
    assert (out / "labels.txt").read_text().splitlines() == h.CLASS_NAMES


def test_help_lists_the_flags():
    result = subprocess.run(
        [sys.executable, "-m", "trainers.export", "--help"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=REPO_ROOT),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    for flag in ("--tf_slim_checkpoint", "--calibration_images", "--formats", "--export_dir"):
        assert flag in result.stdout
    assert "serving_default" in result.stdout


def test_run_calibration_failure_names_the_run_and_the_flag():
    def gone():
        raise DataError("image folder /data/photos is missing or unreadable")

    reason = "the training data of --model_dir cannot be read (image folder /data/photos is missing"
    with pytest.raises(ExportError) as skipped:
        export_binary.run_calibration(gone, asked=False)()
    assert str(skipped.value) == f"{reason} or unreadable)"
    with pytest.raises(ExportError) as asked:
        export_binary.run_calibration(gone, asked=True)()
    assert str(asked.value) == (
        f"int8 needs calibration images: {reason} or unreadable); pass --calibration_images=DIR "
        "(a folder of at least 200 .jpg/.png images), or leave int8 out"
    )
    pixels = np.zeros((200, 32, 32, 3), np.float32)
    assert export_binary.run_calibration(lambda: pixels, asked=True)() is pixels
