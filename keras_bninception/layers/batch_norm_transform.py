"""The Batch Normalizing Transform of Ioffe & Szegedy (2015), section 3, and its gradient by hand.

Forward, Algorithm 1, per feature k over a mini-batch B = {x_1..x_m} (for a convolution: over the
batch AND the spatial positions of one feature map, so m = N·H·W):

    μ_B  = 1/m Σ x_i                          mini-batch mean
    σ²_B = 1/m Σ (x_i − μ_B)²                 mini-batch variance (biased)
    x̂_i  = (x_i − μ_B) / sqrt(σ²_B + ε)       normalize
    y_i  = γ x̂_i + β                          scale and shift

Backward, the chain rule the paper gives right after Algorithm 1:

    ∂ℓ/∂x̂_i  = ∂ℓ/∂y_i · γ
    ∂ℓ/∂σ²_B = Σ ∂ℓ/∂x̂_i · (x_i − μ_B) · −½ (σ²_B + ε)^−3/2
    ∂ℓ/∂μ_B  = Σ ∂ℓ/∂x̂_i · −1/sqrt(σ²_B + ε)  +  ∂ℓ/∂σ²_B · Σ −2 (x_i − μ_B) / m
    ∂ℓ/∂x_i  = ∂ℓ/∂x̂_i / sqrt(σ²_B + ε)  +  ∂ℓ/∂σ²_B · 2 (x_i − μ_B) / m  +  ∂ℓ/∂μ_B / m
    ∂ℓ/∂γ    = Σ ∂ℓ/∂y_i · x̂_i
    ∂ℓ/∂β    = Σ ∂ℓ/∂y_i

Since Σ (x_i − μ_B) = 0, the second term of ∂ℓ/∂μ_B vanishes; with ∂ℓ/∂σ²_B = −½ γ (σ²_B + ε)^−1 ·
∂ℓ/∂γ and ∂ℓ/∂μ_B = −γ/sqrt(σ²_B + ε) · ∂ℓ/∂β the chain collapses to one line per element:

    ∂ℓ/∂x_i  = γ/sqrt(σ²_B + ε) · (∂ℓ/∂y_i − (∂ℓ/∂β + x̂_i · ∂ℓ/∂γ) / m)

which is what this module computes: two reductions (∂ℓ/∂β, ∂ℓ/∂γ) and one elementwise pass.

Speed. The transform is memory-bound, and on TensorFlow every op is a pass over memory that writes a
full-size temporary. So each step of the algorithm below is a *kernel* written on a flat [m, C]
view of the activations (channels-last needs no copy for it), and XLA compiles a whole pass into
one computation: the forward (Σx, Σ(x − μ_B)², y) and the backward ((Σ ∂ℓ/∂y, Σ ∂ℓ/∂y·x̂), ∂ℓ/∂x).
Only y and ∂ℓ/∂x are written at full size; everything else is a per-feature vector. A layer costs
two XLA launches per training step (five when synchronized, where all-reduces separate the steps).
`benchmarks/bn_layer.py` and `benchmarks/train_step.py` measure it against
`keras.layers.BatchNormalization`; `use_xla(False)` runs the very same kernels op by op.

Precision. σ²_B is computed from the deviations x_i − μ_B (two passes), never as E[x²] − E[x]², so a
feature with mean 1e4 and standard deviation 1 keeps its precision in float32. float16/bfloat16
inputs are cast to float32 inside the kernels; statistics and the backward are float32, y and ∂ℓ/∂x
come back in the input's dtype.

Masks. With a 0/1 mask w (Keras' masking: one weight per position, shared by every feature) only
positions with w_i = 1 enter the statistics, m = Σ w_i, and the same derivation gives
∂ℓ/∂x_i = γ/sqrt(σ²_B + ε) · (∂ℓ/∂y_i − w_i (∂ℓ/∂β + x̂_i ∂ℓ/∂γ) / m), y being computed everywhere.

Synchronized BN. Under a `tf.distribute` strategy with `synchronized=True`, B is the global batch:
the forward all-reduces (Σx, m) and then Σ(x − μ_B)², and the backward all-reduces the two sums
(Σ ∂ℓ/∂y, Σ ∂ℓ/∂y·x̂) before ∂ℓ/∂x, so N replicas compute what one device computes on the global
batch. The ∂ℓ/∂γ and ∂ℓ/∂β handed to the optimizer stay per replica: the optimizer's own
cross-replica sum of gradients adds them up once.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator

import tensorflow as tf

__all__ = ["batch_norm_train", "use_xla"]

_XLA = {"enabled": True}


@contextlib.contextmanager
def use_xla(enabled: bool) -> Iterator[None]:
    """Within the block, run the kernels through XLA (the default) or op by op (`enabled=False`).

    Read when a function is traced: a `tf.function` traced inside the block keeps its choice.
    """
    previous = _XLA["enabled"]
    _XLA["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _XLA["enabled"] = previous


def _kernel(fn: Callable) -> Callable:
    """One step of the algorithm: an XLA-fused loop, or the same ops run one by one.

    One compiled function per rank of the view (2 or 3, see below): `reduce_retracing` generalizes
    the shapes it has seen, and a function shared by both ranks would be retraced with an unknown
    rank, where the kernels can no longer tell which axes to reduce.
    """
    fused_by_rank: dict[int, Callable] = {}

    @functools.wraps(fn)
    def run(*args):
        if not _XLA["enabled"]:
            return fn(*args)
        rank = args[0].shape.rank
        if rank not in fused_by_rank:
            fused_by_rank[rank] = tf.function(
                fn, jit_compile=True, reduce_retracing=True, autograph=False
            )
        return fused_by_rank[rank](*args)

    return run


# The kernels work on a view of the activations: [m, C] when the feature axis is last (channels-last
# convolutions, dense layers), [A, C, B] otherwise (channels-first), so the reduction is over axes
# (0,) or (0, 2) and per-feature vectors have shape [C] or [C, 1]. `w` is the 0/1 mask in the same
# view with a feature axis of size 1, or None.


def _reduce_axes(x: tf.Tensor) -> tuple[int, ...]:
    return (0,) if x.shape.rank == 2 else (0, 2)


def _feature(v: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    """Shapes a per-feature vector [C] to broadcast against the view x."""
    return v if x.shape.rank == 2 else v[:, None]


@_kernel
def _sum_and_count(x, w, dtype):
    """Σ x_i and m (Algorithm 1, line 1, before the division)."""
    axes = _reduce_axes(x)
    x = tf.cast(x, dtype)
    if w is None:
        m = tf.size(x, out_type=tf.int64) // tf.shape(x, out_type=tf.int64)[1]
        return tf.reduce_sum(x, axes), tf.cast(m, dtype)
    return tf.reduce_sum(x * w, axes), tf.reduce_sum(w)


@_kernel
def _sum_squared_deviations(x, w, mean):
    """Σ (x_i − μ_B)² (Algorithm 1, line 2, before the division)."""
    d = tf.cast(x, mean.dtype) - _feature(mean, x)
    if w is not None:
        d = d * tf.cast(w, mean.dtype)
    return tf.reduce_sum(tf.square(d), _reduce_axes(x))


@_kernel
def _normalize(x, mean, inv_std, gamma, beta):
    """y_i = γ (x_i − μ_B) / sqrt(σ²_B + ε) + β (Algorithm 1, lines 3 and 4)."""
    scale = _feature(gamma * inv_std, x)
    y = (tf.cast(x, mean.dtype) - _feature(mean, x)) * scale + _feature(beta, x)
    return tf.cast(y, x.dtype)


@_kernel
def _grad_sums(dy, x, mean, inv_std):
    """∂ℓ/∂β = Σ ∂ℓ/∂y_i and ∂ℓ/∂γ = Σ ∂ℓ/∂y_i · x̂_i."""
    axes = _reduce_axes(x)
    dy = tf.cast(dy, mean.dtype)
    x_hat = (tf.cast(x, mean.dtype) - _feature(mean, x)) * _feature(inv_std, x)
    return tf.reduce_sum(dy, axes), tf.reduce_sum(dy * x_hat, axes)


@_kernel
def _grad_input(dy, x, w, mean, inv_std, gamma, dbeta, dgamma, count):
    """∂ℓ/∂x_i = γ/sqrt(σ²_B + ε) · (∂ℓ/∂y_i − w_i (∂ℓ/∂β + x̂_i ∂ℓ/∂γ) / m)."""
    x_hat = (tf.cast(x, mean.dtype) - _feature(mean, x)) * _feature(inv_std, x)
    correction = (_feature(dbeta, x) + x_hat * _feature(dgamma, x)) / count
    if w is not None:
        correction = correction * tf.cast(w, mean.dtype)
    dx = _feature(gamma * inv_std, x) * (tf.cast(dy, mean.dtype) - correction)
    return tf.cast(dx, x.dtype)


def _cross_replica_sum(*values: tf.Tensor) -> list[tf.Tensor]:
    """Sums per-feature vectors over all replicas, all of them in a single all-reduce."""
    ctx = tf.distribute.get_replica_context()
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return list(values)
    sizes = [tf.size(v) for v in values]
    flat = tf.concat([tf.reshape(v, [-1]) for v in values], axis=0)
    flat = ctx.all_reduce(tf.distribute.ReduceOp.SUM, flat)
    return [tf.reshape(p, tf.shape(v)) for p, v in zip(tf.split(flat, sizes), values, strict=True)]


def _forward(x, w, gamma, beta, epsilon, sum_replicas=None):
    """Algorithm 1: y, μ_B, σ²_B, 1/sqrt(σ²_B + ε), m; `sum_replicas` all-reduces partial sums."""
    total, count = _sum_and_count(x, w, gamma.dtype)
    if sum_replicas:
        total, count = sum_replicas(total, count)
    count = tf.maximum(count, 1)
    mean = total / count  # μ_B, line 1
    ssd = _sum_squared_deviations(x, w, mean)
    if sum_replicas:
        (ssd,) = sum_replicas(ssd)
    variance = ssd / count  # σ²_B, line 2
    inv_std = tf.math.rsqrt(variance + epsilon)  # 1/sqrt(σ²_B + ε)
    y = _normalize(x, mean, inv_std, gamma, beta)  # lines 3-4
    return y, mean, variance, inv_std, count


def _backward(dy, x, w, mean, inv_std, gamma, count, sum_replicas=None):
    """The section-3 chain: ∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β (the last two per replica)."""
    dbeta, dgamma = _grad_sums(dy, x, mean, inv_std)
    dbeta_all, dgamma_all = sum_replicas(dbeta, dgamma) if sum_replicas else (dbeta, dgamma)
    dx = _grad_input(dy, x, w, mean, inv_std, gamma, dbeta_all, dgamma_all, count)
    return dx, dgamma, dbeta


# Without an all-reduce in between, a whole pass is one XLA computation: the steps above (each a
# kernel of its own when synchronized) are inlined into it, and a layer costs two launches a step.
_forward_fused = _kernel(_forward)
_backward_fused = _kernel(_backward)


def _view(x: tf.Tensor, axis: int) -> tf.Tensor:
    """The [m, C] or [A, C, B] view of x (a reshape, no copy)."""
    rank = x.shape.rank
    shape = tf.shape(x)
    channels = x.shape[axis] if x.shape[axis] is not None else shape[axis]
    if axis == rank - 1:
        return tf.reshape(x, [-1, channels])
    inner = tf.reduce_prod(shape[axis + 1 :])
    return tf.reshape(x, [-1, channels, inner])


def batch_norm_train(
    x: tf.Tensor,
    gamma: tf.Tensor,
    beta: tf.Tensor,
    *,
    axis: int,
    epsilon: float,
    mask: tf.Tensor | None = None,
    synchronized: bool = False,
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """BN_γ,β(x) in training mode, with the hand-written backward of section 3.

    Args:
        x: activations of any rank ≥ 2, float16, bfloat16, float32 or float64.
        gamma, beta: per-feature tensors of shape [C] in the compute dtype (float32 for half
            precision inputs, else x's dtype); pass ones/zeros when the layer has no γ/β.
        axis: the feature axis, in [0, rank).
        epsilon: ε > 0.
        mask: optional boolean/0-1 tensor of x's shape without the feature axis, which must then
            be the last axis (Keras' masking); masked positions stay out of μ_B and σ²_B.
        synchronized: statistics and backward over the global batch of a `tf.distribute` strategy.

    Returns:
        (y, μ_B, σ²_B, m): y in x's dtype; the statistics in the compute dtype (they carry no
        gradient: they feed the moving averages); m is the number of values per feature.
    """
    if not 0 <= axis < x.shape.rank:
        raise ValueError(
            f"axis must be in [0, {x.shape.rank}) for a rank-{x.shape.rank} input; "
            f"received axis={axis}"
        )
    if mask is not None and axis != x.shape.rank - 1:
        raise ValueError(
            "A mask needs the feature axis to be the last one (axis=-1); "
            f"received axis={axis} for a rank-{x.shape.rank} input"
        )
    stats_dtype = gamma.dtype
    x_view = _view(x, axis)
    w_view = None if mask is None else tf.reshape(tf.cast(mask, stats_dtype), [-1, 1])

    @tf.autograph.experimental.do_not_convert
    @tf.custom_gradient
    def transform(x_view, gamma, beta):
        if synchronized:
            y, mean, variance, inv_std, count = _forward(
                x_view, w_view, gamma, beta, epsilon, _cross_replica_sum
            )
        else:
            y, mean, variance, inv_std, count = _forward_fused(x_view, w_view, gamma, beta, epsilon)

        def backward(dy, *unused_statistics_grads):
            if synchronized:
                return _backward(
                    dy, x_view, w_view, mean, inv_std, gamma, count, _cross_replica_sum
                )
            return _backward_fused(dy, x_view, w_view, mean, inv_std, gamma, count)

        return (y, mean, variance, count), backward

    y, mean, variance, count = transform(x_view, gamma, beta)
    y = tf.reshape(y, tf.shape(x))
    return y, tf.stop_gradient(mean), tf.stop_gradient(variance), tf.stop_gradient(count)
