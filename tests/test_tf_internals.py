"""What export takes from TensorFlow beyond its public API: `keras_bninception.export.tf_internals`.

Run this file first after a TensorFlow upgrade. Each test names the behaviour export relies on; a
failure says which item of `tf_internals` to revisit (its docstring says why it is used). One
tiny classifier (8x8, two convolutions) is converted once, without and with what export adds.
"""

from __future__ import annotations

import flatbuffers
import keras
import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from keras_bninception.export import metadata, tf_internals, tflite
from keras_bninception.export.tf_internals import schema


@pytest.fixture(scope="module")
def converted():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3), batch_size=1)
    x = keras.layers.DepthwiseConv2D(3, padding="same")(inputs)
    x = keras.layers.Conv2D(4, 1, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))
    spec = tf.TensorSpec([1, 8, 8, 3], tf.float32, name="images")
    function = tf.function(lambda images: model(images, training=False), input_signature=[spec])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], model
    )
    assert hasattr(converter, "experimental_lower_to_saved_model")
    tf_internals.convert_frozen_graph(converter)
    raw = converter.convert()
    x = np.random.default_rng(0).uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
    return {"raw": raw, "x": x, "keras": np.asarray(model(x))}


def _invoke(content: bytes, x: np.ndarray) -> np.ndarray:
    interpreter = Interpreter(model_content=content)
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def test_convert_frozen_graph_converts_directly_and_writes_no_signature(converted):
    # With the attribute honoured, the converter writes no SignatureDef (the SavedModel path
    # would write one): if this fails, the attribute is gone or ignored and conversion goes
    # through a SavedModel (slower, still correct: `add_signature` replaces its signature).
    assert Interpreter(model_content=converted["raw"]).get_signature_list() == {}
    np.testing.assert_allclose(_invoke(converted["raw"], converted["x"]), converted["keras"], 1e-5)


def test_schema_reads_operators_tensors_and_types(converted):
    # `tflite.op_list` / `io_details` read these tables and enums; the interpreter is the
    # independent reader they must agree with.
    for name in ("CONV_2D", "DEPTHWISE_CONV_2D", "MUL", "ADD", "SUB", "CUSTOM", "DEQUANTIZE"):
        assert isinstance(getattr(schema.BuiltinOperator, name), int), name
    for name in ("FLOAT32", "FLOAT16", "UINT8", "INT8"):
        assert isinstance(getattr(schema.TensorType, name), int), name
    ops = tflite.op_list(converted["raw"])
    assert ops[:2] == ["DEPTHWISE_CONV_2D", "CONV_2D"] and "FULLY_CONNECTED" in ops
    io = tflite.io_details(converted["raw"])
    interpreter = Interpreter(model_content=converted["raw"])
    inputs, outputs = interpreter.get_input_details(), interpreter.get_output_details()
    for key, (theirs,) in (("input", inputs), ("output", outputs)):
        ours = io[key]
        assert ours["shape"] == list(theirs["shape"])
        assert np.dtype(ours["dtype"]) == theirs["dtype"]


def _slots(table) -> int:
    """How many field slots a table's vtable in the file has (the highest field present + 1)."""
    tab = table._tab  # the generated tables' buffer and position (flatbuffers' Python runtime)
    vtable = tab.Pos - tab.Get(flatbuffers.number_types.SOffsetTFlags, tab.Pos)
    return (tab.Get(flatbuffers.number_types.VOffsetTFlags, vtable) - 4) // 2


def _items(table, field: str) -> list:
    """The tables of a vector field, e.g. `_items(model, "Subgraphs")`."""
    return [getattr(table, field)(i) for i in range(getattr(table, f"{field}Length")())]


def test_schema_object_api_knows_every_field_the_converter_writes(converted):
    # `add_signature` and `add_metadata` rewrite the file through `ModelT.InitFromObj(...)
    # .Pack(...)`, which keeps only the fields the schema knows: a converter newer than its
    # generated schema would lose data silently. Every table's vtable must fit the schema.
    model = schema.Model.GetRootAs(bytearray(converted["raw"]), 0)
    tables = [(model, schema.ModelT)]
    tables += [(code, schema.OperatorCodeT) for code in _items(model, "OperatorCodes")]
    tables += [(buffer, schema.BufferT) for buffer in _items(model, "Buffers")]
    tables += [(entry, schema.MetadataT) for entry in _items(model, "Metadata")]
    for graph in _items(model, "Subgraphs"):
        tables.append((graph, schema.SubGraphT))
        tables += [(tensor, schema.TensorT) for tensor in _items(graph, "Tensors")]
        tables += [(op, schema.OperatorT) for op in _items(graph, "Operators")]
    for table, object_type in tables:
        known = len(vars(object_type()))
        assert _slots(table) <= known, f"{object_type.__name__}: {_slots(table)} > {known} fields"


def test_signature_and_metadata_survive_the_object_api_round_trip(converted):
    # What export writes with the schema: the SignatureDef, then the metadata, each one rewrite.
    signed = tflite.add_signature(converted["raw"])
    content = metadata.add_metadata(signed, ["a", "b", "c"], name="tiny", quantized_input=False)
    assert tflite.signatures(content) == {
        "serving_default": {"inputs": ["images"], "outputs": ["probabilities"]}
    }
    assert metadata.metadata_buffer(content)[4:8] == metadata.METADATA_IDENTIFIER
    interpreter = Interpreter(model_content=content)
    assert interpreter.get_signature_list() == {
        "serving_default": {"inputs": ["images"], "outputs": ["probabilities"]}
    }
    runner = interpreter.get_signature_runner("serving_default")
    np.testing.assert_array_equal(
        runner(images=converted["x"])["probabilities"], _invoke(converted["raw"], converted["x"])
    )
