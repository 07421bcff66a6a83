"""Adds up the JUnit reports of `bazel test` into one closing line: `N passed, N failed, N skipped`.

    python tools/test_summary.py bazel-testlogs

Each py_test (or shard of one) leaves `<target>/test.xml` under `bazel-testlogs`, written by pytest
(`tools/pytest_main.py`); errors count as failures. Prints nothing but a note if there is no report.
"""

from __future__ import annotations

import pathlib
import sys
import xml.etree.ElementTree as ET


def main(root: str) -> None:
    totals = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    reports = sorted(pathlib.Path(root).rglob("test.xml"))
    for report in reports:
        for suite in ET.parse(report).getroot().iter("testsuite"):
            for key in totals:
                totals[key] += int(suite.get(key, 0))
    if not reports:
        print(f"test_summary: no test.xml under {root}")
        return
    failed = totals["failures"] + totals["errors"]
    passed = totals["tests"] - failed - totals["skipped"]
    print(f"bazel: {passed} passed, {failed} failed, {totals['skipped']} skipped")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bazel-testlogs")
