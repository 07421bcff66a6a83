"""The paper's experiments, re-run at a scale two CPU cores handle in minutes.

- `figure1`: section 4.1's MNIST network (three sigmoid layers of 100 units) with and without
  Batch Normalization: held-out accuracy and the drift of one sigmoid's input over training.
- `speedup`: section 4.2's five ImageNet networks (Inception, BN-Baseline, BN-x5, BN-x30,
  BN-x5-Sigmoid) trained by `keras_bninception.training` on a small dataset.
- `outputs`: the output directory, CSV / JSON files; `plots`: the pictures (needs matplotlib,
  the `plots` extra).

The binaries are `python -m trainers.reproduce_figure1` and `python -m trainers.reproduce_speedup`.
"""
