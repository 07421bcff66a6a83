"""Errors the trainer raises for problems a user can fix (the binary prints them in one line)."""

from __future__ import annotations


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged); the last good checkpoint is kept."""


class DivergenceError(TrainingError):
    """The loss became NaN or infinite.

    Attributes:
        step: the 1-based training step whose loss was not finite.
        checkpoint: the last good checkpoint (kept), or None if none was written yet.
    """

    def __init__(self, step: int, checkpoint: str | None, learning_rate: float):
        self.step = step
        self.checkpoint = checkpoint
        kept = (
            f"the last good checkpoint {checkpoint} is kept"
            if checkpoint
            else "no checkpoint had been written yet"
        )
        super().__init__(
            f"Training diverged: the loss became NaN or infinite at step {step} (learning rate "
            f"{learning_rate:.4g}); stopped, {kept}. Lower --learning_rate, then rerun to resume."
        )
