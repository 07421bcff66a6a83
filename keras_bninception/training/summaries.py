"""TensorBoard summaries of a run: scalars under `model_dir/logs/{train,eval}`.

Only the chief writes; other workers get no-op writers, so a multi-worker run produces one set of
event files. View them with `tensorboard --logdir <model_dir>/logs` (TensorBoard is a dependency of
this package: TensorFlow 2.21 does not install it).

The scalars are written with TensorFlow's own `tf.summary.write` and the metadata TensorBoard's
scalar plugin expects (plugin name "scalars", empty content), so the trainer does not import the
`tensorboard` package: the event files are the same ones `tf.summary.scalar` would write.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import tensorflow as tf
from tensorflow.core.framework import summary_pb2

_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


class SummaryWriter:
    """Writes scalar summaries for one phase (`train` or `eval`) of a run."""

    def __init__(self, model_dir: str, phase: str, chief: bool):
        self.logdir = os.path.join(model_dir, "logs", phase)
        if chief:
            self._writer = tf.summary.create_file_writer(self.logdir)
        else:
            self._writer = tf.summary.create_noop_writer()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes each `name: value` at `step` and flushes (a crash loses no logged point)."""
        with self._writer.as_default(step=step):
            for name, value in values.items():
                tf.summary.write(name, tf.constant(value, tf.float32), metadata=_SCALAR_METADATA)
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
