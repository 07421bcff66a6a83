"""Throughput of the input pipeline (`keras_bninception.data.build_dataset`), in images/s.

Two modes:

    # The in-memory digits (or any dataset by name), as before:
    .venv/bin/python benchmarks/data_pipeline.py --dataset=digits --image_size=64

    # Generated JPEG TFRecords (a TFDS dataset written here: --images photos of 500x375 with
    # smooth colour fields and noise, JPEG quality 90, in --shards files) read as a streamed
    # split, next to a plain tf.data reader as the anchor, on 1 and 2 tf.data threads:
    .venv/bin/python benchmarks/data_pipeline.py --tfrecords

The anchor is what a plain `tf.data` ImageNet reader does: `TFRecordDataset(files,
num_parallel_reads=AUTOTUNE)`, parse, `decode_jpeg`, resize to the input size, batch, prefetch.
The pipeline is timed for evaluation (central crop, resize: the anchor's work plus the header and
decoding checks) and for training (distorted crop, flip, colour: more work than the anchor, so it
is also compared with the anchor doing the same training preprocessing after a shuffle buffer).
Each configuration gets a private tf.data thread pool of `--threads` threads
(`Options.threading.private_threadpool_size`, one thread per op inside), so images/s per core
is the rate at 1 thread; each timing uses a fresh iterator, alone, and the configurations
alternate within each repeat so that the machine's load (shared, noisy) falls on all alike.
Prints the CPU's model and flags, the median images/s of each, and each pipeline's ratio to the
anchor at the same thread count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_datasets as tfds  # noqa: E402

from benchmarks.machine import cpu_description  # noqa: E402
from keras_bninception import data  # noqa: E402
from keras_bninception.data import sources  # noqa: E402


class BenchJpegs(tfds.core.GeneratorBasedBuilder):
    """Generated photos: smooth random colour fields with noise, JPEG, 10 classes."""

    VERSION = tfds.core.Version("1.0.0")
    NUM_IMAGES = 512

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        # (A small test split: a dataset has an evaluation split.)
        return {
            "train": self._generate_examples(self.NUM_IMAGES),
            "test": self._generate_examples(64),
        }

    def _generate_examples(self, n):
        from PIL import Image

        rng = np.random.default_rng(n)
        for i in range(n):
            coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            field = np.asarray(Image.fromarray(coarse).resize((500, 375), Image.BILINEAR))
            noise = rng.normal(0, 12, field.shape)
            pixels = np.clip(field + noise, 0, 255).astype(np.uint8)
            yield i, {"image": pixels, "label": i % 10}


def prepare(data_dir: str, images: int, shards: int) -> tuple[str, list[str]]:
    """Writes the generated dataset once; returns (its TFDS name, its record files)."""
    BenchJpegs.NUM_IMAGES = images
    builder = tfds.builder("bench_jpegs", data_dir=data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(num_shards=shards)
        )
    files = [os.fspath(f.filename) for f in builder.info.splits["train"].file_instructions]
    return "bench_jpegs", files


def anchor(
    files: list[str], image_size: int, batch_size: int, augment: bool = False
) -> tf.data.Dataset:
    """A plain tf.data reader: interleaved files, parse, decode, resize, batch.

    `augment`: the same reader with a 10,000-record shuffle buffer and the pipeline's own
    training preprocessing (`decode_and_preprocess_for_train`) instead of decode + resize: the
    same work as `build_dataset(training=True)`, without its ordering, resume and checks.
    """
    from keras_bninception.data import preprocessing

    spec = {
        "image": tf.io.FixedLenFeature([], tf.string),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }

    def parse(index, record):
        example = tf.io.parse_single_example(record, spec)
        if augment:
            seed = tf.stack([tf.constant(0, tf.int64), index])
            image = preprocessing.decode_and_preprocess_for_train(
                example["image"], image_size, seed
            )
        else:
            image = tf.io.decode_jpeg(example["image"], channels=3)
            image = tf.image.resize(image, [image_size, image_size]) / 127.5 - 1.0
        return image, tf.cast(example["label"], tf.int32)

    ds = tf.data.TFRecordDataset(files, num_parallel_reads=tf.data.AUTOTUNE)
    if augment:
        ds = ds.shuffle(10_000, seed=0)
    ds = ds.repeat().enumerate().map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def with_threads(ds: tf.data.Dataset, threads: int) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = threads
    options.threading.max_intra_op_parallelism = 1
    return ds.with_options(options)


def time_batches(iterator, batches: int, batch_size: int) -> float:
    start = time.perf_counter()
    for _ in range(batches):
        images, _ = next(iterator)
    images.numpy()
    return batches * batch_size / (time.perf_counter() - start)


def measure(ds: tf.data.Dataset, args: argparse.Namespace) -> float:
    """images/s of a fresh iterator of `ds` after `--warmup` batches, alone on the machine.

    Each measurement has its own iterator, destroyed afterwards: an iterator left alive would
    keep filling its prefetch buffers while the next configuration is timed (taking CPU from it,
    and serving its own next timing from the buffer).
    """
    from keras_bninception.training.trainer import release_in_background

    iterator = iter(ds)
    for _ in range(args.warmup):
        next(iterator)
    rate = time_batches(iterator, args.batches, args.batch_size)
    release_in_background([iterator])  # (stops it now; the join of its threads waits there)
    return rate


def run_tfrecords(args: argparse.Namespace) -> None:
    data_dir = args.data_dir or os.path.join(tempfile.gettempdir(), "bninception_bench_jpegs")
    name, files = prepare(data_dir, args.images, args.shards)
    sources.IN_MEMORY_MAX_BYTES = 0  # read the split as TFRecords, as ImageNet is read
    print(cpu_description())
    print(
        f"{args.images} generated JPEGs (500x375) in {len(files)} TFRecord files, "
        f"{args.image_size}x{args.image_size}, batch {args.batch_size}, {args.batches} batches "
        f"per timing, {args.repeats} repeats, median images/s:"
    )
    for threads in args.threads:
        pipelines = {
            "anchor (plain tf.data)": anchor(files, args.image_size, args.batch_size),
            "anchor + train augment": anchor(files, args.image_size, args.batch_size, True),
        }
        for mode, training in (("eval", False), ("train", True)):
            pipelines[f"build_dataset {mode}"] = data.build_dataset(
                name,
                "train",
                data_dir=data_dir,
                image_size=args.image_size,
                batch_size=args.batch_size,
                training=training,
                seed=0,
                deterministic=True,
                repeat=True,
            )
        rates: dict[str, list[float]] = {label: [] for label in pipelines}
        for _ in range(args.repeats):
            for label, ds in pipelines.items():
                rates[label].append(measure(with_threads(ds, threads), args))
        base = statistics.median(rates["anchor (plain tf.data)"])
        base_train = statistics.median(rates["anchor + train augment"])
        for label, values in rates.items():
            median = statistics.median(values)
            same_work = f", {median / base_train:.2f}x anchor + augment" if "train" in label else ""
            print(
                f"  {threads} thread(s)  {label:24s} {median:8,.0f} images/s  "
                f"({median / threads:,.0f} per thread)  {median / base:.2f}x anchor{same_work}"
            )


def run_named(args: argparse.Namespace) -> None:
    info = data.get_info(args.dataset, data_dir=args.data_dir)
    training = not args.eval
    ds = data.build_dataset(
        args.dataset,
        info.train_split if training else info.eval_split,
        image_size=args.image_size,
        batch_size=args.batch_size,
        training=training,
        seed=0,
        deterministic=args.deterministic,
        data_dir=args.data_dir,
        repeat=True,
    )
    iterator = iter(ds)
    for _ in range(args.warmup):
        next(iterator)
    rates = []
    for repeat in range(args.repeats):
        rates.append(time_batches(iterator, args.batches, args.batch_size))
        print(f"repeat {repeat}: {rates[-1]:,.0f} images/s")
    print(
        f"{args.dataset} {'eval' if args.eval else 'train'} {args.image_size}x{args.image_size} "
        f"batch {args.batch_size} deterministic={args.deterministic} on {cpu_description()}: "
        f"median {statistics.median(rates):,.0f} images/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tfrecords", action="store_true", help="generated JPEG TFRecords")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--image_size", type=int, default=None, help="default 224 / 64 (digits)")
    parser.add_argument("--batch_size", type=int, default=None, help="default 32 / 64 (digits)")
    parser.add_argument("--eval", action="store_true", help="time the evaluation pipeline")
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("--warmup", type=int, default=None, help="default 5 / 20")
    parser.add_argument("--batches", type=int, default=None, help="default 25 / 200")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--images", type=int, default=512, help="--tfrecords: images written")
    parser.add_argument("--shards", type=int, default=16, help="--tfrecords: record files")
    parser.add_argument(
        "--threads", type=int, nargs="+", default=[1, 2], help="--tfrecords: thread counts"
    )
    args = parser.parse_args()
    records = args.tfrecords
    args.image_size = args.image_size or (224 if records else 64)
    args.batch_size = args.batch_size or (32 if records else 64)
    args.warmup = args.warmup if args.warmup is not None else (5 if records else 20)
    args.batches = args.batches or (25 if records else 200)
    (run_tfrecords if records else run_named)(args)


if __name__ == "__main__":
    main()
