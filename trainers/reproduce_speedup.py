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

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

from absl import app, flags, logging  # noqa: E402

from keras_bninception.experiments import speedup  # noqa: E402
from keras_bninception.training import TrainingError  # noqa: E402
from trainers.cli import fail, no_arguments  # noqa: E402

_D = speedup.SpeedupConfig()
FLAGS = flags.FLAGS

flags.DEFINE_string("output_dir", "runs/speedup", "Where the PNG, CSV, Markdown and JSON go.")
flags.DEFINE_string(
    "dataset", _D.dataset, "'digits' (embedded), 'image_folder' or a prepared TFDS dataset."
)
flags.DEFINE_string("data_dir", None, "TFDS data directory, or the image folder's root.")
flags.DEFINE_integer("image_size", _D.image_size, "Input height and width (>= 32).")
flags.DEFINE_float("depth_multiplier", _D.depth_multiplier, "Width of BN-Inception.")
flags.DEFINE_integer("steps", _D.steps, "Training steps of each network (same for all).")
flags.DEFINE_integer("eval_every", _D.eval_every, "Steps between evaluations; 0 = steps / 15.")
flags.DEFINE_float("bn_momentum", _D.bn_momentum, "Momentum of the BN moving statistics.")
flags.DEFINE_list("networks", list(_D.networks), "Which of the five networks to train.")
flags.DEFINE_integer("seed", _D.seed, "Seed of the initial weights and the data order.")


def main(argv: list[str]) -> None:
    no_arguments(argv)
    if not FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    from keras_bninception.experiments import outputs, plots

    try:
        config = speedup.SpeedupConfig(
            dataset=FLAGS.dataset,
            data_dir=FLAGS.data_dir,
            image_size=FLAGS.image_size,
            depth_multiplier=FLAGS.depth_multiplier,
            steps=FLAGS.steps,
            eval_every=FLAGS.eval_every,
            bn_momentum=FLAGS.bn_momentum,
            networks=tuple(FLAGS.networks),
            seed=FLAGS.seed,
        ).validate()
        output_dir = outputs.prepare_output_dir(FLAGS.output_dir)
        print(
            f"Section 4.2: training {len(config.networks)} networks for {config.steps:,} steps "
            "each...",
            flush=True,
        )
        result = speedup.run(config)
    except (ValueError, TrainingError) as e:
        # TrainingError: a network diverged (e.g. a learning rate raised by flags), or SIGTERM.
        fail(e)
    written = speedup.write_outputs(result, output_dir)
    print(speedup.markdown(result["table"], result["summary"]), flush=True)
    print("\n".join(f"Wrote {path}" for path in written), flush=True)
    if not plots.available():
        print(plots.MISSING, flush=True)


def run() -> None:
    app.run(main)


if __name__ == "__main__":
    run()
