"""What the absl binaries share: problems end in one `error:` line on stderr and an exit status."""

from __future__ import annotations

import sys
from typing import NoReturn

from absl import flags


def fail(message: object, status: int = 1) -> NoReturn:
    """Prints `error: <message>` as one line on stderr and exits with `status`."""
    sys.stderr.write("error: " + " ".join(str(message).split()) + "\n")
    sys.stderr.flush()
    sys.exit(status)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing that reports a malformed flag in one line (exit status 2)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        fail(f"{e} (see --helpfull)", status=2)


def no_arguments(argv: list[str]) -> None:
    """Every option is a --flag: positional arguments end the program (exit status 2)."""
    if len(argv) > 1:
        fail(f"unexpected arguments {argv[1:]}; every option is a --flag", status=2)
