"""The one place export code reaches into TensorFlow beyond its public API.

Everything else in `keras_bninception.export` (and `trainers/export.py`) uses `tf.lite`,
`tf.saved_model` and `ai_edge_litert` only. What is re-exported here is not covered by
TensorFlow's API compatibility guarantees, so a TensorFlow upgrade may move or change it:
`tests/test_tf_internals.py` imports each item and checks the behaviour export relies on (run it
first after an upgrade; each test's name says what it checks).

- `schema`: `tensorflow.lite.python.schema_py_generated`, the Python code `flatc` generates from
  TFLite's `schema.fbs` (tables `Model`, `SubGraph`, `Tensor`, `Operator`, `SignatureDef`,
  `Buffer`, `Metadata`, enums `BuiltinOperator`, `TensorType`; the object API `ModelT`).
  Why the public API does not suffice: `tf.lite` converts and `tf.lite.Interpreter` /
  `ai_edge_litert` run a model, but neither reads a .tflite file's operator list, tensor
  quantization or SignatureDefs without running it, nor adds a metadata buffer to it (the
  `Metadata` table MediaPipe's ImageClassifier reads). TensorFlow's own metadata writer,
  tflite-support, cannot be installed beside TensorFlow 2.21 (it pins protobuf < 4). This module
  is the schema the converter that wrote the file was built with, so it knows every field the
  converter writes: `ModelT.InitFromObj(...).Pack(...)` (how `metadata.add_metadata` inserts the
  metadata) then drops nothing, in particular not the `serving_default` SignatureDef.
  (`ai_edge_litert.schema_py_generated` is the interpreter's copy of the generated code, today a
  newer schema than the converter's; what the converter writes is what must survive.)
- `convert_frozen_graph(converter)`: sets `experimental_lower_to_saved_model = False`, an
  attribute of the converter `tf.lite.TFLiteConverter.from_concrete_functions` returns that the
  API documentation does not list. Why the public API does not suffice: by default that converter
  saves the function and its variables as a SavedModel and converts the SavedModel, which takes
  twice as long for the tests' small models (about 3 s more per file) and gives the same
  operators; with the attribute False it freezes the function and converts the graph. That path
  writes no SignatureDef, which `tflite.add_signature` then writes. If a TensorFlow upgrade drops
  the attribute, conversion only gets slower (the signature is still `add_signature`'s).
"""

from __future__ import annotations

import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema

__all__ = ["convert_frozen_graph", "schema"]


def convert_frozen_graph(converter: tf.lite.TFLiteConverter) -> None:
    """Makes a `from_concrete_functions` converter convert the frozen graph (see module doc)."""
    converter.experimental_lower_to_saved_model = False
