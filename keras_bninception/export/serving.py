"""The serving module: a Keras classifier wrapped in `tf.function`s for TF Serving and TFLite.

`ServingModule(model, class_names, preprocess_config)` holds the model's variables (as a
`tf.Module`, so `tf.saved_model.save` writes them and nothing of Keras or of this package is needed
to load the result) and offers:

- `serving_default(images)`: float32 RGB [N, H, W, 3], pixels in 0..255 -> `probabilities`
  [N, classes], the top-5 `class_ids` [N, 5] int32 and `class_names` [N, 5] string;
- `serve_image_bytes(image_bytes)`: encoded JPEG / PNG / GIF / BMP strings [N] -> the same,
  decoded and preprocessed by `keras_bninception.data`'s evaluation function (central crop,
  resize, [-1, 1]) for the dataset the model was trained on;

and `tflite_model(flavour)`, the batch-1 Keras model each TFLite flavour is converted from.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import tensorflow as tf

from keras_bninception.data import preprocessing

TOP_K = 5


def outputs_probabilities(model: keras.Model) -> bool:
    """Whether `model`'s last layer ends in a softmax (else its outputs are taken as logits)."""
    activation = getattr(model.layers[-1], "activation", None)
    return getattr(activation, "__name__", None) == "softmax"


def normalize_pixels(pixels: tf.Tensor) -> tf.Tensor:
    """Pixels in [0, 255] to the network's [-1, 1]: x / 127.5 - 1 (Keras' "tf" mode)."""
    return pixels / 127.5 - 1.0


class ServingModule(tf.Module):
    """A classifier with its preprocessing and class names, as `tf.function`s (see module doc)."""

    def __init__(
        self,
        model: keras.Model,
        class_names: Sequence[str],
        preprocess_config: preprocessing.PreprocessConfig = preprocessing.DEFAULT_CONFIG,
    ):
        super().__init__(name="bninception_serving")
        shape = model.inputs[0].shape
        if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
            raise ValueError(
                "The model must take square RGB images of a fixed size, [N, S, S, 3]; received "
                f"input shape {tuple(shape)}"
            )
        classes = int(model.outputs[0].shape[-1])
        if len(class_names) != classes:
            raise ValueError(
                f"`class_names` must name each of the model's {classes} classes; received "
                f"{len(class_names)} names"
            )
        self.model = model
        # The model's tf.Variables tracked by this module itself: TF1-style loaders (TF Serving,
        # `saved_model_cli run`) then restore them too (keras-team/keras#20095; Keras'
        # ExportArchive does the same).
        self.model_variables = [getattr(v, "value", v) for v in model.variables]
        self.image_size = int(shape[1])
        self.num_classes = classes
        self._softmax = not outputs_probabilities(model)
        self._preprocess_config = preprocess_config
        self.class_names = tf.constant(list(class_names), tf.string)
        size = self.image_size
        self.serving_default = tf.function(
            self._serve_pixels,
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")],
        )
        self.serve_image_bytes = tf.function(
            self._serve_bytes,
            input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
        )

    def _probabilities(self, x: tf.Tensor) -> tf.Tensor:
        y = self.model(x, training=False)
        y = tf.cast(y, tf.float32)
        return tf.nn.softmax(y, axis=-1) if self._softmax else y

    def _probabilities_from_pixels(self, pixels: tf.Tensor) -> tf.Tensor:
        return self._probabilities(normalize_pixels(pixels))

    def _answer(self, probabilities: tf.Tensor) -> dict[str, tf.Tensor]:
        k = min(TOP_K, self.num_classes)
        _, class_ids = tf.math.top_k(probabilities, k=k)
        return {
            "probabilities": probabilities,
            "class_ids": class_ids,
            "class_names": tf.gather(self.class_names, class_ids),
        }

    def _serve_pixels(self, images: tf.Tensor) -> dict[str, tf.Tensor]:
        return self._answer(self._probabilities_from_pixels(images))

    def _serve_bytes(self, image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
        size, config = self.image_size, self._preprocess_config

        def one(contents: tf.Tensor) -> tf.Tensor:
            return preprocessing.decode_and_preprocess_for_eval(contents, size, config)

        x = tf.map_fn(one, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3]))
        return self._answer(self._probabilities(x))

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """The two serving signatures, for `tf.saved_model.save(..., signatures=...)`."""
        return {
            "serving_default": self.serving_default.get_concrete_function(),
            "serve_image_bytes": self.serve_image_bytes.get_concrete_function(),
        }

    def tflite_model(self, flavour: str) -> keras.Model:
        """The batch-1 Keras model a TFLite flavour is converted from (see `export.tflite`).

        float32 / float16: normalized image [1, S, S, 3] in [-1, 1] -> probabilities; int8: raw
        pixels 0..255 -> x / 127.5 - 1 -> the same.
        """
        size = self.image_size
        if flavour == "int8":
            inputs = keras.Input((size, size, 3), batch_size=1, name="pixels")
            x = keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name="normalize")(inputs)
        else:
            inputs = keras.Input((size, size, 3), batch_size=1, name="image")
            x = inputs
        y = self.model(x, training=False)
        if self._softmax:
            y = keras.layers.Softmax(name="probabilities")(y)
        return keras.Model(inputs, y, name=f"{self.model.name}_{flavour}")
