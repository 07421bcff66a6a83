"""Training recipes of the paper's ImageNet networks (Ioffe & Szegedy 2015, section 4.2).

The paper compares five networks (its Figure 2 and 3):

- `inception`: the baseline, GoogLeNet-style training without Batch Normalization: initial learning
  rate 0.0015, SGD with momentum 0.9, mini-batches of 32, dropout, learning rate decayed by 4 %
  every 8 epochs (Szegedy et al. 2014).
- `bn_baseline`: "Same as Inception with Batch Normalization before each nonlinearity" (section
  4.2.2): the same hyper-parameters, BN added, nothing else changed.
- `bn_x5`: "Inception with Batch Normalization and the modifications in Sec. 4.2.1": the learning
  rate raised 5x (0.0075), dropout removed, the L2 weight decay reduced 5x, the learning-rate decay
  accelerated 6x (4 % every 8/6 epochs). (The other section-4.2.1 changes are data-side or
  architectural: no local response normalization exists in this model, and the data pipeline
  shuffles the whole split and uses light photometric distortions.)
- `bn_x30`: `bn_x5` with the initial learning rate raised 30x (0.045).
- `bn_x5_sigmoid`: `bn_x5` with the sigmoid nonlinearity instead of ReLU.

Values the paper does not state, and where they come from:
- The baseline's L2 weight decay: 4e-5, the `weight_decay` default of TF-slim's
  `inception_v2_arg_scope` (and of all TF-slim Inception nets); the BN variants use 4e-5 / 5 = 8e-6.
  The penalty is TF-slim's: `weight_decay * sum(w ** 2) / 2` over the convolution kernels.
- The baseline's dropout rate: 0.4, GoogLeNet's (Szegedy et al. 2014, section 5).

The learning rates are those of the paper's global batch of 32 (`reference_batch_size=32`): with
`--batch_size=256` the run uses 8 times the rate, reached by a linear warm-up over 5 epochs
(Goyal et al. 2017; `optimizer.py`).

A recipe names options by their flag names (see `config.FLAG_NAMES`) and sets defaults only: an
option given explicitly (a flag on the command line) wins.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from keras_bninception.training.config import TrainConfig

INCEPTION_LEARNING_RATE = 0.0015
INCEPTION_WEIGHT_DECAY = 4e-5
INCEPTION_EPOCHS_PER_DECAY = 8.0
INCEPTION_DECAY_FACTOR = 0.96  # "decreasing the learning rate by 4% every 8 epochs".
INCEPTION_DROPOUT = 0.4

_INCEPTION = {
    "optimizer": "momentum",
    "momentum": 0.9,
    "batch_size": 32,
    # The learning rates below are for the paper's batch of 32: a larger --batch_size scales them
    # linearly (Goyal et al. 2017), with a warm-up (optimizer.py).
    "reference_batch_size": 32,
    "learning_rate": INCEPTION_LEARNING_RATE,
    "learning_rate_decay_factor": INCEPTION_DECAY_FACTOR,
    "num_epochs_per_decay": INCEPTION_EPOCHS_PER_DECAY,
    "weight_decay": INCEPTION_WEIGHT_DECAY,
    "dropout_rate": INCEPTION_DROPOUT,
    "batch_norm": False,
    "activation": "relu",
}
_BN_BASELINE = {**_INCEPTION, "batch_norm": True}
_BN_X5 = {
    **_BN_BASELINE,
    "learning_rate": INCEPTION_LEARNING_RATE * 5,
    "dropout_rate": 0.0,
    "weight_decay": INCEPTION_WEIGHT_DECAY / 5,
    "num_epochs_per_decay": INCEPTION_EPOCHS_PER_DECAY / 6,
}
_BN_X30 = {**_BN_X5, "learning_rate": INCEPTION_LEARNING_RATE * 30}
_BN_X5_SIGMOID = {**_BN_X5, "activation": "sigmoid"}

RECIPES: Mapping[str, Mapping[str, object]] = MappingProxyType(
    {
        "inception": MappingProxyType(_INCEPTION),
        "bn_baseline": MappingProxyType(_BN_BASELINE),
        "bn_x5": MappingProxyType(_BN_X5),
        "bn_x30": MappingProxyType(_BN_X30),
        "bn_x5_sigmoid": MappingProxyType(_BN_X5_SIGMOID),
    }
)


def apply_recipe(
    config: TrainConfig, recipe: str | None, explicit: Iterable[str] = ()
) -> TrainConfig:
    """Returns `config` with the values of `recipe`, except for the fields named in `explicit`.

    Args:
        config: the configuration to start from.
        recipe: one of `RECIPES` (`inception`, `bn_baseline`, `bn_x5`, `bn_x30`,
            `bn_x5_sigmoid`), or `None` to return `config` unchanged.
        explicit: flag names of the options the user set explicitly; they are kept.

    Raises:
        ValueError: if `recipe` is not a known recipe.
    """
    if recipe is None or recipe == "":
        return config
    if recipe not in RECIPES:
        raise ValueError(f"`recipe` must be one of {sorted(RECIPES)}; received recipe={recipe!r}")
    keep = set(explicit)
    updates = {k: v for k, v in RECIPES[recipe].items() if k not in keep}
    return config.replace(**updates)
