r"""Trains and evaluates BN-Inception: `python -m trainers.train` (or `bninception-train`).

A thin absl-flags front end of `keras_bninception.training.run`; flag names follow TF-slim's
`train_image_classifier.py` and the TF Model Garden. Rerunning the same command resumes from the
newest checkpoint in `--model_dir`. Problems a user can fix (an unknown dataset, missing files, a
flag out of range, a diverging loss, ...) end with one `error:` line on stderr and exit status 1
(2 for a malformed flag); checkpoints already written are never touched. SIGTERM (preemption) or
SIGINT (Ctrl-C) stop training after the current step with a checkpoint of it, `metrics.json` with
`"interrupted": true`, one `error:` line saying how to resume, and exit status 128 + the signal.

Examples:

  # The embedded digits, on the CPU, as `make demo` does (see trainers/demo.py):
  python -m trainers.train --dataset=digits --image_size=32 --model_dir=/tmp/digits

  # ImageNet as in the paper's BN-x30 network, on all the GPUs of one machine
  # (MirroredStrategy, NCCL all-reduce), bfloat16 on A100/H100 or float16 with loss scaling:
  python -m trainers.train --recipe=bn_x30 --dataset=imagenet2012 \
      --manual_dir=/data/imagenet --data_dir=/data/tfds --model_dir=/ckpt/bn_x30 \
      --distribution_strategy=mirrored --batch_size=256 --epochs=30 \
      --mixed_precision=float16 --sync_batch_norm

  # Several machines (MultiWorkerMirroredStrategy): run the SAME command on every machine, each
  # with its own TF_CONFIG (same cluster, its own task index); `--model_dir` must be on a shared
  # file system (GCS, NFS). Worker 0 is the chief: it alone writes checkpoints, logs and metrics.
  TF_CONFIG='{"cluster": {"worker": ["host1:12345", "host2:12345"]},
              "task": {"type": "worker", "index": 0}}' \
  python -m trainers.train --distribution_strategy=multi_worker_mirrored --recipe=bn_x5 \
      --dataset=imagenet2012 --manual_dir=/data/imagenet --data_dir=/data/tfds \
      --model_dir=gs://bucket/bn_x5 --batch_size=512 --num_gpus=8 --epochs=30
  # ...and on host2 the same with "index": 1. `--batch_size` is the global batch over all
  # replicas of all workers; it must be divisible by their number.

  # Fine-tune TF-slim's ImageNet checkpoint on your own images (root/<label>/*.jpg, 20 % of
  # each label held out for evaluation): the last two modules and a new classifier train, BN
  # frozen.
  python -m trainers.train --dataset=image_folder --data_dir=/data/flowers --validation_split=0.2 \
      --init_checkpoint=imagenet --trainable_scopes=Mixed_5b,Mixed_5c,Logits \
      --freeze_batch_norm --model_dir=/tmp/flowers --batch_size=32 --epochs=5

  # Evaluate the published checkpoint as it is (1001 outputs, class 0 = background, mapped to
  # imagenet2012's 1000 labels):
  python -m trainers.train --mode=eval --init_checkpoint=imagenet \
      --dataset=imagenet2012 --manual_dir=/data/imagenet --model_dir=/tmp/eval_slim

  # Evaluate the newest checkpoint (top-1 / top-5, written to <model_dir>/metrics.json):
  python -m trainers.train --mode=eval --dataset=imagenet2012 --manual_dir=/data/imagenet \
      --model_dir=/ckpt/bn_x30

TensorBoard: `tensorboard --logdir <model_dir>/logs`.
"""

from __future__ import annotations

import os
import sys

# Eager imports: the configuration's registries (optimizers, strategies) load TensorFlow anyway.
import tensorflow as tf
from absl import app, flags, logging

from keras_bninception import training
from keras_bninception.errors import first_line
from keras_bninception.training import config as config_lib
from keras_bninception.training import recipes
from trainers.cli import console_script_help, fail, no_arguments, parse_flags

_D = config_lib.TrainConfig()
_M, _DATA, _T, _O, _R, _I = _D.model, _D.data, _D.trainer, _D.optimizer, _D.runtime, _D.init
FLAGS = flags.FLAGS

# Data.
flags.DEFINE_string("dataset", _DATA.dataset, "'digits' (embedded), 'image_folder' or a TFDS name.")
flags.DEFINE_string(
    "data_dir",
    None,
    "TFDS data directory, or the image folder: root/<label>/* or root/<split>/<label>/*.",
)
flags.DEFINE_float(
    "validation_split",
    _DATA.validation_split,
    "image_folder: the fraction of each label's images held out for evaluation, chosen by "
    "--seed (0: none; without a validation split the run evaluates on the training images and "
    "says so).",
)
flags.DEFINE_string("manual_dir", None, "Where manually downloaded files are (imagenet2012).")
flags.DEFINE_integer(
    "image_size", _DATA.image_size, f"Input height and width (>= {config_lib.MIN_INPUT_SIZE})."
)
flags.DEFINE_bool(
    "skip_corrupt_images",
    _DATA.skip_corrupt_images,
    "Leave out image files that do not decode (logged, counted in metrics.json) instead of "
    "stopping at the first.",
)
# Run.
flags.DEFINE_string(
    "model_dir",
    None,
    "Required. The run's directory: checkpoints, TensorBoard logs, config.json, metrics.json. "
    "Rerunning with the same directory resumes the run; a new one starts a new run.",
)
flags.mark_flag_as_required("model_dir")
flags.DEFINE_enum("mode", _D.mode, config_lib.MODES, "What to do.")
# Runtime.
flags.DEFINE_enum(
    "distribution_strategy",
    _R.distribution_strategy,
    list(config_lib.STRATEGIES),
    "tf.distribute.",
)
flags.DEFINE_integer("num_gpus", _R.num_gpus, "GPUs per worker to use; -1 = all visible.")
flags.DEFINE_string("tpu", None, "TPU name or grpc:// address, for --distribution_strategy=tpu.")
flags.DEFINE_enum(
    "mixed_precision", None, ["bfloat16", "float16"], "Mixed precision (float16: loss scaling)."
)
flags.DEFINE_integer(
    "seed",
    None,
    "Random seed (weights, data order, augmentation), in [0, 2**32 - 1].",
    lower_bound=0,
    upper_bound=config_lib.MAX_SEED,
)
flags.DEFINE_bool("deterministic", False, "Reproducible run (needs --seed; slower).")
flags.DEFINE_float(
    "worker_timeout_seconds",
    _R.worker_timeout_seconds,
    "Multi-worker: a worker that sends no heartbeat for this long (it died, hangs, or its "
    "machine is gone) stops the others with an error naming it; > 0.",
)
# Trainer.
flags.DEFINE_integer("batch_size", _T.batch_size, "Global batch size (all replicas).")
flags.DEFINE_integer("train_steps", _T.train_steps, "Training steps; 0 = use --epochs.")
flags.DEFINE_float("epochs", _T.epochs, "Passes over the training split when --train_steps=0.")
flags.DEFINE_integer("eval_steps", _T.eval_steps, "Evaluation batches; 0 = the whole split.")
flags.DEFINE_integer(
    "eval_every",
    _T.eval_every,
    "--mode=train_and_eval: evaluate every this many steps (TensorBoard, metrics.json "
    "'evaluations') and keep the best checkpoint by top-1 in <model_dir>/best/; 0 = at the end.",
)
flags.DEFINE_float("weight_decay", _T.weight_decay, "L2 coefficient: wd * sum(w^2) / 2.")
flags.DEFINE_float("label_smoothing", _T.label_smoothing, "Label smoothing of the loss.")
flags.DEFINE_integer("checkpoint_every", _T.checkpoint_every, "Steps between checkpoints.")
flags.DEFINE_integer("keep_checkpoints", _T.keep_checkpoints, "Checkpoints kept.")
flags.DEFINE_integer("log_every", _T.log_every, "Steps between progress lines / summaries.")
flags.DEFINE_bool("jit_compile", _T.jit_compile, "XLA-compile each replica's whole training step.")
# Optimizer.
flags.DEFINE_enum("optimizer", _O.name, list(config_lib.OPTIMIZERS), "Keras optimizer.")
flags.DEFINE_float("momentum", _O.momentum, "Momentum of 'momentum' and 'rmsprop'.")
flags.DEFINE_float(
    "learning_rate",
    _O.learning_rate,
    "Initial learning rate; with --reference_batch_size, the rate of that global batch.",
)
flags.DEFINE_integer(
    "reference_batch_size",
    _O.reference_batch_size,
    "Linear scaling rule (Goyal et al. 2017): the run's learning rate is --learning_rate x "
    "--batch_size / this; 0 = --learning_rate as given. The --recipe's set 32.",
)
flags.DEFINE_float(
    "warmup_epochs",
    None,
    "Linear learning-rate warm-up, in epochs; default: 5 when the scaling rule raises the rate, "
    "else 0.",
)
flags.DEFINE_float(
    "learning_rate_decay_factor", _O.learning_rate_decay_factor, "Exponential decay factor."
)
flags.DEFINE_float(
    "num_epochs_per_decay", _O.num_epochs_per_decay, "Epochs between two decays (staircase)."
)
# Model (BNInception's arguments; three flags keep TF-slim's names, see config.FLAG_NAMES).
flags.DEFINE_bool("batch_norm", _M.batch_norm, "Batch Normalization after every conv.")
flags.DEFINE_enum("activation", _M.activation, config_lib.ACTIVATIONS, "Non-linearity.")
flags.DEFINE_float("dropout_rate", _M.dropout_rate, "Dropout before the classifier.")
flags.DEFINE_float("bn_momentum", _M.momentum, "Momentum of the BN moving statistics.")
flags.DEFINE_float("bn_epsilon", _M.epsilon, "Epsilon of Batch Normalization.")
flags.DEFINE_bool("sync_batch_norm", _M.synchronized, "BN statistics over all replicas.")
flags.DEFINE_float("depth_multiplier", _M.depth_multiplier, "Scales every conv's channels.")
flags.DEFINE_bool(
    "slim_compatible",
    _M.slim_compatible,
    "tf_slim's exact inception_v2 variables (no gamma, biased first conv); implied by a TF-slim "
    "--init_checkpoint.",
)
# Initialization (fine-tuning).
flags.DEFINE_string(
    "init_checkpoint",
    None,
    "Start a new run from these weights (not used when --model_dir has a checkpoint): 'imagenet' "
    "(TF-slim's published ImageNet checkpoint, downloaded once into the Keras cache), a TF-slim "
    "inception_v2 checkpoint (V1 file, V2 prefix or the published .tar.gz), a .keras / "
    ".weights.h5 file, or another run's --model_dir.",
)
flags.DEFINE_string(
    "init_exclude",
    None,
    "Comma-separated tf_slim scopes (prefixes by component, or globs) left at their initial "
    "values, e.g. Logits; default: Logits when the class counts differ.",
)
flags.DEFINE_string(
    "trainable_scopes",
    None,
    "Comma-separated tf_slim scopes that train, e.g. Mixed_5b,Mixed_5c,Logits; default all.",
)
flags.DEFINE_bool(
    "freeze_batch_norm",
    _I.freeze_batch_norm,
    "BN layers frozen: inference mode with their moving statistics, nothing updated.",
)
flags.DEFINE_bool(
    "background_class",
    None,
    "The classifier has TF-slim's class 0 (background), dropped from the outputs; default: when "
    "a TF-slim --init_checkpoint has one class more than the dataset (1001 vs 1000).",
)
flags.DEFINE_enum(
    "recipe",
    None,
    list(recipes.RECIPES),
    "The paper's training recipe (sets optimizer, learning rate and decay, weight decay, "
    "dropout, BN, activation); explicit flags override it.",
)


def config_from_flags() -> config_lib.TrainConfig:
    """The `TrainConfig` the parsed flags describe (recipe first, explicit flags on top)."""
    names = config_lib.flag_fields()
    config = config_lib.TrainConfig().replace(**{name: FLAGS[name].value for name in names})
    explicit = [name for name in names if FLAGS[name].present]
    return recipes.apply_recipe(config, FLAGS.recipe, explicit)


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.INFO)
    try:
        config = config_from_flags()
        results = training.run(config)
    except training.Interrupted as e:
        fail(e, status=e.exit_status)
    except (ValueError, training.TrainingError) as e:
        fail(e)
    except tf.errors.OpError as e:
        # A data problem found while iterating (e.g. an undecodable file), without TF's op context.
        fail(first_line(e))
    print(summary(config, results), flush=True)


def summary(config: config_lib.TrainConfig, results: dict) -> str:
    """Where the run's artifacts are, and its final metrics, for the console."""
    model_dir = config.model_dir if "://" in config.model_dir else os.path.abspath(config.model_dir)
    lines = [f"Done: step {results['step']} of {results['train_steps']}."]
    if "eval" in results:
        ev = results["eval"]
        accuracy = (
            f"top-1 {100 * ev['top_1_accuracy']:.2f}%, top-5 {100 * ev['top_5_accuracy']:.2f}%"
        )
        if ev.get("held_out", True):
            lines.append(f"Held-out ({ev['split']}, {ev['num_examples']} images): {accuracy}.")
        else:
            lines.append(
                f"Training split (not held out; {ev['split']}, {ev['num_examples']} images): "
                f"{accuracy}. Set --validation_split to measure held-out accuracy."
            )
    if results.get("best"):
        best = results["best"]
        lines.append(
            f"Best evaluation (--eval_every): top-1 {100 * best['top_1_accuracy']:.2f}% at step "
            f"{best['step']}, kept in {best['checkpoint']}"
        )
    if "train" in results and results["train"].get("train_seconds"):
        lines.append(f"Training time: {results['train']['train_seconds']:.1f} s.")
    lines += [
        f"Checkpoints: {os.path.join(model_dir, 'checkpoints')}",
        f"TensorBoard: tensorboard --logdir {os.path.join(model_dir, 'logs')}",
        f"Metrics:     {os.path.join(model_dir, 'metrics.json')}",
    ]
    return "\n".join(lines)


def run() -> None:
    """Console-script entry point (`bninception-train`)."""
    console_script_help(sys.modules[__name__])
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
