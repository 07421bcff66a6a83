"""Resuming a split read from disk: a late `start_step` reads no record before it.

A real TFDS dataset (TFRecord files, prepared offline from a builder defined here) and a real image
folder, both larger than what is held in memory (the limits are lowered). The reads are counted by
wrapping the reader the pipeline calls.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from helpers import assert_same_batches
from PIL import Image

from keras_bninception.data import pipeline, sources

NUM_TRAIN, NUM_SHARDS, BLOCK, BATCH = 40, 5, 8, 4
EPOCH_STEPS = NUM_TRAIN // BATCH


class ResumeShapes(tfds.core.GeneratorBasedBuilder):
    """40 training images of 3 classes, each a different grey level and size."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(num_classes=3),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(NUM_TRAIN), "test": self._generate_examples(6)}

    def _generate_examples(self, n):
        rng = np.random.default_rng(n)
        for i in range(n):
            pixels = rng.integers(0, 256, (12 + i % 7, 10 + i % 5, 3), dtype=np.uint8)
            yield i, {"image": pixels, "label": i % 3, "file_name": f"shape_{i}.png"}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    builder = tfds.builder("resume_shapes", data_dir=data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(num_shards=NUM_SHARDS)
    )
    assert builder.info.splits["train"].num_shards == NUM_SHARDS
    return data_dir


def _count_calls(monkeypatch, module, name: str) -> list[int]:
    """Wraps `module.name(x)` (a file reader) so that each element it yields adds 1 to a count."""
    count = [0]
    real = getattr(module, name)

    def tick(x):
        count[0] += 1
        return x

    def counted(*args, **kwargs):
        result = real(*args, **kwargs)
        if isinstance(result, tf.data.Dataset):
            return result.map(lambda r: tf.py_function(tick, [r], tf.string))
        return tf.py_function(tick, [result], tf.string)

    monkeypatch.setattr(module, name, counted)
    return count


def _batches(ds, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in ds.take(steps)]


def _read_two_batches(reads: list[int], ds) -> tuple[int, list]:
    """The records read (`_count_calls`' count) while taking two batches of `ds`, and them."""
    reads[0] = 0
    batches = _batches(ds, 2)
    return reads[0], batches


def test_tfrecord_resume_reads_from_its_block_and_equals_the_stream(tfds_dir, monkeypatch):
    monkeypatch.setattr(sources, "_fits_in_memory", lambda num_bytes: False)
    monkeypatch.setattr(pipeline, "SHUFFLE_BUFFER", BLOCK)
    reads = _count_calls(monkeypatch, tf.data, "TFRecordDataset")

    def stream(start_step: int):
        return pipeline.build_dataset(
            "resume_shapes",
            "train",
            data_dir=tfds_dir,
            image_size=32,
            batch_size=BATCH,
            training=True,
            seed=3,
            deterministic=True,
            start_step=start_step,
        )

    full = _batches(stream(0), 3 * EPOCH_STEPS)
    labels = np.concatenate([y for _, y in full]).reshape(3, NUM_TRAIN)
    for epoch in labels:  # every example once per epoch, in another order each epoch
        assert sorted(epoch) == sorted(i % 3 for i in range(NUM_TRAIN))
    assert not np.array_equal(labels[1], labels[2])
    # Step 25: epoch 2, element 20 of it, in the middle of a shuffle block.
    assert_same_batches(_batches(stream(25), 5), full[25:30])

    # A resume 100,000 epochs in reads about what one at step 0 reads: its block's file, not
    # the 4 million records before it.
    first, _ = _read_two_batches(reads, stream(0))
    assert first > 0
    late_reads, late = _read_two_batches(reads, stream(100_000 * EPOCH_STEPS + 5))
    assert late_reads <= first + NUM_TRAIN // NUM_SHARDS + BLOCK, (late_reads, first)
    assert len(late) == 2 and late[0][0].shape == (BATCH, 32, 32, 3)


def _write_folder(root: str, per_class: int) -> None:
    rng = np.random.default_rng(0)
    for label in ("a", "b"):
        os.makedirs(os.path.join(root, "train", label))
        for i in range(per_class):
            pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, "train", label, f"{i}.png"))


def test_image_folder_resume_reads_only_its_batch(tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "IN_MEMORY_MAX_BYTES", 0)  # stream the folder from disk
    per_class = 10
    _write_folder(str(tmp_path), per_class=per_class)
    reads = _count_calls(monkeypatch, tf.io, "read_file")

    def stream(start_step: int):
        return pipeline.build_dataset(
            "image_folder",
            "train",
            data_dir=str(tmp_path),
            image_size=32,
            batch_size=BATCH,
            training=True,
            seed=5,
            deterministic=True,
            start_step=start_step,
        )

    full = _batches(stream(0), 12)
    assert_same_batches(_batches(stream(7), 5), full[7:12])
    first, _ = _read_two_batches(reads, stream(0))
    assert first > 0
    # 2 million epochs in. tf.data reads ahead by an amount that depends on thread timing (two
    # batches of 4 have taken 9 to 24 reads, the most under load), so the slack is two epochs'
    # files; reading the epochs before it would take 40 million reads.
    late_reads, _ = _read_two_batches(reads, stream(10**7))
    assert late_reads <= first + 2 * (2 * per_class), (late_reads, first)


def test_parallel_file_reads_keep_the_sequential_order(tmp_path):
    """The parallel interleave of record files yields exactly their concatenation, so the stream
    stays a function of the element index (what resuming relies on)."""
    files, skips, takes = [], [1, 0, 2, 0, 0, 1, 0, 0, 0, 3, 0], [1, 4, 2, 2, 5, 1, 5, 2, 3, 1, 2]
    for f in range(11):  # more files than the interleave reads at once
        files.append(str(tmp_path / f"{f}.tfrecord"))
        with tf.io.TFRecordWriter(files[-1]) as writer:
            for r in range(3 + (f * 7) % 13):
                writer.write(f"{f}-{r}".encode())
    expected = [
        f"{f}-{r}".encode() for f in range(11) for r in range(skips[f], skips[f] + takes[f])
    ]
    read = pipeline._read_segments(
        tf.constant(files), tf.constant(skips, tf.int64), tf.constant(takes, tf.int64)
    )
    assert pipeline.READ_CYCLE < len(files)
    assert list(read.as_numpy_iterator()) == expected
