"""TFLite (LiteRT) conversion of a classifier, builtin ops only, and the checks of its op list.

Three flavours, all batch 1:

- `float32`: input float32 [1, H, W, 3] already normalized to [-1, 1] (the file's metadata tells
  MediaPipe / the Task Library to compute (pixel - 127.5) / 127.5), output the probabilities.
- `float16`: the same with the weights stored in float16 (half the size; the GPU delegate runs in
  float16, the CPU dequantizes once at load time).
- `int8`: full-integer quantization, input uint8 [1, H, W, 3] raw pixels 0..255 and output uint8
  probabilities (scale 1/256). The preprocessing x / 127.5 - 1 is part of its graph, so the input's
  quantization is exactly scale 1, zero point 0: a pixel's byte is its value.

Every file has one SignatureDef, `serving_default`, with the input `images` and the output
`probabilities` (`SIGNATURE_KEY`, `INPUT_NAME`, `OUTPUT_NAME`), so that LiteRT's
`Interpreter.get_signature_runner()` and Android's `Interpreter.runSignature` address them by name
(`add_signature` writes it; `check_signature` reads it back).

The converter is set up by hand with `TFLITE_BUILTINS` (`TFLITE_BUILTINS_INT8` for int8) and never
`SELECT_TF_OPS`: an op without a builtin kernel makes the conversion fail instead of adding a Flex
op the app would have to link. `check_ops` then reads the operator list back from the flatbuffer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import flatbuffers
import keras
import numpy as np
import tensorflow as tf

from keras_bninception.export import tf_internals
from keras_bninception.export.tf_internals import schema

FLAVOURS = ("float32", "float16", "int8")
TFLITE_IDENTIFIER = b"TFL3"
SIGNATURE_KEY = "serving_default"
INPUT_NAME = "images"
OUTPUT_NAME = "probabilities"
# Ops that come from an un-folded inference BN (x * scale + offset), or from preprocessing.
AFFINE_OPS = ("MUL", "ADD", "SUB")
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")

_BUILTIN_NAMES = {
    value: name for name, value in vars(schema.BuiltinOperator).items() if not name.startswith("_")
}


class ExportCheckError(ValueError):
    """A converted file fails a deployment check (a Flex op, an un-folded BN, ...)."""


def convert(
    model: keras.Model,
    flavour: str,
    representative_images: Callable[[], Iterable[np.ndarray]] | None = None,
) -> bytes:
    """Converts a batch-1 Keras model to a TFLite flatbuffer of `flavour`.

    Args:
        model: the Keras model to convert (input [1, H, W, 3]), see `ServingModule.tflite_model`.
        flavour: one of `FLAVOURS`.
        representative_images: for `int8`: a callable returning an iterable of float32
            [1, H, W, 3] inputs of `model` (calibration data).

    Returns:
        The .tflite file's bytes.
    """
    # The inference call as one concrete function, frozen and converted directly: the same
    # operators and outputs as going through a SavedModel, twice as fast for the small test
    # models, but without a SignatureDef: `add_signature` writes it afterwards.
    (inputs,) = model.inputs
    spec = tf.TensorSpec(inputs.shape, tf.float32, name=INPUT_NAME)

    def serve(images: tf.Tensor) -> dict[str, tf.Tensor]:
        return {OUTPUT_NAME: model(images, training=False)}

    function = tf.function(serve, input_signature=[spec])
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [function.get_concrete_function()], model
    )
    tf_internals.convert_frozen_graph(converter)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    converter.allow_custom_ops = False
    if flavour == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif flavour == "int8":
        if representative_images is None:
            raise ValueError("int8 conversion needs calibration images (representative_images)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8

        def representative_dataset():
            for image in representative_images():
                yield [np.asarray(image, np.float32)]

        converter.representative_dataset = representative_dataset
    elif flavour != "float32":
        raise ValueError(f"`flavour` must be one of {FLAVOURS}; received flavour={flavour!r}")
    return add_signature(converter.convert())


def _model(content: bytes) -> schema.Model:
    return schema.Model.GetRootAs(bytearray(content), 0)


def op_list(content: bytes) -> list[str]:
    """The operators of the main subgraph in execution order, by name (Flex ops as `Flex<op>`)."""
    model = _model(content)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = _BUILTIN_NAMES.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            name = (code.CustomCode() or b"CUSTOM").decode()
        codes.append(name)
    graph = model.Subgraphs(0)
    return [codes[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength())]


def check_ops(content: bytes, flavour: str) -> dict:
    """Checks a converted file's operator list; returns a summary for `export.json`.

    Checks: only builtin operators (no Flex / custom op); the first convolution is the separable
    stem's DEPTHWISE_CONV_2D; and no MUL / ADD / SUB anywhere after it, i.e. every inference BN
    (an affine map per channel) was folded into its convolution's weights and bias. Before the first
    convolution only the int8 file may hold them (its in-graph preprocessing x / 127.5 - 1).

    Raises:
        ExportCheckError: naming the failed check and the offending operators.
    """
    ops = op_list(content)
    custom = sorted(
        {op for op in ops if op.startswith("Flex") or op not in _BUILTIN_NAMES.values()}
    )
    if custom:
        raise ExportCheckError(f"the {flavour} file has non-builtin operators {custom}")
    convs = [i for i, op in enumerate(ops) if op in CONV_OPS]
    if not convs or ops[convs[0]] != "DEPTHWISE_CONV_2D":
        first = ops[convs[0]] if convs else None
        raise ExportCheckError(
            f"the {flavour} file's first convolution must be DEPTHWISE_CONV_2D (the separable "
            f"stem); found {first}"
        )
    before = [op for op in ops[: convs[0]] if op in AFFINE_OPS]
    after = [op for op in ops[convs[0] :] if op in AFFINE_OPS]
    if after:
        raise ExportCheckError(
            f"the {flavour} file has {len(after)} {sorted(set(after))} operators after the first "
            "convolution: a batch normalization was not folded into its convolution"
        )
    if before and flavour != "int8":
        raise ExportCheckError(
            f"the {flavour} file has {before} before the first convolution; its input is already "
            "normalized, so it should have none"
        )
    counts: dict[str, int] = {}
    for op in ops:
        counts[op] = counts.get(op, 0) + 1
    return {
        "operators": dict(sorted(counts.items())),
        "builtin_only": True,
        "first_convolution": ops[convs[0]],
        "preprocessing_ops": before,
        "affine_ops_after_first_convolution": 0,
    }


def add_signature(content: bytes) -> bytes:
    """The file with one SignatureDef, `serving_default`: input `images`, output `probabilities`.

    The table the converter writes when it converts a SavedModel's signature (TFLite schema
    `SignatureDef`: a key, the subgraph, and names for its input and output tensors); LiteRT's
    `get_signature_runner()` and Android's `Interpreter.runSignature` look them up by name. Any
    SignatureDef already there is replaced.
    """
    model = schema.ModelT.InitFromObj(_model(content))
    (graph,) = model.subgraphs
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ExportCheckError(
            f"a classifier file has one input and one output; this one has {len(graph.inputs)} "
            f"and {len(graph.outputs)}"
        )

    def tensor_map(name: str, index: int) -> schema.TensorMapT:
        entry = schema.TensorMapT()
        entry.name, entry.tensorIndex = name, int(index)
        return entry

    signature = schema.SignatureDefT()
    signature.signatureKey = SIGNATURE_KEY
    signature.subgraphIndex = 0
    signature.inputs = [tensor_map(INPUT_NAME, graph.inputs[0])]
    signature.outputs = [tensor_map(OUTPUT_NAME, graph.outputs[0])]
    model.signatureDefs = [signature]
    builder = flatbuffers.Builder(len(content) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=TFLITE_IDENTIFIER)
    return bytes(builder.Output())


def signatures(content: bytes) -> dict[str, dict[str, list[str]]]:
    """The file's SignatureDefs: {key: {"inputs": [names], "outputs": [names]}}."""
    model = _model(content)
    found = {}
    for i in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(i)
        inputs = [signature.Inputs(j) for j in range(signature.InputsLength())]
        outputs = [signature.Outputs(j) for j in range(signature.OutputsLength())]
        found[(signature.SignatureKey() or b"").decode()] = {
            "inputs": [(t.Name() or b"").decode() for t in inputs],
            "outputs": [(t.Name() or b"").decode() for t in outputs],
        }
    return found


def check_signature(content: bytes, flavour: str) -> dict[str, dict[str, list[str]]]:
    """Checks that the file has exactly the `serving_default` signature `images` -> `probabilities`.

    Raises:
        ExportCheckError: naming the signatures found instead.
    """
    found = signatures(content)
    expected = {SIGNATURE_KEY: {"inputs": [INPUT_NAME], "outputs": [OUTPUT_NAME]}}
    if found != expected:
        raise ExportCheckError(
            f"the {flavour} file must have the one signature {expected}; it has {found}"
        )
    return found


def io_details(content: bytes) -> dict:
    """Input / output tensor name, shape, dtype and quantization (scale, zero point) of a file."""
    model = _model(content)
    graph = model.Subgraphs(0)
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}

    def describe(index: int) -> dict:
        tensor = graph.Tensors(index)
        quant = tensor.Quantization()
        scale = zero_point = None
        if quant is not None and quant.ScaleLength():
            scale, zero_point = float(quant.Scale(0)), int(quant.ZeroPoint(0))
        return {
            "name": (tensor.Name() or b"").decode(),
            "shape": [int(s) for s in tensor.ShapeAsNumpy()],
            "dtype": types[tensor.Type()].lower(),
            "scale": scale,
            "zero_point": zero_point,
        }

    return {
        "input": describe(graph.Inputs(0)),
        "output": describe(graph.Outputs(0)),
    }
