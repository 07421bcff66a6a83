"""Where an experiment writes: the output directory, its CSV and JSON files.

`prepare_output_dir` is the single check of `--output_dir`: it creates the directory and proves
it writable by writing (and removing) a file, so a run that cannot save its results fails before
training, not after.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Mapping, Sequence


def prepare_output_dir(output_dir: str) -> str:
    """Creates `output_dir` if needed and checks it is writable; returns its absolute path.

    Raises:
        ValueError: the directory cannot be created or written.
    """
    if not output_dir:
        raise ValueError("`output_dir` must be a directory path; received output_dir=''")
    path = os.path.abspath(os.path.expanduser(output_dir))
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise ValueError(
            f"`output_dir` must be a writable directory; received output_dir={output_dir!r} "
            f"({reason})"
        ) from None
    return path


def write_csv(path: str, rows: Sequence[Mapping[str, object]]) -> str:
    """Writes `rows` (dicts with the same keys, in order) as a CSV file with a header."""
    fields = list(rows[0]) if rows else []
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(path: str, value: object) -> str:
    """Writes `value` as indented JSON."""
    with open(path, "w") as f:
        json.dump(value, f, indent=2)
        f.write("\n")
    return path


def write_text(path: str, text: str) -> str:
    with open(path, "w") as f:
        f.write(text)
    return path
