"""The embedded digits dataset through `keras_bninception.data`: splits, pipeline, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_same_batches
from sklearn.datasets import load_digits

from keras_bninception import data
from keras_bninception.data import digits

IMAGE_SIZE = 32


def _batches(n: int, **kwargs) -> list[tuple[np.ndarray, np.ndarray]]:
    args = dict(image_size=IMAGE_SIZE, batch_size=16, training=True, deterministic=True, seed=7)
    args.update(kwargs)
    ds = data.build_dataset("digits", "train", **args)
    return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def test_info_and_split_sizes():
    info = data.get_info("digits")
    assert info == data.DatasetInfo(
        name="digits",
        num_classes=10,
        train_split="train",
        eval_split="test",
        num_train_examples=1437,
        num_eval_examples=360,
        flip_changes_label=True,
        class_names=("0", "1", "2", "3", "4", "5", "6", "7", "8", "9"),
    )


def test_held_out_split_is_disjoint_stratified_and_fixed():
    train, test = digits.split_indices("train"), digits.split_indices("test")
    assert not set(train) & set(test)
    assert sorted(np.concatenate([train, test])) == list(range(1797))
    target = load_digits().target
    # Stratified: every class has 20 % (±1 example) of its images in the held-out split.
    for label in range(10):
        total = int(np.sum(target == label))
        held_out = int(np.sum(target[test] == label))
        assert abs(held_out - 0.2 * total) <= 1
    # The arrays are the real bundled images, rescaled from 0..16 to [0, 1].
    images, labels = digits.load_split("test")
    np.testing.assert_array_equal(labels, target[test])
    np.testing.assert_allclose(images[..., 0], load_digits().images[test] / 16.0)


def test_training_batches_shapes_dtypes_range():
    ds = data.build_dataset(
        "digits", "train", image_size=IMAGE_SIZE, batch_size=16, training=True, seed=0
    )
    assert ds.element_spec[0].shape.as_list() == [16, IMAGE_SIZE, IMAGE_SIZE, 3]
    assert ds.cardinality() == tf.data.INFINITE_CARDINALITY  # training repeats forever
    for x, y in ds.take(3):
        assert x.dtype.name == "float32" and y.dtype.name == "int32"
        assert x.shape == (16, IMAGE_SIZE, IMAGE_SIZE, 3) and y.shape == (16,)
        assert -1.0 <= float(np.min(x)) and float(np.max(x)) <= 1.0
        assert float(np.min(x)) == -1.0  # the black background
        np.testing.assert_array_equal(x[..., 0], x[..., 2])  # grey, given 3 channels
        assert set(y.numpy()) <= set(range(10))


def test_same_seed_same_stream_other_seed_differs():
    first, second = _batches(3), _batches(3)
    assert_same_batches(first, second)
    other = _batches(3, seed=8)
    assert not np.array_equal(first[0][1], other[0][1])
    assert not np.array_equal(first[0][0], other[0][0])


@pytest.mark.parametrize("start_step", [1, 5, 92])  # 92 batches of 16 cross the epoch boundary
def test_start_step_equals_skipping_batches(start_step):
    ds = data.build_dataset(
        "digits",
        "train",
        image_size=IMAGE_SIZE,
        batch_size=16,
        training=True,
        seed=3,
        deterministic=True,
    )
    expected = [(x.numpy(), y.numpy()) for x, y in ds.skip(start_step).take(2)]
    resumed = _batches(2, seed=3, start_step=start_step)
    assert_same_batches(expected, resumed)


def test_each_epoch_is_a_fresh_permutation_of_the_train_split():
    train_labels = digits.load_split("train")[1]
    # 1437 = 3 x 479: three batches are exactly one epoch.
    batches = _batches(6, batch_size=479, image_size=32)
    epoch1 = np.concatenate([y for _, y in batches[:3]])
    epoch2 = np.concatenate([y for _, y in batches[3:]])
    for epoch in (epoch1, epoch2):
        np.testing.assert_array_equal(np.bincount(epoch), np.bincount(train_labels))
    assert not np.array_equal(epoch1, epoch2)


def test_evaluation_is_one_ordered_pass_keeping_the_remainder():
    ds = data.build_dataset(
        "digits", "test", image_size=IMAGE_SIZE, batch_size=100, training=False, deterministic=True
    )
    batches = [(x.numpy(), y.numpy()) for x, y in ds]
    assert [len(y) for _, y in batches] == [100, 100, 100, 60]
    assert ds.cardinality() == 4
    np.testing.assert_array_equal(
        np.concatenate([y for _, y in batches]), digits.load_split("test")[1]
    )
    # The evaluation image is the whole digit, upsampled: compare with a plain resize.
    image = digits.load_split("test")[0][0]
    expected = tf.image.resize(image, [IMAGE_SIZE, IMAGE_SIZE]).numpy()[..., 0] * 2.0 - 1.0
    np.testing.assert_allclose(batches[0][0][0, ..., 1], expected, atol=1e-5)
    # Repeated evaluation gives the same batches.
    again = next(iter(ds))[0].numpy()
    np.testing.assert_array_equal(again, batches[0][0])
