"""Training BN-Inception: one custom `tf.distribute` loop, checkpoints, recipes of the paper.

Entry points: `run(TrainConfig(...))` (what `python -m trainers.train` calls), the `Trainer` loop
for custom models / data, the paper's `RECIPES` and `apply_recipe`, and `get_strategy`.
"""

from keras_bninception.training.config import TrainConfig
from keras_bninception.training.errors import DivergenceError, Interrupted, TrainingError
from keras_bninception.training.experiment import build_model, run, write_metrics
from keras_bninception.training.recipes import RECIPES, apply_recipe
from keras_bninception.training.strategy import get_strategy, is_chief
from keras_bninception.training.trainer import Trainer, steps_for_epochs

__all__ = [
    "RECIPES",
    "DivergenceError",
    "Interrupted",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "apply_recipe",
    "build_model",
    "get_strategy",
    "is_chief",
    "run",
    "steps_for_epochs",
    "write_metrics",
]
