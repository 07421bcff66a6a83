"""Checks of the test infrastructure itself (tests/conftest.py, packaging metadata)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tomllib

import keras
import numpy as np
import tensorflow as tf
from helpers import NUM_LOGICAL_CPUS, REPO_ROOT, SEED

import keras_bninception


def test_package_version_matches_pyproject() -> None:
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        pyproject = tomllib.load(f)
    assert keras_bninception.__version__ == pyproject["project"]["version"]


def test_package_is_imported_from_this_checkout() -> None:
    package_dir = os.path.dirname(os.path.abspath(keras_bninception.__file__))
    assert package_dir == os.path.join(REPO_ROOT, "keras_bninception")


def test_keras_runs_on_tensorflow() -> None:
    assert keras.backend.backend() == "tensorflow"


def test_seed_fixture_reseeds_before_each_test(seed: int) -> None:
    assert seed == SEED
    drawn = (np.random.rand(3), keras.random.uniform((3,), seed=None).numpy())
    keras.utils.set_random_seed(SEED)
    again = (np.random.rand(3), keras.random.uniform((3,), seed=None).numpy())
    np.testing.assert_array_equal(drawn[0], again[0])
    np.testing.assert_array_equal(drawn[1], again[1])


def test_mirrored_strategy_has_two_cpu_replicas(mirrored_cpus: tf.distribute.Strategy) -> None:
    assert len(tf.config.list_logical_devices("CPU")) == NUM_LOGICAL_CPUS
    strategy = mirrored_cpus
    assert strategy.num_replicas_in_sync == NUM_LOGICAL_CPUS

    @tf.function
    def replica_fn() -> tf.Tensor:
        ctx = tf.distribute.get_replica_context()
        return ctx.all_reduce("sum", tf.cast(ctx.replica_id_in_sync_group, tf.float32) + 1.0)

    per_replica = strategy.run(replica_fn)
    values = [v.numpy() for v in strategy.experimental_local_results(per_replica)]
    assert values == [3.0, 3.0]  # 1 + 2 on each replica
    worker_devices = [tf.DeviceSpec.from_string(d) for d in strategy.extended.worker_devices]
    assert [(d.device_type, d.device_index) for d in worker_devices] == [("CPU", 0), ("CPU", 1)]


_BAZEL_VARIABLES = (
    "TEST_TMPDIR",
    "XML_OUTPUT_FILE",
    "TESTBRIDGE_TEST_ONLY",
    "TEST_TOTAL_SHARDS",
    "TEST_SHARD_INDEX",
    "TEST_SHARD_STATUS_FILE",
)


def _run_pytest_shim(
    test_files: str | list[str], cwd: str, **bazel_env: str
) -> subprocess.CompletedProcess:
    """Runs tools/pytest_main.py (Bazel's py_test main) on ``test_files`` outside Bazel."""
    env = {k: v for k, v in os.environ.items() if k not in _BAZEL_VARIABLES} | bazel_env
    shim = os.path.join(REPO_ROOT, "tools", "pytest_main.py")
    files = [test_files] if isinstance(test_files, str) else test_files
    return subprocess.run(
        [sys.executable, shim, *files], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_pytest_shim_fails_when_no_tests_are_collected(tmp_path) -> None:
    (tmp_path / "test_nothing.py").write_text("def helper():\n    return 1\n")
    result = _run_pytest_shim("test_nothing.py", str(tmp_path))
    assert result.returncode == 5, result.stdout + result.stderr


def test_pytest_shim_returns_pytest_exit_code(tmp_path) -> None:
    (tmp_path / "test_two.py").write_text(
        "def test_passes():\n    assert True\n\n\ndef test_fails():\n    assert 1 == 2\n"
    )
    result = _run_pytest_shim("test_two.py", str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 1 passed" in result.stdout


def test_pytest_shim_runs_a_group_of_files_in_one_process(tmp_path) -> None:
    """A `GROUPS` target of BUILD: its files' tests all run, and any failure fails the target."""
    (tmp_path / "test_a.py").write_text("def test_a():\n    pass\n")
    (tmp_path / "test_b.py").write_text("def test_b1():\n    pass\n\n\ndef test_b2():\n    pass\n")
    (tmp_path / "test_c.py").write_text("def test_c():\n    assert 1 == 2\n")
    result = _run_pytest_shim(["test_a.py", "test_b.py"], str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout
    result = _run_pytest_shim(["test_a.py", "test_c.py", "test_b.py"], str(tmp_path))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "1 failed, 3 passed" in result.stdout


def test_pytest_shim_maps_bazel_environment_to_pytest_flags() -> None:
    spec = importlib.util.spec_from_file_location(
        "pytest_main", os.path.join(REPO_ROOT, "tools", "pytest_main.py")
    )
    pytest_main = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pytest_main)
    environ = {
        "TESTBRIDGE_TEST_ONLY": "mirrored",
        "XML_OUTPUT_FILE": "/out/test.xml",
        "TEST_TMPDIR": "/tmp/t",
    }
    args = pytest_main.pytest_args(["tests/test_x.py"], environ)
    assert args[args.index("-k") + 1] == "mirrored"
    assert args[args.index("--junitxml") + 1] == "/out/test.xml"
    assert args[args.index("--basetemp") + 1] == "/tmp/t/pytest"
    assert "tests/test_x.py" in args
    assert "-k" not in pytest_main.pytest_args(["tests/test_x.py"], {})


def test_pytest_shim_splits_a_file_into_shards(tmp_path) -> None:
    (tmp_path / "test_five.py").write_text(
        "".join(f"def test_{i}():\n    pass\n\n\n" for i in range(5))
    )
    status = tmp_path / "shard_status"
    ran = []
    for index in range(3):
        result = _run_pytest_shim(
            "test_five.py",
            str(tmp_path),
            TEST_TOTAL_SHARDS="3",
            TEST_SHARD_INDEX=str(index),
            TEST_SHARD_STATUS_FILE=str(status),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        ran.append(int(result.stdout.split(" passed")[0].split()[-1]))
    assert ran == [2, 2, 1]  # Tests 0, 3 | 1, 4 | 2: each test in exactly one shard.
    assert status.exists()  # Bazel's sign that the runner supports sharding.


def test_pytest_shim_accepts_an_empty_shard_of_a_small_file(tmp_path) -> None:
    (tmp_path / "test_one.py").write_text("def test_only():\n    pass\n")
    result = _run_pytest_shim(
        "test_one.py", str(tmp_path), TEST_TOTAL_SHARDS="2", TEST_SHARD_INDEX="1"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_test_summary_adds_up_junit_reports(tmp_path) -> None:
    for name, counts in (("a", (3, 1, 0, 1)), ("b/shard_1_of_2", (2, 0, 1, 0))):
        tests, failures, errors, skipped = counts
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "test.xml").write_text(
            f'<testsuites><testsuite name="pytest" tests="{tests}" failures="{failures}" '
            f'errors="{errors}" skipped="{skipped}"/></testsuites>'
        )
    result = subprocess.run(
        [sys.executable, os.path.join(REPO_ROOT, "tools", "test_summary.py"), str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert result.stdout.strip().splitlines()[-1] == "bazel: 2 passed, 2 failed, 1 skipped"
