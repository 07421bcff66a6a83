"""`image_folder` datasets: real small JPEG/PNG files written with PIL into a temporary folder."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf
from helpers import assert_same_batches
from PIL import Image

from keras_bninception import data
from keras_bninception.data import sources

# Class "blue" images are blue, class "red" images are red: the pipeline must keep the pairs.
COLOURS = {"blue": (20, 40, 230), "red": (230, 30, 20)}
PER_CLASS = {"train": 6, "validation": 3}


def _write(root, split: str, label: str, index: int) -> str:
    rng = np.random.default_rng(hash((split, label, index)) % 2**32)
    height, width = 40 + 4 * index, 56 - 3 * index  # various sizes and aspect ratios
    pixels = np.empty([height, width, 3], np.uint8)
    pixels[:] = COLOURS[label]
    pixels = np.clip(pixels + rng.integers(-15, 16, pixels.shape), 0, 255).astype(np.uint8)
    directory = os.path.join(root, split, label)
    os.makedirs(directory, exist_ok=True)
    ext = ".jpg" if index % 2 == 0 else ".png"
    path = os.path.join(directory, f"{label}_{index}{ext}")
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def folder(tmp_path):
    for split, count in PER_CLASS.items():
        for label in COLOURS:
            for index in range(count):
                _write(tmp_path, split, label, index)
    return str(tmp_path)


@pytest.fixture(params=["in_memory", "streaming"])
def mode(request, monkeypatch):
    if request.param == "streaming":
        monkeypatch.setattr(sources, "IN_MEMORY_MAX_BYTES", 0)
    return request.param


def _predicted_labels(images: np.ndarray) -> np.ndarray:
    """1 ("red") where the red channel dominates, else 0 ("blue")."""
    return (images[..., 0].mean(axis=(1, 2)) > images[..., 2].mean(axis=(1, 2))).astype(np.int32)


def test_info(folder):
    info = data.get_info("image_folder", data_dir=folder)
    assert info == data.DatasetInfo(
        name="image_folder",
        num_classes=2,
        train_split="train",
        eval_split="validation",
        num_train_examples=12,
        num_eval_examples=6,
        flip_changes_label=False,
        class_names=("blue", "red"),
    )


def test_training_and_eval_batches(folder, mode):
    train = data.build_dataset(
        "image_folder",
        "train",
        image_size=32,
        batch_size=5,
        training=True,
        seed=1,
        data_dir=folder,
    )
    for x, y in train.take(4):  # 20 elements: more than one epoch of 12
        x, y = x.numpy(), y.numpy()
        assert x.shape == (5, 32, 32, 3) and x.dtype == np.float32 and y.dtype == np.int32
        assert x.min() >= -1.0 and x.max() <= 1.0
        np.testing.assert_array_equal(_predicted_labels(x), y)
    evaluation = data.build_dataset(
        "image_folder",
        "validation",
        image_size=32,
        batch_size=4,
        training=False,
        data_dir=folder,
    )
    batches = [(x.numpy(), y.numpy()) for x, y in evaluation]
    assert [len(y) for _, y in batches] == [4, 2]
    labels = np.concatenate([y for _, y in batches])
    assert sorted(labels) == [0, 0, 0, 1, 1, 1]
    for x, y in batches:
        np.testing.assert_array_equal(_predicted_labels(x), y)


def test_deterministic_resume(folder, mode):
    def stream(start_step: int = 0):
        ds = data.build_dataset(
            "image_folder",
            "train",
            image_size=32,
            batch_size=4,
            training=True,
            seed=5,
            deterministic=True,
            data_dir=folder,
            start_step=start_step,
        )
        return [(x.numpy(), y.numpy()) for x, y in ds.take(4)]

    full, again, resumed = stream(), stream(), stream(start_step=2)
    assert_same_batches(full, again)
    assert_same_batches(full[2:], resumed[:2])


def test_get_info_resolves_the_folder_once_per_run(folder, monkeypatch):
    info = data.get_info("image_folder", data_dir=folder)
    checked = []
    find = sources.find_corrupt_images
    monkeypatch.setattr(
        sources, "find_corrupt_images", lambda *args: checked.append(args[1]) or find(*args)
    )
    args = dict(image_size=32, batch_size=4, training=True, seed=0, deterministic=True)
    first = [data.build_dataset(info, "train", **args) for _ in range(2)]  # two pipelines
    data.build_dataset(info, "validation", **{**args, "training": False})
    # Each split read and every image checked once, whatever the number of pipelines.
    assert [len(names) for names in checked] == [12, 6]
    by_name = data.build_dataset("image_folder", "train", data_dir=folder, **args)
    for ds in first:
        (x1, y1), (x2, y2) = next(iter(ds)), next(iter(by_name))
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_corrupt_file_is_named_in_memory(folder):
    bad = os.path.join(folder, "train", "red", "red_9.jpg")
    good = os.path.join(folder, "train", "red", "red_0.jpg")
    with open(good, "rb") as f:
        contents = f.read()
    with open(bad, "wb") as f:
        f.write(contents[: len(contents) // 2])  # a truncated JPEG
    with pytest.raises(data.DataError, match=r"^corrupt image file .*red_9\.jpg"):
        data.build_dataset(
            "image_folder", "train", image_size=32, batch_size=4, training=True, data_dir=folder
        )


def test_corrupt_file_is_named_streaming(folder, monkeypatch):
    monkeypatch.setattr(sources, "IN_MEMORY_MAX_BYTES", 0)
    bad = os.path.join(folder, "validation", "blue", "notes.png")
    with open(bad, "w") as f:
        f.write("this is not an image\n")
    ds = data.build_dataset(
        "image_folder",
        "validation",
        image_size=32,
        batch_size=7,
        training=False,
        data_dir=folder,
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"corrupt image file.*notes\.png"):
        try:
            for _ in ds:
                pass
        except tf.errors.InvalidArgumentError as error:
            explained = data.explain_error(error)
            raise
    assert str(explained) == f"corrupt image file {bad}: not a JPEG, PNG, GIF or BMP file"
    assert data.explain_error(RuntimeError("something else")) is None


def test_truncated_file_streaming_is_a_data_error(folder, monkeypatch):
    monkeypatch.setattr(sources, "IN_MEMORY_MAX_BYTES", 0)
    path = os.path.join(folder, "validation", "red", "red_0.jpg")
    with open(path, "rb") as f:
        contents = f.read()
    with open(path, "wb") as f:
        f.write(contents[:200])  # a JPEG header, then nothing
    ds = data.build_dataset(
        "image_folder", "validation", image_size=32, batch_size=7, training=False, data_dir=folder
    )
    with pytest.raises(tf.errors.InvalidArgumentError) as error:
        for _ in ds:
            pass
    explained = data.explain_error(error.value)
    assert isinstance(explained, data.DataError)
    assert str(explained) == (
        f"corrupt image file {path}: its data does not decode (truncated or damaged)"
    )


def test_skip_corrupt_images_counts_a_truncated_file(folder, mode):
    path = os.path.join(folder, "validation", "red", "red_0.jpg")
    with open(path, "rb") as f:
        contents = f.read()
    with open(path, "wb") as f:
        f.write(contents[: len(contents) // 2])  # a valid header, half the data
    ds = data.build_dataset(
        "image_folder",
        "validation",
        image_size=32,
        batch_size=2,
        training=False,
        data_dir=folder,
        skip_corrupt_images=True,
    )
    labels = np.concatenate([y for _, y in ds.as_numpy_iterator()])
    assert len(labels) == 2 * PER_CLASS["validation"] - 1
    assert path in data.skipped_corrupt_images()


def test_empty_missing_and_unsplit_folders(tmp_path):
    empty = tmp_path / "empty"
    (empty / "train" / "cat").mkdir(parents=True)
    (empty / "train" / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(data.DataError, match=r"has no images; expected .*/<split>/<label>/\*\.jpg"):
        data.get_info("image_folder", data_dir=str(empty))
    with pytest.raises(data.DataError, match=r"missing or unreadable; expected .*<label>/\*\.jpg"):
        data.get_info("image_folder", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(data.DataError, match=r"no data_dir was given"):
        data.get_info("image_folder")
    splits = tmp_path / "splits"
    _write(splits, "test", "red", 0)  # root/<split>/<label>/x.jpg without a train split
    with pytest.raises(data.DataError, match=r"has no train split \(found: test\)"):
        data.get_info("image_folder", data_dir=str(splits))


def test_unknown_split_lists_the_splits(folder):
    with pytest.raises(data.DataError, match=r"has no split 'test'; its splits are"):
        data.build_dataset(
            "image_folder", "test", image_size=32, batch_size=4, training=False, data_dir=folder
        )


def test_skip_corrupt_images_leaves_them_out_and_lists_them(folder, mode):
    bad = os.path.join(folder, "validation", "blue", "notes.png")
    with open(bad, "w") as f:
        f.write("this is not an image\n")
    kwargs = dict(image_size=32, batch_size=2, training=False, data_dir=folder)
    if mode == "in_memory":  # without the option: one DataError naming the file
        with pytest.raises(data.DataError, match=r"^corrupt image file .*notes\.png"):
            data.build_dataset("image_folder", "validation", **kwargs)
    ds = data.build_dataset("image_folder", "validation", skip_corrupt_images=True, **kwargs)
    labels = np.concatenate([y for _, y in ds.as_numpy_iterator()])
    assert len(labels) == 2 * PER_CLASS["validation"]  # every good image, the bad one left out
    assert bad in data.skipped_corrupt_images()


# --------------------------------------------------------------------------------------------
# root/<label>/* (keras.utils.image_dataset_from_directory's and Model Maker's layout).

FLAT_COUNTS = {"blue": 10, "red": 7}


@pytest.fixture
def flat(tmp_path):
    """root/blue/*.jpg|png (10 images), root/red/* (7), and a stray file at the root."""
    root = tmp_path / "photos"
    for label, count in FLAT_COUNTS.items():
        for index in range(count):
            # _write's <split> level is the label here: root/<label>/<label>_<i>.jpg
            path = _write(root, label, label, index)
            os.replace(path, os.path.join(root, label, os.path.basename(path)))
            os.rmdir(os.path.join(root, label, label))
    (root / "README.txt").write_text("not an image")
    return str(root)


def _split_files(root: str, validation_split: float, seed: int) -> dict[str, list[str]]:
    source = sources.resolve("image_folder", root, validation_split=validation_split, seed=seed)
    return {
        split: sorted(str(name) for name in source.load(split).filenames)
        for split in source.splits()
    }


def test_flat_folder_with_validation_split(flat, mode):
    info = data.get_info("image_folder", data_dir=flat, validation_split=0.2, seed=3)
    # round(0.2 * 10) = 2 blue and round(0.2 * 7) = 1 red images held out.
    assert (info.train_split, info.eval_split, info.eval_held_out) == ("train", "validation", True)
    assert (info.num_train_examples, info.num_eval_examples) == (14, 3)
    assert info.class_names == ("blue", "red") and info.num_classes == 2
    files = _split_files(flat, 0.2, 3)
    assert not set(files["train"]) & set(files["validation"])
    assert len(set(files["train"]) | set(files["validation"])) == 17
    for label in FLAT_COUNTS:  # every label on both sides
        assert any(f"/{label}/" in name for name in files["validation"])
        assert any(f"/{label}/" in name for name in files["train"])
    # Deterministic from the seed; another seed holds out other images.
    assert _split_files(flat, 0.2, 3) == files
    assert _split_files(flat, 0.2, 4)["validation"] != files["validation"]
    for split, training, count in (("train", True, 16), ("validation", False, 3)):
        ds = data.build_dataset(
            info, split, image_size=32, batch_size=count, training=training, seed=1
        )
        x, y = next(iter(ds))
        np.testing.assert_array_equal(_predicted_labels(x.numpy()), y.numpy())
    assert sorted(y.numpy()) == [0, 0, 1]


def test_flat_folder_without_validation_split_is_not_held_out(flat):
    info = data.get_info("image_folder", data_dir=flat)
    assert (info.train_split, info.eval_split, info.eval_held_out) == ("train", "train", False)
    assert info.num_train_examples == info.num_eval_examples == 17
    # The split layout without an evaluation split: also evaluated on train, also not held out.
    splits = os.path.dirname(flat) + "/splits"
    for label in COLOURS:
        for index in range(3):
            _write(splits, "train", label, index)
    info = data.get_info("image_folder", data_dir=splits)
    assert (info.eval_split, info.eval_held_out) == ("train", False)
    # ...where --validation_split carves a validation split out of train.
    info = data.get_info("image_folder", data_dir=splits, validation_split=0.34, seed=0)
    assert (info.eval_split, info.eval_held_out, info.num_eval_examples) == ("validation", True, 2)
    assert data.get_info("digits").eval_held_out


def test_validation_split_bad_input(flat, folder):
    with pytest.raises(
        data.DataError,
        match=r"label 'red' has 7 image\(s\), too few for validation_split=0\.05 \(each label "
        r"needs at least one training and one validation image: 10 or more images",
    ):
        data.get_info("image_folder", data_dir=flat, validation_split=0.05)
    with pytest.raises(data.DataError, match=r"already has a 'validation' split; "):
        data.get_info("image_folder", data_dir=folder, validation_split=0.2)
    for bad in (1.0, -0.1, "0.2"):
        with pytest.raises(
            data.DataError, match=r"`validation_split` must be a fraction in \[0, 1\)"
        ):
            data.get_info("image_folder", data_dir=flat, validation_split=bad)
    with pytest.raises(data.DataError, match=r"applies to 'image_folder' datasets"):
        data.get_info("digits", validation_split=0.2)
    # Images directly in one subfolder, folders of images in another: which layout is meant?
    _write(flat, "extra", "red", 0)
    with pytest.raises(data.DataError, match=r"mixes two layouts: 'blue' holds images, 'extra'"):
        data.get_info("image_folder", data_dir=flat)
