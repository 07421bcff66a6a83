"""Input pipelines of keras_bninception: datasets by name, Inception preprocessing, tf.data.

    from keras_bninception import data
    info = data.get_info("digits")
    ds = data.build_dataset("digits", info.train_split, image_size=64, batch_size=64,
                            training=True, seed=0, deterministic=True)

Datasets: `digits` (scikit-learn's bundled 8x8 digits, no download), `image_folder`
(`data_dir/<label>/*.jpg|*.jpeg|*.png` with `get_info(..., validation_split=0.2, seed=...)`, or
`data_dir/<split>/<label>/*`) and any TFDS image-classification dataset.
"""

from keras_bninception.data.errors import DataError, explain_error
from keras_bninception.data.pipeline import build_dataset, get_info, skipped_corrupt_images
from keras_bninception.data.preprocessing import (
    PreprocessConfig,
    preprocess_for_eval,
    preprocess_for_train,
)
from keras_bninception.data.sources import DIGITS, IMAGE_FOLDER, DatasetInfo

__all__ = [
    "DIGITS",
    "IMAGE_FOLDER",
    "DataError",
    "DatasetInfo",
    "PreprocessConfig",
    "build_dataset",
    "explain_error",
    "get_info",
    "preprocess_for_eval",
    "preprocess_for_train",
    "skipped_corrupt_images",
]
