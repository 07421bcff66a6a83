"""The optimizer and learning-rate schedule of a run.

- Learning rate: exponential decay as in the paper's Inception recipe,
  `lr(step) = learning_rate * decay_factor ** floor(step / decay_steps)` with
  `decay_steps = num_epochs_per_decay * steps_per_epoch` (TF-slim's
  `train_image_classifier.py` default, `staircase=True`).
- Large batches (Goyal et al. 2017, "Accurate, Large Minibatch SGD"): the linear scaling rule,
  `learning_rate = base_learning_rate * global_batch / reference_batch`
  (`scaled_learning_rate`), and a linear warm-up from `lr / warmup_steps` to `lr` over the first
  `warmup_steps` steps (`WarmUp`), after which the decay above goes on from where its step is.
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


# Goyal et al. 2017 warm up over 5 epochs when the rule raises the learning rate.
DEFAULT_WARMUP_EPOCHS = 5.0


def scaled_learning_rate(
    base_learning_rate: float, global_batch_size: int, reference_batch_size: int
) -> float:
    """The linear scaling rule: `base * global_batch / reference_batch` (reference 0: `base`)."""
    if not reference_batch_size:
        return base_learning_rate
    return base_learning_rate * global_batch_size / reference_batch_size


def warmup_epochs_for(
    warmup_epochs: float | None, global_batch_size: int, reference_batch_size: int
) -> float:
    """`warmup_epochs`, or for None the default: `DEFAULT_WARMUP_EPOCHS` when the scaling rule
    raises the learning rate (global batch > reference batch), else none."""
    if warmup_epochs is not None:
        return float(warmup_epochs)
    raised = reference_batch_size and global_batch_size > reference_batch_size
    return DEFAULT_WARMUP_EPOCHS if raised else 0.0


class WarmUp(keras.optimizers.schedules.LearningRateSchedule):
    """`peak * (step + 1) / warmup_steps` for the first `warmup_steps` steps, then `after(step)`.

    Goyal et al. 2017, section 2.2 ("gradual warmup"): the first step uses `peak / warmup_steps`,
    step `warmup_steps - 1` reaches `peak`; `after` (the decay) sees the global step unchanged.
    """

    def __init__(
        self,
        after: keras.optimizers.schedules.LearningRateSchedule,
        peak: float,
        warmup_steps: int,
    ):
        self.after = after
        self.peak = float(peak)
        self.warmup_steps = int(warmup_steps)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.peak * (step + 1.0) / float(self.warmup_steps)
        return keras.ops.where(step < self.warmup_steps, warm, self.after(step))

    def get_config(self) -> dict:
        return {
            "after": keras.optimizers.schedules.serialize(self.after),
            "peak": self.peak,
            "warmup_steps": self.warmup_steps,
        }

    @classmethod
    def from_config(cls, config: dict) -> WarmUp:
        after = keras.optimizers.schedules.deserialize(config["after"])
        return cls(after, config["peak"], config["warmup_steps"])


def learning_rate_schedule(
    learning_rate: float,
    decay_factor: float,
    num_epochs_per_decay: float,
    steps_per_epoch: float,
    warmup_steps: int = 0,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """Staircase exponential decay by `decay_factor` every `num_epochs_per_decay` epochs, after a
    linear warm-up to `learning_rate` over `warmup_steps` steps (0: none)."""
    decay_steps = max(1, int(math.ceil(num_epochs_per_decay * steps_per_epoch)))
    decay = keras.optimizers.schedules.ExponentialDecay(
        initial_learning_rate=learning_rate,
        decay_steps=decay_steps,
        decay_rate=decay_factor,
        staircase=True,
    )
    return WarmUp(decay, learning_rate, warmup_steps) if warmup_steps > 0 else decay


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
