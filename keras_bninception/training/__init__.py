"""Training BN-Inception: one custom `tf.distribute` loop, checkpoints, recipes of the paper.

Entry points: `run(TrainConfig(...))` (what `python -m trainers.train` calls), `build_trainer`
(the `Trainer` and dataset functions `run` trains with), the `Trainer` loop for custom models /
data, the paper's `RECIPES` and `apply_recipe`, `get_strategy`, and a run's saved configuration
(`save_run_config` / `load_run_config`, `<model_dir>/config.json`).
"""

from keras_bninception.training.config import (
    DataConfig,
    ModelConfig,
    OptimizerConfig,
    RuntimeConfig,
    TrainConfig,
    TrainerConfig,
)
from keras_bninception.training.errors import DivergenceError, Interrupted, TrainingError
from keras_bninception.training.experiment import (
    build_model,
    build_trainer,
    run,
    write_metrics,
)
from keras_bninception.training.recipes import RECIPES, apply_recipe
from keras_bninception.training.run_config import load_run_config, save_run_config
from keras_bninception.training.strategy import get_strategy, is_chief
from keras_bninception.training.trainer import Trainer, steps_for_epochs

__all__ = [
    "RECIPES",
    "DataConfig",
    "DivergenceError",
    "Interrupted",
    "ModelConfig",
    "OptimizerConfig",
    "RuntimeConfig",
    "TrainConfig",
    "Trainer",
    "TrainerConfig",
    "TrainingError",
    "apply_recipe",
    "build_model",
    "build_trainer",
    "get_strategy",
    "is_chief",
    "load_run_config",
    "run",
    "save_run_config",
    "steps_for_epochs",
    "write_metrics",
]
