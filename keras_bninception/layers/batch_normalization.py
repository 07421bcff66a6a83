"""`BatchNormalization`: a drop-in `keras.layers.BatchNormalization` whose maths is section 3's.

Constructor arguments, weights (`gamma`, `beta`, `moving_mean`, `moving_variance`), their names,
`get_config` and the training/inference rules are Keras' own (the layer subclasses Keras' and reuses
its `build`); what differs is `call`:

- Training (`training=True` and the layer trainable): `batch_norm.batch_norm_train`, the paper's
  Algorithm 1 with the backward written by hand (`tf.custom_gradient`), Batch Renormalization's
  r and d included (`renorm=True`), on the kernels of the device it runs on (`kernels`).
- Inference (`training=False`, or `trainable=False`, the Keras rule for frozen BN): the plain affine
  map y = γ/sqrt(Var[x] + ε) · x + (β − γ E[x]/sqrt(Var[x] + ε)) of Algorithm 2, line 11, with the
  moving statistics; no custom gradient, so converters (TFLite) fold it into the preceding conv.

Moving statistics follow Keras: moving = moving · momentum + batch · (1 − momentum) (with `renorm`,
Keras' moving σ and renorm averages too). For the
variance the batch value is, by default, the biased σ²_B Keras keeps (so weights trained with
Keras' layer and this one mean the same thing); `population_variance=True` uses the paper's
unbiased m/(m−1) · σ²_B (Algorithm 2, line 10), which matters for small m (dense layers, small
batches).
"""

from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

from keras_bninception.layers import kernels as bn_kernels
from keras_bninception.layers.batch_norm import Renorm, batch_norm_train


def _checked(kind: str, getter, name: str, value: Any) -> Any:
    """`keras.<kind>.get(value)`, with an error that names the argument and what is accepted."""
    try:
        return getter(value)
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"Unknown {name}: {value!r}. Accepted: None, a keras.{kind} name (e.g. "
            f"{', '.join(repr(n) for n in _EXAMPLES[kind])}), a config dict, or an instance or "
            "callable."
        ) from error


_EXAMPLES = {
    "initializers": ("zeros", "ones", "random_normal", "glorot_uniform"),
    "regularizers": ("l1", "l2", "l1_l2"),
    "constraints": ("non_neg", "unit_norm", "max_norm"),
}


def _moving_average(moving, batch: tf.Tensor, momentum: float) -> tf.Tensor:
    """moving · momentum + batch · (1 − momentum), in the moving variable's dtype."""
    value = tf.convert_to_tensor(moving)
    return value * momentum + tf.cast(batch, value.dtype) * (1.0 - momentum)


@keras.saving.register_keras_serializable(package="keras_bninception")
class BatchNormalization(keras.layers.BatchNormalization):
    """Batch Normalization (Ioffe & Szegedy 2015) with the paper's hand-written backward.

    Same arguments and behaviour as `keras.layers.BatchNormalization`, plus:

    Args:
        population_variance: if True, the moving variance averages the unbiased m/(m−1) · σ²_B of
            Algorithm 2 instead of Keras' biased σ²_B (the default, for compatibility with weights
            trained by Keras' own layer).
        activation: None, or "relu" for BN followed by ReLU as one unit: the output is
            max(BN(x), 0) and, in training mode, one hand-written gradient covers both (ReLU's own
            forward and backward passes disappear; see `batch_norm`). Weights and their
            names are the plain layer's. In inference mode it is the affine map then `tf.nn.relu`,
            which converters fuse into the preceding convolution.
        kernels: None (the default), "accelerator" or "cpu": the kernels of the training pass.
            None takes `kernels.use`'s path if the layer is constructed inside one, else the
            path of the device the layer runs on when traced. A setting of the process, not of
            the model: not in `get_config`.

    `synchronized=True` computes μ_B, σ²_B and the backward's two sums over the global batch of a
    `tf.distribute` strategy (one all-reduce each), so N replicas train as one device would on the
    global batch, and the moving statistics stay identical on every replica.

    `renorm=True` is Batch Renormalization (Ioffe 2017) as Keras has it (`renorm_clipping`,
    `renorm_momentum`, the weights `moving_stddev`, `renorm_mean`, `renorm_stddev`), with r and d
    constants of the hand-written backward.

    Masks follow Keras: a mask of rank rank − 1, a trailing axis added and broadcast to the input
    (any `axis`); masked values stay out of μ_B and σ²_B.
    """

    def __init__(
        self,
        axis: int = -1,
        momentum: float = 0.99,
        epsilon: float = 1e-3,
        center: bool = True,
        scale: bool = True,
        beta_initializer: Any = "zeros",
        gamma_initializer: Any = "ones",
        moving_mean_initializer: Any = "zeros",
        moving_variance_initializer: Any = "ones",
        beta_regularizer: Any = None,
        gamma_regularizer: Any = None,
        beta_constraint: Any = None,
        gamma_constraint: Any = None,
        renorm: bool = False,
        renorm_clipping: dict | None = None,
        renorm_momentum: float = 0.99,
        synchronized: bool = False,
        population_variance: bool = False,
        activation: str | None = None,
        kernels: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(
                f"axis must be an int (the feature axis, negative counts from the "
                f"end); received axis={axis!r}"
            )
        if not isinstance(momentum, (int, float)) or not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be a float in [0, 1]; received momentum={momentum!r}")
        if not isinstance(epsilon, (int, float)) or not epsilon > 0.0:
            raise ValueError(
                f"epsilon must be a float > 0 (it keeps 1/sqrt(σ²_B + ε) finite); "
                f"received epsilon={epsilon!r}"
            )
        if activation not in (None, "relu"):
            raise ValueError(
                f"activation must be None or 'relu' (BN + ReLU as one unit); "
                f"received activation={activation!r}"
            )
        bn_kernels.check_path(kernels)
        for name, value in (
            ("beta_initializer", beta_initializer),
            ("gamma_initializer", gamma_initializer),
            ("moving_mean_initializer", moving_mean_initializer),
            ("moving_variance_initializer", moving_variance_initializer),
        ):
            _checked("initializers", keras.initializers.get, name, value)
        for name, value in (
            ("beta_regularizer", beta_regularizer),
            ("gamma_regularizer", gamma_regularizer),
        ):
            _checked("regularizers", keras.regularizers.get, name, value)
        for name, value in (
            ("beta_constraint", beta_constraint),
            ("gamma_constraint", gamma_constraint),
        ):
            _checked("constraints", keras.constraints.get, name, value)
        super().__init__(
            axis=axis,
            momentum=momentum,
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            moving_mean_initializer=moving_mean_initializer,
            moving_variance_initializer=moving_variance_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            renorm=renorm,
            renorm_clipping=renorm_clipping,
            renorm_momentum=renorm_momentum,
            synchronized=synchronized,
            **kwargs,
        )
        self.population_variance = bool(population_variance)
        self.activation = activation
        self.kernels = kernels or bn_kernels.forced()

    def build(self, input_shape) -> None:
        rank = len(input_shape)
        if not -rank <= self.axis < rank:
            raise ValueError(
                f"axis={self.axis} is out of range for inputs of rank {rank} (shape "
                f"{tuple(input_shape)}); accepted: an int in [{-rank}, {rank - 1}]"
            )
        if input_shape[self.axis] is None:
            raise ValueError(
                f"The feature axis {self.axis} of the input must have a known size; "
                f"received input shape {tuple(input_shape)}"
            )
        super().build(input_shape)

    def _feature_shape(self, rank: int) -> list[int]:
        shape = [1] * rank
        shape[self.axis] = -1
        return shape

    def call(self, inputs, training=None, mask=None):
        rank = len(inputs.shape)
        axis = self.axis % rank
        if mask is not None and len(mask.shape) != rank - 1:
            raise ValueError(
                "The mask provided should be one dimension less than the inputs. "
                f"Received: mask.shape={mask.shape}, inputs.shape={inputs.shape}"
            )
        # Statistics in float32 at least (float16/bfloat16 inputs overflow), as Keras does.
        stats_dtype = keras.backend.result_type(inputs.dtype, "float32")
        channels = inputs.shape[axis]
        gamma = tf.cast(self.gamma, stats_dtype) if self.scale else tf.ones([channels], stats_dtype)
        beta = tf.cast(self.beta, stats_dtype) if self.center else tf.zeros([channels], stats_dtype)

        if training and self.trainable:
            renorm = None
            if self.renorm:
                clipping = self.renorm_clipping or {}
                renorm = Renorm(
                    tf.cast(self.renorm_mean, stats_dtype),
                    tf.cast(self.renorm_stddev, stats_dtype),
                    clipping.get("rmin"),
                    clipping.get("rmax"),
                    clipping.get("dmax"),
                )
            outputs, mean, variance, count = batch_norm_train(
                inputs,
                gamma,
                beta,
                axis=axis,
                epsilon=self.epsilon,
                mask=mask,
                synchronized=self.synchronized,
                relu=self.activation == "relu",
                renorm=renorm,
                kernels=self.kernels,
            )
            if self.population_variance:  # Algorithm 2, line 10: Var[x] = m/(m−1) · E_B[σ²_B]
                variance = variance * count / tf.maximum(count - 1.0, 1.0)
            if self.renorm:
                self._update_renorm_moving_statistics(mean, variance)
            else:
                for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
                    moving.assign(_moving_average(moving, batch, self.momentum))
            return tf.cast(outputs, self.compute_dtype)

        # Algorithm 2, line 11: y = γ/sqrt(Var[x] + ε) · x + (β − γ E[x]/sqrt(Var[x] + ε)).
        mean = tf.cast(self.moving_mean, stats_dtype)
        variance = tf.cast(self.moving_variance, stats_dtype)
        multiplier = gamma * tf.math.rsqrt(variance + self.epsilon)
        offset = beta - mean * multiplier
        feature_shape = self._feature_shape(rank)
        outputs = tf.cast(inputs, stats_dtype) * tf.reshape(multiplier, feature_shape) + tf.reshape(
            offset, feature_shape
        )
        outputs = tf.cast(outputs, self.compute_dtype)
        return tf.nn.relu(outputs) if self.activation == "relu" else outputs

    def _update_renorm_moving_statistics(self, mean: tf.Tensor, variance: tf.Tensor) -> None:
        """Keras' renorm updates: μ, σ by `renorm_momentum`; the inference mean and σ by
        `momentum`, the moving variance from that σ (σ² − ε, at least 0)."""
        stddev = tf.sqrt(variance + self.epsilon)
        self.renorm_mean.assign(_moving_average(self.renorm_mean, mean, self.renorm_momentum))
        self.renorm_stddev.assign(_moving_average(self.renorm_stddev, stddev, self.renorm_momentum))
        self.moving_mean.assign(_moving_average(self.moving_mean, mean, self.momentum))
        moving_stddev = _moving_average(self.moving_stddev, stddev, self.momentum)
        self.moving_stddev.assign(moving_stddev)
        self.moving_variance.assign(tf.nn.relu(moving_stddev * moving_stddev - self.epsilon))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config["population_variance"] = self.population_variance
        config["activation"] = self.activation
        return config
