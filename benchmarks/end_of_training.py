"""The stall at the end of training: from the last step's checkpoint to `Trainer.train` returning.

Destroying the training input iterator joins tf.data's autotuning thread, which wakes at the end of
its optimization period (up to a minute once the run is a minute or two old), not on the
cancellation. The trainer hands the iterator to a background thread instead
(`trainer.release_in_background`). This script trains a small BN-Inception on the embedded digits
with both, alternately, in one process ("synchronous": the iterator destroyed in `train`, as
before) and prints how long `train` took to return after its final checkpoint.

    python benchmarks/end_of_training.py [--steps 2000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import keras
import tensorflow as tf

from keras_bninception import data
from keras_bninception.models import BNInception
from keras_bninception.training import trainer as trainer_lib
from keras_bninception.training.config import TrainerConfig


def _stall(steps: int, synchronous: bool) -> tuple[float, float]:
    """(seconds of training, seconds from the final checkpoint to `train` returning)."""
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    trainer = trainer_lib.Trainer(
        strategy,
        lambda: BNInception(
            weights=None,
            classes=10,
            input_shape=(32, 32, 3),
            depth_multiplier=0.1,
            classifier_activation=None,
        ),
        lambda: keras.optimizers.SGD(0.01, momentum=0.9),
        tempfile.mkdtemp(prefix="end_of_training_"),
        TrainerConfig(batch_size=16, checkpoint_every=10**9, log_every=10**9),
    )
    saved = []
    save = trainer.save
    trainer.save = lambda step: (save(step), saved.append(time.perf_counter()))
    release = trainer_lib.release_in_background
    if synchronous:  # the iterator's last reference is dropped by `train` itself
        trainer_lib.release_in_background = lambda objects: None
    try:
        began = time.perf_counter()
        trainer.train(
            lambda context, start: data.build_dataset(
                "digits",
                "train",
                image_size=32,
                batch_size=16,
                training=True,
                seed=0,
                input_context=context,
                start_step=start,
            ),
            steps,
        )
        returned = time.perf_counter()
    finally:
        trainer_lib.release_in_background = release
        trainer.close()
    return saved[-1] - began, returned - saved[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    print("variant        training s   final checkpoint -> train() returned, s")
    for _ in range(args.rounds):
        for name, synchronous in (("synchronous", True), ("background", False)):
            trained, stall = _stall(args.steps, synchronous)
            print(f"{name:<14} {trained:10.1f}   {stall:8.2f}", flush=True)


if __name__ == "__main__":
    main()
