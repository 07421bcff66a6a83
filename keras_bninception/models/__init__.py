"""BN-Inception (Figure 5 of Ioffe & Szegedy 2015) as a Keras application model."""

from keras_bninception.models.bninception import BNInception
from keras_bninception.models.end_points import bninception_end_points, feature_extractor
from keras_bninception.models.figure5 import END_POINTS
from keras_bninception.weights.tf_slim import load_tf_slim_checkpoint

__all__ = [
    "BNInception",
    "END_POINTS",
    "bninception_end_points",
    "feature_extractor",
    "load_tf_slim_checkpoint",
]
