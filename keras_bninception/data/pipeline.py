"""`build_dataset`: the tf.data input pipeline of training and evaluation.

The stream is a deterministic function of (seed, element index):

- In-memory splits (digits, small image folders, small TFDS datasets) and large image folders (a
  list of files, each read when needed) are indexed directly. Global element g of the training
  stream is example `index_shuffle(g mod N, seed, epoch = g div N)`: a fresh full permutation of
  the split every epoch (the paper shuffles "more thoroughly"), computed per element, so starting
  at step k costs nothing.
- Large TFDS splits are read from their TFRecord files: per epoch, the files in an order keyed by
  (seed, epoch) and blocks of `SHUFFLE_BUFFER` records permuted by (seed, epoch, block). Starting
  at step k skips the files before its block unopened: it reads at most one file and one block,
  whatever k is (`_record_stream`). The files are read by a deterministic parallel interleave
  (several files at once, in the sequential order) and the next block is gathered while the
  current one is served.
- Only datasets that are neither (TFDS formats other than TFRecord, `tfds.testing.mock_data`) are
  one stream with a seeded shuffle buffer, where the skip to step k reads (without decoding) every
  record before it; tf.data combines that shuffle seed with TensorFlow's global seed
  (`tf.random.set_seed`): set the same one (or none) when resuming.

Each element is then decoded and augmented in parallel (`map(num_parallel_calls=AUTOTUNE)`), with
stateless random ops keyed by (seed, g), so its pixels do not depend on the parallelism or on where
the pipeline started; batches are prefetched. `benchmarks/data_pipeline.py --tfrecords` compares
the throughput with a plain tf.data reader (docs/data_pipeline.md). With
`input_context`, pipeline p of n takes global elements g = j * n + p (j = 0, 1, ...): the n
per-replica batches of step k together hold exactly the elements of step k of a single pipeline with
the global batch (for in-memory splits).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
import secrets
import threading

import numpy as np
import tensorflow as tf
from absl import logging

from keras_bninception.data import preprocessing, sources
from keras_bninception.data.errors import (
    CORRUPT_FILE_ASSERTION,
    UNDECODABLE,
    UNDECODABLE_FILE_ASSERTION,
    DataError,
)
from keras_bninception.models.figure5 import MIN_INPUT_SIZE

MAX_IMAGE_SIZE = 2048
MAX_BATCH_SIZE = 65536
SHUFFLE_BUFFER = 10_000  # streamed splits: the TF official ImageNet input pipelines use 10,000
# Cache the preprocessed evaluation images of an in-memory split up to this size.
EVAL_CACHE_MAX_BYTES = 256 * 2**20

_PNG = b"\x89PNG\r\n\x1a\n"
_GIF = b"GIF8"
_BMP = b"BM"
_JPEG_END, _PNG_END, _GIF_END = b"\xff\xd9", b"IEND\xaeB`\x82", b";"
_HEADERS = (b"\xff\xd8\xff", _PNG, _GIF, _BMP)  # how each format's files begin
_ENDINGS = (_JPEG_END, _PNG_END, _GIF_END)  # ... and end (a file cut short does not)


def get_info(
    dataset: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    *,
    validation_split: float = 0.0,
    seed: int | None = None,
) -> sources.DatasetInfo:
    """Describes a dataset: classes, split names and sizes, whether flips change labels.

    Args:
        dataset: `digits`, `image_folder` or a TFDS image-classification dataset name.
        data_dir: TFDS data directory, or the root of an `image_folder`.
        manual_dir: where manually downloaded files are (default `<data_dir>/downloads/manual`).
        validation_split: `image_folder` only: the fraction of each label's images held out as
            the `validation` split (0: none; evaluation is then on `train`, and
            `eval_held_out` is False unless the folder has its own validation split).
        seed: which images `validation_split` holds out (None: 0); the same seed gives the same
            split.

    Returns:
        A frozen `DatasetInfo`; pass it to `build_dataset` instead of the name to use the dataset
        as resolved here (an image folder is then walked and checked once, not once per split
        and pipeline).

    Raises:
        DataError: unknown dataset, missing manual files, empty or unreadable folder.
    """
    return sources.resolve(dataset, data_dir, manual_dir, validation_split, seed).info


def _check_int(name: str, value: object, low: int, high: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise DataError(f"`{name}` must be an integer; received {name}={value!r}")
    if value < low or (high is not None and value > high):
        accepted = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise DataError(f"`{name}` must be {accepted}; received {name}={value}")
    return int(value)


def _element_seeds(seed: int, num_pipelines: int, pipeline_id: int, local_index):
    """(global element index g, its augmentation seed [seed, g])."""
    g = local_index * num_pipelines + pipeline_id
    return g, tf.stack([tf.constant(seed, tf.int64), g])


def _example_index(g, n: int, seed: int, training: bool):
    """The example of a directly indexed split at global element g.

    Training: `index_shuffle(g mod n, seed, epoch = g div n)`, a fresh permutation every epoch;
    evaluation: g mod n.
    """
    position = g % n
    if not training:
        return position
    return tf.random.experimental.index_shuffle(
        position,
        seed=tf.stack([tf.constant(seed, tf.int64), -1 - g // n]),
        max_index=tf.constant(n - 1, tf.int64),
    )


# Record files read at the same time by the parallel interleave (the Model Garden reads 8-64).
READ_CYCLE = 8


def _read_segments(files, skips, takes) -> tf.data.Dataset:
    """The records of each (file, skip, take) segment, in segment order, files read in parallel.

    A deterministic parallel interleave whose block covers a whole segment: its output is exactly
    the concatenation of the segments (what a sequential `flat_map` gives), while up to
    `READ_CYCLE` files are opened and read ahead by tf.data's threads.
    """
    segments = tf.data.Dataset.from_tensor_slices((files, skips, takes))
    longest = tf.reduce_max(tf.concat([takes, [1]], 0))
    return segments.interleave(
        lambda name, skip, take: tf.data.TFRecordDataset(name).skip(skip).take(take),
        cycle_length=READ_CYCLE,
        block_length=longest,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _record_stream(data: sources.RecordSplit, plan: _Plan) -> tf.data.Dataset:
    """(local index, serialized record) of a TFRecord split, from `plan.start`.

    Epoch e of this pipeline's part (N records) reads its files in the order of a permutation
    keyed by (seed, e) and, when training, permutes each block of `SHUFFLE_BUFFER` consecutive
    records by a permutation keyed by (seed, e, block). (TFDS writes its files with the examples
    already shuffled, so each block is a random sample of the split.) The stream is therefore a
    function of the element index: starting at element `start` skips the files that end before
    its block without opening them, reads at most one file's records to reach the block, and one
    block: the cost of a resume does not grow with the step.

    Throughput: the files are read by a parallel interleave (`_read_segments`); the next block is
    gathered in the background while the current one is served (`prefetch(1)` of blocks), so only
    the first block of a pipeline is waited for, as a shuffle buffer is filled once; the stream is
    read ahead of, and its records parsed and decoded in, a parallel map (`_decoded`, with
    `data.parse`).
    """
    shards = data.shards(plan.num_pipelines, plan.pipeline_id)
    files = tf.constant([name for name, _, _ in shards])
    skips = tf.constant([skip for _, skip, _ in shards], tf.int64)
    takes = tf.constant([take for _, _, take in shards], tf.int64)
    n = sum(take for _, _, take in shards)
    if n == 0:
        raise DataError("a streamed split has no examples for this input pipeline")
    shuffle = plan.training
    block = min(SHUFFLE_BUFFER, n) if shuffle else n
    first_epoch, offset = divmod(plan.start, n)
    seed_t = tf.constant(plan.seed, tf.int64)

    def epoch_records(epoch):
        order = tf.range(len(shards), dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.index_shuffle(
                order, seed=tf.stack([seed_t, -1 - epoch]), max_index=len(shards) - 1
            )
        skip, take = tf.gather(skips, order), tf.gather(takes, order)
        ends = tf.cumsum(take)
        first = tf.where(epoch == first_epoch, tf.constant(offset, tf.int64), 0)
        first_block = first // block
        begin = first_block * block if shuffle else first  # reading starts at this record
        i = tf.searchsorted(ends, tf.reshape(begin, [1]), side="right")[0]
        within = begin - (ends[i] - take[i])  # records of file i before `begin`
        extra = tf.one_hot(0, tf.size(order) - i, dtype=tf.int64) * within
        records = _read_segments(tf.gather(files, order)[i:], skip[i:] + extra, take[i:] - extra)
        if shuffle:

            def permute(b, records_of_block):
                size = tf.shape(records_of_block, out_type=tf.int64)[0]
                permutation = tf.random.experimental.index_shuffle(
                    tf.range(size), seed=tf.stack([seed_t, epoch * 2**32 + b]), max_index=size - 1
                )
                return tf.data.Dataset.from_tensor_slices(tf.gather(records_of_block, permutation))

            blocks = tf.data.Dataset.zip(tf.data.Dataset.counter(first_block), records.batch(block))
            records = blocks.prefetch(1).flat_map(permute)
        return records.skip(first - begin)

    epochs = (
        tf.data.Dataset.counter(first_epoch)
        if plan.repeat
        else tf.data.Dataset.range(first_epoch, 1)
    )
    return tf.data.Dataset.zip(tf.data.Dataset.counter(plan.start), epochs.flat_map(epoch_records))


def _signatures(contents: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(whether the file begins as a JPEG, PNG, GIF or BMP does; whether it ends as a JPEG, PNG
    or GIF does), from one cut of the seven places and one comparison: two checks on every element
    for a handful of ops (each op of a tf.data function costs microseconds)."""
    ends = tf.maximum(tf.strings.length(contents) - [len(e) for e in _ENDINGS], 0)
    ends.set_shape([len(_ENDINGS)])  # contents is one file (read files may have no static shape)
    places = tf.concat([tf.zeros([len(_HEADERS)], tf.int32), ends], 0)
    pieces = tf.strings.substr(contents, places, [len(h) for h in _HEADERS + _ENDINGS])
    found = tf.equal(pieces, _HEADERS + _ENDINGS)
    return tf.reduce_any(found[: len(_HEADERS)]), tf.reduce_any(found[len(_HEADERS) :])


def _header_ok(contents: tf.Tensor) -> tf.Tensor:
    return _signatures(contents)[0]


def _checked(
    contents: tf.Tensor, filename: tf.Tensor, header_ok: tf.Tensor | None = None
) -> tf.Tensor:
    """`contents`, once its header says JPEG/PNG/GIF/BMP (`header_ok`, else read here);
    otherwise an error naming the file.

    A cheap check on every element; the in-memory splits of image folders were also fully decoded
    by PIL when they were read, which catches truncated files too.
    """
    ok = _header_ok(contents) if header_ok is None else header_ok
    assertion = tf.debugging.Assert(ok, [CORRUPT_FILE_ASSERTION, filename])
    with tf.control_dependencies([assertion]):
        return tf.identity(contents)


_skipped_lock = threading.Lock()
_skipped_files: set[str] = set()


def skipped_corrupt_images() -> list[str]:
    """The corrupt image files `skip_corrupt_images=True` pipelines of this process skipped."""
    with _skipped_lock:
        return sorted(_skipped_files)


def _skip(problem: str, filename: str) -> None:
    with _skipped_lock:
        new = filename not in _skipped_files
        _skipped_files.add(filename)
    if new:
        logging.warning("Skipping %s (skip_corrupt_images).", problem)


@functools.cache
def _stand_in_png() -> bytes:
    """A valid 8x8 PNG, decoded in place of a file that does not decode (then filtered out or
    reported): the decoding op then never fails, so it needs no branch around it."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _try_decode(decode_fn, contents: tf.Tensor, complete: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(decode_fn(contents), True), or (an image to discard, False) when TensorFlow cannot
    decode the data.

    A file whose header is an image's can still be cut short (an interrupted copy or download) or
    carry extra bytes after its end. A file that ends as an image ends (`complete`, from
    `_signatures`) is taken as decodable; any other is first decoded inside a one-element dataset
    with `ignore_errors`, where a decoding failure becomes `False` (so that the caller can name
    the file) instead of an error. (That costs about a millisecond, so it is kept for these
    files.) The decoding that is kept runs outside the branch, on a stand-in image (preprocessed
    to the output size like any other) when the file does not decode: a branch around the
    decoding itself measured slower on one core (`benchmarks/data_pipeline.py --tfrecords`).
    """

    def attempt():
        return (
            tf.data.Dataset.from_tensors(contents)
            .map(lambda c: (decode_fn(c), tf.constant(True)))
            .ignore_errors()
            .map(lambda _, decoded: decoded)
            .concatenate(tf.data.Dataset.from_tensors(tf.constant(False)))
            .take(1)
            .get_single_element()
        )

    ok = tf.cond(complete, lambda: tf.constant(True), attempt)
    return decode_fn(tf.where(ok, contents, tf.constant(_stand_in_png()))), ok


def _counted_unless(ok: tf.Tensor, filename: tf.Tensor, reason: str) -> tf.Tensor:
    """`ok`; when False, logs and counts the file as a corrupt image (`reason`)."""

    def report():
        def record(name):
            name = name.numpy().decode(errors="replace")
            _skip(f"corrupt image file {name}: {reason}", name)
            return False

        return tf.py_function(record, [filename], tf.bool)

    return tf.cond(ok, lambda: tf.constant(True), report)


def _usable(contents: tf.Tensor, filename: tf.Tensor) -> tf.Tensor:
    """Whether the header is an image's; logs and counts the file when not."""
    return _counted_unless(_header_ok(contents), filename, "not a JPEG, PNG, GIF or BMP file")


@dataclasses.dataclass(frozen=True)
class _Plan:
    """What every builder needs: the checked arguments of `build_dataset`, resolved."""

    split: str
    image_size: int
    training: bool
    seed: int
    repeat: bool
    start: int  # first local element (start_step * batch_size)
    num_pipelines: int
    pipeline_id: int
    skip_corrupt_images: bool
    config: preprocessing.PreprocessConfig

    def element_seeds(self, local_index):
        return _element_seeds(self.seed, self.num_pipelines, self.pipeline_id, local_index)

    def preprocess(self, image, key_seed):
        if self.training:
            return preprocessing.preprocess_for_train(image, self.image_size, key_seed, self.config)
        return preprocessing.preprocess_for_eval(image, self.image_size, self.config)

    def decode_and_preprocess(self, contents, key_seed):
        if self.training:
            return preprocessing.decode_and_preprocess_for_train(
                contents, self.image_size, key_seed, self.config
            )
        return preprocessing.decode_and_preprocess_for_eval(contents, self.image_size, self.config)

    def indices(self, n: int) -> tf.data.Dataset:
        """Local element indices from `start`: forever when repeating, else one pass."""
        if self.repeat:
            return tf.data.Dataset.counter(self.start)  # infinite cardinality
        stop = max(math.ceil((n - self.pipeline_id) / self.num_pipelines), 0)
        return tf.data.Dataset.range(self.start, stop)

    def example_index(self, local_index, n: int):
        """(example of a directly indexed split at this local element, its augmentation seed)."""
        g, key_seed = self.element_seeds(local_index)
        return _example_index(g, n, self.seed, self.training), key_seed


def build_dataset(
    dataset: str | sources.DatasetInfo,
    split: str,
    *,
    image_size: int,
    batch_size: int,
    training: bool,
    seed: int | None = None,
    deterministic: bool = False,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    input_context: tf.distribute.InputContext | None = None,
    repeat: bool | None = None,
    drop_remainder: bool | None = None,
    start_step: int = 0,
    skip_corrupt_images: bool = False,
) -> tf.data.Dataset:
    """Builds the input pipeline of one split.

    Args:
        dataset: `digits`, `image_folder` or a TFDS image-classification dataset name, or the
            `DatasetInfo` of `get_info` (then `data_dir` and `manual_dir` are not used; pass it
            for an image folder's `validation_split`).
        split: split name (see `get_info(...).train_split` / `.eval_split`).
        image_size: side of the square images, in [32, 2048].
        batch_size: batch of THIS pipeline (per replica under `input_context`: pass
            `input_context.get_per_replica_batch_size(global_batch_size)`), in [1, 65536].
        training: shuffle, augment (distorted crop, flip, colour) and, by default, repeat forever
            and drop the last partial batch; otherwise one pass with a central crop, keeping the
            remainder.
        seed: seeds shuffling and augmentation. None: 0 if `deterministic`, else a random seed.
        deterministic: the same seed gives the same batches, in the same order, on every build
            (tf.data's `options.deterministic`); False lets parallel stages reorder elements.
        data_dir: TFDS data directory, or the root of an `image_folder`.
        manual_dir: where manually downloaded files are (default `<data_dir>/downloads/manual`).
        input_context: from `strategy.distribute_datasets_from_function`; this pipeline then
            reads only its shard (elements g with g mod num_input_pipelines == input_pipeline_id).
        repeat: repeat the split forever (default: `training`).
        drop_remainder: drop the last partial batch (default: `training`).
        start_step: begin at batch `start_step` of the stream, e.g. the step a resumed training
            run restarts from. With `deterministic=True` and a seed, the result equals
            `build_dataset(..., start_step=0).skip(start_step)`; no image before it is decoded,
            and none is read (image folders, TFRecord datasets: at most one file and one shuffle
            block of records), whatever `start_step` is.
        skip_corrupt_images: leave out image files that do not decode (each logged once, listed
            by `skipped_corrupt_images()`) instead of stopping with a `DataError` naming the first.

    Returns:
        A `tf.data.Dataset` of (images float32 [B, image_size, image_size, 3] in [-1, 1],
        labels int32 [B]).

    Raises:
        DataError: unknown dataset or split, missing manual files, empty or unreadable folder,
            corrupt image file (named), out-of-range argument.
    """
    image_size = _check_int("image_size", image_size, MIN_INPUT_SIZE, MAX_IMAGE_SIZE)
    batch_size = _check_int("batch_size", batch_size, 1, MAX_BATCH_SIZE)
    start_step = _check_int("start_step", start_step, 0, None)
    if seed is not None:
        seed = _check_int("seed", seed, 0, 2**63 - 1)
    else:
        seed = 0 if deterministic else secrets.randbits(31)
    num_pipelines, pipeline_id = 1, 0
    if input_context is not None:
        num_pipelines = input_context.num_input_pipelines
        pipeline_id = input_context.input_pipeline_id
    if isinstance(dataset, sources.DatasetInfo) and dataset.source is not None:
        source = dataset.source
    else:
        source = sources.resolve(dataset, data_dir, manual_dir)
    plan = _Plan(
        split=split,
        image_size=image_size,
        training=bool(training),
        seed=seed,
        repeat=training if repeat is None else bool(repeat),
        start=start_step * batch_size,
        num_pipelines=num_pipelines,
        pipeline_id=pipeline_id,
        skip_corrupt_images=bool(skip_corrupt_images),
        config=source.preprocess,
    )
    data = source.load(split)
    if isinstance(data, sources.InMemorySplit):
        ds = _in_memory_images(_without_corrupt(data, plan), plan, source.info.name)
    elif isinstance(data, sources.FileListSplit):
        ds = _decoded(_file_list_stream(data, plan, source.info.name), plan)
    elif isinstance(data, sources.RecordSplit):
        ds = _decoded(_record_stream(data, plan), plan, data.parse)
    else:
        ds = _decoded(_single_stream(data, plan), plan)
    drop_remainder = training if drop_remainder is None else bool(drop_remainder)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = bool(deterministic)
    if input_context is not None:
        # The pipeline shards itself: stop tf.distribute from sharding it again. (Without an
        # input_context, `strategy.experimental_distribute_dataset` may auto-shard it by data.)
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def _check_not_empty(n: int, plan: _Plan, name: str) -> None:
    if n == 0:
        raise DataError(f"split {plan.split!r} of dataset {name!r} has no examples")


def _without_corrupt(data: sources.InMemorySplit, plan: _Plan) -> sources.InMemorySplit:
    """`data`, or with `skip_corrupt_images` its files that decode; else a DataError naming one."""
    if not data.corrupt:
        return data
    if not plan.skip_corrupt_images:
        raise DataError(data.corrupt[0][1])
    for index, problem in data.corrupt:
        _skip(problem, str(data.filenames[index]))
    keep = np.setdiff1d(np.arange(data.num_examples), [i for i, _ in data.corrupt])
    return sources.InMemorySplit(
        images=data.images[keep],
        labels=data.labels[keep],
        encoded=data.encoded,
        filenames=data.filenames[keep],
    )


def _in_memory_images(data: sources.InMemorySplit, plan: _Plan, name: str) -> tf.data.Dataset:
    """(image, label) of an in-memory split, indexed directly, decoded in parallel."""
    n = data.num_examples
    _check_not_empty(n, plan, name)
    # Encoded images are an object array of bytes: tf.constant keeps each one exact (a
    # fixed-width numpy bytes array would pad them, and strip trailing NUL bytes).
    images = tf.constant(data.images)
    labels = tf.constant(data.labels, tf.int32)
    filenames = tf.constant(
        [str(f).encode() for f in data.filenames] if data.filenames is not None else [b""] * n
    )

    def load(local_index):
        index, key_seed = plan.example_index(local_index, n)
        image = tf.gather(images, index)
        if data.encoded:
            image = plan.decode_and_preprocess(
                _checked(image, tf.gather(filenames, index)), key_seed
            )
        else:
            image = plan.preprocess(image, key_seed)
        return image, tf.gather(labels, index)

    ds = plan.indices(n).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    eval_bytes = n * plan.image_size * plan.image_size * 3 * 4
    if not plan.training and not plan.repeat and eval_bytes <= EVAL_CACHE_MAX_BYTES:
        ds = ds.cache()  # deterministic eval images: decode and resize only once
    return ds


def _file_list_stream(data: sources.FileListSplit, plan: _Plan, name: str) -> tf.data.Dataset:
    """(local index, (encoded image, label, file name)) of a list of files, indexed directly:
    reaching element g reads one file, whatever g is; files are read in parallel."""
    n = data.num_examples
    _check_not_empty(n, plan, name)
    filenames = tf.constant([str(f).encode() for f in data.filenames])
    labels = tf.constant(data.labels, tf.int32)

    def read(local_index):
        index, _ = plan.example_index(local_index, n)
        filename = tf.gather(filenames, index)
        return local_index, (tf.io.read_file(filename), tf.gather(labels, index), filename)

    return plan.indices(n).map(read, num_parallel_calls=tf.data.AUTOTUNE)


def _single_stream(data: sources.StreamingSplit, plan: _Plan) -> tf.data.Dataset:
    """(local index, element) of a split readable only as one stream: reaching `start` reads
    (without decoding) every element before it; a seeded shuffle buffer when training."""
    ds = data.make(plan.training, plan.seed, plan.num_pipelines, plan.pipeline_id)
    if plan.training:
        ds = ds.shuffle(min(SHUFFLE_BUFFER, max(data.num_examples, 1)), seed=plan.seed)
    if plan.repeat:
        ds = ds.repeat()
    return ds.enumerate().skip(plan.start)


def _decoded(ds: tf.data.Dataset, plan: _Plan, parse=None) -> tf.data.Dataset:
    """(image, label) of a stream of (local index, (encoded image, label, file name)), or of
    (local index, serialized record) to `parse` into that.

    Parsed, decoded and augmented in one parallel map (each element keyed by its own seed, so the
    parallelism changes nothing; one map, not two: one hand-over between threads per element); a
    file that is not an image stops the iteration with an error naming it, or, with
    `skip_corrupt_images`, is left out and counted.

    The stream is read ahead in a thread of its own (`prefetch`): its stages run one element at a
    time, and in the map's own thread they would wait on each other, element by element (see
    `docs/data_pipeline.md`).
    """
    ds = ds.prefetch(tf.data.AUTOTUNE)
    if plan.skip_corrupt_images:
        if parse is not None:  # the filter needs the parsed header and name
            ds = ds.map(lambda i, record: (i, parse(record)), num_parallel_calls=tf.data.AUTOTUNE)
            parse = None
        ds = ds.filter(lambda _, element: _usable(element[0], element[2]))

    def decode(local_index, element):
        contents, label, filename = element if parse is None else parse(element)
        _, key_seed = plan.element_seeds(local_index)
        header_ok, complete = _signatures(contents)
        image, decoded = _try_decode(
            lambda c: plan.decode_and_preprocess(c, key_seed),
            _checked(contents, filename, header_ok),
            complete,
        )
        if plan.skip_corrupt_images:
            return image, label, decoded, filename
        assertion = tf.debugging.Assert(decoded, [UNDECODABLE_FILE_ASSERTION, filename])
        with tf.control_dependencies([assertion]):
            return tf.identity(image), label

    ds = ds.map(decode, num_parallel_calls=tf.data.AUTOTUNE)
    if plan.skip_corrupt_images:  # a valid header, but the data does not decode (truncated)
        ds = ds.filter(lambda _i, _l, ok, name: _counted_unless(ok, name, UNDECODABLE))
        ds = ds.map(lambda image, label, decoded, filename: (image, label))
    return ds
