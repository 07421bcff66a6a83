"""keras_bninception.imagenet_utils: offline decode_predictions and [-1, 1] preprocess_input."""

import hashlib
import importlib.resources
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets

from keras_bninception import imagenet_utils

# The MD5 that keras.applications.imagenet_utils.decode_predictions pins (`file_hash=`) for the
# imagenet_class_index.json it downloads.
KERAS_CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"


def test_class_index_is_keras_file():
    path = (
        importlib.resources.files("keras_bninception") / "resources" / "imagenet_class_index.json"
    )
    assert hashlib.md5(path.read_bytes()).hexdigest() == KERAS_CLASS_INDEX_MD5


def test_class_order_matches_tensorflow_datasets():
    labels = (
        pathlib.Path(tensorflow_datasets.__file__).parent
        / "datasets"
        / "imagenet2012"
        / "labels.txt"
    )
    wnids = labels.read_text().split()
    classes = imagenet_utils.imagenet_classes()
    assert [wnid for wnid, _ in classes] == wnids
    assert len(classes) == 1000 and len(set(wnids)) == 1000
    assert classes[0] == ("n01440764", "tench")
    assert classes[999] == ("n15075141", "toilet_tissue")


def test_decode_predictions_1000():
    rng = np.random.default_rng(0)
    preds = rng.uniform(0.0, 0.1, (2, 1000)).astype(np.float32)
    preds[0, [281, 1, 999]] = [0.9, 0.8, 0.7]
    preds[1, 0] = 0.95
    decoded = imagenet_utils.decode_predictions(preds, top=3)
    assert [(w, n) for w, n, _ in decoded[0]] == [
        ("n02123045", "tabby"),
        ("n01443537", "goldfish"),
        ("n15075141", "toilet_tissue"),
    ]
    np.testing.assert_allclose([s for _, _, s in decoded[0]], [0.9, 0.8, 0.7])
    assert decoded[1][0][:2] == ("n01440764", "tench")
    assert len(decoded[1]) == 3
    # Same answer for a tensor input, and the default top=5.
    from_tensor = imagenet_utils.decode_predictions(tf.constant(preds))
    assert [len(r) for r in from_tensor] == [5, 5]
    assert from_tensor[0][:3] == decoded[0]


def test_decode_predictions_1001_drops_background():
    logits = np.zeros((1, 1001), np.float32)
    logits[0, 0] = 100.0  # background: ignored
    logits[0, 1 + 948] = 5.0  # Keras class 948
    logits[0, 1 + 2] = 4.0
    decoded = imagenet_utils.decode_predictions(logits, top=2)
    assert decoded == [
        [("n07742313", "Granny_Smith", 5.0), ("n01484850", "great_white_shark", 4.0)]
    ]


def test_decode_predictions_ties_and_full_ranking():
    preds = np.zeros((1, 1000), np.float32)
    decoded = imagenet_utils.decode_predictions(preds, top=1000)[0]
    assert [name for _, name, _ in decoded[:2]] == ["tench", "goldfish"]
    assert len({w for w, _, _ in decoded}) == 1000


@pytest.mark.parametrize("shape", [(1000,), (2, 999), (2, 1002), (2, 10, 1000)])
def test_decode_predictions_bad_shape(shape):
    with pytest.raises(ValueError, match=r"\(samples, 1000\).*\(samples, 1001\)"):
        imagenet_utils.decode_predictions(np.zeros(shape, np.float32))


@pytest.mark.parametrize("top", [0, -1, 1001, 2.0, True])
def test_decode_predictions_bad_top(top):
    with pytest.raises(ValueError, match=r"integer in \[1, 1000\]"):
        imagenet_utils.decode_predictions(np.zeros((1, 1000), np.float32), top=top)


def test_preprocess_input_range():
    x = np.array([[[[0, 127.5, 255]]]], np.float32)
    np.testing.assert_allclose(imagenet_utils.preprocess_input(x.copy()), [[[[-1.0, 0.0, 1.0]]]])
    uint8 = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1).repeat(3, axis=-1)
    out = imagenet_utils.preprocess_input(uint8)
    assert out.dtype == np.float32
    assert out.min() == -1.0 and out.max() == 1.0
    np.testing.assert_allclose(out, uint8.astype(np.float32) / 127.5 - 1.0, rtol=1e-6)
    tensor = imagenet_utils.preprocess_input(tf.constant(uint8, tf.float32), "channels_first")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(tensor), out, rtol=1e-6)
    keras_out = keras.applications.inception_v3.preprocess_input(uint8.astype(np.float32))
    np.testing.assert_array_equal(out, keras_out)


def test_preprocess_input_bad_data_format():
    with pytest.raises(ValueError, match="channels_first"):
        imagenet_utils.preprocess_input(np.zeros((1, 4, 4, 3)), data_format="NHWC")
