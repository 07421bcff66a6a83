"""The one home of BN-Inception's weights: where they come from and how they are loaded.

    from keras_bninception import weights
    source = weights.resolve("imagenet")  # or a path: checkpoint, .keras, .weights.h5, model_dir

- `sources`: `resolve` (what a spec is: "imagenet", a TF-slim checkpoint or the published
  tarball, a Keras file, a training run) and `source_variables` (a source's variables by name);
- `imagenet`: TF-slim's published ImageNet checkpoint, downloaded once into the Keras cache and
  checked (size, SHA-384) before it is unpacked;
- `tf_slim`: reading a TF-slim inception_v2 checkpoint and loading it into a BNInception.

The model (`BNInception(weights=...)`), the trainer (`--init_checkpoint`), export
(`--tf_slim_checkpoint`, `--keras_model`, `--model_dir`) and `trainers.classify` all go through it.
"""

from keras_bninception.weights import imagenet, sources, tf_slim
from keras_bninception.weights.errors import WeightsError
from keras_bninception.weights.sources import (
    IMAGENET,
    KERAS_MODEL,
    KERAS_WEIGHTS,
    KINDS,
    RUN,
    TF_SLIM,
    Source,
    resolve,
    source_variables,
)

__all__ = [
    "IMAGENET",
    "KERAS_MODEL",
    "KERAS_WEIGHTS",
    "KINDS",
    "RUN",
    "TF_SLIM",
    "Source",
    "WeightsError",
    "imagenet",
    "resolve",
    "source_variables",
    "sources",
    "tf_slim",
]
