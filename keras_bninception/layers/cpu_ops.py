"""The C++ CPU ops of `cpu_reductions.cc`: built once where the package lives, loaded if built.

    python -m keras_bninception.layers.cpu_ops     # builds _cpu_reductions.so (`make` does it)

On a CPU, `batch_norm_transform` computes BN's two reductions (μ_B and σ²_B; ∂ℓ/∂β and ∂ℓ/∂γ) of
float32 activations with these ops when the library is there, and with its blocked XLA kernels
otherwise, which compute the same (`benchmarks/bn_layer.py --reductions` compares the paths).
The library is built with g++ against the installed TensorFlow and is tied to it: if it does not
load (not built, or built for another TensorFlow), the XLA kernels run and a warning says why.
`batch_norm_transform` imports this module where it uses it, not at its top: `python -m` runs
this module after importing its package, which imports `batch_norm_transform`.
"""

from __future__ import annotations

import functools
import pathlib
import shutil
import subprocess
import sys
import warnings

import tensorflow as tf

SOURCE = pathlib.Path(__file__).with_name("cpu_reductions.cc")
LIBRARY = pathlib.Path(__file__).with_name("_cpu_reductions.so")


def build(output: pathlib.Path = LIBRARY) -> pathlib.Path:
    """Compiles `cpu_reductions.cc` into `output` with g++ and TensorFlow's flags."""
    compiler = shutil.which("g++")
    if compiler is None:
        raise RuntimeError(f"building {output.name} needs g++ on PATH; none was found")
    command = [
        compiler,
        "-shared",
        "-fPIC",
        "-O3",
        # γ x̂ + β rounded as the XLA kernels round it, for ReLU's mask: no fused multiply-add.
        "-ffp-contract=off",
        "-Wall",
        str(SOURCE),
        "-o",
        str(output),
        # TensorFlow's headers as system headers: their own deprecation warnings stay quiet.
        *(
            f"-isystem{f[2:]}" if f.startswith("-I") else f
            for f in tf.sysconfig.get_compile_flags()
        ),
        *tf.sysconfig.get_link_flags(),
    ]
    subprocess.run(command, check=True)
    return output


@functools.cache
def load():
    """The ops' Python module, or None (with a warning if a library is there but does not load)."""
    if not LIBRARY.exists():
        return None
    try:
        return tf.load_op_library(str(LIBRARY))
    except (tf.errors.NotFoundError, tf.errors.AlreadyExistsError) as error:
        warnings.warn(
            f"{LIBRARY} does not load ({error}); BN's CPU reductions run as XLA kernels. "
            "Rebuild it with `python -m keras_bninception.layers.cpu_ops`.",
            stacklevel=2,
        )
        return None


if __name__ == "__main__":
    try:
        print(build(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else LIBRARY))
    except (RuntimeError, subprocess.CalledProcessError) as error:
        sys.exit(f"cpu_ops: {error}")
