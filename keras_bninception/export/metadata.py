"""TFLite Metadata for an image classifier, written with the published schema and `flatbuffers`.

MediaPipe Tasks' `ImageClassifier` and the TFLite Task Library read a model's input normalization
and class names from the TFLite Metadata inside the file, so that the app needs no code for them.
The metadata is a `ModelMetadata` flatbuffer (schema `metadata_schema.fbs` of tflite-support /
MediaPipe, file identifier "M001") stored in a model buffer named "TFLITE_METADATA"; associated
files (here the labels) are appended to the model file as an uncompressed zip archive, so the
.tflite file is also a valid zip.

tflite-support's writer cannot be installed next to TensorFlow 2.21 (it pins protobuf < 4), so this
module writes the same tables itself with the `flatbuffers` package (a TensorFlow dependency),
following the schema's field order. The tests read the result back with the Python code MediaPipe
generates from that schema, and load the files with MediaPipe's `ImageClassifier`.

What is written (as tflite-support's `image_classifier` writer does):

- input "image": `ImageProperties` (RGB); for a float input `NormalizationOptions` mean 127.5,
  std 127.5 (the model expects (pixel - 127.5) / 127.5) and stats [-1, 1]; for a uint8 input
  (the int8 file, which normalizes inside its graph) stats [0, 255] and no normalization;
- output "probability": `FeatureProperties`, stats [0, 1], and `labels.txt` as a
  `TENSOR_AXIS_LABELS` associated file (one class name a line, in class-id order).
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Sequence

import flatbuffers

from keras_bninception.export import tflite
from keras_bninception.export.tf_internals import schema

METADATA_NAME = "TFLITE_METADATA"
METADATA_IDENTIFIER = b"M001"
LABELS_FILE = "labels.txt"
# The oldest metadata parser that understands every field written here (all from schema 1.0.0).
MIN_PARSER_VERSION = "1.0.0"
NORMALIZATION_MEAN = 127.5
NORMALIZATION_STD = 127.5

# Enum values and union tags of metadata_schema.fbs.
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType
_RGB = 1  # ColorSpaceType
_FEATURE_PROPERTIES = 1  # ContentProperties
_IMAGE_PROPERTIES = 2  # ContentProperties
_NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions


class _Writer:
    """Builds metadata tables bottom-up; each method returns the offset of what it built."""

    def __init__(self):
        self.b = flatbuffers.Builder(1024)

    def string(self, text: str) -> int:
        return self.b.CreateString(text)

    def table(self, fields: list[tuple[str, int, object]]) -> int:
        """A table from (kind, slot, value) with kind 'offset', 'byte' or 'ubyte'."""
        self.b.StartObject(1 + max(slot for _, slot, _ in fields))
        for kind, slot, value in fields:
            if kind == "offset":
                self.b.PrependUOffsetTRelativeSlot(slot, value, 0)
            elif kind == "byte":
                self.b.PrependInt8Slot(slot, value, 0)
            else:
                self.b.PrependUint8Slot(slot, value, 0)
        return self.b.EndObject()

    def empty_table(self) -> int:
        self.b.StartObject(0)
        return self.b.EndObject()

    def offsets(self, items: list[int]) -> int:
        self.b.StartVector(4, len(items), 4)
        for item in reversed(items):
            self.b.PrependUOffsetTRelative(item)
        return self.b.EndVector()

    def floats(self, values: list[float]) -> int:
        self.b.StartVector(4, len(values), 4)
        for value in reversed(values):
            self.b.PrependFloat32(value)
        return self.b.EndVector()

    def stats(self, low: float, high: float) -> int:
        # table Stats { max:[float]; min:[float]; }
        high_vec, low_vec = self.floats([high]), self.floats([low])
        return self.table([("offset", 0, high_vec), ("offset", 1, low_vec)])

    def content(self, properties_type: int, properties: int) -> int:
        # table Content { content_properties:ContentProperties (union: type slot 0, value 1);
        #                 range:ValueRange; }
        return self.table([("ubyte", 0, properties_type), ("offset", 1, properties)])

    def tensor(
        self,
        name: str,
        description: str,
        content: int,
        stats: int,
        process_units: list[int] | None = None,
        associated_files: list[int] | None = None,
    ) -> int:
        # table TensorMetadata { name; description; dimension_names; content; process_units;
        #                        stats; associated_files; }
        fields = [
            ("offset", 0, self.string(name)),
            ("offset", 1, self.string(description)),
            ("offset", 3, content),
            ("offset", 5, stats),
        ]
        if process_units:
            fields.append(("offset", 4, self.offsets(process_units)))
        if associated_files:
            fields.append(("offset", 6, self.offsets(associated_files)))
        return self.table(fields)


def build_metadata(
    num_classes: int, name: str, description: str, quantized_input: bool, version: str = "1"
) -> bytes:
    """The `ModelMetadata` flatbuffer (identifier "M001") of a classifier with `labels.txt`."""
    w = _Writer()
    # Input: an RGB image.
    image_properties = w.table([("byte", 0, _RGB)])  # ImageProperties { color_space; }
    image_content = w.content(_IMAGE_PROPERTIES, image_properties)
    process_units = None
    if quantized_input:
        input_stats = w.stats(0.0, 255.0)
        input_description = "RGB image, uint8 pixels 0..255 (normalized inside the model)."
    else:
        mean, std = w.floats([NORMALIZATION_MEAN]), w.floats([NORMALIZATION_STD])
        # NormalizationOptions { mean:[float]; std:[float]; }
        normalization = w.table([("offset", 0, mean), ("offset", 1, std)])
        # ProcessUnit { options:ProcessUnitOptions (union: type slot 0, value slot 1); }
        process_units = [
            w.table([("ubyte", 0, _NORMALIZATION_OPTIONS), ("offset", 1, normalization)])
        ]
        input_stats = w.stats(
            (0.0 - NORMALIZATION_MEAN) / NORMALIZATION_STD,
            (255.0 - NORMALIZATION_MEAN) / NORMALIZATION_STD,
        )
        input_description = "RGB image, float32 (pixel - 127.5) / 127.5 in [-1, 1]."
    image = w.tensor("image", input_description, image_content, input_stats, process_units)
    # Output: the class probabilities, labelled by labels.txt.
    feature_content = w.content(_FEATURE_PROPERTIES, w.empty_table())
    labels_name = w.string(LABELS_FILE)
    labels_description = w.string(f"The {num_classes} class names, one a line, in class-id order.")
    # AssociatedFile { name; description; type:AssociatedFileType; locale; version; }
    labels = w.table(
        [
            ("offset", 0, labels_name),
            ("offset", 1, labels_description),
            ("byte", 2, _TENSOR_AXIS_LABELS),
        ]
    )
    probability = w.tensor(
        "probability",
        f"Probabilities of the {num_classes} classes.",
        feature_content,
        w.stats(0.0, 1.0),
        associated_files=[labels],
    )
    # SubGraphMetadata { name; description; input_tensor_metadata; output_tensor_metadata; ... }
    inputs, outputs = w.offsets([image]), w.offsets([probability])
    subgraph = w.table([("offset", 2, inputs), ("offset", 3, outputs)])
    # ModelMetadata { name; description; version; subgraph_metadata; author; license;
    #                 associated_files; min_parser_version; }
    fields = [
        ("offset", 0, w.string(name)),
        ("offset", 1, w.string(description)),
        ("offset", 2, w.string(version)),
        ("offset", 3, w.offsets([subgraph])),
        ("offset", 4, w.string("keras_bninception")),
        ("offset", 5, w.string("Apache-2.0")),
        ("offset", 7, w.string(MIN_PARSER_VERSION)),
    ]
    w.b.Finish(w.table(fields), file_identifier=METADATA_IDENTIFIER)
    return bytes(w.b.Output())


def add_metadata(
    content: bytes,
    class_names: Sequence[str],
    name: str,
    quantized_input: bool,
    description: str = "BN-Inception image classifier (Ioffe & Szegedy, 2015).",
) -> bytes:
    """Returns the .tflite file `content` with classifier metadata and `labels.txt` packed in.

    Args:
        content: a .tflite flatbuffer without metadata.
        class_names: one name per output class, in class-id order (no newlines).
        name: the model's name in the metadata.
        quantized_input: the input is uint8 raw pixels (else float32 normalized by
            `NormalizationOptions` mean 127.5, std 127.5).
        description: the model's description in the metadata.
    """
    bad = [c for c in class_names if "\n" in c or "\r" in c or not c]
    if bad:
        raise ValueError(f"Class names must be non-empty single lines; received {bad[:3]!r}")
    metadata = build_metadata(len(class_names), name, description, quantized_input)
    model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(bytearray(content), 0))
    if any((m.name or b"").decode() == METADATA_NAME for m in model.metadata or []):
        raise ValueError("the model already has TFLite Metadata")
    buffer = schema.BufferT()
    buffer.data = bytearray(metadata)
    model.buffers = (model.buffers or []) + [buffer]
    entry = schema.MetadataT()
    entry.name = METADATA_NAME
    entry.buffer = len(model.buffers) - 1
    model.metadata = (model.metadata or []) + [entry]
    builder = flatbuffers.Builder(len(content) + len(metadata) + 1024)
    builder.Finish(model.Pack(builder), file_identifier=tflite.TFLITE_IDENTIFIER)
    out = io.BytesIO(bytes(builder.Output()))
    out.seek(0, io.SEEK_END)
    with zipfile.ZipFile(out, "a", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr(LABELS_FILE, "".join(f"{c}\n" for c in class_names))
    return out.getvalue()


def metadata_buffer(content: bytes) -> bytes | None:
    """The raw `ModelMetadata` flatbuffer stored in a .tflite file, or None."""
    model = schema.Model.GetRootAs(bytearray(content), 0)
    for i in range(model.MetadataLength()):
        entry = model.Metadata(i)
        if (entry.Name() or b"").decode() == METADATA_NAME:
            return bytes(model.Buffers(entry.Buffer()).DataAsNumpy().tobytes())
    return None


def packed_files(content: bytes) -> dict[str, bytes]:
    """The associated files packed into a .tflite file (its zip part), by name."""
    with zipfile.ZipFile(io.BytesIO(content)) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}
