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

from absl import app, flags

from keras_bninception.experiments import figure1
from trainers import cli

_D = figure1.Figure1Config()
cli.define_experiment_flags(
    _D,
    output_dir="runs/figure1",
    dataset_help=f"One of {list(figure1.DATASETS)}; mnist must be prepared by TFDS.",
    data_dir_help="TFDS directory (for --dataset=mnist: the paper's data, with --steps=50000).",
    evaluations=50,
)
flags.adopt_module_key_flags(cli)  # --helpshort lists them too.
flags.DEFINE_integer("batch_size", _D.batch_size, "Mini-batch size (the paper: 60).")
flags.DEFINE_float("learning_rate", _D.learning_rate, "SGD learning rate (both networks).")
flags.DEFINE_float("init_stddev", _D.init_stddev, "Std of the Gaussian initial weights.")
flags.DEFINE_integer("unit", _D.unit, "Which sigmoid of the last hidden layer Figure 1b, c follow.")


def main(argv: list[str]) -> None:
    cli.run_experiment(
        argv,
        figure1,
        figure1.Figure1Config,
        lambda config: f"Figure 1: training both networks for {config.steps:,} steps...",
        lambda result: report(result["summary"]),
    )


def report(summary: dict) -> str:
    """The headline figures, for the console."""
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
    return "\n".join(lines)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
