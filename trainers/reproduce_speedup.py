r"""Re-runs section 4.2 of the paper at small scale: `python -m trainers.reproduce_speedup`.

The paper's five networks (Inception, BN-Baseline, BN-x5, BN-x30, BN-x5-Sigmoid), built by
`BNInception` options and trained by the project's trainer with its `--recipe` presets, on the same
data, seed and step budget (`keras_bninception.experiments.speedup`). Writes into `--output_dir`:

- `speedup.png`: held-out accuracy against training steps, the five networks;
- `speedup.csv` and `speedup.md`: the paper's table (steps to reach Inception's final accuracy,
  the speed-up, the maximum accuracy) beside the paper's numbers;
- `speedup_curves.csv` (every plotted number) and `speedup.json` (settings, recipes, table).

The default run (embedded digits at 32x32, depth multiplier 0.25, 1,500 steps per network) used
12-13 minutes of CPU time on a 2-core machine (26-33 minutes of wall time while shared with
other jobs). The pictures need matplotlib (`pip install 'keras-bninception[plots]'`); without it the
other files are still written. Bad input ends with one `error:` line and exit status 1.

Examples:

  python -m trainers.reproduce_speedup --output_dir=runs/speedup
  # A TFDS dataset prepared in ~/tensorflow_datasets, or an image folder (root/<split>/<label>/):
  python -m trainers.reproduce_speedup --dataset=imagenette --image_size=96 --steps=20000
  python -m trainers.reproduce_speedup --dataset=image_folder --data_dir=/data/flowers
"""

from __future__ import annotations

from absl import app, flags

from keras_bninception.experiments import speedup
from trainers import cli

_D = speedup.SpeedupConfig()
cli.define_experiment_flags(
    _D,
    output_dir="runs/speedup",
    dataset_help="'digits' (embedded), 'image_folder' or a prepared TFDS dataset.",
    data_dir_help="TFDS data directory, or the image folder's root.",
    evaluations=15,
)
flags.adopt_module_key_flags(cli)  # --helpshort lists them too.
flags.DEFINE_integer("image_size", _D.image_size, "Input height and width (>= 32).")
flags.DEFINE_float("depth_multiplier", _D.depth_multiplier, "Width of BN-Inception.")
flags.DEFINE_float("bn_momentum", _D.bn_momentum, "Momentum of the BN moving statistics.")
flags.DEFINE_list("networks", list(_D.networks), "Which of the five networks to train.")


def main(argv: list[str]) -> None:
    cli.run_experiment(
        argv,
        speedup,
        speedup.SpeedupConfig,
        lambda config: (
            f"Section 4.2: training {len(config.networks)} networks for {config.steps:,} "
            "steps each..."
        ),
        lambda result: speedup.markdown(result["table"], result["summary"]),
    )


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
