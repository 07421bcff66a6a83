"""Whole BN-Inception training steps: no BN, TF's fused BN kernel, this package's BN, Keras' BN.

    python benchmarks/train_step.py [--sizes 224x32 64x32] [--repeats 5] [--paths loop keras]
        [--networks ...] [--loop_steps 3] [--mixed_precision bfloat16] [--memory]
    python benchmarks/train_step.py --profile DIR [--sizes 224x32] [--networks ...]
        [--mixed_precision bfloat16]

For each input size × global batch (`SIZExBATCH`), BN-Inception models are built, identical but
for their normalization (`BNInception(norm_layer=...)`):

- no BN: conv + bias + ReLU;
- fused kernel: TensorFlow's fused C++ kernels (`FusedBatchNormV3` / `FusedBatchNormGradV3`, what
  tf_keras' `fused=True` ran), then ReLU;
- ours: the package's network as built by default, BN + ReLU one unit
  (`BatchNormalization(activation="relu")`, one hand-written gradient for both);
- ours, BN then ReLU: the package's plain `BatchNormalization` followed by a ReLU layer (the
  network before the unit);
- keras BN: `keras.layers.BatchNormalization`, then ReLU;
- ours, accelerator kernels: ours built inside `kernels.use("accelerator")`, what a GPU runs (single
  reduces, one XLA launch a pass), here on the CPU; only if named in `--networks`;
- ours, blocked at any size: ours with the CPU's blocked reductions for every BN tensor of a block
  of rows per part, not only from `kernels._BLOCKED_MIN_VALUES` values on (its calls, and the
  compilations its first call hands to the background, run with that constant at 0); only if
  named in `--networks`.

Each trains with SGD + momentum through one of two paths:

- loop: the package's training loop (`keras_bninception.training.Trainer`, one device),
  `--loop_steps` steps per `Trainer.train` call, all in one logging window (one call of its
  compiled `tf.range` loop); the time is the trainer's own measure of that window (its
  `images_per_second`), so neither the set-up of each call nor the checkpoint (weights and
  momentum) `train` writes when it returns, which would add the same to every network's time;
- keras: `model.compile` + `model.train_on_batch`, one step per call.

Calls of the networks alternate (interleaved, so machine noise hits all alike) and the median of
`--repeats` calls is reported after one warm-up call, whose time (tracing, XLA compilation) is
reported too. `--memory` runs every network once more in a fresh subprocess and reports its peak
resident memory (`ru_maxrss`) after `--memory_steps` steps. `--memory_only` prints only memory:
- the peak RSS, median (and range) of `--memory_repeats` fresh processes a network, taken in
  turn. With TensorFlow's default CPU allocator (malloc), where freed tensors land in the
  heap decides how far RSS climbs, so it varies from process to process by up to ~100 MB at
  224×224 × 32, and it keeps climbing for several steps: 10 steps by default, not 3;
- from one more fresh process per network whose CPU tensors come from TensorFlow's counting
  BFC allocator, the peak of live tensors after the first step (what the graph keeps, without
  the XLA executables, graphs and allocator slack that RSS also holds);
- the size of all BN inputs (the activations BN's backward must keep).

`--mixed_precision bfloat16` adds rows under the `mixed_bfloat16` policy, with the float32
Keras-BN network's time as the reference.

`--profile DIR` instead traces one training-loop step of each network in `--networks` ("ours,
BN then ReLU" and "ours" if not given), in float32 or under `--mixed_precision`, with the
TensorFlow profiler (written to DIR, for TensorBoard) and prints where the time goes: each
TensorFlow op's own time (nested ops subtracted), summed over the compute threads and grouped by
what it belongs to (ours' BN kernels, TensorFlow's fused BN kernels, the BN layers' other ops
and moving averages, the separate ReLU layers, convolutions and their gradients, the optimizer,
the rest).
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.bn_layer import (  # noqa: E402
    ACCELERATOR,
    BLOCKED,
    FusedKernelBN,
    blocked_at_any_size,
    copy_bandwidth,
    matmul_flops,
)
from benchmarks.machine import cpu_description  # noqa: E402
from keras_bninception import BNInception  # noqa: E402
from keras_bninception.layers import BatchNormalization, kernels  # noqa: E402
from keras_bninception.training import Trainer  # noqa: E402
from keras_bninception.training.config import TrainerConfig  # noqa: E402

CLASSES = 10
NETWORKS = ("no BN", "fused kernel", "ours", "ours, BN then ReLU", "keras BN", ACCELERATOR, BLOCKED)
DEFAULT_NETWORKS = NETWORKS[:5]
# The counting allocator is deterministic: one process of a few steps gives the tensor peak.
TENSOR_PEAK_STEPS = 3
PROFILED = ("ours, BN then ReLU", "ours")  # --profile's networks unless --networks is given


class _FusedKernelLayer(FusedKernelBN):
    """`FusedKernelBN` taking the BN constructor arguments the network passes its norm layer."""

    def __init__(self, axis=-1, momentum=0.99, epsilon=1e-3, scale=True, synchronized=False, **kw):
        super().__init__(momentum=momentum, **kw)


def _bn_then_relu(**kwargs) -> keras.layers.Layer:
    """The plain BN layer: `blocks` fuses the ReLU only into the class itself, not a factory."""
    return BatchNormalization(**kwargs)


def _model(network: str, size: int, policy: str) -> keras.Model:
    norm_layer = {
        "fused kernel": _FusedKernelLayer,
        "ours, BN then ReLU": _bn_then_relu,
        "keras BN": keras.layers.BatchNormalization,
    }.get(network, BatchNormalization)
    keras.mixed_precision.set_global_policy(policy)
    path = kernels.ACCELERATOR if network == ACCELERATOR else None  # read by each layer's init
    try:
        with kernels.use(path):
            return BNInception(
                weights=None,
                classes=CLASSES,
                input_shape=(size, size, 3),
                classifier_activation=None,
                batch_norm=network != "no BN",
                norm_layer=norm_layer,
            )
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _data(size: int, batch: int) -> tuple[tf.Tensor, tf.Tensor]:
    images = tf.random.stateless_uniform([batch, size, size, 3], seed=(0, 1), minval=-1)
    labels = tf.random.stateless_uniform([batch], seed=(0, 2), maxval=CLASSES, dtype=tf.int32)
    return images, labels


def _optimizer() -> keras.optimizers.Optimizer:
    return keras.optimizers.SGD(0.01, momentum=0.9)


def _step_fn(
    path: str, network: str, size: int, batch: int, policy: str, model_dir: str, loop_steps: int = 1
):
    """A callable running training steps of `network` through `path` (loop: `loop_steps`);
    it returns their time in seconds."""
    if network != BLOCKED:
        return _path_step_fn(path, network, size, batch, policy, model_dir, loop_steps)
    step = _path_step_fn(path, "ours", size, batch, policy, model_dir, loop_steps)

    def blocked_step() -> float:
        with blocked_at_any_size():
            return step()

    return blocked_step


def _path_step_fn(path, network, size, batch, policy, model_dir, loop_steps):
    images, labels = _data(size, batch)
    if path == "keras":
        model = _model(network, size, policy)
        model.compile(
            optimizer=_optimizer(),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )

        def train_on_batch() -> float:
            began = time.perf_counter()
            model.train_on_batch(images, labels)
            return time.perf_counter() - began

        return train_on_batch
    trainer = Trainer(
        tf.distribute.OneDeviceStrategy("/cpu:0"),
        lambda: _model(network, size, policy),
        _optimizer,
        model_dir,
        TrainerConfig(
            batch_size=batch, weight_decay=0.0, checkpoint_every=10**9, log_every=loop_steps
        ),
    )
    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat()
    ends = iter(range(loop_steps, 10**9, loop_steps))

    def train() -> float:
        metrics = trainer.train(lambda context, start: dataset, next(ends))
        return loop_steps * batch / metrics["images_per_second"]

    return train


def _memory_child(path: str, network: str, size: int, batch: int, policy: str, steps: int) -> None:
    with tempfile.TemporaryDirectory() as model_dir:
        step = _step_fn(path, network, size, batch, policy, model_dir)
        step()  # tracing, XLA compilation
        counted = os.environ.get("TF_CPU_ALLOCATOR_USE_BFC") == "true"  # else no counts
        if counted:
            tf.config.experimental.reset_memory_stats("CPU:0")
        for _ in range(steps - 1):
            step()  # one step a call on both paths
        tensors = tf.config.experimental.get_memory_info("CPU:0")["peak"] if counted else 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak, "tensor_peak_mb": tensors / 2**20}))


def _peak_memory(path: str, network: str, size: int, batch: int, policy: str, steps: int) -> float:
    """Peak RSS (MB) of a fresh process training `network` `steps` steps, TF's own allocator."""
    return _memory_run(path, network, size, batch, policy, steps, {})["peak_mb"]


def _tensor_peak(path: str, network: str, size: int, batch: int, policy: str, steps: int) -> float:
    """Peak of live TensorFlow tensors (MB) after the first of `steps` steps, in a fresh process
    whose CPU tensors come from TensorFlow's pooling BFC allocator (`TF_CPU_ALLOCATOR_USE_BFC`),
    which counts them."""
    env = {"TF_CPU_ALLOCATOR_USE_BFC": "true"}
    return _memory_run(path, network, size, batch, policy, steps, env)["tensor_peak_mb"]


def _memory_run(path, network, size, batch, policy, steps: int, env: dict) -> dict:
    child = [path, network, str(size), str(batch), policy, str(steps)]
    out = subprocess.run(
        [sys.executable, __file__, "--memory-child", *child],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, **env},
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def _bn_input_mb(size: int, batch: int) -> float:
    """What BN must keep for its backward: the input of every BN layer, float32, in MB."""
    model = _model("ours", size, "float32")
    values = sum(
        math.prod(layer.input.shape[1:])
        for layer in model.layers
        if isinstance(layer, BatchNormalization)
    )
    return values * batch * 4 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["224x32"], help="SIZExBATCH, e.g. 64x32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--paths", nargs="+", default=["loop", "keras"], choices=["loop", "keras"])
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, help="default: the first five")
    parser.add_argument("--loop_steps", type=int, default=3, help="steps per Trainer.train call")
    parser.add_argument("--mixed_precision", choices=["bfloat16"], default=None)
    parser.add_argument("--profile", metavar="DIR", help="profile a step of each network")
    parser.add_argument("--memory", action="store_true", help="peak RSS, one process a network")
    parser.add_argument("--memory_only", action="store_true", help="only the memory columns")
    parser.add_argument("--memory_steps", type=int, default=10, help="steps a memory process")
    parser.add_argument("--memory_repeats", type=int, default=3, help="RSS processes a network")
    parser.add_argument("--memory-child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        path, network, size, batch, policy, steps = args.memory_child
        _memory_child(path, network, int(size), int(batch), policy, int(steps))
        return
    if args.repeats < 3:
        parser.error(f"--repeats must be at least 3; received --repeats={args.repeats}")
    if args.loop_steps < 1:
        parser.error(f"--loop_steps must be at least 1; received --loop_steps={args.loop_steps}")
    if args.memory_steps < 3:
        parser.error(
            f"--memory_steps must be at least 3; received --memory_steps={args.memory_steps}"
        )
    if args.memory_repeats < 1:
        parser.error(
            f"--memory_repeats must be at least 1; received --memory_repeats={args.memory_repeats}"
        )
    if args.profile:
        networks = [n for n in NETWORKS if n in (args.networks or PROFILED)]
        policy = "float32" if args.mixed_precision is None else f"mixed_{args.mixed_precision}"
        for spec in args.sizes:
            _profile(args.profile, *(int(v) for v in spec.lower().split("x")), networks, policy)
        return
    networks = [n for n in NETWORKS if n in (args.networks or DEFAULT_NETWORKS)]
    if "keras BN" not in networks:
        parser.error(f"--networks must include 'keras BN' (the reference); received {networks}")
    policies = ["float32"] + (["mixed_bfloat16"] if args.mixed_precision else [])
    if args.memory_only:
        print(
            f"peak RSS: median (min-max) of {args.memory_repeats} processes a network, each "
            f"training {args.memory_steps} steps; tensor peak: one process on the counting "
            f"allocator, after the first of {TENSOR_PEAK_STEPS} steps"
        )
        print(
            "| input × batch | path | policy | network | peak RSS MB | vs keras BN | "
            "tensor peak MB | vs keras BN | BN's tensors over no BN MB |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for spec in args.sizes:
            size, batch = (int(v) for v in spec.lower().split("x"))
            for path in args.paths:
                for policy in policies:
                    runs = {n: [] for n in networks}
                    for _ in range(args.memory_repeats):  # networks in turn, so drift hits all
                        for network in networks:
                            runs[network].append(
                                _peak_memory(path, network, size, batch, policy, args.memory_steps)
                            )
                    rss = {n: statistics.median(r) for n, r in runs.items()}
                    tensors = {
                        n: _tensor_peak(path, n, size, batch, policy, TENSOR_PEAK_STEPS)
                        for n in networks
                    }
                    no_bn = tensors.get("no BN")  # measured only when in --networks
                    for network in networks:
                        rss_ratio = rss[network] / rss["keras BN"]
                        low, high = min(runs[network]), max(runs[network])
                        rss_text = f"{rss[network]:.0f} ({low:.0f}-{high:.0f})"
                        tensor_ratio = tensors[network] / tensors["keras BN"]
                        if no_bn is None or network == "no BN":
                            over_text = "—"
                        else:
                            over_text = f"{tensors[network] - no_bn:.0f}"
                        print(
                            f"| {size}×{size} × {batch} | {path} | {policy} | {network} | "
                            f"{rss_text} | {rss_ratio:.2f}× | {tensors[network]:.0f} | "
                            f"{tensor_ratio:.2f}× | {over_text} |",
                            flush=True,
                        )
            print(
                f"BN's inputs at {size}×{size} × {batch} (what its backward must keep, float32): "
                f"{_bn_input_mb(size, batch):.0f} MB"
            )
        return
    print(cpu_description())
    print(
        f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores; "
        f"copy {copy_bandwidth() / 1e9:.1f} GB/s, matmul {matmul_flops() / 1e9:.0f} GFLOP/s "
        f"(float32); median of {args.repeats} interleaved calls ({args.loop_steps} steps a "
        f"Trainer.train call, 1 a train_on_batch call), SGD + momentum, {CLASSES} classes"
    )
    header = ["input × batch", "path", "policy", "network", "ms/step", "BN's cost over no BN"]
    header += ["vs keras BN (float32)", "vs fused kernel", "first call s"]
    if args.memory:
        header.append("peak RSS MB")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for spec in args.sizes:
        size, batch = (int(v) for v in spec.lower().split("x"))
        for path in args.paths:
            with tempfile.TemporaryDirectory() as tmp:
                steps, first = {}, {}
                for policy in policies:
                    for network in networks:
                        key = (policy, network)
                        model_dir = os.path.join(tmp, f"{policy}-{NETWORKS.index(network)}")
                        steps[key] = _step_fn(
                            path, network, size, batch, policy, model_dir, args.loop_steps
                        )
                        first[key] = steps[key]()
                times = {key: [] for key in steps}
                for _ in range(args.repeats):
                    for key, step in steps.items():
                        times[key].append(step())
            per_call = args.loop_steps if path == "loop" else 1
            ms = {key: statistics.median(t) * 1e3 / per_call for key, t in times.items()}
            keras_f32 = ms[("float32", "keras BN")]
            for (policy, network), value in ms.items():
                no_bn = ms.get((policy, "no BN"), ms.get(("float32", "no BN")))
                fused = ms.get((policy, "fused kernel"), ms.get(("float32", "fused kernel")))
                row = [
                    f"{size}×{size} × {batch}",
                    path,
                    policy,
                    network,
                    f"{value:.0f}",
                    "—" if network == "no BN" or no_bn is None else f"{value - no_bn:.0f} ms",
                    f"{keras_f32 / value:.2f}×",
                    "—" if fused is None else f"{fused / value:.2f}×",
                    f"{first[(policy, network)]:.1f}",
                ]
                if args.memory:
                    rss = _peak_memory(path, network, size, batch, policy, args.memory_steps)
                    row.append(f"{rss:.0f}")
                print("| " + " | ".join(row) + " |", flush=True)


_XLA_RUN = "CpuExecutable::ExecuteAsyncOnStream"  # the profiler's event for an XLA computation


def _own_times(space) -> dict[str, float]:
    """Own time (ms, nested events subtracted) of each TensorFlow op and of the XLA runs."""
    op_event = re.compile(r"^[A-Za-z0-9_./>-]+:[A-Za-z0-9_]+$|^" + _XLA_RUN + "$")
    own = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            events = sorted(
                (e.offset_ps, e.offset_ps + e.duration_ps, names[e.metadata_id])
                for e in line.events
                if op_event.match(names[e.metadata_id])
            )
            stack = []  # [end, name] of the enclosing op events
            for start, end, name in events:
                while stack and stack[-1][0] <= start:
                    stack.pop()
                if stack:
                    own[stack[-1][1]] -= (end - start) / 1e9
                own[name] += (end - start) / 1e9
                stack.append([end, name])
    return own


def _category(op: str) -> str:
    if op == _XLA_RUN:  # without --jit_compile, only the BN layers' kernels are XLA computations
        return "BN kernels (XLA: forward, backward; with ReLU in the unit)"
    name, _, op_type = op.rpartition(":")
    if "FusedBatchNorm" in op_type:
        return "BN kernels (TensorFlow's fused C++ ops)"
    if "_BatchNorm" in name:
        if "AssignVariableOp" in op_type or "/moving" in name.lower():
            return "BN moving averages"
        return "BN layers' other ops (ours: cast, reshape, ...; Keras' layer: all its math)"
    if "_Activation" in name:
        return "ReLU layers (forward, backward)"
    if "Conv2D" in op_type or "DepthwiseConv2dNative" in op_type or "MatMul" in op_type:
        return "convolutions, matmul (and gradients)"
    if re.search(r"/sgd(_\d+)?/", name.lower()):
        return "optimizer"
    return "other (pooling, concat, loss, data, ...)"


def _profile(logdir: str, size: int, batch: int, networks: list[str], policy: str) -> None:
    """Traces one training-loop step of each of `networks` under `policy`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    shares = {}
    for network in networks:
        with tempfile.TemporaryDirectory() as model_dir:
            step = _step_fn("loop", network, size, batch, policy, model_dir)
            step()  # tracing and XLA compilation
            step()
            name = f"{policy}_{network}".replace(", ", "_").replace(" ", "_")
            out = os.path.join(logdir, name)
            t0 = time.perf_counter()
            tf.profiler.experimental.start(out)
            try:
                step()
            finally:
                tf.profiler.experimental.stop()
            wall = time.perf_counter() - t0
        (path,) = [os.path.join(d, f) for d, _, fs in os.walk(out) for f in fs if "xplane" in f]
        with open(path, "rb") as f:
            own = _own_times(xplane_pb2.XSpace.FromString(f.read()))
        by_category = collections.Counter()
        for op, ms in own.items():
            by_category[_category(op)] += ms
        shares[network] = (wall, by_category)
    categories = sorted(
        {c for _, b in shares.values() for c in b},
        key=lambda c: -max(b[c] for _, b in shares.values()),
    )
    title = f"| {size}×{size} × {batch}, {policy}, one training-loop step | "
    print(title + " | ".join(f"{n}: ms (share)" for n in shares) + " |")
    print("|---|" + "---|" * len(shares))
    for category in categories:
        cells = []
        for _, by_category in shares.values():
            total = sum(by_category.values())
            cells.append(f"{by_category[category]:.0f} ({by_category[category] / total:.0%})")
        print(f"| {category} | " + " | ".join(cells) + " |")
    totals = [f"{sum(b.values()):.0f} (100%)" for _, b in shares.values()]
    print("| all ops (summed over threads) | " + " | ".join(totals) + " |")
    print("| step wall time | " + " | ".join(f"{w * 1e3:.0f}" for w, _ in shares.values()) + " |")


if __name__ == "__main__":
    main()
