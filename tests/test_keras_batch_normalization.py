"""Keras' own tests of `keras.layers.BatchNormalization`, run against this package's layer.

The test file is read, at test time, from the installed Keras
(`keras/src/layers/normalization/batch_normalization_test.py`) and run unchanged but for one
substitution: the name `layers` its tests use is Keras' `keras.src.layers` with this package's
`BatchNormalization` in place of Keras' (every other layer, e.g. `Masking`, is Keras'). So the
layer is checked as the drop-in it claims to be, by the tests of whatever Keras is installed.
"""

from __future__ import annotations

import importlib.util
import pathlib

import pytest
from keras.src import layers as keras_layers  # Keras' own test module needs Keras' internals

from keras_bninception.layers import BatchNormalization

KERAS_TEST = pathlib.Path(
    importlib.util.find_spec("keras").submodule_search_locations[0],
    "src/layers/normalization/batch_normalization_test.py",
)


class _Layers:
    """`keras.src.layers` with this package's `BatchNormalization` in place of Keras'."""

    BatchNormalization = BatchNormalization

    def __getattr__(self, name: str):
        return getattr(keras_layers, name)


def _keras_test_module():
    if not KERAS_TEST.is_file():
        pytest.fail(f"Keras' BatchNormalization tests are not at {KERAS_TEST}", pytrace=False)
    spec = importlib.util.spec_from_file_location("keras_batch_normalization_test", KERAS_TEST)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.layers = _Layers()  # the one substitution: read by the tests when they run
    return module


# pytest collects Keras' unittest class (33 tests in Keras 3.15) from this module.
BatchNormalizationTest = _keras_test_module().BatchNormalizationTest


def test_keras_tests_use_this_packages_layer():
    """The substitution took: the tests' `layers.BatchNormalization` is this package's."""
    module = _keras_test_module()
    assert module.layers.BatchNormalization is BatchNormalization
    assert module.layers.Masking is keras_layers.Masking
