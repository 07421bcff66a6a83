"""Run one pytest file as a Bazel ``py_test``: ``pytest_main.py tests/test_x.py [pytest args]``.

Bazel runs the test from its runfiles tree; pytest finds ``tests/conftest.py`` and its
configuration (``pyproject.toml``) there, both declared in ``BUILD``. The process exits with
pytest's exit code, so anything but "all collected tests passed" fails the Bazel test -- including
exit code 5 (no tests collected). ``bazel test --test_filter=EXPR`` is passed to pytest as
``-k EXPR``, and the JUnit XML report goes where Bazel asks for it (``XML_OUTPUT_FILE``).

Under Bazel's sandbox the rest of the file system is read-only and ``HOME`` is unset, so pytest's
temporary directories and ``HOME`` (Keras' and TFDS' ``~``) go into the test's own
``TEST_TMPDIR``.
"""

from __future__ import annotations

import os
import sys

import pytest


def pytest_args(argv: list[str], environ: dict[str, str]) -> list[str]:
    """Returns pytest's command line for the test file and extra arguments in ``argv``."""
    if not argv:
        raise SystemExit("usage: pytest_main.py TEST_FILE [PYTEST_ARGS...]")
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


def main() -> None:
    test_tmpdir = os.environ.get("TEST_TMPDIR")
    if test_tmpdir and not os.environ.get("HOME"):
        os.environ["HOME"] = os.path.join(test_tmpdir, "home")
        os.makedirs(os.environ["HOME"], exist_ok=True)
    exit_code = int(pytest.main(pytest_args(sys.argv[1:], dict(os.environ))))
    if exit_code == pytest.ExitCode.NO_TESTS_COLLECTED:
        print(f"pytest_main: no tests collected from {sys.argv[1:]}", file=sys.stderr)
    sys.exit(exit_code)


if __name__ == "__main__":
    main()
