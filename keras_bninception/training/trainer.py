"""The custom training loop: one code path for every `tf.distribute` strategy.

Keras 3's `model.fit` fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585), so the
trainer drives the model itself:

- the input comes from `strategy.distribute_datasets_from_function`, each input pipeline batched to
  the per-replica batch (`input_context.get_per_replica_batch_size(global_batch_size)`);
- one training step is `strategy.run(step_fn)`: forward, the loss of `losses.py` (averaged over the
  GLOBAL batch, regularization scaled by 1 / num_replicas), gradients, and the Keras optimizer,
  which all-reduces (SUM) the gradients, once, before updating the mirrored weights (float16: the
  loss is scaled by a `LossScaleOptimizer`, whose skip-the-step decision every replica shares,
  see `_agree_on_skipping`);
- `jit_compile`: each replica's step as one XLA computation where XLA can hold its all-reduces
  (one replica, or GPUs: TensorFlow compiles them into the computation); over several CPU
  replicas, TensorFlow all-reduces outside XLA, so the forward and backward are compiled and the
  all-reduce and update run after them (synchronized BN, which all-reduces inside the forward,
  is refused there with the reason);
- metrics are per-replica sums (loss, correct predictions, examples) reduced with
  `strategy.reduce(SUM)`, hence exact global values on every worker;
- several steps run inside one `tf.function` (`tf.range` loop) between two log / checkpoint
  points, so Python is not on the per-step hot path on GPUs;
- a non-finite loss stops training at once (`DivergenceError` names the step); no checkpoint is
  written after it, so the last good one stays the newest;
- SIGTERM / SIGINT (preemption, Ctrl-C) stop every worker after the same step, with a checkpoint
  of it (`Interrupted`, see `interruption.py`).
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from keras_bninception.training import losses
from keras_bninception.training.checkpointing import CheckpointHandler
from keras_bninception.training.config import TrainerConfig
from keras_bninception.training.errors import DivergenceError, Interrupted, TrainingError
from keras_bninception.training.interruption import StopRequest
from keras_bninception.training.optimizer import current_learning_rate
from keras_bninception.training.progress import Progress
from keras_bninception.training.strategy import is_chief
from keras_bninception.training.summaries import SummaryWriter

# (input_context, start_step) -> dataset of (images, labels) batched per replica.
TrainDatasetFn = Callable[[tf.distribute.InputContext, int], tf.data.Dataset]
EvalDatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


class Trainer:
    """Builds the model and optimizer under `strategy` and trains / evaluates them.

    Args:
        strategy: the `tf.distribute.Strategy` of the run.
        model_fn: returns a new `keras.Model` mapping images to logits (called in the scope).
        optimizer_fn: returns a new Keras optimizer (called in the scope).
        model_dir: where checkpoints (`checkpoints/`) and summaries (`logs/`) go.
        config: the trainer section of the run: `batch_size` (global: images per step over all
            replicas, divisible by their number), `weight_decay` (L2, TF-slim convention, see
            `losses.py`), `label_smoothing`, `checkpoint_every` (and at the end),
            `keep_checkpoints`, `log_every` (progress line and summaries), `jit_compile`
            (each replica's step, forward, backward and update, as one XLA computation, as the
            Model Garden compiles its steps on accelerators).

    Raises:
        ValueError: the global batch does not divide over the replicas, or `jit_compile` with
            synchronized BN over several replicas that are not GPUs.
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        model_fn: Callable[[], keras.Model],
        optimizer_fn: Callable[[], keras.optimizers.Optimizer],
        model_dir: str,
        config: TrainerConfig,
    ):
        replicas = strategy.num_replicas_in_sync
        if config.batch_size % replicas:
            raise ValueError(
                f"The global batch size ({config.batch_size}) must be divisible by the number of "
                f"replicas ({replicas}); received batch_size={config.batch_size}"
            )
        self.strategy = strategy
        self.model_dir = model_dir
        self.config = config
        self.chief = is_chief(strategy)
        with strategy.scope():
            self.model = model_fn()
            self.optimizer = optimizer_fn()
            # Create the slots now: restoring then is immediate and exact.
            self.optimizer.build(self.model.trainable_variables)
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        # What `jit_compile` compiles: the whole replica step, or only its forward and backward
        # where XLA cannot hold the replicas' all-reduces (`_xla_holds_all_reduces`).
        self._jit_scope = None
        if config.jit_compile:
            self._jit_scope = "replica_step" if _xla_holds_all_reduces(strategy) else "gradients"
        if self._jit_scope == "gradients":
            synchronized = [layer.name for layer in _layers(self.model) if _synchronized(layer)]
            if synchronized:
                raise ValueError(
                    f"`jit_compile` over {replicas} {_device_kind(strategy)} replicas cannot "
                    "compile synchronized BN: TensorFlow runs its all-reduces in XLA only on "
                    f"GPUs (here {len(synchronized)} BN layers, e.g. {synchronized[0]!r}, "
                    "all-reduce inside the forward). Train these replicas without `jit_compile` "
                    "or without synchronized BN; received jit_compile=True"
                )
        self.checkpoints = CheckpointHandler(
            model_dir,
            self.chief,
            config.keep_checkpoints,
            model=self.model,
            optimizer=self.optimizer,
            step=self.step,
            random_states=random_states(self.model),
        )
        self._stop = StopRequest()
        self.train_function = None  # the traced training loop, as Keras' `Model.train_function`
        self._eval_step = None

    # ----------------------------------------------------------------------------------------
    # Training.

    def _build_train_loop(self):
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        variables = model.trainable_variables

        def gradients(images, labels):
            with tf.GradientTape() as tape:
                logits = model(images, training=True)
                per_example = losses.cross_entropy(labels, logits, self.config.label_smoothing)
                data_loss = tf.nn.compute_average_loss(
                    per_example, global_batch_size=self.config.batch_size
                )
                loss = data_loss + losses.regularization(model, self.config.weight_decay)
                scaled_loss = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled_loss, variables)
            predictions = tf.argmax(logits, axis=-1, output_type=labels.dtype)
            correct = tf.reduce_sum(tf.cast(tf.equal(predictions, labels), tf.float32))
            count = tf.cast(tf.shape(labels)[0], tf.float32)
            return loss, correct, count, grads

        def update(grads):
            if loss_scaling and strategy.num_replicas_in_sync > 1:
                grads = _agree_on_skipping(optimizer, grads)
            # The optimizer's SUM all-reduce of the gradients: the step's only one.
            optimizer.apply_gradients(zip(grads, variables, strict=True))

        if self._jit_scope == "gradients":
            gradients = tf.function(gradients, jit_compile=True)

        def replica_step(images, labels):
            loss, correct, count, grads = gradients(images, labels)
            update(grads)
            return loss, correct, count

        if self._jit_scope == "replica_step":
            replica_step = tf.function(replica_step, jit_compile=True)

        def reduce_sum(value):
            return strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None)

        stop_flag = self._stop.flag

        def replica_step_and_stop(images, labels):
            # The stop flag travels with the loss: one all-reduce gives every worker the same
            # decision after the same step.
            loss, correct, count = replica_step(images, labels)
            return tf.stack([tf.cast(loss, tf.float32), stop_flag.read_value()]), correct, count

        @tf.function
        def train_loop(iterator, num_steps):
            loss_sum = tf.constant(0.0)
            correct_sum = tf.constant(0.0)
            count_sum = tf.constant(0.0)
            done = tf.constant(0, tf.int64)
            finite = tf.constant(True)
            stopped = tf.constant(False)
            for _ in tf.range(num_steps):
                loss_and_stop, correct, count = strategy.run(
                    replica_step_and_stop, args=next(iterator)
                )
                loss_and_stop = reduce_sum(loss_and_stop)
                loss = loss_and_stop[0]
                self.step.assign_add(1)
                done += 1
                if not tf.math.is_finite(loss):
                    finite = tf.constant(False)
                    break
                loss_sum += loss
                correct_sum += reduce_sum(correct)
                count_sum += reduce_sum(count)
                if loss_and_stop[1] > 0:
                    stopped = tf.constant(True)
                    break
            return loss_sum, correct_sum, count_sum, done, finite, stopped

        return train_loop

    @tf.function
    def _weights_finite(self):
        return tf.reduce_all(
            [tf.reduce_all(tf.math.is_finite(v)) for v in self.model.trainable_variables]
        )

    def restore(self, model_only: bool = False) -> str | None:
        """Restores the newest checkpoint of `model_dir`, if any; returns its path.

        Args:
            model_only: restore the model and the step only, not the optimizer (to evaluate:
                the optimizer is not used, and may be another than the one trained).

        Raises:
            TrainingError: the checkpoint does not match the model / optimizer.
        """
        path = self.checkpoints.restore(("model", "step") if model_only else None)
        if path:
            logging.info("Restored checkpoint %s (step %d).", path, int(self.step.numpy()))
        return path

    def train(self, dataset_fn: TrainDatasetFn, train_steps: int) -> dict:
        """Trains from the current step up to `train_steps` (resuming where a checkpoint left).

        Args:
            dataset_fn: builds the training stream of one input pipeline, starting at the batch
                of the given step (the data position of a resumed run).
            train_steps: the total number of steps of the run.

        Returns:
            The metrics of the last logging window: `loss`, `accuracy`, `learning_rate`,
            `images_per_second`, plus `step` and `train_seconds` (this invocation's wall time).

        Raises:
            DivergenceError: the loss became NaN or infinite (no checkpoint written after it).
            Interrupted: SIGTERM or SIGINT; a checkpoint of the step reached was written. Its
                `metrics` hold what this method would have returned.
        """
        start = int(self.step.numpy())
        if start >= train_steps:
            logging.info("Already trained %d/%d steps; nothing to do.", start, train_steps)
            return {"step": start, "train_seconds": 0.0}
        if self.train_function is None:
            self.train_function = self._build_train_loop()
        dataset = self.strategy.distribute_datasets_from_function(
            lambda context: dataset_fn(context, start)
        )
        iterator = iter(dataset)
        writer = SummaryWriter(self.model_dir, "train", self.chief)
        progress = Progress(train_steps, self.config.batch_size, start)
        self._stop.__enter__()  # (before the line below: tests wait for it to send signals)
        logging.info(
            "Training steps %d..%d, global batch %d over %d replica(s).",
            start + 1,
            train_steps,
            self.config.batch_size,
            self.strategy.num_replicas_in_sync,
        )
        began = time.perf_counter()
        window = {"loss": 0.0, "correct": 0.0, "count": 0.0, "steps": 0}
        result: dict = {}
        step = start
        try:
            while step < train_steps:
                boundary = min(
                    train_steps,
                    _next_multiple(step, self.config.log_every),
                    _next_multiple(step, self.config.checkpoint_every),
                )
                loss_sum, correct, count, done, finite, stopped = self.train_function(
                    iterator, tf.constant(boundary - step, tf.int64)
                )
                step += int(done)
                if not bool(finite):
                    raise DivergenceError(
                        step, self.checkpoints.latest, current_learning_rate(self.optimizer)
                    )
                window["loss"] += float(loss_sum)
                window["correct"] += float(correct)
                window["count"] += float(count)
                window["steps"] += int(done)
                if step % self.config.log_every == 0 or step == train_steps:
                    result = self._log(step, window, progress, writer)
                    window = {"loss": 0.0, "correct": 0.0, "count": 0.0, "steps": 0}
                if step % self.config.checkpoint_every == 0 or step == train_steps:
                    self.save(step)
                    progress.restart_clock(step)
                if bool(stopped) and step < train_steps:
                    if window["steps"]:
                        result = self._log(step, window, progress, writer)
                    if step % self.config.checkpoint_every:
                        self.save(step)
                    result.update(step=step, train_seconds=time.perf_counter() - began)
                    raise Interrupted(
                        self._stop.signal_number, step, self.checkpoints.latest, result
                    )
        finally:
            self._stop.__exit__(None, None, None)
            writer.close()
            pipeline = [iterator, dataset]
            del iterator, dataset
            release_in_background(pipeline)
        result.update(step=step, train_seconds=time.perf_counter() - began)
        return result

    def _log(self, step: int, window: dict, progress: Progress, writer: SummaryWriter) -> dict:
        steps = max(window["steps"], 1)
        metrics = {
            "loss": window["loss"] / steps,
            "accuracy": window["correct"] / max(window["count"], 1.0),
            "learning_rate": current_learning_rate(self.optimizer),
            "images_per_second": progress.update(step),
        }
        logging.info(
            progress.line(
                step,
                metrics["loss"],
                metrics["accuracy"],
                metrics["learning_rate"],
                metrics["images_per_second"],
            )
        )
        writer.scalars(step, metrics)
        return metrics

    def save(self, step: int) -> None:
        """Writes a checkpoint of `step`, after checking that the weights are finite."""
        if not bool(self._weights_finite()):
            raise DivergenceError(
                step, self.checkpoints.latest, current_learning_rate(self.optimizer)
            )
        path = self.checkpoints.save(step)
        if path:
            logging.info("Saved checkpoint %s (step %d).", path, step)

    # ----------------------------------------------------------------------------------------
    # Evaluation.

    def _build_eval_step(self):
        model, strategy = self.model, self.strategy

        def replica_step(images, labels):
            logits = tf.cast(model(images, training=False), tf.float32)
            num_classes = logits.shape[-1]
            loss = tf.reduce_sum(losses.cross_entropy(labels, logits))
            top1 = tf.math.in_top_k(labels, logits, 1)
            top5 = tf.math.in_top_k(labels, logits, min(5, num_classes))
            return (
                loss,
                tf.reduce_sum(tf.cast(top1, tf.float32)),
                tf.reduce_sum(tf.cast(top5, tf.float32)),
                tf.cast(tf.shape(labels)[0], tf.float32),
            )

        @tf.function
        def eval_step(batch):
            values = strategy.run(replica_step, args=batch)
            return [strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None) for v in values]

        return eval_step

    def evaluate(self, dataset_fn: EvalDatasetFn, steps: int = 0) -> dict:
        """Evaluates the current weights on every batch of `dataset_fn` (or its first `steps`).

        Returns:
            `top_1_accuracy`, `top_5_accuracy`, `loss` (mean cross-entropy), `num_examples` and
            `step` (the training step evaluated); the values are exact sums over all replicas.
        """
        if self._eval_step is None:
            self._eval_step = self._build_eval_step()
        dataset = self.strategy.distribute_datasets_from_function(dataset_fn)
        totals = np.zeros(4, np.float64)
        began = time.perf_counter()
        for i, batch in enumerate(dataset):
            if steps and i >= steps:
                break
            totals += [float(v) for v in self._eval_step(batch)]
        loss, top1, top5, count = totals
        if count == 0:
            raise TrainingError("The evaluation split yielded no examples.")
        step = int(self.step.numpy())
        metrics = {
            "top_1_accuracy": top1 / count,
            "top_5_accuracy": top5 / count,
            "loss": loss / count,
            "num_examples": int(count),
            "step": step,
        }
        logging.info(
            "Evaluation at step %d on %d examples: top-1 %.2f%%, top-5 %.2f%%, loss %.4f (%.1f s).",
            step,
            int(count),
            100 * metrics["top_1_accuracy"],
            100 * metrics["top_5_accuracy"],
            metrics["loss"],
            time.perf_counter() - began,
        )
        writer = SummaryWriter(self.model_dir, "eval", self.chief)
        writer.scalars(
            step,
            {k: metrics[k] for k in ("top_1_accuracy", "top_5_accuracy", "loss")},
        )
        writer.close()
        return metrics

    # ----------------------------------------------------------------------------------------

    def weights_digest(self, trainable_only: bool = False) -> str:
        """SHA-256 of the model's weights, to compare runs and workers.

        By default every weight, BN moving statistics included. Without synchronized BN each
        replica keeps its own moving statistics (Keras 3 BN variables are not aggregated), so
        compare workers with `trainable_only=True` then.
        """
        digest = hashlib.sha256()
        variables = self.model.trainable_weights if trainable_only else self.model.weights
        for variable in variables:
            digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(variable)).tobytes())
        return digest.hexdigest()

    def close(self) -> None:
        self.checkpoints.close()


def _agree_on_skipping(optimizer: keras.optimizers.LossScaleOptimizer, grads: list) -> list:
    """This replica's scaled gradients, made non-finite when any replica's are.

    `LossScaleOptimizer` applies or skips a step from the finiteness of the gradients it
    receives, which in a custom loop are this replica's own, before the inner optimizer's
    all-reduce: replicas could disagree, and one skipping the all-reduce the others enter would
    desynchronize or hang them (or, where TensorFlow takes replica 0's decision, apply another
    replica's infinities). One all-reduce of a single flag tells every replica whether any
    gradient anywhere is non-finite; if so, a NaN added to this replica's smallest gradient makes
    the optimizer skip the step here too. The gradients themselves are all-reduced once, by the
    inner optimizer, after the optimizer divides them by the loss scale (a power of two: exact).
    Per-replica gradients that are all finite have a finite sum: float16 gradients are at most
    65504 each, far below float32's range even summed over thousands of replicas.
    """
    context = tf.distribute.get_replica_context()
    finite_here = optimizer.check_finite(grads)
    non_finite = context.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.cast(tf.logical_not(finite_here), tf.float32)
    )
    poison = tf.where(non_finite > 0, tf.constant(float("nan")), tf.constant(0.0))
    present = [i for i, g in enumerate(grads) if g is not None]
    if not present:
        return grads
    smallest = min(present, key=lambda i: grads[i].shape.num_elements() or 0)
    grads = list(grads)
    grads[smallest] = grads[smallest] + tf.cast(poison, grads[smallest].dtype)
    return grads


def _xla_holds_all_reduces(strategy: tf.distribute.Strategy) -> bool:
    """Whether a replica's step can be one XLA computation, its all-reduces included.

    TensorFlow compiles a mirrored step's all-reduces into XLA only when every replica is a GPU
    (a TPU step is compiled whole anyway); on CPUs it all-reduces through a cross-replica
    `merge_call`, which cannot run inside a compiled function. One replica has nothing to
    all-reduce.
    """
    if strategy.num_replicas_in_sync == 1:
        return True
    return _device_kind(strategy) in ("GPU", "TPU")


def _device_kind(strategy: tf.distribute.Strategy) -> str:
    """GPU, TPU or CPU: what the strategy's replicas run on ("mixed" if they differ)."""
    kinds = {tf.DeviceSpec.from_string(d).device_type for d in strategy.extended.worker_devices}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def _layers(model: keras.Model):
    """Every layer of `model`, nested models' included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def _synchronized(layer: keras.layers.Layer) -> bool:
    return bool(getattr(layer, "synchronized", False))


def random_states(model: keras.Model) -> list[tf.Variable]:
    """The variables of `model` that are not weights: its `keras.random.SeedGenerator` states.

    Dropout draws its masks from a SeedGenerator whose state advances at every call; Keras leaves
    it out of `model.weights` and of the model's checkpoint, so a resumed run would replay the
    masks from the start. The trainer checkpoints these states beside the model.
    """
    weights = {id(w) for w in model.weights}
    return [v.value for v in model.variables if id(v) not in weights]


def release_in_background(objects: list) -> None:
    """Drops the references `objects` holds (a tf.data iterator), in a background thread.

    Destroying a tf.data iterator joins its autotuning thread, which (TensorFlow 2.21) does not
    wake up on the cancellation but at the end of its optimization period: up to a minute late in
    a run (`benchmarks/end_of_training.py`). The destruction releases the GIL while it waits, so
    the run goes on at once. The thread is not a daemon: Python ends a daemon thread at exit while
    it waits inside TensorFlow's C++ code, which aborts the process ("FATAL: exception not
    rethrown", seen after a finished run); so the wait, if any is left, moves to the process exit.
    The caller must hold no other reference: `objects` is emptied here.
    """
    held = list(objects)
    objects.clear()
    threading.Thread(target=held.clear, name="release_input_iterator").start()


def _next_multiple(step: int, every: int) -> int:
    return (step // every + 1) * every


def steps_for_epochs(epochs: float, num_examples: int, global_batch_size: int) -> int:
    """Number of steps of `epochs` passes over `num_examples` (at least one)."""
    return max(1, math.ceil(epochs * num_examples / global_batch_size))
