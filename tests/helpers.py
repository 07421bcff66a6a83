"""What several test files share. Imported as `import helpers` (pytest puts tests/ on sys.path,
as for `tf_slim_reference`), never as `tests.helpers`."""

from __future__ import annotations

import os

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 1337  # the autouse `seed` fixture of conftest.py
NUM_LOGICAL_CPUS = 2  # conftest.py splits the CPU into this many logical devices


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child Python process running this checkout's code.

    The repository first on PYTHONPATH, TensorFlow's C++ INFO/WARNING logs off, no TF_CONFIG
    inherited (a child is a single-machine run unless `extra` gives it one).
    """
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    env["PYTHONPATH"] = REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra)
    return env
