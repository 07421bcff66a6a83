r"""Re-runs the paper's Figure 1: `python -m trainers.reproduce_figure1`.

Section 4.1's network (3 fully-connected hidden layers of 100 sigmoid units, mini-batches of 60)
trained twice from the same initial weights, with and without Batch Normalization before each
sigmoid (`keras_bninception.experiments.figure1`). Writes into `--output_dir`:

- `figure1a.png`: held-out accuracy against training steps, both networks;
- `figure1bc.png`: the 15th, 50th and 85th percentiles of the input of one sigmoid of the last
  hidden layer over training, without BN beside with BN;
- `figure1.csv`: every plotted number; `figure1.json`: the headline figures.

The pictures need matplotlib (`pip install 'keras-bninception[plots]'`); without it the CSV and
JSON are still written. The default run (embedded digits, 5,000 steps) took 1 min 56 s on two
CPU cores shared with other jobs (26 s of CPU time). Bad input ends with one `error:` line and
exit status 1.

Examples:

  python -m trainers.reproduce_figure1 --output_dir=runs/figure1
  # The paper's dataset and length, if TFDS mnist is prepared in ~/tensorflow_datasets:
  python -m trainers.reproduce_figure1 --dataset=mnist --steps=50000 --output_dir=runs/mnist
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags, logging  # noqa: E402

from keras_bninception.experiments import figure1  # noqa: E402
from keras_bninception.training import TrainingError  # noqa: E402
from trainers.cli import fail, no_arguments  # noqa: E402

_D = figure1.Figure1Config()
FLAGS = flags.FLAGS

flags.DEFINE_string("output_dir", "runs/figure1", "Where the PNG, CSV and JSON files go.")
flags.DEFINE_string(
    "dataset", _D.dataset, f"One of {list(figure1.DATASETS)}; mnist must be prepared by TFDS."
)
flags.DEFINE_string("data_dir", None, "TFDS data directory (for --dataset=mnist).")
flags.DEFINE_integer("steps", _D.steps, "Training steps of each network (the paper: 50,000).")
flags.DEFINE_integer("eval_every", _D.eval_every, "Steps between evaluations; 0 = steps / 50.")
flags.DEFINE_integer("batch_size", _D.batch_size, "Mini-batch size (the paper: 60).")
flags.DEFINE_float("learning_rate", _D.learning_rate, "SGD learning rate (both networks).")
flags.DEFINE_float("init_stddev", _D.init_stddev, "Std of the Gaussian initial weights.")
flags.DEFINE_integer("unit", _D.unit, "Which sigmoid of the last hidden layer Figure 1b, c follow.")
flags.DEFINE_integer("seed", _D.seed, "Seed of the initial weights and the data order.")


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from keras_bninception.experiments import outputs, plots

    try:
        config = figure1.Figure1Config(
            dataset=FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            steps=FLAGS.steps,
            eval_every=FLAGS.eval_every,
            batch_size=FLAGS.batch_size,
            learning_rate=FLAGS.learning_rate,
            init_stddev=FLAGS.init_stddev,
            unit=FLAGS.unit,
            seed=FLAGS.seed,
        ).validate()
        output_dir = outputs.prepare_output_dir(FLAGS.output_dir)
        print(f"Figure 1: training both networks for {config.steps:,} steps...", flush=True)
        result = figure1.run(config)
    except (ValueError, TrainingError) as e:
        # TrainingError: a network diverged (e.g. a learning rate raised by flags), or SIGTERM.
        fail(e)
    written = figure1.write_outputs(result, output_dir)
    print(report(result["summary"], written), flush=True)
    if not plots.available():
        print(plots.MISSING, flush=True)


def report(summary: dict, written: list[str]) -> str:
    """The headline figures and the files written, for the console."""
    lines = [f"Dataset: {summary['dataset_description']}, {summary['steps']:,} steps."]
    for network, label in figure1.NETWORK_LABELS.items():
        accuracy = ", ".join(
            f"{100 * a:.1f}% @ {s}" for s, a in summary["heldout_accuracy"][network].items()
        )
        drift = summary["percentile_drift_after_first_tenth"][network]["max"]
        lines.append(
            f"{label}: held-out accuracy {accuracy}; sigmoid-input percentiles move by up to "
            f"{drift:.2f} after step {summary['drift_from_step']} "
            f"({summary['train_seconds'][network]:.0f} s)."
        )
    lines += [f"Wrote {path}" for path in written]
    return "\n".join(lines)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
