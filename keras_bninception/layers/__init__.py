"""Keras layers of the project: the hand-written Batch Normalization of section 3."""

from keras_bninception.layers.batch_normalization import BatchNormalization

__all__ = ["BatchNormalization"]
