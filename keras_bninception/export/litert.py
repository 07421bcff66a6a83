"""Running an exported .tflite file with the LiteRT interpreter (`ai_edge_litert`), as an app does.

    classifier = TFLiteClassifier("out/bninception_int8.tflite", num_threads=2)
    probabilities = classifier.predict(pixels)  # uint8 or float RGB [N, S, S, 3], 0..255

The caller gives raw pixels whatever the file: for a float file they are normalized as its
metadata says ((pixel - 127.5) / 127.5, what MediaPipe does), a uint8 file takes them as they are;
a quantized output is dequantized with its scale and zero point.
"""

from __future__ import annotations

import os

import numpy as np

from keras_bninception.export.metadata import NORMALIZATION_MEAN, NORMALIZATION_STD


class TFLiteClassifier:
    """A batch-1 .tflite classifier run image by image (XNNPACK on, the interpreter's default).

    Args:
        model: a .tflite path or its bytes.
        num_threads: interpreter threads.
    """

    def __init__(self, model: str | os.PathLike[str] | bytes, num_threads: int = 1):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(model, bytes):
            self.interpreter = Interpreter(model_content=model, num_threads=num_threads)
        else:
            self.interpreter = Interpreter(model_path=os.fspath(model), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self.input_dtype = self._input["dtype"]

    def prepare(self, pixels: np.ndarray) -> np.ndarray:
        """One image's pixels [S, S, 3] (0..255) as the file's input tensor [1, S, S, 3]."""
        if self.input_dtype == np.uint8:
            return np.clip(np.round(pixels), 0, 255).astype(np.uint8)[None]
        return ((np.asarray(pixels, np.float32) - NORMALIZATION_MEAN) / NORMALIZATION_STD)[None]

    def invoke(self, tensor: np.ndarray) -> np.ndarray:
        """Runs one prepared input; returns the probabilities [classes] as float32."""
        self.interpreter.set_tensor(self._input["index"], tensor)
        self.interpreter.invoke()
        out = self.interpreter.get_tensor(self._output["index"])[0]
        scale, zero_point = self._output["quantization"]
        if self._output["dtype"] != np.float32 and scale:
            return (out.astype(np.float32) - zero_point) * scale
        return out.astype(np.float32)

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """Probabilities [N, classes] of RGB images [N, S, S, 3] with pixels in 0..255."""
        return np.stack([self.invoke(self.prepare(image)) for image in pixels])
