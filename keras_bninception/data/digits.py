"""The embedded default dataset: scikit-learn's 8x8 handwritten digits.

`sklearn.datasets.load_digits` ships 1,797 real 8x8 grey images (pixel values 0..16, ten classes)
inside the scikit-learn wheel, so this dataset needs no download. A stratified 20 % of it is held
out as the `test` split; the split is fixed by `SPLIT_SEED`, independent of the training seed, so
every run evaluates on the same images.
"""

from __future__ import annotations

import functools

import numpy as np

NAME = "digits"
TRAIN_SPLIT = "train"
EVAL_SPLIT = "test"
SPLITS = (TRAIN_SPLIT, EVAL_SPLIT)
NUM_CLASSES = 10
TEST_FRACTION = 0.2
SPLIT_SEED = 0


@functools.lru_cache(maxsize=1)
def _load() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    # Pixel values are 0..16: rescale to [0, 1]; add the channel axis.
    images = (bunch.images.astype(np.float32) / 16.0)[..., np.newaxis]
    labels = bunch.target.astype(np.int32)
    train_i, test_i = train_test_split(
        np.arange(labels.shape[0]),
        test_size=TEST_FRACTION,
        random_state=SPLIT_SEED,
        stratify=labels,
    )
    splits = {}
    for name, index in ((TRAIN_SPLIT, train_i), (EVAL_SPLIT, test_i)):
        arrays = (images[index], labels[index], index)
        for array in arrays:
            array.setflags(write=False)
        splits[name] = arrays
    return splits


def load_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images float32 [N, 8, 8, 1] in [0, 1], labels int32 [N]) of `train` or `test`."""
    images, labels, _ = _load()[split]
    return images, labels


def split_indices(split: str) -> np.ndarray:
    """Indices into `sklearn.datasets.load_digits()` of the examples of `train` or `test`."""
    return _load()[split][2]
