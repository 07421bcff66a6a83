"""After a short digits training: int8 agrees with float; MediaPipe loads the exported files.

A small BN-Inception (depth multiplier 0.35, 32x32) trains for 4 epochs on the embedded digits
through `keras_bninception.training.run`; `python -m trainers.export --model_dir` exports it (the
model rebuilt from the run's config.json, its newest checkpoint). The 360 held-out digits, as uint8
pixels, are then classified by the Keras model, the int8 file (LiteRT interpreter), and MediaPipe
Tasks' `ImageClassifier` on the float32 and int8 files in a separate process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import export_helpers as h
import numpy as np
import pytest

from keras_bninception.export import litert, sources
from keras_bninception.training import experiment
from keras_bninception.training.config import TrainConfig
from trainers import demo

pytestmark = pytest.mark.slow
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    model_dir = str(root / "run")
    config = TrainConfig().replace(
        **{**demo.RECIPE, "image_size": h.IMAGE_SIZE},  # the digits demo's recipe, smaller
        depth_multiplier=0.35,
        epochs=4,
        seed=0,
        deterministic=True,
        checkpoint_every=10000,
        log_every=1000,
        mode="train",
        model_dir=model_dir,
    )
    experiment.run(config)
    out = root / "export"
    info = h.run_export_binary(
        f"--model_dir={model_dir}", "--formats=float32,int8", f"--export_dir={out}"
    )
    source = sources.from_model_dir(model_dir)
    pixels, labels = h.digits_pixels("test")
    pixels = np.round(pixels).astype(np.uint8)
    keras_top1 = h.keras_probabilities(source.model, pixels.astype(np.float32)).argmax(1)
    return {
        "out": out,
        "info": info,
        "names": source.class_names,
        "pixels": pixels,
        "labels": labels,
        "keras": keras_top1,
    }


def test_export_records_the_run(trained):
    assert trained["info"]["source"]["kind"] == "model_dir"
    assert trained["info"]["source"]["dataset"] == "digits"
    assert trained["info"]["files"]["int8"]["calibration_images"] == 500
    assert len(trained["pixels"]) == 360
    # The short training did learn: the Keras model is far above chance (10 %).
    assert (trained["keras"] == trained["labels"]).mean() > 0.8


def test_int8_top1_agrees_with_float(trained):
    path = trained["out"] / trained["info"]["files"]["int8"]["path"]
    int8 = litert.TFLiteClassifier(path).predict(trained["pixels"]).argmax(1)
    agreement = (int8 == trained["keras"]).mean()
    assert agreement >= 0.98, agreement


@pytest.fixture(scope="module")
def mediapipe_answers(trained, tmp_path_factory) -> dict[str, list[dict]]:
    """flavour -> MediaPipe's answers on the held-out digits, float32 and int8 files classified in
    one separate process (one MediaPipe start-up for both)."""
    pytest.importorskip("mediapipe")
    work = tmp_path_factory.mktemp("mediapipe")
    np.save(work / "images.npy", trained["pixels"])
    flavours = ("float32", "int8")
    pairs = []
    for flavour in flavours:
        pairs += [
            str(trained["out"] / trained["info"]["files"][flavour]["path"]),
            str(work / f"{flavour}.json"),
        ]
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "tests", "mediapipe_classify.py"),
            pairs[0],
            str(work / "images.npy"),
            *pairs[1:],
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=""),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {f: json.loads((work / f"{f}.json").read_text()) for f in flavours}


@pytest.mark.parametrize("flavour", ["float32", "int8"])
def test_mediapipe_image_classifier(trained, mediapipe_answers, flavour):
    path = str(trained["out"] / trained["info"]["files"][flavour]["path"])
    answers = mediapipe_answers[flavour]
    index = np.array([a["index"] for a in answers])
    assert [a["label"] for a in answers] == [trained["names"][i] for i in index]
    if flavour == "float32":
        np.testing.assert_array_equal(index, trained["keras"])
    else:
        # The same file through LiteRT directly: the same answers; Keras: >= 98 %.
        litert_top1 = litert.TFLiteClassifier(path).predict(trained["pixels"]).argmax(1)
        np.testing.assert_array_equal(index, litert_top1)
        assert (index == trained["keras"]).mean() >= 0.98
