"""A network's first training call, each in a fresh process: ours against TF's fused BN kernel.

    python benchmarks/first_call.py [--sizes 224x32] [--paths keras loop] [--repeats 3]
        [--mixed_precision bfloat16]

The first training call traces the step, compiles what XLA compiles (ours: BN's kernels, two
or four a layer shape) and runs the step(s). Within one process a network would find what an
earlier one left (XLA's compilation cache, TensorFlow's start-up), so here every call runs in a
process of its own: `train_step.py`'s models, data and paths (loop: one `Trainer.train` call of
`--loop_steps` steps; keras: one `train_on_batch`), the networks in turn, `--repeats` rounds:

- fused kernel: TensorFlow's fused C++ BN kernels (the anchor);
- ours: the package's network as built by default (its BN kernels compiled ahead, on a
  background thread, while the step is traced);
- ours, compiled in the step: the same with the compile-ahead switched off in that process, so
  each kernel compiles when the first step reaches it (what the ahead saves);
- ours, blocked at any size: the same with the CPU's blocked reductions for every tensor of a
  block of rows per part, not only from `kernels._BLOCKED_MIN_VALUES` values on (what that
  threshold saves: four kernels a layer shape instead of two);
- keras BN: `keras.layers.BatchNormalization`.

Each process also reports what XLA's own log says (`TF_CPP_VMODULE=device_compiler=2`): how many
computations it compiled and the seconds their compilations took, summed over threads. Prints the
CPU, the medians of the first-call wall time and their ratio to the fused-kernel network's.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

NETWORKS = (
    "fused kernel",
    "ours",
    "ours, compiled in the step",
    "ours, blocked at any size",
    "keras BN",
)
_COMPILED = re.compile(r"Compilation of XLA executable time: .*?\((\d+) us\)")


def _child(path: str, network: str, size: int, batch: int, policy: str, loop_steps: int) -> None:
    from benchmarks.train_step import _step_fn
    from keras_bninception.layers import kernels

    if network == "ours, compiled in the step":
        kernels._compile_ahead = lambda *args: None  # this process only
        network = "ours"
    elif network == "ours, blocked at any size":
        kernels._BLOCKED_MIN_VALUES = 0  # this process only
        network = "ours"
    with tempfile.TemporaryDirectory() as model_dir:
        step = _step_fn(path, network, size, batch, policy, model_dir, loop_steps)
        began = time.perf_counter()
        step()
        first = time.perf_counter() - began
    print(json.dumps({"first_s": first}), flush=True)


def _run(path: str, network: str, size: int, batch: int, policy: str, loop_steps: int) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "device_compiler=2"}
    args = [path, network, str(size), str(batch), policy, str(loop_steps)]
    out = subprocess.run(
        [sys.executable, __file__, "--child", *args],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    compiles = [int(us) for us in _COMPILED.findall(out.stderr)]
    result["xla_compilations"] = len(compiles)
    result["xla_compile_s"] = sum(compiles) / 1e6
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["224x32"], help="SIZExBATCH, e.g. 64x32")
    parser.add_argument("--paths", nargs="+", default=["keras", "loop"], choices=["loop", "keras"])
    parser.add_argument("--networks", nargs="+", choices=NETWORKS, default=list(NETWORKS))
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes a network")
    parser.add_argument("--loop_steps", type=int, default=3, help="steps of the loop's call")
    parser.add_argument("--mixed_precision", choices=["bfloat16"], default=None)
    parser.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        path, network, size, batch, policy, loop_steps = args.child
        _child(path, network, int(size), int(batch), policy, int(loop_steps))
        return
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1; received --repeats={args.repeats}")
    if "fused kernel" not in args.networks:
        parser.error(
            f"--networks must include 'fused kernel' (the anchor); received {args.networks}"
        )
    from benchmarks.machine import cpu_description

    print(cpu_description())
    print(
        f"first training call (trace, compile, run), wall time of each in a fresh process: median "
        f"of {args.repeats} (networks in turn); XLA: computations compiled, seconds compiling"
    )
    print(
        "| input × batch | path | policy | network | first call s (min-max) | vs fused kernel | "
        "XLA compilations | XLA compile s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    policies = ["float32"] + ([f"mixed_{args.mixed_precision}"] if args.mixed_precision else [])
    networks = [n for n in NETWORKS if n in args.networks]
    for spec in args.sizes:
        size, batch = (int(v) for v in spec.lower().split("x"))
        for path in args.paths:
            for policy in policies:
                runs = {n: [] for n in networks}
                for _ in range(args.repeats):
                    for network in networks:
                        runs[network].append(
                            _run(path, network, size, batch, policy, args.loop_steps)
                        )
                first = {n: statistics.median(r["first_s"] for r in v) for n, v in runs.items()}
                for network, results in runs.items():
                    times = [r["first_s"] for r in results]
                    compile_s = statistics.median(r["xla_compile_s"] for r in results)
                    print(
                        f"| {size}×{size} × {batch} | {path} | {policy} | {network} | "
                        f"{first[network]:.1f} ({min(times):.1f}-{max(times):.1f}) | "
                        f"{first[network] / first['fused kernel']:.2f}× | "
                        f"{results[0]['xla_compilations']} | {compile_s:.1f} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
