"""Where the examples come from: dataset names resolved to in-memory arrays or on-disk streams.

Three kinds of dataset, all by name:
- `digits`: scikit-learn's bundled 8x8 digits (`keras_bninception.data.digits`), no download.
- `image_folder`: either `data_dir/<label>/*.jpg|*.jpeg|*.png` (the layout of
  `keras.utils.image_dataset_from_directory` and MediaPipe Model Maker), split into training and
  validation images by `validation_split` (a fraction of each label, deterministic from the seed),
  or `data_dir/<split>/<label>/*.jpg|...`, read through `tfds.ImageFolder`.
- any TFDS image-classification dataset (`imagenet2012`, `imagenette`, `tf_flowers`, `cifar10`,
  ...), prepared in `data_dir` by `tfds` (manual downloads, such as
  imagenet2012's, from `manual_dir`).

A split whose encoded images take at most `IN_MEMORY_MAX_BYTES` is read once into memory
(the "cache" of the pipeline: it is then shuffled over the whole split and indexed directly). A
larger one is read from disk so that any position of the stream is reached without reading what
comes before it: an image folder as a list of files indexed like an in-memory split
(`FileListSplit`), a TFDS dataset as its TFRecord shards read from any record on (`RecordSplit`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import math
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from keras_bninception.data import digits
from keras_bninception.data.errors import DataError
from keras_bninception.data.preprocessing import DEFAULT_CONFIG, PreprocessConfig
from keras_bninception.errors import first_line

DIGITS = digits.NAME
IMAGE_FOLDER = "image_folder"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")  # the ones tfds.ImageFolder lists
FOLDER_LAYOUT = "<root>/<split>/<label>/*.jpg|*.jpeg|*.png"
FLAT_FOLDER_LAYOUT = "<root>/<label>/*.jpg|*.jpeg|*.png"
LAYOUTS = f"{FLAT_FOLDER_LAYOUT} (with --validation_split) or {FOLDER_LAYOUT}"
TRAIN_SPLIT, VALIDATION_SPLIT = "train", "validation"
# Encoded splits up to this size are held in memory (2 CPU / 24 GiB machines, several pipelines).
IN_MEMORY_MAX_BYTES = 256 * 2**20
# TFDS datasets whose label changes when the image is mirrored (digits, characters).
FLIP_CHANGES_LABEL = frozenset(
    {DIGITS, "mnist", "emnist", "kmnist", "svhn_cropped", "omniglot", "mnist_corrupted"}
)
EVAL_SPLIT_CANDIDATES = ("validation", "val", "test", "eval")

# imagenet2012 (TFDS 4.9 builder): which tar file makes which split, and where to get them.
IMAGENET_MANUAL_FILES = {
    "train": "ILSVRC2012_img_train.tar",
    "validation": "ILSVRC2012_img_val.tar",
}
IMAGENET_URL = "https://image-net.org/download-images"

# The digits keep their whole frame at evaluation and are cropped mildly in training: an 8x8 digit
# fills its frame, so tf_slim's crops (down to 5 % of the area, aspect 3:4..4:3) would often cut off
# the strokes that tell a 1 from a 7. Crops of at least 75 % of the area (sides >= ~87 %) and a
# near-square aspect shift and scale the digit by about one source pixel. Cropping happens after the
# upsampling, so these are sub-pixel crops of the source rather than whole-pixel ones. No flip (a
# mirrored 2 or 5 is not a 2 or 5) and no colour distortion (grey images: saturation does nothing,
# and the paper reduced photometric distortions anyway).
DIGITS_CONFIG = PreprocessConfig(
    area_range=(0.75, 1.0),
    aspect_ratio_range=(0.9, 1.11),
    min_object_covered=0.75,
    central_fraction=1.0,
    flip=False,
    color=False,
    upsample_first=True,
)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset before building its pipelines."""

    name: str
    num_classes: int
    train_split: str
    eval_split: str
    num_train_examples: int
    num_eval_examples: int
    flip_changes_label: bool
    class_names: tuple[str, ...]  # label i's name: digits "0".."9", folder names, TFDS names
    # False when the evaluation split is the training split (an image folder without a
    # validation split): its accuracy is then training accuracy, never to be called held out.
    eval_held_out: bool = True
    # The resolved dataset, for `build_dataset` (not part of the description).
    source: Source | None = dataclasses.field(default=None, compare=False, repr=False)


@dataclasses.dataclass(frozen=True)
class InMemorySplit:
    """All examples of a split, held in memory.

    `images` is either decoded pixels ([N, H, W, C], `encoded=False`) or encoded image files (an
    object array of N bytes, `encoded=True`); `labels` is int32 [N]; `filenames` names each example
    (used in error messages); `corrupt` lists (index, problem) of the files that do not decode.
    """

    images: np.ndarray
    labels: np.ndarray
    encoded: bool
    filenames: np.ndarray | None = None
    corrupt: tuple[tuple[int, str], ...] = ()

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])


@dataclasses.dataclass(frozen=True)
class FileListSplit:
    """A split of image files, each read from disk when the pipeline needs it.

    `filenames` (an object array of N paths) and `labels` (int32 [N]) are indexed directly, as an
    `InMemorySplit` is: reaching element g of the stream reads one file, whatever g is.
    """

    filenames: np.ndarray
    labels: np.ndarray

    @property
    def num_examples(self) -> int:
        return int(self.labels.shape[0])


# One record file of a split: (file name, records to skip, records to take after them).
Shard = tuple[str, int, int]


@dataclasses.dataclass(frozen=True)
class RecordSplit:
    """A split stored as TFRecord files (a prepared TFDS dataset), readable from any record on.

    `shards(num_pipelines, pipeline_id)` lists the files of this pipeline's part of the split, in
    order, with the records of each that belong to it; `parse(record)` turns one serialized record
    into (encoded image: string, label: int32, file name: string).
    """

    shards: Callable[[int, int], list[Shard]]
    parse: Callable[[tf.Tensor], tuple[tf.Tensor, tf.Tensor, tf.Tensor]]
    num_examples: int


@dataclasses.dataclass(frozen=True)
class StreamingSplit:
    """A split read from disk as one stream (datasets mocked by `tfds.testing.mock_data`, formats
    other than TFRecord): reaching element g reads the g elements before it.

    `make(shuffle_files, seed, num_pipelines, pipeline_id)` returns this pipeline's shard as a
    `tf.data.Dataset` of (encoded image: string, label: int32, file name: string) in a fixed order
    (shuffled by `seed` when `shuffle_files`).
    """

    make: Callable[[bool, int, int, int], tf.data.Dataset]
    num_examples: int


Split = InMemorySplit | FileListSplit | RecordSplit | StreamingSplit


def _choices() -> str:
    return (
        f"'{DIGITS}' (built in, no download), '{IMAGE_FOLDER}' (data_dir laid out as "
        f"{LAYOUTS}) or any TFDS image classification dataset name, e.g. imagenet2012, "
        "imagenette, tf_flowers, cifar10"
    )


def _fits_in_memory(num_bytes: int) -> bool:
    """Whether an encoded split of `num_bytes` (0 = unknown) is held in memory."""
    return 0 < num_bytes <= IN_MEMORY_MAX_BYTES


def _encoded_in_memory(examples: tf.data.Dataset) -> InMemorySplit:
    """Reads (encoded image, label, file name) examples into memory, images still encoded."""
    images, labels, names = [], [], []
    for image, label, name in examples.batch(1024).as_numpy_iterator():
        images.extend(image)
        labels.extend(label)
        names.extend(n.decode() for n in name)
    return InMemorySplit(
        images=np.array(images, dtype=object),
        labels=np.array(labels, dtype=np.int32),
        encoded=True,
        filenames=np.array(names, dtype=object),
    )


def find_corrupt_images(images: list[bytes], filenames: list[str]) -> list[tuple[int, str]]:
    """Decodes every image with PIL; (index, "corrupt image file <name>: ...") of each failure."""
    from PIL import Image

    def check(item: tuple[bytes, str]) -> str | None:
        data, name = item
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (1, 1))  # JPEG: decode at 1/8 scale, still reads every block
                image.load()
        except Exception as error:  # noqa: BLE001 - any failure means the file is unusable
            return f"corrupt image file {name}: {first_line(error)}"
        return None

    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        problems = pool.map(check, zip(images, filenames, strict=True))
        return [(i, problem) for i, problem in enumerate(problems) if problem is not None]


def preprocess_config(dataset: str) -> PreprocessConfig:
    """The preprocessing of a dataset's images, from its name alone (nothing is read): digits and
    characters fill their frame like the 8x8 digits (same mild crops, no flip); the rest take
    ImageNet's."""
    base = dataset.split("/")[0].split(":")[0]
    if base == DIGITS or base in FLIP_CHANGES_LABEL:
        return DIGITS_CONFIG
    return DEFAULT_CONFIG


class Source:
    """A dataset resolved by name; each split is read once (`load` keeps what it returns)."""

    info: DatasetInfo
    preprocess: PreprocessConfig = DEFAULT_CONFIG

    def splits(self) -> tuple[str, ...]:
        raise NotImplementedError

    def check_split(self, split: str) -> str:
        names = self.splits()
        if not isinstance(split, str) or (names and split not in names):
            raise DataError(
                f"dataset {self.info.name!r} has no split {split!r}; its splits are "
                f"{', '.join(names)}"
            )
        return split

    def load(self, split: str) -> Split:
        """The examples of `split`, read (and, for image folders, checked) on the first call."""
        loaded = self.__dict__.setdefault("_loaded", {})
        if split not in loaded:
            loaded[split] = self._load(self.check_split(split))
        return loaded[split]

    def _load(self, split: str) -> Split:
        raise NotImplementedError

    def _describe(self, **fields: Any) -> DatasetInfo:
        return DatasetInfo(**fields, source=self)


class DigitsSource(Source):
    """scikit-learn's 8x8 digits: `train` (1,437 images) and the held-out `test` (360)."""

    preprocess = DIGITS_CONFIG

    def __init__(self) -> None:
        train = digits.load_split(digits.TRAIN_SPLIT)[1]
        test = digits.load_split(digits.EVAL_SPLIT)[1]
        self.info = self._describe(
            name=DIGITS,
            num_classes=digits.NUM_CLASSES,
            train_split=digits.TRAIN_SPLIT,
            eval_split=digits.EVAL_SPLIT,
            num_train_examples=int(train.shape[0]),
            num_eval_examples=int(test.shape[0]),
            flip_changes_label=True,
            class_names=tuple(str(i) for i in range(digits.NUM_CLASSES)),
        )

    def splits(self) -> tuple[str, ...]:
        return digits.SPLITS

    def _load(self, split: str) -> Split:
        images, labels = digits.load_split(split)
        return InMemorySplit(images=images, labels=labels, encoded=False)


def _folder_bytes(directory: str) -> int:
    total = 0
    for dirpath, _, files in os.walk(directory):
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                total += os.path.getsize(os.path.join(dirpath, name))
    return total


def _subdirectories(directory: str) -> list[str]:
    """The visible subdirectories of `directory`, sorted (`.ipynb_checkpoints` and such skipped)."""
    return sorted(
        name
        for name in os.listdir(directory)
        if not name.startswith(".") and os.path.isdir(os.path.join(directory, name))
    )


def _images(directory: str, files_only: bool = True) -> list[str]:
    """The image files directly in `directory`, sorted, as full paths.

    With `files_only` False, every entry named like an image, as `tfds.ImageFolder` lists them
    (a subdirectory or broken link named `x.jpg` too).
    """
    paths = [
        os.path.join(directory, name)
        for name in sorted(os.listdir(directory))
        if name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    return [path for path in paths if os.path.isfile(path)] if files_only else paths


def _by_label_to_split(files_by_label: list[list[str]]) -> FileListSplit:
    """The files of `files_by_label` (label i's at index i), label by label, with their labels."""
    return FileListSplit(
        filenames=np.array([f for files in files_by_label for f in files], dtype=object),
        labels=np.array([i for i, files in enumerate(files_by_label) for _ in files], np.int32),
    )


def _validation_count(num_images: int, fraction: float) -> int:
    """Images of a label of `num_images` that go to validation: round(fraction * n), half up."""
    return int(math.floor(fraction * num_images + 0.5))


def split_for_validation(
    files_by_label: list[list[str]],
    class_names: tuple[str, ...],
    fraction: float,
    seed: int,
    root: str,
) -> dict[str, FileListSplit]:
    """Splits each label's files into `train` and `validation` (about `fraction` of each label).

    Per label (stratified, as Model Maker's `split` keeps every label on both sides): a
    permutation drawn from `numpy.random.default_rng([seed, label])`, its first
    round(fraction * n) files to validation, the rest to training; each side keeps the sorted file
    order. The same seed and folder give the same split on every machine.

    Raises:
        DataError: a label has too few images for one on each side (named, with what would do).
    """
    sides: dict[str, list[list[str]]] = {
        split: [[] for _ in files_by_label] for split in (TRAIN_SPLIT, VALIDATION_SPLIT)
    }
    for label, files in enumerate(files_by_label):
        n = len(files)
        held = _validation_count(n, fraction)
        if not 1 <= held <= n - 1:
            needed = next(k for k in range(2, 10**6) if 1 <= _validation_count(k, fraction) < k)
            raise DataError(
                f"image folder {root}: label {class_names[label]!r} has {n} image(s), too few for "
                f"validation_split={fraction} (each label needs at least one training and one "
                f"validation image: {needed} or more images at this fraction); add images, "
                "change --validation_split, or remove the label's folder"
            )
        permutation = np.random.default_rng([seed, label]).permutation(n)
        chosen = set(permutation[:held].tolist())
        for i, name in enumerate(files):
            sides[VALIDATION_SPLIT if i in chosen else TRAIN_SPLIT][label].append(name)
    return {split: _by_label_to_split(by_label) for split, by_label in sides.items()}


def _read_files(files: FileListSplit, root: str) -> InMemorySplit:
    """The files of `files` read into memory (still encoded), each checked by PIL."""

    def read(name: str) -> bytes:
        with open(name, "rb") as f:
            return f.read()

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
            contents = list(pool.map(read, files.filenames))
    except OSError as error:
        raise DataError(f"image folder {root} is unreadable: {first_line(error)}") from error
    filenames = [str(name) for name in files.filenames]
    return InMemorySplit(
        images=np.array(contents, dtype=object),
        labels=files.labels,
        encoded=True,
        filenames=np.array(filenames, dtype=object),
        corrupt=tuple(find_corrupt_images(contents, filenames)),
    )


class FolderSource(Source):
    """An image folder, in either layout (see the module docstring).

    `root/<label>/*`: labels are the sorted subdirectories holding images; with
    `validation_split` > 0 each label is split into `train` and `validation`
    (`split_for_validation`), otherwise every image is in `train` and evaluation is on `train`
    (`DatasetInfo.eval_held_out` False). `root/<split>/<label>/*`: read through
    `tfds.ImageFolder`; the evaluation split is `validation`, `val` or `test`, or, when there is
    none, `train` (not held out) or, with `validation_split`, a part of `train`.
    """

    def __init__(self, root: str | None, validation_split: float = 0.0, seed: int = 0) -> None:
        if not root:
            raise DataError(
                f"dataset '{IMAGE_FOLDER}' reads the folder given as data_dir (--data_dir), laid "
                f"out as {LAYOUTS}; no data_dir was given"
            )
        root = os.path.abspath(os.path.expanduser(root))
        layouts = LAYOUTS.replace("<root>", root)
        if not os.path.isdir(root) or not os.access(root, os.R_OK | os.X_OK):
            raise DataError(f"image folder {root} is missing or unreadable; expected {layouts}")
        self._root = root
        self._files: dict[str, FileListSplit] = {}  # splits listed here, not by tfds
        try:
            flat = self._flat_labels(root)
        except OSError as error:
            raise DataError(
                f"image folder {root} is unreadable ({first_line(error)}); expected {layouts}"
            ) from error
        if flat:
            class_names = tuple(label for label, _ in flat)
            files_by_label = [files for _, files in flat]
            counts = None
        else:
            class_names, counts = self._tfds_folder(root, layouts)
            if validation_split and counts["eval"] != TRAIN_SPLIT:
                raise DataError(
                    f"image folder {root} already has a {counts['eval']!r} split; "
                    "--validation_split carves one out of a folder that has none "
                    f"({FLAT_FOLDER_LAYOUT}, or only <root>/train/<label>/*): drop "
                    f"--validation_split={validation_split}"
                )
            if validation_split:
                train = self._list_files(TRAIN_SPLIT, class_names)
                files_by_label = [[] for _ in class_names]
                for f, y in zip(train.filenames, train.labels, strict=True):
                    files_by_label[y].append(str(f))
        if validation_split:
            self._files = split_for_validation(
                files_by_label, class_names, validation_split, seed, root
            )
            eval_split = VALIDATION_SPLIT
        elif flat:
            self._files = {TRAIN_SPLIT: _by_label_to_split(files_by_label)}
            eval_split = TRAIN_SPLIT
        else:
            eval_split = counts["eval"]
        if self._files:
            self._counts = {name: split.num_examples for name, split in self._files.items()}
        else:
            self._counts = counts["splits"]
        if eval_split == TRAIN_SPLIT:
            logging.warning(
                "image folder %s has no validation images: evaluating on the training split, "
                "which is NOT held out (its accuracy is training accuracy); set "
                "--validation_split (e.g. 0.2) to hold out a part of each label",
                root,
            )
        self.info = self._describe(
            name=IMAGE_FOLDER,
            num_classes=len(class_names),
            train_split=TRAIN_SPLIT,
            eval_split=eval_split,
            num_train_examples=self._counts[TRAIN_SPLIT],
            num_eval_examples=self._counts[eval_split],
            flip_changes_label=False,
            class_names=class_names,
            eval_held_out=eval_split != TRAIN_SPLIT,
        )

    @staticmethod
    def _flat_labels(root: str) -> list[tuple[str, list[str]]]:
        """[(label, its image files)] when `root` is `root/<label>/*`; [] for `root/<split>/...`.

        Raises:
            DataError: both layouts at once (images directly in some subfolders, in
                subfolders of subfolders in others).
        """
        labels, nested = [], []
        for name in _subdirectories(root):
            directory = os.path.join(root, name)
            files = _images(directory)
            if files:
                labels.append((name, files))
            elif any(_images(os.path.join(directory, d)) for d in _subdirectories(directory)):
                nested.append(name)
        if labels and nested:
            raise DataError(
                f"image folder {root} mixes two layouts: {labels[0][0]!r} holds images, "
                f"{nested[0]!r} holds folders of images; expected "
                f"{LAYOUTS.replace('<root>', root)}"
            )
        return labels

    def _tfds_folder(self, root: str, layouts: str) -> tuple[tuple[str, ...], dict]:
        """`root/<split>/<label>/*` through `tfds.ImageFolder`: (class names, split counts)."""
        try:
            self._builder = tfds.ImageFolder(root)
        except (OSError, tf.errors.OpError) as error:
            raise DataError(
                f"image folder {root} is unreadable ({first_line(error)}); expected {layouts}"
            ) from error
        counts = {
            name: split.num_examples
            for name, split in self._builder.info.splits.items()
            if split.num_examples > 0
        }
        if not counts:
            raise DataError(f"image folder {root} has no images; expected {layouts}")
        if TRAIN_SPLIT not in counts:
            raise DataError(
                f"image folder {root} has no train split (found: {', '.join(counts)}); "
                f"expected {FOLDER_LAYOUT.replace('<root>', root)} with <split> = train (and "
                f"validation, val or test), or {FLAT_FOLDER_LAYOUT.replace('<root>', root)}"
            )
        eval_split = next((s for s in EVAL_SPLIT_CANDIDATES if s in counts), TRAIN_SPLIT)
        class_names = tuple(self._builder.info.features["label"].names)
        return class_names, {"splits": counts, "eval": eval_split}

    def splits(self) -> tuple[str, ...]:
        return tuple(self._counts)

    def _read(self, split: str) -> tf.data.Dataset:
        ds = self._builder.as_dataset(split=split, decoders={"image": tfds.decode.SkipDecoding()})
        return ds.map(
            lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32), ex["image/filename"]),
            num_parallel_calls=tf.data.AUTOTUNE,
        )

    def _load(self, split: str) -> Split:
        if split in self._files:
            files = self._files[split]
            num_bytes = sum(os.path.getsize(name) for name in files.filenames)
            return _read_files(files, self._root) if _fits_in_memory(num_bytes) else files
        if _fits_in_memory(_folder_bytes(os.path.join(self._root, split))):
            try:
                loaded = _encoded_in_memory(self._read(split))
            except tf.errors.OpError as error:
                raise DataError(
                    f"image folder {self._root} is unreadable: {first_line(error)}"
                ) from error
            # Reported (or skipped, with skip_corrupt_images) by the pipeline.
            corrupt = find_corrupt_images(list(loaded.images), list(loaded.filenames))
            return dataclasses.replace(loaded, corrupt=tuple(corrupt))

        return self._list_files(split, self.info.class_names)

    def _list_files(self, split: str, class_names: tuple[str, ...]) -> FileListSplit:
        """The split's files and labels, as `tfds.ImageFolder` lists them."""
        filenames, labels = [], []
        for label, class_name in enumerate(class_names):
            directory = os.path.join(self._root, split, class_name)
            if not os.path.isdir(directory):
                continue
            files = _images(directory, files_only=False)
            filenames += files
            labels += [label] * len(files)
        return FileListSplit(
            filenames=np.array(filenames, dtype=object), labels=np.array(labels, np.int32)
        )


class TfdsSource(Source):
    """A TFDS image-classification dataset, prepared on first use."""

    def __init__(self, name: str, data_dir: str | None, manual_dir: str | None) -> None:
        base = name.split("/")[0].split(":")[0]
        if base not in tfds.list_builders(with_community_datasets=False):
            raise DataError(f"unknown dataset {name!r}; choose {_choices()}")
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as error:  # noqa: BLE001 - tfds raises several types for bad names
            raise DataError(
                f"dataset {name!r}: {first_line(error)}; choose {_choices()}"
            ) from error
        keys = builder.info.supervised_keys
        features = builder.info.features
        if not (
            isinstance(keys, tuple)
            and len(keys) == 2
            and all(isinstance(k, str) for k in keys)
            and isinstance(features[keys[0]], tfds.features.Image)
            and isinstance(features[keys[1]], tfds.features.ClassLabel)
        ):
            raise DataError(
                f"dataset {name!r} is not an image classification dataset (its supervised keys "
                f"are {keys}, not an Image and a ClassLabel); choose {_choices()}"
            )
        self._builder = builder
        self.preprocess = preprocess_config(base)
        self._image_key, self._label_key = keys
        self._filename_key = next(
            (k for k in ("file_name", "image/filename", "filename") if k in features), None
        )
        self._prepare(base, manual_dir)
        known = builder.info.splits
        self._counts = {s: known[s].num_examples for s in known}
        if "train" in self._counts:
            train_split = "train"
        else:
            train_split = next(iter(self._counts), "train")
        eval_split = next((s for s in EVAL_SPLIT_CANDIDATES if s in self._counts), None)
        if eval_split is None:  # splits unknown (tfds.testing.mock_data): the usual name
            eval_split = "validation" if base.startswith("imagenet") else "test"
        self.info = self._describe(
            name=name,
            num_classes=int(features[self._label_key].num_classes),
            train_split=train_split,
            eval_split=eval_split,
            num_train_examples=self._num_examples(train_split),
            num_eval_examples=self._num_examples(eval_split),
            flip_changes_label=base in FLIP_CHANGES_LABEL,
            class_names=tuple(features[self._label_key].names),
        )

    def _manual_error(self, base: str, manual_dir: str, missing: list[str]) -> DataError:
        if base.startswith("imagenet2012"):
            files = " and ".join(IMAGENET_MANUAL_FILES.values())
            return DataError(
                f"dataset {self._builder.name!r} needs the manual download of ImageNet: put "
                f"{files} (from {IMAGENET_URL}) in {manual_dir} (set --manual_dir; default "
                f"<data_dir>/downloads/manual); missing: {', '.join(missing)}"
            )
        instructions = " ".join(str(self._builder.MANUAL_DOWNLOAD_INSTRUCTIONS).split())
        return DataError(
            f"dataset {self._builder.name!r} needs a manual download into {manual_dir} "
            f"(--manual_dir): {instructions}"
        )

    def _prepare(self, base: str, manual_dir: str | None) -> None:
        builder = self._builder
        if builder.is_prepared():
            return
        manual_dir = os.path.abspath(
            os.path.expanduser(
                manual_dir or os.path.join(builder.data_dir_root, "downloads", "manual")
            )
        )
        needs_manual = bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
        if needs_manual and base.startswith("imagenet2012") and os.path.isdir(manual_dir):
            # TFDS would quietly prepare only the splits whose tar is present (hours of work) and
            # fail later on the other one: check both files first.
            missing = [
                f
                for f in IMAGENET_MANUAL_FILES.values()
                if not os.path.isfile(os.path.join(manual_dir, f))
            ]
            if missing:
                raise self._manual_error(base, manual_dir, missing)
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(manual_dir=manual_dir)
            )
        except AssertionError as error:  # tfds: manual_dir missing or empty
            if not needs_manual:
                raise
            missing = [
                f
                for f in IMAGENET_MANUAL_FILES.values()
                if not os.path.isfile(os.path.join(manual_dir, f))
            ]
            raise self._manual_error(base, manual_dir, missing) from error
        except Exception as error:  # a download or preparation failure, e.g. no network
            raise DataError(
                f"could not download and prepare dataset {builder.name!r} in "
                f"{builder.data_dir_root}: {first_line(error)}"
            ) from error

    def _num_examples(self, split: str) -> int:
        if split in self._counts:
            return int(self._counts[split])
        # Split sizes are unknown under tfds.testing.mock_data: count the stream instead.
        cardinality = int(self._builder.as_dataset(split=split).cardinality())
        return max(cardinality, 0)

    def splits(self) -> tuple[str, ...]:
        return tuple(self._counts)  # empty when unknown: any split is accepted

    def _read(self, split, shuffle_files: bool, seed: int) -> tf.data.Dataset:
        ds = self._builder.as_dataset(
            split=split,
            shuffle_files=shuffle_files,
            decoders={self._image_key: tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(shuffle_seed=seed, try_autocache=False),
        )
        return ds.map(self._unpack, num_parallel_calls=tf.data.AUTOTUNE)

    def _unpack(self, example: dict) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        name = example[self._filename_key] if self._filename_key else tf.constant("", tf.string)
        return example[self._image_key], tf.cast(example[self._label_key], tf.int32), name

    def _load(self, split: str) -> Split:
        info = self._builder.info
        known = info.splits
        num_bytes = int(known[split].num_bytes) if split in known else 0
        if _fits_in_memory(num_bytes):
            return _encoded_in_memory(self._read(split, False, 0))
        if (
            split in known
            and known[split].num_shards
            and info.file_format
            in (
                None,
                tfds.core.FileFormat.TFRECORD,
            )
        ):
            return self._record_split(split)

        def make(shuffle_files: bool, seed: int, num_pipelines: int, pipeline_id: int):
            subsplit = split
            if num_pipelines > 1:
                subsplit = tfds.even_splits(split, n=num_pipelines)[pipeline_id]
            return self._read(subsplit, shuffle_files, seed)

        return StreamingSplit(make=make, num_examples=self._num_examples(split))

    def _record_split(self, split: str) -> RecordSplit:
        splits, features = self._builder.info.splits, self._builder.info.features
        decoders = {self._image_key: tfds.decode.SkipDecoding()}

        def shards(num_pipelines: int, pipeline_id: int) -> list[Shard]:
            part = (
                split
                if num_pipelines == 1
                else tfds.even_splits(split, n=num_pipelines)[pipeline_id]
            )
            return [
                (
                    os.fspath(f.filename),
                    int(f.skip),
                    int(f.take) if f.take >= 0 else int(f.examples_in_shard) - int(f.skip),
                )
                for f in splits[part].file_instructions
            ]

        def parse(record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
            return self._unpack(features.deserialize_example(record, decoders=decoders))

        return RecordSplit(shards=shards, parse=parse, num_examples=self._num_examples(split))


def resolve(
    dataset: str,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    validation_split: float = 0.0,
    seed: int | None = None,
) -> Source:
    """Resolves a dataset name to its `Source`; raises `DataError` naming the accepted names.

    `validation_split` (a fraction in [0, 1), image folders only) holds out that part of each
    label, chosen by `seed` (None: 0).
    """
    if not isinstance(dataset, str) or not dataset.strip():
        raise DataError(f"unknown dataset {dataset!r}; choose {_choices()}")
    name = dataset.strip()
    if (
        isinstance(validation_split, bool)
        or not isinstance(validation_split, int | float)
        or not 0.0 <= validation_split < 1.0
    ):
        raise DataError(
            "`validation_split` must be a fraction in [0, 1) (0: no split); received "
            f"validation_split={validation_split!r}"
        )
    if validation_split and name != IMAGE_FOLDER:
        raise DataError(
            f"`validation_split` applies to '{IMAGE_FOLDER}' datasets (dataset {name!r} has its "
            f"own evaluation split); received validation_split={validation_split!r}"
        )
    if name == DIGITS:
        return DigitsSource()
    if name == IMAGE_FOLDER:
        return FolderSource(data_dir, float(validation_split), 0 if seed is None else int(seed))
    return TfdsSource(name, data_dir, manual_dir)
