"""One run of the trainer: data + BN-Inception + strategy + loop, from a `TrainConfig`.

`run(config)` is what `python -m trainers.train` and `make demo` call. It

1. resolves: validates the configuration, creates the strategy, with `mode=eval` on a run takes
   the options its `config.json` records (its network, precision and recipe, the dataset, image
   size and held-out split it was trained on), seeds / makes deterministic what was asked,
   describes the dataset (`keras_bninception.data.get_info`), resolves the init_checkpoint,
   logs the configuration and the learning rate (linear scaling rule, warm-up; resolved once,
   passed on); builds BN-Inception and the optimizer inside the strategy scope under the Keras
   mixed-precision policy (`mixed_bfloat16` / `mixed_float16`),
2. restores the newest checkpoint of `model_dir` (so rerunning the same command resumes; with
   `mode=eval` its model and step only: evaluation needs no optimizer), or, when there is
   none, initializes the model from `init_checkpoint` (fine-tuning),
3. trains (`mode=train|train_and_eval`), evaluating every `eval_every` steps if asked,
4. evaluates top-1 / top-5 (`mode=eval|train_and_eval`),
5. reports: writes `model_dir/metrics.json` (chief only) and returns the same dictionary.

Layout of `model_dir`: `config.json` (the run's configuration and class names, written by the
chief when training starts, see `run_config.py`), `checkpoints/` (tf.train checkpoints, the
newest), `best/` (with `eval_every`: the checkpoint of the best top-1 and its `best.json`),
`logs/train`, `logs/eval` (TensorBoard), `metrics.json`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import secrets
import time
from typing import TYPE_CHECKING

import keras
import tensorflow as tf
from absl import logging

from keras_bninception.training import init_checkpoint
from keras_bninception.training.checkpointing import BestCheckpoint
from keras_bninception.training.config import MAX_SEED, TrainConfig, flag_fields
from keras_bninception.training.errors import Interrupted, TrainingError
from keras_bninception.training.init_checkpoint import InitSource
from keras_bninception.training.optimizer import (
    build_optimizer,
    learning_rate_schedule,
    scaled_learning_rate,
    warmup_epochs_for,
)
from keras_bninception.training.run_config import (
    CONFIG_FILE,
    load_run_config,
    save_run_config,
    write_json_atomically,
)
from keras_bninception.training.strategy import (
    agreed_value,
    any_replica,
    explain_worker_failure,
    get_strategy,
)
from keras_bninception.training.trainer import (
    EvalDatasetFn,
    TrainDatasetFn,
    Trainer,
    steps_for_epochs,
)
from keras_bninception.weights import tf_slim

if TYPE_CHECKING:
    from keras_bninception.data import DatasetInfo

_POLICIES = {None: "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def build_model(config: TrainConfig, num_classes: int) -> keras.Model:
    """BN-Inception producing logits, as `config` describes it (call inside the strategy scope).

    With `config.init.background_class` the classifier has TF-slim's extra class 0
    ("background"), dropped from the outputs: logits for the dataset's `num_classes` labels either
    way. With the `config` and class count of `load_run_config(model_dir)` this is the trained
    network, ready for its checkpoint.
    """
    from keras_bninception.models import BNInception

    size = config.data.image_size
    model = BNInception(
        include_top=True,
        weights=None,
        input_shape=(size, size, 3),
        classes=num_classes + 1 if config.init.background_class else num_classes,
        classifier_activation=None,
        **dataclasses.asdict(config.model),
    )
    if config.init.background_class:
        model = init_checkpoint.without_background_class(model)
    return model


def resolve_init(config: TrainConfig, num_classes: int) -> tuple[TrainConfig, InitSource | None]:
    """Resolves `config.init_checkpoint`; returns the config to run, with the model it implies.

    A TF-slim checkpoint implies tf_slim's network (`slim_compatible=True`) and, when it has one
    class more than the dataset, TF-slim's background class 0 (`background_class=True`); both
    are written into the returned config, hence into config.json, so that the run can be rebuilt
    from its record alone.

    Raises:
        ValueError: the source does not exist, or contradicts the configured network.
    """
    if not config.init.init_checkpoint:
        return config, None
    source = init_checkpoint.resolve_init_source(config.init.init_checkpoint)
    changes: dict = {}
    if source.kind == init_checkpoint.TF_SLIM:
        model = dataclasses.asdict(config.model)
        wrong = tf_slim.slim_conflicts(model, checkpoint=True)
        if wrong:
            raise ValueError(
                f"The TF-slim init_checkpoint {source.path!r} needs tf_slim's network; these "
                f"options contradict it: {', '.join(wrong)}"
            )
        changes["slim_compatible"] = True
    if config.init.background_class is None:
        changes["background_class"] = init_checkpoint.has_background_class(source, num_classes)
    logging.info(
        "init_checkpoint %s: %s, %s classes%s.",
        source.path,
        source.kind,
        source.num_classes,
        " (class 0 = background, dropped)" if changes.get("background_class") else "",
    )
    return config.replace(**changes), source


def initialize_from(
    model: keras.Model, config: TrainConfig, source: InitSource
) -> init_checkpoint.InitReport:
    """Loads `source` into `model` (a new run's), leaving `config.init_exclude` at init."""

    def build_source_model(num_classes: int | None) -> keras.Model:
        # A run: the network its config.json records. A .weights.h5 file (or a run from before
        # config.json): this run's architecture with the source's classifier.
        if source.model_dir is not None and tf.io.gfile.exists(
            tf.io.gfile.join(source.model_dir, CONFIG_FILE)
        ):
            source_config, class_names = load_run_config(source.model_dir)
            return build_model(source_config, len(class_names))
        return build_model(config.replace(background_class=False), num_classes or 1)

    return init_checkpoint.load_init_checkpoint(
        model, source, config.init.init_exclude, build_source_model=build_source_model
    )


def run(config: TrainConfig) -> dict:
    """Trains and/or evaluates as `config` says; returns the metrics written to metrics.json.

    Raises:
        ValueError: a bad option or dataset (`keras_bninception.data.DataError` is one, e.g. a
            corrupt image of a streamed split, named).
        TrainingError: training cannot go on (e.g. `DivergenceError`), `mode=eval` without a
            checkpoint, or another worker was lost (named). In every case the checkpoints
            already in `model_dir` are left untouched.
    """
    config.validate()
    try:
        return _run(config)
    except tf.errors.OpError as e:
        lost = explain_worker_failure(e, config.runtime.worker_timeout_seconds)
        if lost is None:
            raise
        raise lost from e


def _run(config: TrainConfig) -> dict:
    """The phases of a run: resolve, restore, train, evaluate, report."""
    from keras_bninception import data

    resolved = _resolve(config)
    strategy, config, info, init_source = (
        resolved.strategy,
        resolved.config,
        resolved.info,
        resolved.init_source,
    )
    trainer, train_dataset, eval_dataset = build_trainer(
        config, info, strategy, learning_rate=resolved.learning_rate
    )
    try:
        restored = _restore(trainer, strategy, config, resolved.recorded, init_source)
        results: dict = {
            "dataset": info.name,
            "config": config.to_dict(),
            "train_steps": _train_steps(config, info),
            "num_replicas": strategy.num_replicas_in_sync,
            "learning_rate": resolved.learning_rate,
        }
        began = time.perf_counter()
        if config.mode in ("train", "train_and_eval"):
            _train(trainer, config, info, train_dataset, eval_dataset, results, began)
        elif restored is None and init_source is None:
            raise TrainingError(
                f"mode=eval needs a checkpoint, but {trainer.checkpoints.directory} has none; "
                "train first (--mode=train or train_and_eval), or evaluate an --init_checkpoint."
            )
        if config.mode in ("eval", "train_and_eval"):
            step = int(trainer.step.numpy())
            done = [e for e in results.get("evaluations", ()) if e["step"] == step]
            results["eval"] = done[-1] if done else _evaluate(trainer, eval_dataset, config, info)
        return _report(trainer, config, results, began)
    except tf.errors.OpError as e:
        # A corrupt image met while iterating a streamed split: one DataError naming the file.
        explained = data.explain_error(e)
        if explained is None:
            raise
        raise data.DataError(f"{explained} (--skip_corrupt_images leaves such files out)") from e
    finally:
        trainer.close()


@dataclasses.dataclass(frozen=True)
class _Resolved:
    """What `_resolve` found: the run's plan, before anything is built or written."""

    strategy: tf.distribute.Strategy
    config: TrainConfig  # the config to run
    recorded: TrainConfig | None  # the config.json of model_dir, if any
    info: DatasetInfo
    init_source: InitSource | None
    learning_rate: dict  # `learning_rate_plan`


def _resolve(config: TrainConfig) -> _Resolved:
    """Resolves what the run needs before anything is built or written.

    The strategy (first: MultiWorkerMirroredStrategy must configure collectives before TF runs
    anything), with `mode=eval` the network and data of the run it evaluates
    (`_with_recorded_run`), the seed (drawn once and agreed by every worker, or the run's
    recorded one), the dataset (described once), the init_checkpoint (it exists and fits the
    network), the learning rate; logs the plan.
    """
    from keras_bninception import data

    runtime = config.runtime
    strategy = get_strategy(
        runtime.distribution_strategy,
        runtime.num_gpus,
        runtime.tpu,
        runtime.worker_timeout_seconds,
    )
    recorded = _recorded_config(config.model_dir)
    if config.mode == "eval" and recorded is not None:
        config = _with_recorded_run(config, recorded)
    if runtime.seed is None:
        # One seed for every worker (their data shards must come from one shuffle), recorded
        # in config.json and metrics.json; a resumed run keeps the recorded one.
        seed = recorded.runtime.seed if recorded and recorded.runtime.seed is not None else None
        drawn = seed is None
        seed = agreed_value(strategy, secrets.randbelow(MAX_SEED + 1) if drawn else seed)
        config = config.replace(seed=seed)
        runtime = config.runtime
        logging.info(
            "No seed given: %s seed %d.", "drew" if drawn else "the run's recorded", runtime.seed
        )
    keras.utils.set_random_seed(runtime.seed)
    if runtime.deterministic:
        tf.config.experimental.enable_op_determinism()
    info = data.get_info(
        config.data.dataset,
        data_dir=config.data.data_dir,
        manual_dir=config.data.manual_dir,
        validation_split=config.data.validation_split,
        seed=runtime.seed,
    )
    config, init_source = resolve_init(config, info.num_classes)
    replicas = strategy.num_replicas_in_sync
    logging.info(
        "Dataset %s: %d classes, %d training / %d evaluation examples (%s / %s%s); %d replica(s).",
        info.name,
        info.num_classes,
        info.num_train_examples,
        info.num_eval_examples,
        info.train_split,
        info.eval_split,
        "" if info.eval_held_out else ", the training split: not held out",
        replicas,
    )
    logging.info("Configuration: %s", json.dumps(config.to_dict(), sort_keys=True))
    plan = learning_rate_plan(config, info.num_train_examples)
    logging.info(
        "Learning rate %.6g (%s), linear warm-up over %d step(s) (%.3g epoch(s)), then x%g "
        "every %.3g epoch(s).",
        plan["learning_rate"],
        plan["rule"],
        plan["warmup_steps"],
        plan["warmup_epochs"],
        config.optimizer.learning_rate_decay_factor,
        config.optimizer.num_epochs_per_decay,
    )
    warning = small_batch_norm_warning(config, replicas)
    if warning:
        logging.warning(warning)
    return _Resolved(strategy, config, recorded, info, init_source, plan)


# What `mode=eval` takes from the run it evaluates (its config.json) where left at the default:
# by section, every field (None) or those named. The network, the data it was trained and held out
# on, the precision, and the rest of its recipe (optimizer, schedule, batch: the results then
# describe the run, and the evaluation reads the images the run's own evaluation read). Not taken:
# how this process runs (distribution, devices, determinism, logging, checkpointing, eval_every)
# and what a new run would start from (init_checkpoint, its exclusions and trainable scopes).
_EVAL_TAKES = {
    "model": None,
    "data": None,
    "trainer": (
        "batch_size",
        "train_steps",
        "epochs",
        "eval_steps",
        "weight_decay",
        "label_smoothing",
    ),
    "optimizer": None,
    "init": ("background_class",),
    "runtime": ("mixed_precision",),
}
# Of these, the flags whose given value, if it differs, is refused: it would evaluate another
# network (its variables, its classifier, its computation; a dropout layer exists only with a
# rate, and the checkpoint's structure follows it) or on other data. Any other value given is used:
# where the data is now, the evaluation's batch and precision, and the training-only options (BN
# momentum and synchronization, the optimizer, the schedule), which evaluation does not read.
_EVAL_REFUSES = frozenset(
    {
        "dataset",
        "image_size",
        "validation_split",
        "depth_multiplier",
        "batch_norm",
        "activation",
        "bn_epsilon",
        "dropout_rate",
        "slim_compatible",
        "background_class",
    }
)


def _with_recorded_run(config: TrainConfig, recorded: TrainConfig) -> TrainConfig:
    """`config` (mode=eval) with the run's recorded options where it leaves the defaults.

    Evaluating a run means evaluating the network it trained, on what it held out, at its input
    size: as a resumed run does, `--mode=eval --model_dir=<run>` takes the options of
    `_EVAL_TAKES` from its config.json. A value given that differs for one of `_EVAL_REFUSES`,
    or a seed other than the one that chose the held-out images, is refused.

    Raises:
        TrainingError: listing each conflicting option (flag, given and recorded values).
    """
    defaults, taken, conflicts = TrainConfig(), {}, []
    for flag, (section, field) in flag_fields().items():
        fields = _EVAL_TAKES.get(section, ())
        if fields is not None and field not in fields:
            continue
        given, then = (getattr(getattr(c, section), field) for c in (config, recorded))
        if given == then:
            continue
        if given == getattr(getattr(defaults, section), field):
            taken[flag] = then
        elif flag in _EVAL_REFUSES:
            conflicts.append(f"--{flag}={given!r} (the run has {then!r})")
    seed, recorded_seed = config.runtime.seed, recorded.runtime.seed
    if recorded.data.validation_split and seed is not None and seed != recorded_seed:
        conflicts.append(
            f"--seed={seed!r} (the run has {recorded_seed!r}: it chose the held-out images)"
        )
    if conflicts:
        raise TrainingError(
            f"--model_dir={config.model_dir} holds a run of another network or data; --mode=eval "
            f"would not evaluate it as trained: {'; '.join(conflicts)}. Leave these flags out "
            f"(the run's {CONFIG_FILE} gives them), or evaluate its weights with other options as "
            f"a new run: --init_checkpoint={config.model_dir} and another --model_dir."
        )
    if taken:
        logging.info(
            "mode=eval: the run's %s (its %s).",
            ", ".join(f"--{flag}={value!r}" for flag, value in taken.items()),
            CONFIG_FILE,
        )
    return config.replace(**taken).validate()


def _train_steps(config: TrainConfig, info: DatasetInfo) -> int:
    t = config.trainer
    return t.train_steps or steps_for_epochs(t.epochs, info.num_train_examples, t.batch_size)


def _restore(
    trainer: Trainer,
    strategy: tf.distribute.Strategy,
    config: TrainConfig,
    recorded: TrainConfig | None,
    init_source: InitSource | None,
) -> str | None:
    """Restores the newest checkpoint (resume), or initializes a new run from init_checkpoint.

    `mode=eval` restores the model and the step only (the optimizer given may be another) and
    was checked against the run by `_with_recorded_run`; a resumed run by `_check_resume_matches`.
    """
    evaluating = config.mode == "eval"
    restored = trainer.restore(model_only=evaluating)
    _check_workers_agree_on_step(strategy, int(trainer.step.numpy()), config.model_dir)
    if restored is not None and recorded is not None and not evaluating:
        _check_resume_matches(recorded, config)
    if restored is None and init_source is not None:
        initialize_from(trainer.model, config, init_source)
    elif init_source is not None:
        logging.info("Resuming from %s: init_checkpoint not used.", restored)
    return restored


def _train(
    trainer: Trainer,
    config: TrainConfig,
    info: DatasetInfo,
    train_dataset: TrainDatasetFn,
    eval_dataset: EvalDatasetFn,
    results: dict,
    began: float,
) -> None:
    """Trains to `results["train_steps"]`, evaluating every `eval_every` steps (and at the end).

    Each evaluation goes to TensorBoard (`logs/eval`), to `results["evaluations"]` (metrics.json,
    rewritten after each one) and, when its top-1 is the best so far, to `<model_dir>/best/`.
    """
    train_steps = results["train_steps"]
    every = config.trainer.eval_every
    if trainer.chief:
        save_run_config(config.model_dir, config, info.class_names)
    start = int(trainer.step.numpy())
    targets = [train_steps]
    best = None
    if every:
        targets = [*range((start // every + 1) * every, train_steps, every), train_steps]
        best = BestCheckpoint(
            config.model_dir, trainer.chief, model=trainer.model, step=trainer.step
        )
        previous = _read_metrics(os.path.join(config.model_dir, "metrics.json"))
        results["evaluations"] = [
            e for e in previous.get("evaluations", []) if e.get("step", 0) <= start
        ]
    seconds = 0.0
    try:
        for target in targets:
            results["train"] = trainer.train(train_dataset, target)
            seconds += results["train"]["train_seconds"]
            step = int(trainer.step.numpy())
            if best is not None and all(e["step"] != step for e in results["evaluations"]):
                evaluation = _evaluate(trainer, eval_dataset, config, info)
                best.consider(evaluation)
                results["evaluations"].append(evaluation)
                results["best"] = best.best
                if trainer.chief and target < train_steps:
                    write_metrics(config.model_dir, results)
    except Interrupted as e:
        # Preempted / Ctrl-C: the checkpoint is written; record how far training got.
        results.update(train=e.metrics, interrupted=True, step=e.step)
        results["seconds"] = time.perf_counter() - began
        if trainer.chief:
            write_metrics(config.model_dir, results)
        raise
    finally:
        if best is not None:
            best.close()
    if "train" in results:
        results["train"]["train_seconds"] = seconds


def _evaluate(
    trainer: Trainer, eval_dataset: EvalDatasetFn, config: TrainConfig, info: DatasetInfo
) -> dict:
    metrics = trainer.evaluate(eval_dataset, config.trainer.eval_steps)
    metrics["split"] = info.eval_split
    metrics["held_out"] = info.eval_held_out
    return metrics


def _report(trainer: Trainer, config: TrainConfig, results: dict, began: float) -> dict:
    """Completes `results` (step, time, skipped files, weight digests); the chief writes them."""
    from keras_bninception import data

    results["step"] = int(trainer.step.numpy())
    results["seconds"] = time.perf_counter() - began
    if config.data.skip_corrupt_images:
        skipped = data.skipped_corrupt_images()
        results["skipped_corrupt_images"] = len(skipped)
        if skipped:
            logging.warning("Skipped %d corrupt image file(s).", len(skipped))
    results["weights_sha256"] = trainer.weights_digest()
    results["trainable_weights_sha256"] = trainer.weights_digest(trainable_only=True)
    logging.info(
        "Final weights sha256 %s, trainable weights sha256 %s (step %d).",
        results["weights_sha256"],
        results["trainable_weights_sha256"],
        results["step"],
    )
    if trainer.chief:
        write_metrics(config.model_dir, results)
    return results


def learning_rate_plan(config: TrainConfig, num_train_examples: int) -> dict:
    """The run's learning rate after the linear scaling rule, and its warm-up in steps.

    `learning_rate` (the rate the global batch uses), `rule` (how it was obtained),
    `warmup_epochs`, `warmup_steps`.
    """
    o, batch = config.optimizer, config.trainer.batch_size
    rate = scaled_learning_rate(o.learning_rate, batch, o.reference_batch_size)
    if o.reference_batch_size:
        rule = (
            f"{o.learning_rate:g} x global batch {batch} / reference batch {o.reference_batch_size}"
        )
    else:
        rule = f"as given, for the global batch {batch}"
    epochs = warmup_epochs_for(o.warmup_epochs, batch, o.reference_batch_size)
    steps = math.ceil(epochs * num_train_examples / batch) if epochs else 0
    return {"learning_rate": rate, "rule": rule, "warmup_epochs": epochs, "warmup_steps": steps}


# Below this many images per replica, BN's batch statistics get noisy (Wu & He 2018, Group
# Normalization, Figure 1: ImageNet error grows as the per-worker batch drops below 16).
MIN_BATCH_NORM_IMAGES = 16


def small_batch_norm_warning(config: TrainConfig, replicas: int) -> str | None:
    """A warning when each BN layer normalizes over fewer than 16 images, else None.

    Unsynchronized BN normalizes over each replica's share of the global batch. Evaluation
    (`mode=eval`) normalizes with the moving statistics: no warning.
    """
    m = config.model
    if not m.batch_norm or m.synchronized or config.init.freeze_batch_norm or config.mode == "eval":
        return None
    per_replica = config.trainer.batch_size // max(replicas, 1)
    if per_replica >= MIN_BATCH_NORM_IMAGES:
        return None
    fixes = "a larger --batch_size"
    if replicas > 1:
        fixes = "--sync_batch_norm (statistics over all replicas) or " + fixes
    return (
        f"Batch Normalization sees {per_replica} image(s) per replica (global batch "
        f"{config.trainer.batch_size} over {replicas} replica(s)), fewer than "
        f"{MIN_BATCH_NORM_IMAGES}: its batch statistics are noisy; use {fixes}."
    )


def build_trainer(
    config: TrainConfig,
    info: DatasetInfo,
    strategy: tf.distribute.Strategy | None = None,
    learning_rate: dict | None = None,
) -> tuple[Trainer, TrainDatasetFn, EvalDatasetFn]:
    """The `Trainer` of `config` on `info` (the dataset as `data.get_info` resolved it, once).

    `learning_rate` is the run's `learning_rate_plan(config, info.num_train_examples)`, as
    `run()` resolved it (None: computed here).

    Returns the trainer (model and optimizer built in `strategy`'s scope, the default strategy
    when None, under the dtype policy of `config.runtime.mixed_precision`; nothing restored yet)
    and its two dataset functions: `train_dataset(context, start_step)` and
    `eval_dataset(context)`, as `Trainer.train` and `Trainer.evaluate` take them.
    """
    from keras_bninception import data

    strategy = strategy or tf.distribute.get_strategy()
    runtime, trainer_config, optimizer = config.runtime, config.trainer, config.optimizer
    batch_size = trainer_config.batch_size

    def _dataset(context: tf.distribute.InputContext, split: str, **kwargs) -> tf.data.Dataset:
        return data.build_dataset(
            info,
            split,
            image_size=config.data.image_size,
            batch_size=context.get_per_replica_batch_size(batch_size),
            seed=runtime.seed,
            deterministic=runtime.deterministic,
            input_context=context,
            skip_corrupt_images=config.data.skip_corrupt_images,
            **kwargs,
        )

    def train_dataset(context: tf.distribute.InputContext, start_step: int) -> tf.data.Dataset:
        # A pipeline feeds num_replicas / num_pipelines replicas, one per-replica batch each per
        # step: the data position of step `start_step` is that many batches per step further.
        batches_per_step = context.num_replicas_in_sync // context.num_input_pipelines
        return _dataset(
            context, info.train_split, training=True, start_step=start_step * batches_per_step
        )

    def eval_dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return _dataset(context, info.eval_split, training=False)

    plan = learning_rate
    if plan is None:
        plan = learning_rate_plan(config, info.num_train_examples)

    def optimizer_fn() -> keras.optimizers.Optimizer:
        schedule = learning_rate_schedule(
            plan["learning_rate"],
            optimizer.learning_rate_decay_factor,
            optimizer.num_epochs_per_decay,
            info.num_train_examples / batch_size,  # steps per epoch
            plan["warmup_steps"],
        )
        return build_optimizer(
            optimizer.name, schedule, optimizer.momentum, runtime.mixed_precision
        )

    def model_fn() -> keras.Model:
        model = build_model(config, info.num_classes)
        init = config.init
        init_checkpoint.apply_trainable_scopes(model, init.trainable_scopes, init.freeze_batch_norm)
        return model

    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(_POLICIES[runtime.mixed_precision])
    try:
        trainer = Trainer(strategy, model_fn, optimizer_fn, config.model_dir, trainer_config)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return trainer, train_dataset, eval_dataset


# What a resumed run must keep: the network, the data and its order (dataset, image size, batch,
# seed) and the optimizer's kind (its slots). How long to train, the learning rate (lowered after a
# divergence), where the data is, how to log and distribute may change.
_RESUME_KEEPS = {
    "model": None,  # every field
    "data": ("dataset", "image_size", "validation_split"),
    "trainer": ("batch_size",),
    "optimizer": ("name",),
    "runtime": ("seed",),
}


def _recorded_config(model_dir: str) -> TrainConfig | None:
    """The configuration `<model_dir>/config.json` records, or None (none, or unreadable)."""
    if not tf.io.gfile.exists(os.path.join(model_dir, CONFIG_FILE)):
        return None
    try:
        return load_run_config(model_dir)[0]
    except ValueError as e:
        logging.warning("Ignoring %s: %s", CONFIG_FILE, e)
        return None


def _check_resume_matches(recorded: TrainConfig, config: TrainConfig) -> None:
    """Refuses to resume a run with options that would silently change its meaning.

    Raises:
        TrainingError: listing every differing option (flag name, recorded and given values).
    """
    differences = []
    for flag, (section, field) in flag_fields().items():
        if section is None or section not in _RESUME_KEEPS:
            continue
        keeps = _RESUME_KEEPS[section]
        if keeps is not None and field not in keeps:
            continue
        then = getattr(getattr(recorded, section), field)
        now = getattr(getattr(config, section), field)
        if then != now:
            differences.append(f"--{flag}={now!r} (the run has {then!r})")
    if differences:
        raise TrainingError(
            f"--model_dir={config.model_dir} holds a run trained with other options; resuming "
            f"would silently change it: {'; '.join(differences)}. Rerun with the run's options "
            f"(its {CONFIG_FILE}), or use another --model_dir."
        )


def _check_workers_agree_on_step(strategy: tf.distribute.Strategy, step: int, model_dir: str):
    """Every worker must have restored the chief's step: else `model_dir` is not shared.

    A local path on each machine gives the chief its checkpoint and the others none; their
    collectives would then not match (a hang or a crash). Two all-reduces, once per run.
    """
    chief_step = agreed_value(strategy, step)
    if any_replica(strategy, step != chief_step):
        raise TrainingError(
            f"The workers restored different steps from --model_dir={model_dir} (the chief step "
            f"{chief_step}, this worker step {step}, at least one differs): every worker must "
            "use the same directory on a shared file system (e.g. gs://..., NFS), not a local "
            "path on each machine."
        )


def write_metrics(model_dir: str, results: dict) -> str:
    """Writes `results` to `model_dir/metrics.json` atomically; returns the path.

    Through `tf.io.gfile` (a `gs://` model_dir works), as a temporary file renamed over the old one.
    A section this run did not produce (`train` for an eval run or a rerun with nothing left to
    train, `eval` for a train run, `evaluations` and `best` of `eval_every`) is kept from the
    previous file, with its own `step`.

    Raises:
        TrainingError: the file cannot be written (its path and the reason).
    """
    path = os.path.join(model_dir, "metrics.json")
    previous = _read_metrics(path)
    merged = dict(results)
    for section in ("train", "eval"):
        new = results.get(section)
        trained_nothing = section == "train" and new is not None and "loss" not in new
        if section in previous and (new is None or trained_nothing):
            merged[section] = previous[section]
    for section in ("evaluations", "best"):  # of eval_every; this run's include the earlier ones
        if section in previous and section not in results:
            merged[section] = previous[section]
    try:
        write_json_atomically(path, merged)
    except (tf.errors.OpError, OSError) as e:
        message = getattr(e, "message", None) or str(e)
        raise TrainingError(f"Cannot write the metrics file {path}: {message}") from e
    logging.info("Wrote %s.", path)
    return path


def _read_metrics(path: str) -> dict:
    try:
        with tf.io.gfile.GFile(path) as f:
            previous = json.loads(f.read())
    except (tf.errors.OpError, ValueError):  # none yet, or unreadable: nothing to keep
        return {}
    return previous if isinstance(previous, dict) else {}
