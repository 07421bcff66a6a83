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

from keras_bninception.data import pipeline, preprocessing, sources

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


def _record_split(tmp_path) -> tuple[sources.RecordSplit, list[str]]:
    """Two record files of (encoded image, label, file name): two good images, one file that is
    not an image and one truncated JPEG."""
    import io

    def encoded(fmt: str, grey: int) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(np.full((20, 24, 3), grey, np.uint8)).save(buffer, format=fmt)
        return buffer.getvalue()

    items = [
        ("good.png", encoded("PNG", 40)),
        ("notes.jpg", b"not an image at all"),
        ("cut.jpg", encoded("JPEG", 90)[:200]),
        ("good.jpg", encoded("JPEG", 200)),
    ]
    files = [str(tmp_path / f"{f}.tfrecord") for f in range(2)]
    for f, file in enumerate(files):
        with tf.io.TFRecordWriter(file) as writer:
            for name, contents in items[2 * f : 2 * f + 2]:
                feature = {
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[contents])),
                    "name": tf.train.Feature(bytes_list=tf.train.BytesList(value=[name.encode()])),
                }
                writer.write(
                    tf.train.Example(
                        features=tf.train.Features(feature=feature)
                    ).SerializeToString()
                )
    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "name": tf.io.FixedLenFeature([], tf.string),
    }

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        return example["image"], tf.constant(0, tf.int32), example["name"]

    split = sources.RecordSplit(
        shards=lambda n, p: [(file, 0, 2) for file in files], parse=parse, num_examples=4
    )
    return split, [name for name, _ in items]


@pytest.mark.parametrize("skip", [False, True], ids=["stop", "skip"])
def test_corrupt_records_are_named_or_skipped(tmp_path, skip):
    split, names = _record_split(tmp_path)
    plan = pipeline._Plan(
        split="train",
        image_size=32,
        training=False,
        seed=0,
        repeat=False,
        start=0,
        num_pipelines=1,
        pipeline_id=0,
        skip_corrupt_images=skip,
        config=preprocessing.DEFAULT_CONFIG,
    )
    ds = pipeline._decoded(pipeline._record_stream(split, plan), plan, split.parse)
    if not skip:
        with pytest.raises(tf.errors.InvalidArgumentError, match=r"corrupt image file.*notes\.jpg"):
            list(ds)
        return
    images = [image for image, _ in ds.as_numpy_iterator()]
    assert len(images) == 2
    np.testing.assert_allclose(images[0], 40 / 127.5 - 1, atol=1e-5)  # good.png, then good.jpg
    assert abs(images[1].mean() - (200 / 127.5 - 1)) < 0.02
    assert {"notes.jpg", "cut.jpg"} <= set(pipeline.skipped_corrupt_images())
