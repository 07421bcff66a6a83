"""The paper's Figure 1 (section 4.1): a sigmoid network with and without Batch Normalization.

The network of the paper's MNIST experiment: the image's pixels, 3 fully-connected hidden layers of
100 sigmoid units, a 10-way softmax; mini-batches of 60. Two copies are trained from the same
initial weights, with the same optimizer, data order and number of steps:

- `baseline`: Dense (with bias) -> sigmoid, three times;
- `batch_norm`: Dense (no bias: BN's β replaces it) -> `keras_bninception.layers.BatchNormalization`
  -> sigmoid, three times (BN "before each nonlinearity").

Every `eval_every` steps each network is evaluated on the held-out split (inference mode, BN with
its moving statistics): top-1 accuracy (Figure 1a), and the 15th, 50th and 85th percentiles, over
the held-out examples, of the input of one sigmoid of the last hidden layer (Figure 1b, c).

Training goes through `keras_bninception.training.Trainer` (the project's training loop): trained
up to each evaluation step, evaluated, and continued. Both networks see the same batches in the
same order (a fresh permutation of the training split every epoch, from `seed`).

Data: `digits` (scikit-learn's 8x8 digits, 64 inputs, embedded, the default) or `mnist` (28x28,
784 inputs) when TFDS has it prepared in `data_dir`; nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

DATASETS = ("digits", "mnist")
NETWORKS = ("baseline", "batch_norm")
NETWORK_LABELS = {"baseline": "Without BN", "batch_norm": "With BN"}
PERCENTILES = (15, 50, 85)
HEADLINE_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)


@dataclasses.dataclass(frozen=True)
class Figure1Config:
    """Options of a Figure 1 run.

    `learning_rate` and `init_stddev` are not given by the paper ("small random Gaussian values");
    these are chosen so that the network without BN trains, slowly, on either dataset.
    """

    dataset: str = "digits"
    data_dir: str | None = None
    steps: int = 5_000
    eval_every: int = 0  # 0: steps / 50 (at least 1).
    batch_size: int = 60
    hidden_layers: int = 3
    hidden_units: int = 100
    learning_rate: float = 0.5
    init_stddev: float = 0.1
    bn_momentum: float = 0.9
    unit: int = 0  # Which sigmoid of the last hidden layer Figure 1b, c follow.
    seed: int = 0

    def validate(self) -> Figure1Config:
        if self.dataset not in DATASETS:
            raise ValueError(
                f"`dataset` must be one of {list(DATASETS)}; received dataset={self.dataset!r}"
            )
        for name in ("steps", "batch_size", "hidden_layers", "hidden_units"):
            _positive_int(name, getattr(self, name))
        if self.eval_every < 0 or isinstance(self.eval_every, bool):
            raise ValueError(
                f"`eval_every` must be an integer >= 0 (0: steps / 50); "
                f"received eval_every={self.eval_every!r}"
            )
        for name in ("learning_rate", "init_stddev"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ValueError(f"`{name}` must be a number > 0; received {name}={value!r}")
        if not 0.0 <= self.bn_momentum < 1.0:
            raise ValueError(
                f"`bn_momentum` must be in [0, 1); received bn_momentum={self.bn_momentum!r}"
            )
        if not 0 <= self.unit < self.hidden_units:
            raise ValueError(
                f"`unit` must be in [0, {self.hidden_units}); received unit={self.unit!r}"
            )
        if self.seed < 0:
            raise ValueError(f"`seed` must be an integer >= 0; received seed={self.seed!r}")
        return self

    @property
    def evaluation_steps(self) -> list[int]:
        every = self.eval_every or max(1, self.steps // 50)
        points = list(range(every, self.steps + 1, every))
        if not points or points[-1] != self.steps:
            points.append(self.steps)
        return points


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; received {name}={value!r}")


@dataclasses.dataclass(frozen=True)
class FlatData:
    """A dataset as flat pixel vectors in [0, 1]."""

    name: str
    description: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_data(dataset: str, data_dir: str | None = None) -> FlatData:
    """The training and held-out splits of `digits` or `mnist`, flattened, pixels in [0, 1].

    Raises:
        ValueError: an unknown dataset, or `mnist` not prepared in `data_dir` (no download).
    """
    if dataset == "digits":
        from keras_bninception.data import digits

        x_train, y_train = digits.load_split(digits.TRAIN_SPLIT)
        x_test, y_test = digits.load_split(digits.EVAL_SPLIT)
        description = "scikit-learn digits (8x8)"
    elif dataset == "mnist":
        import tensorflow_datasets as tfds

        builder = tfds.builder("mnist", data_dir=data_dir)
        if not builder.is_prepared():
            raise ValueError(
                f"`dataset='mnist'` needs TFDS mnist prepared locally, and it is not in "
                f"{builder.data_dir} (nothing is downloaded here). Prepare it with "
                f"`tfds build mnist` (add --data_dir=DIR and pass --data_dir=DIR here), or use "
                f"dataset='digits'; received data_dir={data_dir!r}"
            )
        splits = {}
        for split in ("train", "test"):
            dataset = builder.as_dataset(split=split, as_supervised=True).batch(10_000)
            images, labels = zip(*tfds.as_numpy(dataset), strict=True)
            splits[split] = (
                np.concatenate(images).astype(np.float32) / 255.0,
                np.concatenate(labels).astype(np.int32),
            )
        (x_train, y_train), (x_test, y_test) = splits["train"], splits["test"]
        description = "TFDS mnist (28x28)"
    else:
        raise ValueError(f"`dataset` must be one of {list(DATASETS)}; received dataset={dataset!r}")
    return FlatData(
        name=dataset,
        description=description,
        x_train=x_train.reshape(len(x_train), -1),
        y_train=y_train,
        x_test=x_test.reshape(len(x_test), -1),
        y_test=y_test,
    )


def build_network(
    batch_norm: bool, input_dim: int, num_classes: int, config: Figure1Config
) -> keras.Model:
    """The Figure 1 network, producing logits; the same `config.seed` gives the same weights.

    The sigmoids are named `sigmoid_1` .. `sigmoid_<hidden_layers>`; the input of the last one is
    what Figure 1b, c follow.
    """
    from keras_bninception.layers import BatchNormalization

    def initializer(index: int) -> keras.initializers.Initializer:
        return keras.initializers.RandomNormal(stddev=config.init_stddev, seed=config.seed + index)

    inputs = keras.Input((input_dim,), name="pixels")
    x = inputs
    for i in range(1, config.hidden_layers + 1):
        x = keras.layers.Dense(
            config.hidden_units,
            use_bias=not batch_norm,
            kernel_initializer=initializer(i),
            name=f"dense_{i}",
        )(x)
        if batch_norm:
            x = BatchNormalization(momentum=config.bn_momentum, name=f"batch_norm_{i}")(x)
        x = keras.layers.Activation("sigmoid", name=f"sigmoid_{i}")(x)
    logits = keras.layers.Dense(num_classes, kernel_initializer=initializer(0), name="logits")(x)
    name = "figure1_batch_norm" if batch_norm else "figure1_baseline"
    return keras.Model(inputs, logits, name=name)


def training_order(num_examples: int, steps: int, batch_size: int, seed: int) -> np.ndarray:
    """Example indices of every training step, [steps, batch_size]: a fresh permutation per epoch.

    Both networks train on exactly these batches, in this order.
    """
    rng = np.random.default_rng(seed)
    epochs = -(-steps * batch_size // num_examples)
    order = np.concatenate([rng.permutation(num_examples) for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def _segment_dataset_fn(data: FlatData, order: np.ndarray, stop: int):
    """The Trainer's training stream from its start step up to `stop` (the next evaluation)."""

    def dataset_fn(context: tf.distribute.InputContext, start_step: int) -> tf.data.Dataset:
        per_replica = context.get_per_replica_batch_size(order.shape[1])
        pipelines, pipeline = context.num_input_pipelines, context.input_pipeline_id
        # Pipeline p of n takes examples p, p + n, ... of each global batch.
        index = order[start_step:stop, pipeline::pipelines].reshape(-1)
        dataset = tf.data.Dataset.from_tensor_slices((data.x_train[index], data.y_train[index]))
        return dataset.batch(per_replica, drop_remainder=True)

    return dataset_fn


def run(config: Figure1Config) -> dict:
    """Trains both networks; returns {"rows": per-evaluation records, "summary": headline}.

    Each row: `step`, `network`, `accuracy` (held-out top-1), `loss` (held-out cross-entropy),
    `p15`, `p50`, `p85` (percentiles of the followed sigmoid's input over the held-out split).

    Raises:
        ValueError: a bad option or dataset.
    """
    from keras_bninception.training import Trainer, TrainerConfig
    from keras_bninception.training.optimizer import build_optimizer

    config.validate()
    data = load_data(config.dataset, config.data_dir)
    num_classes = int(max(data.y_train.max(), data.y_test.max())) + 1
    input_dim = data.x_train.shape[1]
    points = config.evaluation_steps
    strategy = tf.distribute.get_strategy()
    order = training_order(len(data.y_train), config.steps, config.batch_size, config.seed)
    rows: list[dict] = []
    seconds = {}
    for network in NETWORKS:
        began = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix=f"figure1-{network}-") as model_dir:
            trainer = Trainer(
                strategy,
                lambda network=network: build_network(
                    network == "batch_norm", input_dim, num_classes, config
                ),
                lambda: build_optimizer("sgd", config.learning_rate),
                model_dir,
                TrainerConfig(
                    batch_size=config.batch_size,
                    weight_decay=0.0,
                    checkpoint_every=config.steps,
                    keep_checkpoints=1,
                    log_every=points[0],
                ),
            )
            # The logits and the followed sigmoid's input, in one inference-mode pass.
            model = trainer.model
            last = model.get_layer(f"sigmoid_{config.hidden_layers}").input
            probe = tf.function(keras.Model(model.input, [model.output, last]))
            try:
                for step in points:
                    trainer.train(_segment_dataset_fn(data, order, step), step)
                    logits, inputs = probe(data.x_test, training=False)
                    accuracy = np.mean(np.argmax(logits.numpy(), axis=-1) == data.y_test)
                    loss = keras.losses.sparse_categorical_crossentropy(
                        data.y_test, logits, from_logits=True
                    )
                    p15, p50, p85 = np.percentile(inputs.numpy()[:, config.unit], PERCENTILES)
                    rows.append(
                        {
                            "step": step,
                            "network": network,
                            "accuracy": round(float(accuracy), 6),
                            "loss": round(float(np.mean(loss)), 6),
                            "p15": round(float(p15), 6),
                            "p50": round(float(p50), 6),
                            "p85": round(float(p85), 6),
                        }
                    )
            finally:
                trainer.close()
        seconds[network] = round(time.perf_counter() - began, 1)
        logging.info(
            "Figure 1: %s trained %d steps in %.1f s.", network, config.steps, seconds[network]
        )
    return {"rows": rows, "summary": summarize(rows, config, data, seconds)}


def write_outputs(result: dict, output_dir: str) -> list[str]:
    """Writes figure1.csv, figure1.json and, with matplotlib, the two PNGs; returns the paths."""
    from keras_bninception.experiments import outputs, plots

    rows, summary = result["rows"], result["summary"]
    written = [
        outputs.write_csv(os.path.join(output_dir, "figure1.csv"), rows),
        outputs.write_json(os.path.join(output_dir, "figure1.json"), summary),
    ]
    if plots.available():
        for draw, name in ((plots.figure1a, "figure1a.png"), (plots.figure1bc, "figure1bc.png")):
            written.append(draw(rows, summary, NETWORK_LABELS, os.path.join(output_dir, name)))
    return written


def summarize(rows: list[dict], config: Figure1Config, data: FlatData, seconds: dict) -> dict:
    """The headline figures: accuracy at a few steps, and the percentile drift of each network.

    Drift: how far each percentile moves after the first tenth of training, i.e. the largest
    |p(t) - p(t₀)| over the evaluations t >= t₀, t₀ the first evaluation at or after steps / 10.
    """
    steps = sorted({r["step"] for r in rows})
    by = {(r["network"], r["step"]): r for r in rows}

    def at_or_after(target: float) -> int:
        return next((s for s in steps if s >= target), steps[-1])

    headline_steps = sorted({at_or_after(f * config.steps) for f in HEADLINE_FRACTIONS})
    start = at_or_after(config.steps / 10)
    accuracy = {
        network: {str(s): by[(network, s)]["accuracy"] for s in headline_steps}
        for network in NETWORKS
    }
    drift = {}
    for network in NETWORKS:
        later = [by[(network, s)] for s in steps if s >= start]
        drift[network] = {
            f"p{q}": round(max(abs(r[f"p{q}"] - later[0][f"p{q}"]) for r in later), 6)
            for q in PERCENTILES
        }
        drift[network]["max"] = max(drift[network].values())
    return {
        "dataset": data.name,
        "dataset_description": data.description,
        "num_train_examples": int(len(data.y_train)),
        "num_heldout_examples": int(len(data.y_test)),
        "steps": config.steps,
        "batch_size": config.batch_size,
        "evaluated_every": steps[0],
        "followed_unit": f"sigmoid_{config.hidden_layers}[{config.unit}]",
        "config": dataclasses.asdict(config),
        "heldout_accuracy": accuracy,
        "final_heldout_accuracy": {n: by[(n, steps[-1])]["accuracy"] for n in NETWORKS},
        "drift_from_step": start,
        "percentile_drift_after_first_tenth": drift,
        "train_seconds": seconds,
    }
