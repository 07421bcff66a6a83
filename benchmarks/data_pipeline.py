"""Throughput of the input pipeline (`keras_bninception.data.build_dataset`), in images/s.

    .venv/bin/python benchmarks/data_pipeline.py                 # digits, 64x64, batch 64, training
    .venv/bin/python benchmarks/data_pipeline.py --image_size=224 --batches=100

Builds the training pipeline, pulls `--warmup` batches (tf.data's autotuning settles), then times
`--batches` batches and prints one line per repeat and the median.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from keras_bninception import data  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--eval", action="store_true", help="time the evaluation pipeline")
    parser.add_argument("--deterministic", action="store_true")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    info = data.get_info(args.dataset, data_dir=args.data_dir)
    training = not args.eval
    ds = data.build_dataset(
        args.dataset,
        info.train_split if training else info.eval_split,
        image_size=args.image_size,
        batch_size=args.batch_size,
        training=training,
        seed=0,
        deterministic=args.deterministic,
        data_dir=args.data_dir,
        repeat=True,
    )
    iterator = iter(ds)
    for _ in range(args.warmup):
        next(iterator)
    rates = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        for _ in range(args.batches):
            images, _ = next(iterator)
        images.numpy()
        seconds = time.perf_counter() - start
        rates.append(args.batches * args.batch_size / seconds)
        print(f"repeat {repeat}: {rates[-1]:,.0f} images/s ({seconds:.2f} s)")
    print(
        f"{args.dataset} {'eval' if args.eval else 'train'} {args.image_size}x{args.image_size} "
        f"batch {args.batch_size} deterministic={args.deterministic} on {os.cpu_count()} CPUs: "
        f"median {statistics.median(rates):,.0f} images/s"
    )


if __name__ == "__main__":
    main()
