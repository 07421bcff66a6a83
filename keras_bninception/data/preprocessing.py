"""Inception preprocessing (tf_slim's `inception_preprocessing`), stateless and seeded.

Training: a distorted bounding-box crop (`tf.image.stateless_sample_distorted_bounding_box`), a
resize to the model's input size, a random horizontal flip and a light colour distortion.
Evaluation: a central crop (87.5 % of each side by default) and a resize. Both map the pixels to
[-1, 1].

Every random op is a stateless one keyed by a per-example seed, so an example's augmentation depends
only on (pipeline seed, element index): two pipelines built with the same seed produce the same
images, whatever the parallelism, and a pipeline can start in the middle of the stream.
"""

from __future__ import annotations

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class PreprocessConfig:
    """Augmentation parameters of one dataset.

    The defaults are tf_slim's `distorted_bounding_box_crop` ranges. The colour distortion is
    half of tf_slim's fast mode (brightness ±32/255, saturation [0.5, 1.5]): the paper trains
    BN-Inception with "reduced photometric distortions" (section 4.2.1).
    """

    area_range: tuple[float, float] = (0.05, 1.0)
    aspect_ratio_range: tuple[float, float] = (0.75, 1.33)
    min_object_covered: float = 0.1
    central_fraction: float = 0.875
    flip: bool = True
    color: bool = True
    brightness_max_delta: float = 16.0 / 255.0
    saturation_range: tuple[float, float] = (0.75, 1.25)
    # Resize the raw image to the output size before cropping (for tiny images such as the 8x8
    # digits, so that crops are sub-pixel fractions of the source instead of whole source pixels).
    upsample_first: bool = False


DEFAULT_CONFIG = PreprocessConfig()


def to_float(image: tf.Tensor) -> tf.Tensor:
    """Converts an image to float32 in [0, 1] (uint8 is divided by 255; floats are kept)."""
    return tf.image.convert_image_dtype(image, tf.float32)


def _rgb(image: tf.Tensor) -> tf.Tensor:
    """Gives a [H, W, 1] or [H, W, 3] image (channels known statically) three channels."""
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels != 3:
        raise ValueError(f"images must have 1 or 3 channels (static), got shape {image.shape}")
    return image


def _resize(image: tf.Tensor, image_size: int) -> tf.Tensor:
    return tf.image.resize(image, [image_size, image_size], method="bilinear")


def _central_crop(image: tf.Tensor, fraction: float) -> tf.Tensor:
    """`tf.image.central_crop(image, fraction)` of a [H, W, C] image: the same window (the same
    float64 arithmetic), both sides at once, in a few ops instead of two dozen."""
    size = tf.shape(image)[:2]
    sides = tf.cast(size, tf.float64)
    begin = tf.cast((sides - sides * fraction) / 2, tf.int32)
    return tf.slice(image, tf.concat([begin, [0]], 0), tf.concat([size - 2 * begin, [-1]], 0))


def _to_signed(image: tf.Tensor) -> tf.Tensor:
    """Maps [0, 1] to [-1, 1] (tf_slim: `(image - 0.5) * 2`)."""
    return tf.clip_by_value((image - 0.5) * 2.0, -1.0, 1.0)


def _split_seed(seed: tf.Tensor) -> list[tf.Tensor]:
    """The crop, flip, brightness and saturation seeds of one example."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num=4))


def _distorted_box(shape: tf.Tensor, crop_seed: tf.Tensor, config: PreprocessConfig):
    """(begin, size) of a random crop of an image of `shape` [H, W, C] (tf_slim's ranges)."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4]),
        seed=crop_seed,
        min_object_covered=config.min_object_covered,
        aspect_ratio_range=config.aspect_ratio_range,
        area_range=config.area_range,
        max_attempts=100,
        use_image_if_no_bounding_boxes=True,
    )
    return begin, size


def _finish_train(
    image: tf.Tensor, image_size: int, seeds: list[tf.Tensor], config: PreprocessConfig
) -> tf.Tensor:
    """Resize, flip, colour and [-1, 1] of a cropped image."""
    _, flip_seed, brightness_seed, saturation_seed = seeds
    image = _resize(_rgb(to_float(image)), image_size)
    if config.flip:
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    if config.color:
        image = tf.image.stateless_random_brightness(
            image, config.brightness_max_delta, seed=brightness_seed
        )
        image = tf.image.stateless_random_saturation(
            image, *config.saturation_range, seed=saturation_seed
        )
        image = tf.clip_by_value(image, 0.0, 1.0)
        # In [0, 1], (x - 0.5) * 2 is exactly within [-1, 1] (x - 0.5 is exact from 0.25 up,
        # rounded monotonically below): `_to_signed`'s clip would change no pixel.
        image = (image - 0.5) * 2.0
    else:
        image = _to_signed(image)
    image.set_shape([image_size, image_size, 3])
    return image


def preprocess_for_train(
    image: tf.Tensor,
    image_size: int,
    seed: tf.Tensor,
    config: PreprocessConfig = DEFAULT_CONFIG,
) -> tf.Tensor:
    """Random crop, resize, flip and colour distortion of one image.

    Args:
        image: [H, W, C] image, C in {1, 3}, uint8 or float in [0, 1].
        image_size: side of the square output.
        seed: shape [2] int32/int64 stateless seed of this example.
        config: augmentation parameters.

    Returns:
        float32 [image_size, image_size, 3] in [-1, 1].
    """
    image = _rgb(to_float(image))
    if config.upsample_first:
        image = _resize(image, image_size)
    seeds = _split_seed(seed)
    begin, size = _distorted_box(tf.shape(image), seeds[0], config)
    image = tf.slice(image, begin, size)
    image.set_shape([None, None, 3])
    return _finish_train(image, image_size, seeds, config)


def preprocess_for_eval(
    image: tf.Tensor, image_size: int, config: PreprocessConfig = DEFAULT_CONFIG
) -> tf.Tensor:
    """Central crop (`config.central_fraction` of each side) and resize of one image.

    Args:
        image: [H, W, C] image, C in {1, 3}, uint8 or float in [0, 1].
        image_size: side of the square output.
        config: its `central_fraction` and `upsample_first` are used.

    Returns:
        float32 [image_size, image_size, 3] in [-1, 1].
    """
    image = _rgb(tf.convert_to_tensor(image))
    if image.dtype != tf.uint8 or config.upsample_first:
        image = to_float(image)
        if config.upsample_first:
            image = _resize(image, image_size)
        if config.central_fraction < 1.0:
            image = _central_crop(image, config.central_fraction)
        image = _to_signed(_resize(image, image_size))
    else:
        # uint8: cropped and resized as integers (the resize gives float32 in [0, 255]), then
        # scaled once, at the output size: the same pixels as scaling first, up to rounding, with
        # neither a float copy of the whole image nor a clip. Bilinear interpolation is a convex
        # combination, so the resized values stay in [0, 255], and x / 127.5 - 1 maps 0 and 255
        # exactly to -1 and 1, monotonically.
        if config.central_fraction < 1.0:
            image = _central_crop(image, config.central_fraction)
        image = _resize(image, image_size) / 127.5 - 1.0
    image.set_shape([image_size, image_size, 3])
    return image


def decode_image(contents: tf.Tensor) -> tf.Tensor:
    """Decodes a JPEG, PNG, GIF (first frame) or BMP file to uint8 [H, W, 3]."""
    image = tf.io.decode_image(contents, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def decode_and_preprocess_for_train(
    contents: tf.Tensor,
    image_size: int,
    seed: tf.Tensor,
    config: PreprocessConfig = DEFAULT_CONFIG,
) -> tf.Tensor:
    """`preprocess_for_train(decode_image(contents), ...)`, decoding only the crop of a JPEG.

    A JPEG's crop is decoded by `tf.image.decode_and_crop_jpeg` (the crop is sampled from
    `tf.image.extract_jpeg_shape`), as in the TensorFlow official ImageNet pipelines: the same
    pixels for a fraction of the decoding work, except that the outermost pixels may differ a
    little (libjpeg's chroma upsampling sees nothing outside the window). Other formats are decoded
    whole, then cropped.
    """
    if config.upsample_first:
        return preprocess_for_train(decode_image(contents), image_size, seed, config)
    seeds = _split_seed(seed)

    def jpeg():
        begin, size = _distorted_box(tf.image.extract_jpeg_shape(contents), seeds[0], config)
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        return tf.image.decode_and_crop_jpeg(contents, window, channels=3)

    def other():
        image = decode_image(contents)
        begin, size = _distorted_box(tf.shape(image), seeds[0], config)
        image = tf.slice(image, begin, size)
        image.set_shape([None, None, 3])
        return image

    image = tf.cond(tf.io.is_jpeg(contents), jpeg, other)
    image.set_shape([None, None, 3])
    return _finish_train(image, image_size, seeds, config)


def decode_and_preprocess_for_eval(
    contents: tf.Tensor, image_size: int, config: PreprocessConfig = DEFAULT_CONFIG
) -> tf.Tensor:
    """`preprocess_for_eval(decode_image(contents), ...)`: the whole file is decoded.

    (`tf.image.decode_and_crop_jpeg` of the central window would decode about a quarter less of
    a JPEG, but its pixels are not the central crop's: libjpeg's chroma upsampling sees nothing
    outside the window, which changes the outermost pixels of chroma-subsampled files.
    Evaluation keeps the exact crop.)
    """
    return preprocess_for_eval(decode_image(contents), image_size, config)
