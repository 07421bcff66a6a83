"""BN-Inception (GoogLeNet v2, Ioffe & Szegedy 2015) for TensorFlow/Keras.

    import keras_bninception
    model = keras_bninception.BNInception(weights=None, classes=10, input_shape=(96, 96, 3))

The hand-written Batch Normalization layer is `keras_bninception.layers.BatchNormalization`; the
data pipeline (`keras_bninception.data`) and the training loop (`keras_bninception.training`) are
imported on demand, since they pull in tensorflow-datasets.
"""

from keras_bninception import flops, imagenet_utils, layers, models
from keras_bninception.imagenet_utils import decode_predictions, preprocess_input
from keras_bninception.models import BNInception, bninception_end_points, feature_extractor

__all__ = [
    "BNInception",
    "bninception_end_points",
    "decode_predictions",
    "feature_extractor",
    "flops",
    "imagenet_utils",
    "layers",
    "models",
    "preprocess_input",
]
__version__ = "0.1.0"
