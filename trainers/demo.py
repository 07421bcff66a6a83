"""`make demo`: BN-Inception on the embedded handwritten digits, on the CPU, in a few minutes.

Trains the full BN-Inception (depth multiplier 1, about 10 M parameters) on scikit-learn's 8x8
digits (1,437 training / 360 held-out images, shipped inside scikit-learn, no download) upsampled
to 32x32, evaluates top-1 / top-5 on the held-out images, and prints where the checkpoints,
TensorBoard logs and metrics.json are. It is `python -m trainers.train` with these flags:

- `--image_size=32 --batch_size=64 --epochs=27` (607 steps);
- SGD with momentum 0.9 at BN-x30's initial learning rate 0.045, decayed exponentially as in the
  paper but compressed into the short run (x0.85 every epoch); L2 weight decay 1e-4, stronger
  than the paper's ImageNet value for a training set of 1,437 images;
- `--bn_momentum=0.9`: the moving statistics used at evaluation converge in a few hundred steps
  (at Keras' default 0.99 they would still be near their initial values and held-out accuracy at
  chance);
- `--seed=0 --deterministic`: the same result on every run of the same machine and TensorFlow
  build (floating-point rounding differs between CPUs, so elsewhere it can move by an image or
  two); checkpoints every 200 steps into `runs/demo-<date>-<time>/`.

Extra flags are passed on, e.g. `python -m trainers.demo --image_size=64` or
`--model_dir=runs/demo` (rerunning with the same `--model_dir` resumes from its checkpoint).
"""

from __future__ import annotations

import sys
import time

from absl import app

from trainers import train

DEMO_FLAGS = [
    "--dataset=digits",
    "--image_size=32",
    "--batch_size=64",
    "--epochs=27",
    "--optimizer=momentum",
    "--learning_rate=0.045",
    "--learning_rate_decay_factor=0.85",
    "--num_epochs_per_decay=1",
    "--weight_decay=1e-4",
    "--bn_momentum=0.9",
    "--seed=0",
    "--deterministic",
    "--checkpoint_every=200",
    "--log_every=50",
    "--mode=train_and_eval",
]


def demo_argv(extra: list[str]) -> list[str]:
    """The `trainers.train` argv of the demo; flags in `extra` come last and so win."""
    model_dir = f"--model_dir=runs/demo-{time.strftime('%Y%m%d-%H%M%S')}"
    return ["trainers.demo", *DEMO_FLAGS, model_dir, *extra]


def main() -> None:
    argv = demo_argv(sys.argv[1:])
    print("BN-Inception demo: python -m trainers.train " + " ".join(argv[1:]), flush=True)
    app.run(train.main, argv=argv, flags_parser=train.parse_flags)


if __name__ == "__main__":
    main()
