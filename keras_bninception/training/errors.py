"""Errors the trainer raises for problems a user can fix (the binary prints them in one line)."""

from __future__ import annotations

import signal


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


class Interrupted(TrainingError):
    """Training stopped on SIGTERM / SIGINT after a checkpoint of the step reached.

    Attributes:
        signal_number: the signal this process received; None when another worker received it.
        step: the last step trained (and checkpointed).
        checkpoint: that checkpoint's path (None on non-chief workers).
        metrics: the training metrics up to `step`.
        exit_status: 128 + the signal number (SIGTERM's when another worker received it), as a
            shell reports a process ended by that signal.
    """

    def __init__(self, signal_number: int | None, step: int, checkpoint: str | None, metrics: dict):
        self.signal_number = signal_number
        self.step = step
        self.checkpoint = checkpoint
        self.metrics = metrics
        self.exit_status = 128 + (signal_number or signal.SIGTERM)
        cause = signal.Signals(signal_number).name if signal_number else "another worker's signal"
        saved = f"checkpoint {checkpoint} written" if checkpoint else "checkpoint written"
        super().__init__(
            f"Interrupted by {cause} at step {step}; {saved}. Rerun the same command to resume "
            "from it."
        )
