"""The optimizer and learning-rate schedule of a run.

- Learning rate: exponential decay as in the paper's Inception recipe,
  `lr(step) = learning_rate * decay_factor ** floor(step / decay_steps)` with
  `decay_steps = num_epochs_per_decay * steps_per_epoch` (TF-slim's
  `train_image_classifier.py` default, `staircase=True`).
- Optimizers (Keras): `momentum` (SGD with momentum, the paper's), `sgd` (plain), `rmsprop`
  (TF-slim's settings: rho 0.9, momentum 0.9, epsilon 1.0), `adam`.
- `mixed_precision="float16"` wraps the optimizer in a dynamic `keras.optimizers.LossScaleOptimizer`
  (see `Trainer` for how its skip-the-step decision is kept identical on all replicas); bfloat16
  needs no loss scaling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import keras

# name -> (learning_rate, momentum) -> optimizer. TF-slim's RMSProp: rho 0.9, epsilon 1.0.
OPTIMIZERS: Mapping[str, Callable[..., keras.optimizers.Optimizer]] = {
    "momentum": lambda lr, momentum: keras.optimizers.SGD(lr, momentum=momentum),
    "sgd": lambda lr, momentum: keras.optimizers.SGD(lr),
    "rmsprop": lambda lr, momentum: keras.optimizers.RMSprop(
        lr, rho=0.9, momentum=momentum, epsilon=1.0
    ),
    "adam": lambda lr, momentum: keras.optimizers.Adam(lr),
}


def learning_rate_schedule(
    learning_rate: float,
    decay_factor: float,
    num_epochs_per_decay: float,
    steps_per_epoch: float,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Staircase exponential decay by `decay_factor` every `num_epochs_per_decay` epochs."""
    decay_steps = max(1, int(math.ceil(num_epochs_per_decay * steps_per_epoch)))
    return keras.optimizers.schedules.ExponentialDecay(
        initial_learning_rate=learning_rate,
        decay_steps=decay_steps,
        decay_rate=decay_factor,
        staircase=True,
    )


def build_optimizer(
    name: str,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule,
    momentum: float = 0.9,
    mixed_precision: str | None = None,
) -> keras.optimizers.Optimizer:
    """Creates the Keras optimizer `name`, one of `OPTIMIZERS`.

    Call it inside `strategy.scope()`. Weight decay is not applied here: the training step adds
    the L2 penalty to the loss, as the paper and TF-slim do.
    """
    if name not in OPTIMIZERS:
        raise ValueError(
            f"`optimizer` must be one of {list(OPTIMIZERS)}; received optimizer={name!r}"
        )
    optimizer = OPTIMIZERS[name](learning_rate, momentum)
    if mixed_precision == "float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def current_learning_rate(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the next step will use (reads through a loss-scale wrapper)."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    return float(keras.ops.convert_to_numpy(inner.learning_rate))
