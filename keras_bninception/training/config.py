"""The training configuration: one dataclass holding every option of the trainer, and its checks.

`trainers/train.py` fills a `TrainConfig` from absl flags (flag names as in TF-slim's
`train_image_classifier.py` and the TF Model Garden); the library never reads flags itself.
`TrainConfig.validate()` rejects values out of range with a `ValueError` whose message names the
option, the value received and what is accepted, in the style of `keras.applications`.
"""

from __future__ import annotations

import dataclasses
import math

MODES = ("train", "eval", "train_and_eval")
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
OPTIMIZERS = ("momentum", "sgd", "rmsprop", "adam")
MIXED_PRECISION = (None, "bfloat16", "float16")
ACTIVATIONS = ("relu", "sigmoid")


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training / evaluation run.

    Attributes mirror the flags of `trainers/train.py` (see `--helpfull` for their meaning).
    `train_steps` and `epochs` are alternatives: when `train_steps` is 0 the run lasts `epochs`
    passes over the training split. Learning-rate decay follows the paper's Inception recipe
    (exponential, `learning_rate_decay_factor` every `num_epochs_per_decay` epochs, staircase).
    """

    # Data.
    dataset: str = "digits"
    data_dir: str | None = None
    manual_dir: str | None = None
    image_size: int = 224
    # Where checkpoints, summaries and metrics.json go.
    model_dir: str = "/tmp/bninception"
    mode: str = "train_and_eval"
    # Distribution.
    distribution_strategy: str = "default"
    num_gpus: int = -1  # -1: every visible GPU.
    tpu: str | None = None
    # Schedule.
    batch_size: int = 32  # Global batch, split over the replicas.
    train_steps: int = 0
    epochs: float = 1.0
    # Optimization.
    optimizer: str = "momentum"
    momentum: float = 0.9
    learning_rate: float = 0.0015 * 5
    learning_rate_decay_factor: float = 0.96
    num_epochs_per_decay: float = 8.0 / 6.0
    weight_decay: float = 4e-5 / 5
    label_smoothing: float = 0.0
    mixed_precision: str | None = None
    # Model.
    batch_norm: bool = True
    activation: str = "relu"
    dropout_rate: float = 0.0
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    sync_batch_norm: bool = False
    depth_multiplier: float = 1.0
    slim_compatible: bool = False  # tf_slim's exact variables; set by a TF-slim init_checkpoint
    # Fine-tuning: start from pretrained weights (`init_checkpoint.py`).
    init_checkpoint: str | None = None
    init_exclude: str | None = None  # None: the classifier when the class counts differ
    trainable_scopes: str | None = None  # None: every layer trains
    freeze_batch_norm: bool = False
    background_class: bool | None = None  # None: as the init_checkpoint says (TF-slim's 1001)
    # Reproducibility and bookkeeping.
    seed: int | None = None
    deterministic: bool = False
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 100
    eval_steps: int = 0  # 0: the whole evaluation split.

    def validate(self) -> TrainConfig:
        """Checks every option; returns `self` or raises `ValueError` naming the bad one."""
        _one_of("mode", self.mode, MODES)
        _one_of("distribution_strategy", self.distribution_strategy, STRATEGIES)
        _one_of("optimizer", self.optimizer, OPTIMIZERS)
        _one_of("mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _one_of("activation", self.activation, ACTIVATIONS)
        if not self.dataset:
            raise ValueError("The `dataset` argument must name a dataset, e.g. 'digits'.")
        if not self.model_dir:
            raise ValueError("The `model_dir` argument must be a directory path.")
        if self.tpu and self.distribution_strategy not in ("tpu", "default"):
            raise ValueError(
                "`tpu` is only used with distribution_strategy='tpu'. "
                f"Received: distribution_strategy={self.distribution_strategy!r}"
            )
        _at_least("image_size", self.image_size, 32)
        _at_least("batch_size", self.batch_size, 1)
        _at_least("train_steps", self.train_steps, 0)
        _at_least("num_gpus", self.num_gpus, -1)
        _at_least("checkpoint_every", self.checkpoint_every, 1)
        _at_least("keep_checkpoints", self.keep_checkpoints, 1)
        _at_least("log_every", self.log_every, 1)
        _at_least("eval_steps", self.eval_steps, 0)
        if self.train_steps == 0 and self.mode != "eval":
            _positive("epochs", self.epochs)
        _positive("learning_rate", self.learning_rate)
        _positive("num_epochs_per_decay", self.num_epochs_per_decay)
        if not 0.0 < self.learning_rate_decay_factor <= 1.0:
            raise ValueError(
                "The `learning_rate_decay_factor` argument should be in (0, 1]. "
                f"Received: learning_rate_decay_factor={self.learning_rate_decay_factor!r}"
            )
        _in_range("momentum", self.momentum, 0.0, 1.0, False)
        _in_range("weight_decay", self.weight_decay, 0.0, math.inf, False)
        _in_range("label_smoothing", self.label_smoothing, 0.0, 1.0, False)
        _in_range("dropout_rate", self.dropout_rate, 0.0, 1.0, False)
        _in_range("bn_momentum", self.bn_momentum, 0.0, 1.0, False)
        _positive("bn_epsilon", self.bn_epsilon)
        _positive("depth_multiplier", self.depth_multiplier)
        if self.slim_compatible and not (self.batch_norm and self.activation == "relu"):
            raise ValueError(
                "`slim_compatible=True` (tf_slim's network, implied by a TF-slim init_checkpoint) "
                "needs batch_norm=True and activation='relu'. Received: "
                f"batch_norm={self.batch_norm!r}, activation={self.activation!r}"
            )
        if self.init_exclude is not None and not self.init_checkpoint:
            raise ValueError(
                "`init_exclude` applies to an `init_checkpoint`; set one or drop init_exclude. "
                f"Received: init_exclude={self.init_exclude!r}"
            )
        if self.seed is not None:
            _at_least("seed", self.seed, 0)
        if self.deterministic and self.seed is None:
            raise ValueError(
                "`deterministic=True` needs a `seed` (an integer >= 0). Received: seed=None"
            )
        return self


def _one_of(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(
            f"The `{name}` argument should be one of {list(choices)}. Received: {name}={value!r}"
        )


def _at_least(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(
            f"The `{name}` argument should be an integer >= {low}. Received: {name}={value!r}"
        )


def _positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(
            f"The `{name}` argument should be a finite number > 0. Received: {name}={value!r}"
        )


def _in_range(name: str, value: float, low: float, high: float, low_open: bool) -> None:
    left = "(" if low_open else "["
    ok = (value > low if low_open else value >= low) and value < high and not math.isnan(value)
    if not ok:
        raise ValueError(
            f"The `{name}` argument should be in {left}{low}, {high}). Received: {name}={value!r}"
        )
