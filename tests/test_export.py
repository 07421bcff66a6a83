"""`keras_bninception.export`: SavedModel and TFLite files equal the Keras model; op lists; writes.

One small model (depth multiplier 0.25, 32x32, random BN statistics) is exported once for the
module; each test reads the exported directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import export_helpers as h
import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_bninception import export
from keras_bninception.data import preprocessing
from keras_bninception.data.sources import DIGITS_CONFIG
from keras_bninception.export import litert, metadata, tflite

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = h.small_model(seed=3)
    calibration, _ = h.digits_pixels("train", count=200)
    out = str(tmp_path_factory.mktemp("export") / "out")
    info = export.export(
        model,
        h.CLASS_NAMES,
        out,
        calibration_images=calibration,
        preprocess_config=DIGITS_CONFIG,
        name="digits",
    )
    return model, out, info


@pytest.fixture(scope="module")
def images():
    digits, _ = h.digits_pixels("test", count=24)
    return {"random": h.random_pixels(8, seed=5), "digits": digits}


def _tflite(out: str, flavour: str) -> bytes:
    with open(os.path.join(out, f"digits_{flavour}.tflite"), "rb") as f:
        return f.read()


def test_layout_and_export_json(exported):
    _, out, info = exported
    names = sorted(os.listdir(out))
    assert names == [
        "digits_float16.tflite",
        "digits_float32.tflite",
        "digits_int8.tflite",
        "export.json",
        "labels.txt",
        "saved_model",
    ]
    with open(os.path.join(out, "labels.txt")) as f:
        assert f.read().splitlines() == h.CLASS_NAMES
    with open(os.path.join(out, "export.json")) as f:
        assert json.load(f) == json.loads(json.dumps(info))
    assert info["image_size"] == h.IMAGE_SIZE and info["num_classes"] == 10
    for flavour in ("float32", "float16", "int8"):
        entry = info["files"][flavour]
        assert entry["bytes"] == os.path.getsize(os.path.join(out, entry["path"]))
        assert entry["io"]["input"]["shape"] == [1, h.IMAGE_SIZE, h.IMAGE_SIZE, 3]
    # float16 halves the weights.
    assert info["files"]["float16"]["bytes"] < 0.6 * info["files"]["float32"]["bytes"]
    assert info["files"]["int8"]["io"]["input"] == {
        "name": info["files"]["int8"]["io"]["input"]["name"],
        "shape": [1, h.IMAGE_SIZE, h.IMAGE_SIZE, 3],
        "dtype": "uint8",
        "scale": 1.0,
        "zero_point": 0,
    }
    assert info["files"]["int8"]["io"]["output"]["dtype"] == "uint8"
    assert info["files"]["int8"]["calibration_images"] == 200
    assert info["skipped"] == {}
    for flavour in ("float32", "float16", "int8"):
        assert info["files"][flavour]["signatures"] == {
            "serving_default": {"inputs": ["images"], "outputs": ["probabilities"]}
        }


# Keras vs each file: the tolerances of test_saved_model_and_tflite_equal_keras and
# test_int8_file_is_quantized_and_close.
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "int8": 0.2}


@pytest.mark.parametrize("flavour", ["float32", "float16", "int8"])
def test_signature_runner_equals_invoke_and_keras(exported, images, flavour):
    # What an app calls: LiteRT's signature runner (Android: Interpreter.runSignature) by the
    # names `serving_default`, `images`, `probabilities`, on the file as written.
    from ai_edge_litert.interpreter import Interpreter

    model, out, _ = exported
    path = os.path.join(out, f"digits_{flavour}.tflite")
    signed = Interpreter(model_path=path)
    assert signed.get_signature_list() == {
        "serving_default": {"inputs": ["images"], "outputs": ["probabilities"]}
    }
    runner = signed.get_signature_runner("serving_default")
    plain = litert.TFLiteClassifier(path)
    pixels = np.round(np.concatenate([images["random"][:3], images["digits"][:3]]))
    scale, zero_point = runner.get_output_details()["probabilities"]["quantization"]
    for image, expected in zip(pixels, h.keras_probabilities(model, pixels), strict=True):
        tensor = plain.prepare(image)
        answer = runner(images=tensor)["probabilities"]
        assert answer.shape == (1, 10)
        plain.interpreter.set_tensor(plain.interpreter.get_input_details()[0]["index"], tensor)
        plain.interpreter.invoke()
        raw = plain.interpreter.get_tensor(plain.interpreter.get_output_details()[0]["index"])
        np.testing.assert_array_equal(answer, raw)
        if flavour == "int8":
            answer = (answer.astype(np.float32) - zero_point) * scale
        np.testing.assert_allclose(answer[0], expected, atol=TOLERANCE[flavour], rtol=0)


def test_default_formats_skip_int8_without_calibration():
    resolve = export.exporter.resolve_formats
    size = h.IMAGE_SIZE
    pixels = np.full((200, size, size, 3), 128.0, np.float32)
    assert resolve(None, None, size) == (
        ("saved_model", "float32", "float16"),
        None,
        {"int8": "no calibration images"},
    )
    formats, calibration, skipped = resolve(None, pixels, size)
    assert formats == export.FORMATS and calibration is pixels and skipped == {}
    # A callable is called only if int8 is written; one that cannot deliver skips int8 by
    # default (e.g. a run whose training data was removed) and fails when int8 was asked for.
    calls = []

    def gone():
        calls.append(1)
        raise ValueError("image folder /data/photos is missing or unreadable")

    formats, calibration, skipped = resolve(None, gone, size)
    assert formats == export.DEFAULT_FORMATS and calibration is None and len(calls) == 1
    assert skipped == {
        "int8": "calibration images cannot be read: image folder /data/photos is missing or "
        "unreadable"
    }
    assert resolve(("saved_model", "float32"), gone, size) == (("saved_model", "float32"), None, {})
    assert len(calls) == 1
    with pytest.raises(export.ExportError, match="cannot be read: image folder"):
        resolve(("float32", "int8"), gone, size)
    _, _, skipped = resolve(None, lambda: pixels[:10], size)
    assert skipped == {"int8": "The int8 format needs at least 200 calibration images; received 10"}
    # Images given as an array, or int8 named in `formats`, are checked as asked.
    with pytest.raises(export.ExportError, match="at least 200 calibration images; received 10"):
        resolve(None, pixels[:10], size)
    with pytest.raises(
        export.ExportError, match="calibration images .pixels 0..255.; received none"
    ):
        resolve(("int8",), None, size)


@pytest.mark.parametrize("kind", ["random", "digits"])
def test_saved_model_and_tflite_equal_keras(exported, images, kind):
    model, out, _ = exported
    pixels = images[kind]
    expected = h.keras_probabilities(model, pixels)
    loaded = tf.saved_model.load(os.path.join(out, "saved_model"))
    answer = loaded.signatures["serving_default"](images=tf.constant(pixels))
    np.testing.assert_allclose(answer["probabilities"].numpy(), expected, atol=1e-4, rtol=0)
    top5 = np.argsort(-expected, axis=1)[:, :5]
    np.testing.assert_array_equal(answer["class_ids"].numpy()[:, 0], top5[:, 0])
    names = answer["class_names"].numpy().astype(str)
    np.testing.assert_array_equal(names, np.array(h.CLASS_NAMES)[answer["class_ids"].numpy()])
    float32 = litert.TFLiteClassifier(_tflite(out, "float32")).predict(pixels)
    np.testing.assert_allclose(float32, expected, atol=1e-4, rtol=0)
    float16 = litert.TFLiteClassifier(_tflite(out, "float16")).predict(pixels)
    np.testing.assert_allclose(float16, expected, atol=1e-2, rtol=0)
    assert np.abs(float16 - expected).max() > 0  # really float16 weights


def test_int8_file_is_quantized_and_close(exported, images):
    model, out, _ = exported
    pixels = np.round(images["digits"])
    expected = h.keras_probabilities(model, pixels)
    int8 = litert.TFLiteClassifier(_tflite(out, "int8")).predict(pixels)
    assert np.abs(int8 - expected).max() < 0.2  # an untrained model: only a sanity bound here
    assert np.all((int8 * 256).round() == int8 * 256)  # outputs are multiples of 1/256


def test_op_lists(exported):
    _, out, _ = exported
    for flavour in ("float32", "float16", "int8"):
        ops = tflite.op_list(_tflite(out, flavour))
        assert not [op for op in ops if op.startswith("Flex") or op == "CUSTOM"]
        convs = [i for i, op in enumerate(ops) if op in ("CONV_2D", "DEPTHWISE_CONV_2D")]
        assert ops[convs[0]] == "DEPTHWISE_CONV_2D"
        assert ops.count("CONV_2D") == 69  # every 1x1/3x3 convolution, BN folded in
        after = [op for op in ops[convs[0] :] if op in ("MUL", "ADD", "SUB")]
        assert after == [], flavour
        before = [op for op in ops[: convs[0]] if op in ("MUL", "ADD", "SUB")]
        # Only the int8 file normalizes its input itself (x / 127.5 - 1: one MUL, one ADD).
        assert sorted(before) == (["ADD", "MUL"] if flavour == "int8" else [])
    assert "DEQUANTIZE" in tflite.op_list(_tflite(out, "float16"))


def test_check_ops_rejects_an_unfolded_affine_map():
    # A per-channel affine map after a convolution that feeds a concatenation cannot be folded.
    inputs = keras.Input((16, 16, 3), batch_size=1)
    x = keras.layers.SeparableConv2D(8, 3, padding="same")(inputs)
    x = keras.layers.Concatenate()([x, keras.layers.Rescaling(2.0, offset=0.5)(x)])
    content = tflite.convert(keras.Model(inputs, x), "float32")
    with pytest.raises(tflite.ExportCheckError, match="not folded"):
        tflite.check_ops(content, "float32")


def test_serve_image_bytes_without_keras_bninception(exported, tmp_path):
    model, out, _ = exported
    digits, _ = h.digits_pixels("test", count=6)
    encoded = [tf.io.encode_png(d.round().astype(np.uint8)).numpy() for d in digits[:4]]
    photo = h.random_pixels(2, seed=9, image_size=48).round().astype(np.uint8)
    encoded += [tf.io.encode_jpeg(p, quality=95).numpy() for p in photo]
    np.save(tmp_path / "bytes.npy", np.array(encoded, dtype=object), allow_pickle=True)
    script = f"""
import sys, json
sys.modules["keras_bninception"] = None  # the SavedModel must not need this package
import numpy as np, tensorflow as tf
try:
    import keras_bninception  # noqa
    raise SystemExit("keras_bninception importable")
except ImportError:
    pass
encoded = np.load({str(tmp_path / "bytes.npy")!r}, allow_pickle=True)
loaded = tf.saved_model.load({os.path.join(out, "saved_model")!r})
answer = loaded.signatures["serve_image_bytes"](image_bytes=tf.constant(list(encoded)))
np.save({str(tmp_path / "answer.npy")!r}, answer["probabilities"].numpy())
import keras
layer = keras.layers.TFSMLayer({os.path.join(out, "saved_model")!r},
                               call_endpoint="serving_default")
print(json.dumps({{"names": answer["class_names"].numpy()[:, 0].astype(str).tolist(),
                  "layer": np.asarray(layer(tf.zeros([1, 32, 32, 3]))["probabilities"]).shape}}))
"""
    env = dict(os.environ, PYTHONPATH="", TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = json.loads(result.stdout.strip().splitlines()[-1])
    assert printed["layer"] == [1, 10]
    served = np.load(tmp_path / "answer.npy")
    # The same evaluation preprocessing in Python, then the Keras model.
    x = np.stack(
        [
            preprocessing.decode_and_preprocess_for_eval(
                tf.constant(e), h.IMAGE_SIZE, DIGITS_CONFIG
            )
            for e in encoded
        ]
    )
    expected = np.asarray(keras.ops.softmax(model(x, training=False), axis=-1))
    np.testing.assert_allclose(served, expected, atol=1e-4, rtol=0)
    assert printed["names"] == [h.CLASS_NAMES[i] for i in expected.argmax(1)]


def test_saved_model_cli(exported, tmp_path):
    _, out, _ = exported
    np.save(tmp_path / "x.npy", np.full((1, 32, 32, 3), 128.0, np.float32))
    cli = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    path = os.path.join(out, "saved_model")
    commands = {
        "show": [cli, "show", "--dir", path, "--all"],
        "run": [
            cli,
            "run",
            "--dir",
            path,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"images={tmp_path / 'x.npy'}",
        ],
    }
    # Both at once (each spends most of its time importing TensorFlow).
    processes = {
        name: subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name, argv in commands.items()
    }
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        results[name] = (process.returncode, stdout, stderr)
    returncode, shown, stderr = results["show"]
    assert returncode == 0, stderr[-2000:]
    for text in ("serving_default", "serve_image_bytes", "probabilities", "class_names"):
        assert text in shown
    returncode, ran, stderr = results["run"]
    assert returncode == 0, stderr[-2000:]
    assert "class_names" in ran


def test_atomic_write_and_overwrite(exported, tmp_path):
    model, _, _ = exported
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(export.ExportError, match="already exists"):
        export.export(model, h.CLASS_NAMES, str(out), formats="float32")
    assert os.listdir(out) == ["keep.txt"]
    # A failing export (too few calibration images) leaves neither output nor temporary files.
    with pytest.raises(export.ExportError, match="at least 200"):
        export.export(
            model,
            h.CLASS_NAMES,
            str(out),
            formats="int8",
            calibration_images=np.zeros((10, 32, 32, 3)),
            overwrite=True,
        )
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(out) == ["keep.txt"]
    export.export(model, h.CLASS_NAMES, str(out), formats="float32", overwrite=True)
    assert sorted(os.listdir(out)) == ["bninception_float32.tflite", "export.json", "labels.txt"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_bad_arguments(exported, tmp_path):
    model, _, _ = exported
    with pytest.raises(export.ExportError, match=r"subset of saved_model,float32,float16,int8"):
        export.export(model, h.CLASS_NAMES, str(tmp_path / "a"), formats="float32,tpu")
    with pytest.raises(ValueError, match="name each of the model's 10 classes"):
        export.export(model, h.CLASS_NAMES[:9], str(tmp_path / "b"), formats="float32")
    with pytest.raises(export.ExportError, match="needs at least 200 calibration"):
        export.export(model, h.CLASS_NAMES, str(tmp_path / "c"), formats="int8")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flavour", ["float32", "float16", "int8"])
def test_metadata_reads_back(exported, flavour):
    # MediaPipe's Python code generated from metadata_schema.fbs: an independent reader.
    fb = pytest.importorskip("mediapipe.tasks.metadata.metadata_schema_py_generated")
    _, out, _ = exported
    content = _tflite(out, flavour)
    buffer = metadata.metadata_buffer(content)
    assert fb.ModelMetadata.ModelMetadataBufferHasIdentifier(buffer, 0)
    model = fb.ModelMetadataT.InitFromPackedBuf(buffer, 0)
    assert model.name == f"digits_{flavour}".encode() and model.minParserVersion == b"1.0.0"
    (subgraph,) = model.subgraphMetadata
    (image,) = subgraph.inputTensorMetadata
    assert image.content.contentPropertiesType == fb.ContentProperties.ImageProperties
    assert image.content.contentProperties.colorSpace == fb.ColorSpaceType.RGB
    if flavour == "int8":
        assert not image.processUnits
        assert (list(image.stats.min), list(image.stats.max)) == ([0.0], [255.0])
    else:
        (unit,) = image.processUnits
        assert unit.optionsType == fb.ProcessUnitOptions.NormalizationOptions
        assert (list(unit.options.mean), list(unit.options.std)) == ([127.5], [127.5])
        assert (list(image.stats.min), list(image.stats.max)) == ([-1.0], [1.0])
    (probability,) = subgraph.outputTensorMetadata
    assert probability.content.contentPropertiesType == fb.ContentProperties.FeatureProperties
    (labels,) = probability.associatedFiles
    assert labels.name == b"labels.txt"
    assert labels.type == fb.AssociatedFileType.TENSOR_AXIS_LABELS
    packed = metadata.packed_files(content)
    assert list(packed) == ["labels.txt"]
    assert packed["labels.txt"].decode().splitlines() == h.CLASS_NAMES
