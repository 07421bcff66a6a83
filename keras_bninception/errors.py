"""Error helpers shared by the package's one-line error messages."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of an error's message (TensorFlow's `message`, without its op context)."""
    text = str(getattr(error, "message", None) or error).strip()
    return text.splitlines()[0] if text else type(error).__name__
