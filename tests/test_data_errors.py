"""Bad arguments of `keras_bninception.data` end in one `DataError` line naming what is accepted."""

from __future__ import annotations

import pytest

from keras_bninception import data


def _build(**kwargs):
    args = dict(image_size=32, batch_size=8, training=True)
    args.update(kwargs)
    return data.build_dataset("digits", "train", **args)


def test_data_error_is_a_value_error():
    assert issubclass(data.DataError, ValueError)


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(image_size=16), r"^`image_size` must be in \[32, 2048\]; received image_size=16$"),
        (
            dict(image_size=4096),
            r"^`image_size` must be in \[32, 2048\]; received image_size=4096$",
        ),
        (dict(image_size=64.0), r"^`image_size` must be an integer; received image_size=64\.0$"),
        (dict(batch_size=0), r"^`batch_size` must be in \[1, 65536\]; received batch_size=0$"),
        (dict(batch_size=True), r"^`batch_size` must be an integer; received batch_size=True$"),
        (dict(start_step=-1), r"^`start_step` must be >= 0; received start_step=-1$"),
        (dict(seed=-3), r"^`seed` must be in \[0, 9223372036854775807\]; received seed=-3$"),
    ],
)
def test_out_of_range_arguments(kwargs, pattern):
    with pytest.raises(data.DataError, match=pattern):
        _build(**kwargs)


@pytest.mark.parametrize("name", ["", "no_such_dataset", None])
def test_unknown_dataset_lists_the_choices(name):
    with pytest.raises(data.DataError) as error:
        data.build_dataset(name, "train", image_size=32, batch_size=8, training=True)
    message = str(error.value)
    assert message.startswith(f"unknown dataset {name!r}; choose 'digits'")
    assert "'image_folder'" in message and "any TFDS image classification dataset" in message
    assert "\n" not in message


def test_unknown_split():
    with pytest.raises(
        data.DataError,
        match=r"^dataset 'digits' has no split 'validation'; its "
        r"splits are train, test$",
    ):
        data.build_dataset("digits", "validation", image_size=32, batch_size=8, training=False)
