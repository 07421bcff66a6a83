"""BN-Inception (GoogLeNet v2, Ioffe & Szegedy 2015) for TensorFlow/Keras."""

from keras_bninception import layers

__all__ = ["layers"]
__version__ = "0.1.0"
