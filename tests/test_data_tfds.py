"""TFDS datasets through `keras_bninception.data`, offline: imagenet2012 under `mock_data`."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from helpers import assert_same_batches

from keras_bninception import data
from keras_bninception.data import sources

NUM_EXAMPLES = 12


@pytest.fixture(params=["streaming", "in_memory"])
def mode(request, monkeypatch):
    if request.param == "in_memory":
        # Under mock_data the split sizes are unknown, which means "stream"; force memory.
        monkeypatch.setattr(sources, "_fits_in_memory", lambda num_bytes: True)
    return request.param


@pytest.fixture
def mocked():
    with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
        yield


def test_imagenet2012_info(mocked):
    info = data.get_info("imagenet2012")
    assert info.num_classes == 1000
    # The ClassLabel names: imagenet2012's WordNet ids, in label order.
    assert len(info.class_names) == 1000 and info.class_names[0] == "n01440764"
    assert (info.train_split, info.eval_split) == ("train", "validation")
    assert (info.num_train_examples, info.num_eval_examples) == (NUM_EXAMPLES, NUM_EXAMPLES)
    assert info.flip_changes_label is False


def test_imagenet2012_batches(mocked, mode):
    train = data.build_dataset(
        "imagenet2012", "train", image_size=48, batch_size=5, training=True, seed=2
    )
    batches = [(x.numpy(), y.numpy()) for x, y in train.take(3)]  # past one epoch of 12
    for x, y in batches:
        assert x.shape == (5, 48, 48, 3) and x.dtype == np.float32
        assert y.shape == (5,) and y.dtype == np.int32
        assert x.min() >= -1.0 and x.max() <= 1.0 and x.std() > 0.1  # random noise images
        assert ((0 <= y) & (y < 1000)).all()
    evaluation = data.build_dataset(
        "imagenet2012", "validation", image_size=48, batch_size=5, training=False
    )
    assert [len(y) for _, y in evaluation] == [5, 5, 2]


def test_imagenet2012_deterministic_resume(mocked, mode):
    def stream(seed: int, start_step: int = 0):
        ds = data.build_dataset(
            "imagenet2012",
            "train",
            image_size=32,
            batch_size=4,
            training=True,
            seed=seed,
            deterministic=True,
            start_step=start_step,
        )
        return [(x.numpy(), y.numpy()) for x, y in ds.take(4)]

    full, again, resumed, other = stream(4), stream(4), stream(4, start_step=1), stream(5)
    assert_same_batches(full, again)
    assert_same_batches(full[1:], resumed[:3])
    assert not np.array_equal(full[0][0], other[0][0])


def test_imagenet2012_missing_manual_files(tmp_path):
    # Not mocked: an empty data_dir, no manual download. Fails before any download.
    with pytest.raises(data.DataError) as error:
        data.get_info("imagenet2012", data_dir=str(tmp_path))
    message = str(error.value)
    manual = os.path.join(str(tmp_path), "downloads", "manual")
    assert "\n" not in message
    assert "put ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar" in message
    assert f"in {manual} " in message
    assert message.endswith("missing: ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar")
    # With only the validation tar in an explicit manual_dir, the train tar is named as missing.
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "ILSVRC2012_img_val.tar").write_bytes(b"")
    with pytest.raises(
        data.DataError, match=r"in .*elsewhere .*missing: ILSVRC2012_img_train\.tar$"
    ):
        data.get_info("imagenet2012", data_dir=str(tmp_path), manual_dir=str(other))


def test_unknown_and_non_image_datasets(tmp_path):
    with pytest.raises(
        data.DataError,
        match=r"unknown dataset 'imagenet2013'; choose 'digits'.*"
        r"'image_folder'.*any TFDS image classification dataset name",
    ):
        data.get_info("imagenet2013")
    with pytest.raises(data.DataError, match=r"'iris' is not an image classification dataset"):
        data.get_info("iris", data_dir=str(tmp_path))


def test_flip_is_off_where_it_changes_the_label(mocked):
    assert data.get_info("mnist").flip_changes_label is True
    assert sources.resolve("mnist").preprocess.flip is False
    assert sources.resolve("imagenet2012").preprocess.flip is True
