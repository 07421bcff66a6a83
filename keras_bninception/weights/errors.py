"""The error of this package's weight sources."""

from __future__ import annotations


class WeightsError(ValueError):
    """A source of weights that cannot be had: not downloadable, corrupt, unsafe or of no known
    kind. A `ValueError`, as for any other bad argument (the binaries print it as one line)."""
