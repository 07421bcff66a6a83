"""The console progress line: step, loss, accuracy, learning rate, images/second and ETA."""

from __future__ import annotations

import datetime
import time


class Progress:
    """Measures throughput between two log points and formats the progress line.

    Args:
        total_steps: the step at which training ends.
        global_batch_size: images per step, summed over all replicas.
        start_step: the step training starts (or resumes) from.
    """

    def __init__(self, total_steps: int, global_batch_size: int, start_step: int = 0):
        self.total_steps = total_steps
        self.global_batch_size = global_batch_size
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def restart_clock(self, step: int) -> None:
        """Starts a new measurement window (e.g. after an evaluation pause)."""
        self._last_step = step
        self._last_time = time.perf_counter()

    def update(self, step: int) -> float:
        """Ends the window at `step`; returns images/second over the window."""
        now = time.perf_counter()
        elapsed = max(now - self._last_time, 1e-9)
        rate = (step - self._last_step) * self.global_batch_size / elapsed
        self._last_step, self._last_time = step, now
        return rate

    def line(
        self, step: int, loss: float, accuracy: float, lr: float, images_per_sec: float
    ) -> str:
        """The line, e.g. `step 120/600 (20%)  loss 0.8123  top-1 74.22%  lr 0.0075  310.5 img/s
        ETA 0:01:23` (on one line)."""
        remaining = max(self.total_steps - step, 0) * self.global_batch_size
        eta = remaining / images_per_sec if images_per_sec > 0 else 0.0
        return (
            f"step {step}/{self.total_steps} ({100.0 * step / max(self.total_steps, 1):.0f}%)  "
            f"loss {loss:.4f}  top-1 {100.0 * accuracy:.2f}%  lr {lr:.4g}  "
            f"{images_per_sec:.1f} img/s  ETA {datetime.timedelta(seconds=round(eta))}"
        )
