"""Run pytest files as a Bazel ``py_test``: ``pytest_main.py tests/test_x.py [...] [pytest args]``.

A target runs one test file, or a group of short files in one process (``GROUPS`` in ``BUILD``:
each file's process start-up, mostly importing TensorFlow, would otherwise cost more than its
tests). Bazel runs the test from its runfiles tree; pytest finds ``tests/conftest.py`` and its
configuration (``pyproject.toml``) there, both declared in ``BUILD``. The process exits with
pytest's exit code, so anything but "all collected tests passed" fails the Bazel test -- including
exit code 5 (no tests collected). ``bazel test --test_filter=EXPR`` is passed to pytest as
``-k EXPR``, and the JUnit XML report goes where Bazel asks for it (``XML_OUTPUT_FILE``);
``tools/test_summary.py`` adds those reports up after ``bazel test``.

Sharding: a target with ``shard_count = N`` in ``BUILD`` runs as N processes, Bazel giving each
``TEST_SHARD_INDEX`` and ``TEST_TOTAL_SHARDS``; shard i runs the tests whose position in the
collected list is i modulo N, so a long test file is split over both cores.

Under Bazel's sandbox the rest of the file system is read-only and ``HOME`` is unset, so pytest's
temporary directories and ``HOME`` (Keras' and TFDS' ``~``) go into the test's own
``TEST_TMPDIR``.
"""

from __future__ import annotations

import os
import sys

import pytest


def pytest_args(argv: list[str], environ: dict[str, str]) -> list[str]:
    """Returns pytest's command line for the test files and extra arguments in ``argv``."""
    if not argv:
        raise SystemExit("usage: pytest_main.py TEST_FILE... [PYTEST_ARGS...]")
    # The runfiles tree is read-only (and thrown away): no .pytest_cache.
    args = ["-p", "no:cacheprovider", "-ra", *argv]
    test_filter = environ.get("TESTBRIDGE_TEST_ONLY")
    if test_filter:
        args += ["-k", test_filter]
    xml_output = environ.get("XML_OUTPUT_FILE")
    if xml_output:
        args += ["--junitxml", xml_output]
    test_tmpdir = environ.get("TEST_TMPDIR")
    if test_tmpdir:
        args += ["--basetemp", os.path.join(test_tmpdir, "pytest")]
    return args


class Shard:
    """pytest plugin keeping the tests of shard ``index`` of ``total`` (position modulo total)."""

    def __init__(self, index: int, total: int):
        self.index, self.total = index, total
        self.collected = 0

    def pytest_collection_modifyitems(self, config, items) -> None:
        self.collected = len(items)
        kept = [item for i, item in enumerate(items) if i % self.total == self.index]
        config.hook.pytest_deselected(items=[item for item in items if item not in kept])
        items[:] = kept


def shard_from(environ: dict[str, str]) -> Shard | None:
    """The shard Bazel asks for (and acknowledges sharding support), or None."""
    total = int(environ.get("TEST_TOTAL_SHARDS", "0") or 0)
    if total <= 1:
        return None
    status_file = environ.get("TEST_SHARD_STATUS_FILE")
    if status_file:
        open(status_file, "a").close()  # Tells Bazel this runner shards.
    return Shard(int(environ.get("TEST_SHARD_INDEX", "0")), total)


def main() -> None:
    test_tmpdir = os.environ.get("TEST_TMPDIR")
    if test_tmpdir and not os.environ.get("HOME"):
        os.environ["HOME"] = os.path.join(test_tmpdir, "home")
        os.makedirs(os.environ["HOME"], exist_ok=True)
    shard = shard_from(dict(os.environ))
    plugins = [shard] if shard else []
    exit_code = int(pytest.main(pytest_args(sys.argv[1:], dict(os.environ)), plugins=plugins))
    if exit_code == pytest.ExitCode.NO_TESTS_COLLECTED:
        if shard and shard.collected > 0:
            exit_code = 0  # More shards than tests: this one has nothing to run.
        else:
            print(f"pytest_main: no tests collected from {sys.argv[1:]}", file=sys.stderr)
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
