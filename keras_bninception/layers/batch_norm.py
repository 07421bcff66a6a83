"""The Batch Normalizing Transform of Ioffe & Szegedy (2015), section 3, and its gradient by hand.

Forward, Algorithm 1, per feature k over a mini-batch B = {x_1..x_m} (for a convolution: over the
batch AND the spatial positions of one feature map, so m = N·H·W):

    μ_B  = 1/m Σ x_i                          mini-batch mean                (line 1)
    σ²_B = 1/m Σ (x_i − μ_B)²                 mini-batch variance, biased    (line 2)
    x̂_i  = (x_i − μ_B) / sqrt(σ²_B + ε)       normalize                      (line 3)
    y_i  = γ x̂_i + β                          scale and shift                (line 4)

Backward, the chain rule the paper gives right after Algorithm 1:

    ∂ℓ/∂x̂_i  = ∂ℓ/∂y_i · γ
    ∂ℓ/∂σ²_B = Σ ∂ℓ/∂x̂_i · (x_i − μ_B) · −½ (σ²_B + ε)^−3/2
    ∂ℓ/∂μ_B  = Σ ∂ℓ/∂x̂_i · −1/sqrt(σ²_B + ε)  +  ∂ℓ/∂σ²_B · Σ −2 (x_i − μ_B) / m
    ∂ℓ/∂x_i  = ∂ℓ/∂x̂_i / sqrt(σ²_B + ε)  +  ∂ℓ/∂σ²_B · 2 (x_i − μ_B) / m  +  ∂ℓ/∂μ_B / m
    ∂ℓ/∂γ    = Σ ∂ℓ/∂y_i · x̂_i
    ∂ℓ/∂β    = Σ ∂ℓ/∂y_i

Since Σ (x_i − μ_B) = 0 the second term of ∂ℓ/∂μ_B vanishes, and the chain collapses to one line
per element: two reductions (∂ℓ/∂β, ∂ℓ/∂γ) and one elementwise pass,

    ∂ℓ/∂x_i  = γ/sqrt(σ²_B + ε) · (∂ℓ/∂y_i − (∂ℓ/∂β + x̂_i · ∂ℓ/∂γ) / m).

Batch Renormalization (Ioffe 2017, Algorithm 1), `renorm`: with moving averages μ and σ of μ_B and
σ_B = sqrt(σ²_B + ε), line 4 becomes

    r   = clip(σ_B / σ, 1/r_max .. r_max)      d = clip((μ_B − μ) / σ, −d_max .. d_max)
    y_i = γ (x̂_i · r + d) + β

where r and d are constants of the backward pass (stop_gradient): the chain above with γ·r in
place of γ, and ∂ℓ/∂γ = r Σ ∂ℓ/∂y_i·x̂_i + d Σ ∂ℓ/∂y_i (clipping as Keras': `rmin`, `rmax`, `dmax`).

Masks (Keras' semantics): a 0/1 weight w_i per value, the mask broadcast against x; only w_i = 1
enter the statistics, m = Σ w_i per feature, y is computed everywhere, and the same derivation gives
∂ℓ/∂x_i = γ/sqrt(σ²_B + ε) · (∂ℓ/∂y_i − w_i (∂ℓ/∂β + x̂_i ∂ℓ/∂γ) / m).

BN + ReLU (`relu=True`): z = max(y, 0) as one unit; the backward keeps ∂ℓ/∂z_i where z_i > 0 (the
sign recomputed from x with the forward's own arithmetic and rounding) and runs the chain on it.

Synchronized BN: B is the global batch of a `tf.distribute` strategy; the forward all-reduces
(Σ x, m), then Σ (x − μ_B)², the backward the two sums, so N replicas compute what one device
computes. ∂ℓ/∂γ and ∂ℓ/∂β stay per replica: the optimizer's cross-replica sum adds them once.

Precision: σ²_B from the deviations x_i − μ_B (never E[x²] − E[x]²); half-precision x is widened to
float32 inside the passes; y and ∂ℓ/∂x come back in x's dtype.

This module is the reference: each function is a step above, in plain TensorFlow ops. `kernels`
compiles them into the fast passes of each device (its kernels are tested against these).
"""

from __future__ import annotations

from typing import NamedTuple

import tensorflow as tf

__all__ = ["Renorm", "batch_norm_train"]


class Renorm(NamedTuple):
    """Batch Renormalization's moving μ and σ (tensors) and Keras' clipping (floats or None)."""

    mean: tf.Tensor
    stddev: tf.Tensor
    rmin: float | None = None
    rmax: float | None = None
    dmax: float | None = None


class Statistics(NamedTuple):
    """What the forward hands the backward: μ_B, σ²_B, 1/sqrt(σ²_B + ε), m, the γ and β of line 4
    (γ·r and γ·d + β under renorm) and r, d (None without renorm)."""

    mean: tf.Tensor
    variance: tf.Tensor
    inv_std: tf.Tensor
    count: tf.Tensor
    scale: tf.Tensor
    offset: tf.Tensor
    r: tf.Tensor | None
    d: tf.Tensor | None


# The steps work on a view of the activations: [m, C] when the feature axis is last, [A, C, B]
# otherwise, so the sums are over axes (0,) or (0, 2) and per-feature vectors are [C] or [C, 1].
# w is the 0/1 mask broadcast to the view (or None).


def axes(x: tf.Tensor) -> tuple[int, ...]:
    return (0,) if x.shape.rank == 2 else (0, 2)


def feature(v: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """A per-feature vector [C] shaped to broadcast against the view x."""
    return v if x.shape.rank == 2 or v.shape.rank == 0 else v[:, None]


def sum_and_count(x, w, dtype):
    """Σ w_i x_i and m = Σ w_i (line 1, before the division)."""
    x = tf.cast(x, dtype)
    if w is None:
        m = tf.size(x, out_type=tf.int64) // tf.shape(x, out_type=tf.int64)[1]
        return tf.reduce_sum(x, axes(x)), tf.cast(m, dtype)
    w = tf.cast(w, dtype)
    return tf.reduce_sum(x * w, axes(x)), tf.reduce_sum(w, axes(x))


def sum_squared_deviations(x, w, mean):
    """Σ w_i (x_i − μ_B)² (line 2, before the division)."""
    deviation = tf.cast(x, mean.dtype) - feature(mean, x)
    if w is not None:
        deviation = deviation * tf.cast(w, mean.dtype)
    return tf.reduce_sum(tf.square(deviation), axes(x))


def x_hat(x, mean, inv_std):
    """x̂_i = (x_i − μ_B) / sqrt(σ²_B + ε) (line 3), in μ_B's dtype."""
    return (tf.cast(x, mean.dtype) - feature(mean, x)) * feature(inv_std, x)


def pre_activation(x, mean, inv_std, scale, offset):
    """y_i = γ x̂_i + β (lines 3-4, γ/sqrt(σ²_B + ε) taken first), in μ_B's dtype."""
    return (tf.cast(x, mean.dtype) - feature(mean, x)) * feature(scale * inv_std, x) + feature(
        offset, x
    )


def normalize(x, mean, inv_std, scale, offset, relu):
    """y_i, or z_i = max(y_i, 0), in x's dtype (ReLU before the cast: rounding is monotone)."""
    y = pre_activation(x, mean, inv_std, scale, offset)
    return tf.cast(tf.nn.relu(y) if relu else y, x.dtype)


def relu_kept(x, mean, inv_std, scale, offset, rounding=None):
    """z_i > 0, ReLU's mask: its sign from x, rounded to `rounding` or x's dtype as the forward
    rounded z."""
    return tf.cast(pre_activation(x, mean, inv_std, scale, offset), rounding or x.dtype) > 0


def relu_grad(dy, x, mean, inv_std, scale, offset, relu, rounding=None):
    """∂ℓ/∂y: ∂ℓ/∂z_i where z_i > 0, else 0 (`relu_kept`); ∂ℓ/∂y itself without ReLU. In μ_B's
    dtype."""
    dy = tf.cast(dy, mean.dtype)
    if not relu:
        return dy
    return tf.where(relu_kept(x, mean, inv_std, scale, offset, rounding), dy, tf.zeros_like(dy))


def grad_sums(dy, x, mean, inv_std, scale, offset, relu):
    """∂ℓ/∂β = Σ ∂ℓ/∂y_i and Σ ∂ℓ/∂y_i · x̂_i (∂ℓ/∂γ without renorm); with ReLU, over z_i > 0."""
    dy = tf.cast(dy, mean.dtype)
    terms = (dy, dy * x_hat(x, mean, inv_std))
    if relu:
        kept = relu_kept(x, mean, inv_std, scale, offset)
        terms = tuple(tf.where(kept, t, tf.zeros_like(t)) for t in terms)
    return tuple(tf.reduce_sum(t, axes(x)) for t in terms)


def grad_input(dy, x, w, mean, inv_std, scale, offset, relu, dbeta, dgamma, count):
    """∂ℓ/∂x_i = γ/sqrt(σ²_B + ε) · (∂ℓ/∂y_i − w_i (∂ℓ/∂β + x̂_i ∂ℓ/∂γ) / m)."""
    dy = relu_grad(dy, x, mean, inv_std, scale, offset, relu)
    correction = (feature(dbeta, x) + x_hat(x, mean, inv_std) * feature(dgamma, x)) / feature(
        count, x
    )
    if w is not None:
        correction = correction * tf.cast(w, mean.dtype)
    return tf.cast(feature(scale * inv_std, x) * (dy - correction), x.dtype)


def transform(x, count, mean, variance, gamma, beta, epsilon, relu, renorm, normalize=normalize):
    """Lines 3-4 from μ_B and σ²_B (Batch Renormalization's r and d if `renorm`): y, Statistics."""
    inv_std = tf.math.rsqrt(variance + epsilon)
    scale, offset, r, d = gamma, beta, None, None
    if renorm is not None:
        stddev = tf.maximum(renorm.stddev, tf.sqrt(tf.cast(epsilon, gamma.dtype)))
        r = tf.sqrt(variance + epsilon) / stddev  # σ_B / σ
        d = (mean - renorm.mean) / stddev  # (μ_B − μ) / σ
        r = tf.clip_by_value(r, renorm.rmin or 0.0, renorm.rmax or float("inf"))
        if renorm.dmax is not None:
            d = tf.clip_by_value(d, -renorm.dmax, renorm.dmax)
        scale, offset = gamma * r, gamma * d + beta  # y = γ (x̂ r + d) + β
    y = normalize(x, mean, inv_std, scale, offset, relu)
    return y, Statistics(mean, variance, inv_std, count, scale, offset, r, d)


def _local(*sums):
    return sums


class Steps(NamedTuple):
    """The steps a pass is made of (the functions above, or `kernels`' compiled ones)."""

    sum_and_count: object = sum_and_count
    sum_squared_deviations: object = sum_squared_deviations
    normalize: object = normalize
    grad_sums: object = grad_sums
    grad_input: object = grad_input


REFERENCE = Steps()


def forward(x, w, gamma, beta, epsilon, relu, renorm=None, sum_replicas=_local, steps=REFERENCE):
    """Algorithm 1: y and the Statistics; `sum_replicas` all-reduces the partial sums."""
    total, count = sum_replicas(*steps.sum_and_count(x, w, gamma.dtype))
    count = tf.maximum(count, 1)
    mean = total / count  # μ_B, line 1
    (ssd,) = sum_replicas(steps.sum_squared_deviations(x, w, mean))
    variance = ssd / count  # σ²_B, line 2
    return transform(x, count, mean, variance, gamma, beta, epsilon, relu, renorm, steps.normalize)


def parameter_grads(dgamma, dbeta, s: Statistics):
    """∂ℓ/∂γ, ∂ℓ/∂β from Σ ∂ℓ/∂y_i·x̂_i, Σ ∂ℓ/∂y_i: renorm's ∂ℓ/∂γ = r Σ ∂ℓ/∂y·x̂ + d Σ ∂ℓ/∂y."""
    return (dgamma if s.r is None else s.r * dgamma + s.d * dbeta), dbeta


def backward(dy, x, w, s: Statistics, relu, sum_replicas=_local, steps=REFERENCE):
    """The section-3 chain: ∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β (the last two per replica)."""
    statistics = (s.mean, s.inv_std, s.scale, s.offset, relu)
    dbeta, dgamma = steps.grad_sums(dy, x, *statistics)
    all_dbeta, all_dgamma = sum_replicas(dbeta, dgamma)
    dx = steps.grad_input(dy, x, w, *statistics, all_dbeta, all_dgamma, s.count)
    return dx, *parameter_grads(dgamma, dbeta, s)


def cross_replica_sum(*values: tf.Tensor) -> list[tf.Tensor]:
    """Each value summed over all replicas, all of them in a single all-reduce."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return list(values)
    sizes = [tf.size(v) for v in values]
    flat = ctx.all_reduce(
        tf.distribute.ReduceOp.SUM, tf.concat([tf.reshape(v, [-1]) for v in values], 0)
    )
    return [tf.reshape(p, tf.shape(v)) for p, v in zip(tf.split(flat, sizes), values, strict=True)]


def batch_norm_train(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    *,
    axis: int,
    epsilon: float,
    mask: tf.Tensor | None = None,
    synchronized: bool = False,
    relu: bool = False,
    renorm: Renorm | None = None,
    kernels: str | None = None,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """BN_γ,β(x) in training mode, with the hand-written backward of section 3.

    Args:
        x: activations of any rank ≥ 2, float16, bfloat16, float32 or float64.
        gamma, beta: per-feature tensors [C] in the compute dtype (float32 for half precision x,
            else x's dtype); pass ones/zeros when the layer has no γ/β.
        axis: the feature axis, in [0, rank).
        epsilon: ε > 0.
        mask: optional tensor of rank rank − 1, broadcast as Keras does (a trailing axis added,
            then broadcast to x's shape); nonzero values are kept, the others stay out of μ_B
            and σ²_B.
        synchronized: statistics and backward over the global batch of a `tf.distribute` strategy.
        relu: return z = max(y, 0), BN and ReLU as one unit with one hand-written gradient.
        renorm: Batch Renormalization's moving statistics and clipping, or None.
        kernels: "accelerator", "cpu", or None for `kernels.use`'s scope, else the device's.

    Returns:
        (y, μ_B, σ²_B, m): y (or z) in x's dtype; the statistics in the compute dtype, without
        gradient (they feed the moving averages); m, the values per feature (per feature if masked).
    """
    from keras_bninception.layers import kernels as fast  # it compiles this module's steps

    rank = x.shape.rank
    if not 0 <= axis < rank:
        raise ValueError(f"axis must be in [0, {rank}) for a rank-{rank} input; received {axis}")
    path, relu = fast.path_for(x, kernels), bool(relu)
    x_view = _view(x, axis)
    w_view = None
    if mask is not None:  # Keras: expand_dims(mask, -1), broadcast to x, nonzero = kept
        w = tf.cast(tf.cast(mask, tf.bool), gamma.dtype)[..., None]
        w_view = tf.stop_gradient(_view(tf.broadcast_to(w, tf.shape(x)), axis))
    sum_replicas = cross_replica_sum if synchronized else None
    if renorm is not None:
        renorm = renorm._replace(
            mean=tf.stop_gradient(renorm.mean), stddev=tf.stop_gradient(renorm.stddev)
        )

    statistics = []  # the forward's, without gradient: only y is an output of `bn`

    @tf.autograph.experimental.do_not_convert
    @tf.custom_gradient
    def bn(x_view, gamma, beta):
        # The gradient is `grad` (`backward`): nothing below is recorded by a GradientTape.
        x_view, gamma, beta = (tf.stop_gradient(t) for t in (x_view, gamma, beta))
        y, s = fast.forward(path, x_view, w_view, gamma, beta, epsilon, relu, renorm, sum_replicas)
        statistics.append(s)

        def grad(dy):
            return fast.backward(path, tf.stop_gradient(dy), x_view, w_view, s, relu, sum_replicas)

        return y, grad

    y = bn(x_view, gamma, beta)
    (s,) = statistics
    return tf.reshape(y, tf.shape(x)), s.mean, s.variance, s.count


def _view(x: tf.Tensor, axis: int) -> tf.Tensor:
    """The [m, C] or [A, C, B] view of x (a reshape, no copy)."""
    shape = tf.shape(x)
    channels = x.shape[axis] if x.shape[axis] is not None else shape[axis]
    if axis == x.shape.rank - 1:
        return tf.reshape(x, [-1, channels])
    return tf.reshape(x, [-1, channels, tf.reduce_prod(shape[axis + 1 :])])
