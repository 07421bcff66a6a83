"""`python -m trainers.classify` / `keras_bninception.classify`: every form of one model agrees.

One small model (depth multiplier 0.25, 32x32, 10 digit classes, random BN statistics) is kept
once in each form a user has (module-scoped fixture): a training run's `model_dir` (its
config.json and a checkpoint, as the trainer writes them), a `.keras` file, and an export of that
run by the exporter (SavedModel, float32 .tflite). The image is a real photograph that ships with
scikit-learn (a dependency). The weights="imagenet" default is tested in test_weights_imagenet.py.
"""

from __future__ import annotations

import json
import os

import export_helpers as h
import helpers
import numpy as np
import pytest
import sklearn.datasets
import tensorflow as tf

from keras_bninception import classify, export
from keras_bninception.data import preprocessing
from keras_bninception.export import sources as export_sources
from keras_bninception.training import TrainConfig, build_model
from keras_bninception.training.run_config import save_run_config

PHOTO = os.path.join(os.path.dirname(sklearn.datasets.__file__), "images", "china.jpg")


@pytest.fixture(scope="module")
def forms(tmp_path_factory):
    root = tmp_path_factory.mktemp("forms")
    config = TrainConfig().replace(
        dataset="digits", image_size=h.IMAGE_SIZE, depth_multiplier=0.25, model_dir=str(root)
    )
    model = build_model(config, len(h.CLASS_NAMES))
    donor = h.small_model(seed=2)  # random BN statistics: outputs that differ between classes
    for target, value in zip(model.weights, donor.weights, strict=True):
        target.assign(value)
    run_dir = str(root / "run")
    save_run_config(run_dir, config, h.CLASS_NAMES)
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model), os.path.join(run_dir, "checkpoints"), max_to_keep=1
    )
    manager.save(checkpoint_number=7)
    keras_file = str(root / "small.keras")
    model.save(keras_file)
    source = export_sources.from_model_dir(run_dir, calibrate=False)
    export_dir = str(root / "export")
    export.export(
        source.model,
        source.class_names,
        export_dir,
        formats="saved_model,float32",
        preprocess_config=source.preprocess_config,
        name="small",
    )
    return {
        "model": model,
        "run_preprocess": source.preprocess_config,
        "model_dir": run_dir,
        "keras": keras_file,
        "saved_model": os.path.join(export_dir, "saved_model"),
        "tflite": os.path.join(export_dir, "small_float32.tflite"),
    }


def _direct(model, config: preprocessing.PreprocessConfig) -> np.ndarray:
    """The model's softmax on the photo, preprocessed here, without the classify module."""
    with open(PHOTO, "rb") as f:
        x = preprocessing.decode_and_preprocess_for_eval(
            tf.constant(f.read()), h.IMAGE_SIZE, config
        )
    logits = model(x[None], training=False)
    return tf.nn.softmax(logits)[0].numpy()


def test_every_form_gives_the_same_top_k(forms):
    classifiers = {
        "model_dir": classify.from_model_dir(forms["model_dir"]),
        "saved_model": classify.from_saved_model(forms["saved_model"]),
        "tflite": classify.from_tflite(forms["tflite"]),
    }
    # The exporter's .tflite files have a serving_default signature: classify runs it by name,
    # as an app would (get_signature_runner / Android's runSignature).
    from ai_edge_litert.interpreter import Interpreter

    assert "serving_default" in Interpreter(model_path=forms["tflite"]).get_signature_list()
    expected = _direct(forms["model"], forms["run_preprocess"])
    order = list(np.argsort(-expected)[:5])
    assert expected[order[0]] - expected[order[4]] > 1e-3  # a ranking worth comparing
    for form, classifier in classifiers.items():
        assert classifier.class_names == h.CLASS_NAMES, form  # from the run / labels / metadata
        results, failures = classify.classify_files(classifier, [PHOTO], k=5)
        assert failures == {}
        top = results[PHOTO]
        assert [p.class_id for p in top] == order, form
        assert [p.label for p in top] == [h.CLASS_NAMES[i] for i in order], form
        np.testing.assert_allclose(
            [p.probability for p in top], expected[order], atol=1e-4, err_msg=form
        )
    # A .keras file carries no dataset: ImageNet's evaluation preprocessing (central crop).
    keras_top = classify.top_k(classify.from_weights(forms["keras"]), open(PHOTO, "rb").read(), 3)
    expected = _direct(forms["model"], preprocessing.DEFAULT_CONFIG)
    assert [p.class_id for p in keras_top] == list(np.argsort(-expected)[:3])
    assert [p.label for p in keras_top] == [str(p.class_id) for p in keras_top]  # no names in it
    np.testing.assert_allclose(
        [p.probability for p in keras_top], np.sort(expected)[::-1][:3], atol=1e-5
    )


def test_unreadable_images_are_named_and_the_others_classified(forms, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really a jpeg")
    missing = str(tmp_path / "missing.png")
    classifier = classify.from_tflite(forms["tflite"])
    results, failures = classify.classify_files(classifier, [missing, PHOTO, str(broken)], k=2)
    assert list(results) == [PHOTO] and len(results[PHOTO]) == 2
    assert failures[missing] == "No such file or directory"
    assert failures[str(broken)].startswith("not a JPEG, PNG, GIF or BMP image")
    assert "{{" not in failures[str(broken)]


def test_text_and_json_output():
    top = [classify.Prediction(3, "digit 3", 0.5), classify.Prediction(1, "digit 1", 0.25)]
    assert classify.format_text({"a.jpg": top}) == (
        "a.jpg\n  0.5000  digit 3 (3)\n  0.2500  digit 1 (1)"
    )
    document = json.loads(classify.format_json({"a.jpg": top}, {"b.jpg": "gone"}, "tflite x"))
    assert document == {
        "model": "tflite x",
        "results": [
            {
                "image": "a.jpg",
                "predictions": [
                    {"class_id": 3, "label": "digit 3", "probability": 0.5},
                    {"class_id": 1, "label": "digit 1", "probability": 0.25},
                ],
            }
        ],
        "errors": [{"image": "b.jpg", "error": "gone"}],
    }


def test_bad_sources_are_one_clear_error(forms, tmp_path):
    with pytest.raises(ValueError, match=r"`--weights` '.*nope.ckpt' does not exist; it must be"):
        classify.from_weights(str(tmp_path / "nope.ckpt"))
    with pytest.raises(
        ValueError, match=r"is a training run's --model_dir .*; it must be a TF-slim"
    ):
        classify.from_weights(forms["model_dir"])
    with pytest.raises(ValueError, match=r"--saved_model must be a SavedModel directory"):
        classify.from_saved_model(str(tmp_path))
    not_tflite = tmp_path / "x.tflite"
    not_tflite.write_bytes(b"nothing")
    with pytest.raises(ValueError, match=r"x.tflite is not a TFLite model"):
        classify.from_tflite(str(not_tflite))


@pytest.mark.slow
def test_binary_json_errors_and_exit_status(forms, tmp_path):
    missing = str(tmp_path / "missing.jpg")
    result = helpers.run_python(
        [
            "-m",
            "trainers.classify",
            f"--tflite={forms['tflite']}",
            "--json",
            "--top_k=3",
            PHOTO,
            missing,
        ],
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    document = json.loads(result.stdout)
    assert [r["image"] for r in document["results"]] == [PHOTO]
    assert len(document["results"][0]["predictions"]) == 3
    assert document["errors"] == [{"image": missing, "error": "No such file or directory"}]
    assert helpers.error_lines(result.stderr) == [
        f"error: cannot classify {missing}: No such file or directory"
    ]


def test_binary_takes_at_most_one_source(forms):
    from trainers import classify as binary

    binary.FLAGS.unparse_flags()
    binary.FLAGS(["classify", f"--tflite={forms['tflite']}", f"--model_dir={forms['model_dir']}"])
    try:
        with pytest.raises(classify.ClassifyError) as error:
            binary.load_classifier()
    finally:
        binary.FLAGS.unparse_flags()
    assert str(error.value) == (
        "Give at most one model: --weights, --model_dir, --saved_model or --tflite (none: "
        "the ImageNet weights); received --model_dir, --tflite"
    )


def test_entry_point_is_declared():
    import tomllib

    with open(os.path.join(helpers.REPO_ROOT, "pyproject.toml"), "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["bninception-classify"] == "trainers.classify:run"
