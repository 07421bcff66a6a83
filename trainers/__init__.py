"""The absl binaries (`python -m trainers.<name>`).

Importing any of them first quiets TensorFlow's C++ log and selects Keras' TensorFlow backend,
unless the environment already says otherwise.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
