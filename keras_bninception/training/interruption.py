"""SIGTERM / SIGINT during training: finish the current step, checkpoint, stop.

A preempted cloud VM gets SIGTERM (and some seconds of grace), Ctrl-C sends SIGINT. While the
training loop runs inside one `tf.function` call (many steps), Python signal handlers cannot run:
CPython runs them on the main thread only between bytecodes. So `StopRequest` also registers a
wake-up socket (`signal.set_wakeup_fd`): the C-level handler writes the signal number into it at
once, and a watcher thread sets `flag`, a scalar variable the loop reads after every step (the
Python handler itself does nothing: it may run in the middle of tracing). The loop all-reduces the
flag together with the loss (one collective, as before), so every replica of every worker sees the
same sum and stops after the same step.
"""

from __future__ import annotations

import signal
import socket
import threading
from types import FrameType

import tensorflow as tf
from absl import logging

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """Turns SIGTERM / SIGINT into a stop flag the training loop reads; a context manager.

    Attributes:
        flag: float32 scalar variable, 1 once a stop was requested in this process, else 0.
        signal_number: the signal received, or None.
    """

    def __init__(self) -> None:
        with tf.init_scope():
            self.flag = tf.Variable(0.0, trainable=False, name="stop_requested")
        self.signal_number: int | None = None
        self._previous: dict[int, object] = {}
        self._previous_wakeup_fd = -1
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> StopRequest:
        self.flag.assign(0.0)
        self.signal_number = None
        if threading.current_thread() is not threading.main_thread():
            return self  # signals are delivered to the main thread only
        reader, writer = socket.socketpair()
        writer.setblocking(False)
        self._sockets = (reader, writer)
        for number in SIGNALS:
            self._previous[number] = signal.signal(number, self._handle)
        self._previous_wakeup_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name="stop_request", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self._sockets is None:
            return
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        for number, handler in self._previous.items():
            signal.signal(number, handler)
        self._previous.clear()
        reader, writer = self._sockets
        writer.close()  # ends the watcher's recv
        if self._thread is not None:
            self._thread.join(timeout=5)
        reader.close()
        self._sockets = self._thread = None

    def _request(self, number: int) -> None:
        if self.signal_number is None:
            self.signal_number = number
            logging.warning(
                "Received %s: stopping after the current step, with a checkpoint.",
                signal.Signals(number).name,
            )
        self.flag.assign(1.0)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        # Installed so that SIGTERM does not end the process and SIGINT raises no
        # KeyboardInterrupt; the watcher acts on the signal. Nothing here may call TensorFlow
        # (or log): CPython runs this on the main thread between any two bytecodes, also in the
        # middle of tracing a tf.function, where a TensorFlow call would build into the graph
        # being traced and may wait on a lock that the interrupted code holds.
        del number, frame

    def _watch(self) -> None:
        reader = self._sockets[0]
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for number in data:
                if number in SIGNALS:
                    self._request(number)
