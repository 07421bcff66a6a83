"""The training configuration, in the TF Model Garden's shape: one dataclass per section.

- `model`: `BNInception`'s keyword arguments, under their own names
  (`BNInception(**dataclasses.asdict(config.model))`);
- `data`: which dataset, where, at which image size;
- `trainer`: what `Trainer` takes (batch, schedule length, loss, checkpoints, logging);
- `optimizer`: the optimizer and its learning-rate schedule;
- `init`: pretrained weights to start from (fine-tuning);
- `runtime`: distribution, precision, seeding.

`trainers/train.py` fills a `TrainConfig` from absl flags (names as in TF-slim's
`train_image_classifier.py` and the Model Garden); the library never reads flags itself. A flag is
a field's own name, except the few in `FLAG_NAMES`; `TrainConfig.replace(**values)` and the
recipes use the flag names. `TrainConfig.validate()` is the one check of every value, with a
`ValueError` in the package's style: "`x` must be ...; received x=...".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

from keras_bninception.models.figure5 import MIN_INPUT_SIZE
from keras_bninception.training.optimizer import OPTIMIZERS
from keras_bninception.training.strategy import DEFAULT_WORKER_TIMEOUT_SECONDS, STRATEGIES

MODES = ("train", "eval", "train_and_eval")
MIXED_PRECISION = (None, "bfloat16", "float16")
ACTIVATIONS = ("relu", "sigmoid")
MAX_SEED = 2**32 - 1  # numpy.random.seed accepts [0, 2**32 - 1]


@dataclasses.dataclass
class ModelConfig:
    """Keyword arguments of `keras_bninception.BNInception` (same names, same meaning)."""

    depth_multiplier: float = 1.0
    dropout_rate: float = 0.0
    batch_norm: bool = True
    activation: str = "relu"
    momentum: float = 0.99  # of the BN moving statistics
    epsilon: float = 1e-3
    synchronized: bool = False  # BN statistics over all replicas
    slim_compatible: bool = False  # tf_slim's exact variables; set by a TF-slim init_checkpoint


@dataclasses.dataclass
class DataConfig:
    """The dataset (`keras_bninception.data` names) and the square input side."""

    dataset: str = "digits"
    data_dir: str | None = None
    manual_dir: str | None = None
    image_size: int = 224
    skip_corrupt_images: bool = False  # leave out (and count) files that do not decode
    # image_folder: the fraction of each label held out for evaluation, chosen by the seed.
    validation_split: float = 0.0


@dataclasses.dataclass
class TrainerConfig:
    """The options of `Trainer`, and how long to train and evaluate.

    `train_steps` and `epochs` are alternatives: when `train_steps` is 0 the run lasts `epochs`
    passes over the training split.
    """

    batch_size: int = 32  # Global batch, split over the replicas.
    train_steps: int = 0
    epochs: float = 1.0
    eval_steps: int = 0  # 0: the whole evaluation split.
    # train_and_eval: also evaluate every this many steps (TensorBoard, metrics.json, and the
    # best checkpoint by top-1 in <model_dir>/best/); 0: only at the end.
    eval_every: int = 0
    weight_decay: float = 4e-5 / 5
    label_smoothing: float = 0.0
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 100
    jit_compile: bool = False  # XLA over each replica's whole step (forward, backward, update).


@dataclasses.dataclass
class OptimizerConfig:
    """The optimizer (a name of `optimizer.OPTIMIZERS`) and the paper's staircase decay."""

    name: str = "momentum"
    momentum: float = 0.9
    learning_rate: float = 0.0015 * 5
    learning_rate_decay_factor: float = 0.96
    num_epochs_per_decay: float = 8.0 / 6.0
    # The linear scaling rule (Goyal et al. 2017): `learning_rate` is the rate of a global batch
    # of `reference_batch_size`; the run uses learning_rate * batch_size / reference_batch_size.
    # 0: `learning_rate` is used as given. The paper's recipes set 32, their batch.
    reference_batch_size: int = 0
    # Linear warm-up to the (scaled) learning rate; None: 5 epochs when the scaling rule raises
    # the rate (global batch > reference batch), else none.
    warmup_epochs: float | None = None


@dataclasses.dataclass
class InitConfig:
    """Fine-tuning: start a new run from pretrained weights (`init_checkpoint.py`)."""

    init_checkpoint: str | None = None
    init_exclude: str | None = None  # None: the classifier when the class counts differ
    trainable_scopes: str | None = None  # None: every layer trains
    freeze_batch_norm: bool = False
    background_class: bool | None = None  # None: as the init_checkpoint says (TF-slim's 1001)


@dataclasses.dataclass
class RuntimeConfig:
    """Distribution (a name of `strategy.STRATEGIES`), precision and reproducibility."""

    distribution_strategy: str = "default"
    num_gpus: int = -1  # -1: every visible GPU.
    tpu: str | None = None
    mixed_precision: str | None = None
    seed: int | None = None
    deterministic: bool = False
    # Multi-worker: a worker silent this long (dead, hung, unreachable) stops the others.
    worker_timeout_seconds: float = DEFAULT_WORKER_TIMEOUT_SECONDS


SECTIONS: Mapping[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "trainer": TrainerConfig,
    "optimizer": OptimizerConfig,
    "init": InitConfig,
    "runtime": RuntimeConfig,
}
# Flags whose name is not their field's (a BN momentum next to the optimizer's, as in TF-slim).
FLAG_NAMES: Mapping[str, str] = {
    "model.momentum": "bn_momentum",
    "model.epsilon": "bn_epsilon",
    "model.synchronized": "sync_batch_norm",
    "optimizer.name": "optimizer",
}


def flag_fields() -> dict[str, tuple[str | None, str]]:
    """Flag name -> (section, field); section None for the top-level `mode` and `model_dir`."""
    fields: dict[str, tuple[str | None, str]] = {
        "mode": (None, "mode"),
        "model_dir": (None, "model_dir"),
    }
    for section, cls in SECTIONS.items():
        for field in dataclasses.fields(cls):
            flag = FLAG_NAMES.get(f"{section}.{field.name}", field.name)
            fields[flag] = (section, field.name)
    return fields


@dataclasses.dataclass
class TrainConfig:
    """Every option of a training / evaluation run, by section (see the module docstring).

    `model_dir` receives the checkpoints, summaries, `config.json` and `metrics.json`. Learning-
    rate decay follows the paper's Inception recipe (exponential, `learning_rate_decay_factor`
    every `num_epochs_per_decay` epochs, staircase).
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    trainer: TrainerConfig = dataclasses.field(default_factory=TrainerConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    init: InitConfig = dataclasses.field(default_factory=InitConfig)
    runtime: RuntimeConfig = dataclasses.field(default_factory=RuntimeConfig)
    mode: str = "train_and_eval"
    model_dir: str | None = None  # required: no shared default where two runs would collide

    def replace(self, **values: object) -> TrainConfig:
        """A copy with the options named by their flag names (`bn_momentum=0.9`, ...) changed."""
        fields = flag_fields()
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(
                f"`{unknown[0]}` is not an option; the options are {sorted(fields)}; "
                f"received {unknown[0]}={values[unknown[0]]!r}"
            )
        top = {}
        sections: dict[str, dict[str, object]] = {}
        for flag, value in values.items():
            section, field = fields[flag]
            if section is None:
                top[field] = value
            else:
                sections.setdefault(section, {})[field] = value
        for section, changes in sections.items():
            top[section] = dataclasses.replace(getattr(self, section), **changes)
        return dataclasses.replace(self, **top)

    def to_dict(self) -> dict:
        """JSON-ready sections (`model`, `data`, ...) plus `mode` and `model_dir`."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, object]) -> TrainConfig:
        """The inverse of `to_dict`; raises `ValueError` for an unknown section or field."""
        kwargs: dict[str, object] = {}
        for key, value in values.items():
            if key in SECTIONS:
                section = SECTIONS[key]
                names = {f.name for f in dataclasses.fields(section)}
                if not isinstance(value, Mapping) or set(value) - names:
                    raise ValueError(
                        f"`{key}` must be a mapping of {sorted(names)}; received {key}={value!r}"
                    )
                kwargs[key] = section(**value)
            elif key in ("mode", "model_dir"):
                kwargs[key] = value
            else:
                raise ValueError(
                    f"`{key}` is not a section of TrainConfig; the sections are "
                    f"{[*SECTIONS, 'mode', 'model_dir']}; received {key}={value!r}"
                )
        return cls(**kwargs)

    def validate(self) -> TrainConfig:
        """Checks every option; returns `self` or raises `ValueError` naming the bad one."""
        m, d, t, o, r = self.model, self.data, self.trainer, self.optimizer, self.runtime
        i = self.init
        _one_of("mode", self.mode, MODES)
        _one_of("distribution_strategy", r.distribution_strategy, STRATEGIES)
        _one_of("optimizer", o.name, OPTIMIZERS)
        _one_of("mixed_precision", r.mixed_precision, MIXED_PRECISION)
        _one_of("activation", m.activation, ACTIVATIONS)
        if not d.dataset:
            raise ValueError(
                f"`dataset` must name a dataset, e.g. 'digits'; received dataset={d.dataset!r}"
            )
        if not self.model_dir:
            raise ValueError(
                f"`model_dir` must be a directory path; received model_dir={self.model_dir!r}"
            )
        if r.tpu and r.distribution_strategy not in ("tpu", "default"):
            raise ValueError(
                "`tpu` must be unset unless distribution_strategy='tpu'; received "
                f"tpu={r.tpu!r} with distribution_strategy={r.distribution_strategy!r}"
            )
        _at_least("image_size", d.image_size, MIN_INPUT_SIZE)
        _at_least("batch_size", t.batch_size, 1)
        _at_least("train_steps", t.train_steps, 0)
        _at_least("num_gpus", r.num_gpus, -1)
        _at_least("checkpoint_every", t.checkpoint_every, 1)
        _at_least("keep_checkpoints", t.keep_checkpoints, 1)
        _at_least("log_every", t.log_every, 1)
        _at_least("eval_steps", t.eval_steps, 0)
        _at_least("eval_every", t.eval_every, 0)
        if t.eval_every and self.mode != "train_and_eval":
            raise ValueError(
                "`eval_every` evaluates during training: it needs mode='train_and_eval'; "
                f"received eval_every={t.eval_every!r} with mode={self.mode!r}"
            )
        if t.train_steps == 0 and self.mode != "eval":
            _positive("epochs", t.epochs)
        _positive("learning_rate", o.learning_rate)
        _positive("worker_timeout_seconds", r.worker_timeout_seconds)
        _positive("num_epochs_per_decay", o.num_epochs_per_decay)
        _at_least("reference_batch_size", o.reference_batch_size, 0)
        if o.warmup_epochs is not None:
            _in_range("warmup_epochs", o.warmup_epochs, 0.0, math.inf)
        if not 0.0 < o.learning_rate_decay_factor <= 1.0:
            raise ValueError(
                "`learning_rate_decay_factor` must be in (0, 1]; "
                f"received learning_rate_decay_factor={o.learning_rate_decay_factor!r}"
            )
        _in_range("momentum", o.momentum, 0.0, 1.0)
        _in_range("weight_decay", t.weight_decay, 0.0, math.inf)
        _in_range("label_smoothing", t.label_smoothing, 0.0, 1.0)
        _in_range("dropout_rate", m.dropout_rate, 0.0, 1.0)
        _in_range("validation_split", d.validation_split, 0.0, 1.0)
        _in_range("bn_momentum", m.momentum, 0.0, 1.0)
        _positive("bn_epsilon", m.epsilon)
        _positive("depth_multiplier", m.depth_multiplier)
        if m.slim_compatible and not (m.batch_norm and m.activation == "relu"):
            raise ValueError(
                "`slim_compatible=True` (tf_slim's network, implied by a TF-slim init_checkpoint) "
                "needs batch_norm=True and activation='relu'; received "
                f"batch_norm={m.batch_norm!r}, activation={m.activation!r}"
            )
        if i.init_exclude is not None and not i.init_checkpoint:
            raise ValueError(
                "`init_exclude` applies to an `init_checkpoint`; set one or drop init_exclude; "
                f"received init_exclude={i.init_exclude!r}"
            )
        if r.seed is not None:
            _at_least("seed", r.seed, 0)
            if r.seed > MAX_SEED:  # numpy's and Keras' seeds are 32-bit
                raise ValueError(
                    f"`seed` must be an integer in [0, {MAX_SEED}]; received seed={r.seed!r}"
                )
        if r.deterministic and r.seed is None:
            raise ValueError(
                "`deterministic=True` needs a `seed` (an integer >= 0); received seed=None"
            )
        return self


def _one_of(name: str, value: object, choices: object) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; received {name}={value!r}")


def _at_least(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"`{name}` must be an integer >= {low}; received {name}={value!r}")


def _positive(name: str, value: float) -> None:
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"`{name}` must be a finite number > 0; received {name}={value!r}")


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value < high:  # False for NaN
        raise ValueError(f"`{name}` must be in [{low}, {high}); received {name}={value!r}")
