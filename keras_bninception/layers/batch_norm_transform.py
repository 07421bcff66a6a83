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
Only y and ∂ℓ/∂x are written at full size; everything else is a per-feature vector. In one reduce,
a pass is one XLA launch (five launches in all when synchronized, where all-reduces separate them).
On a CPU the reductions run over cache-sized blocks of rows (`use_blocked_reductions`): XLA's CPU
backend would otherwise write (x_i − μ_B)² and ∂ℓ/∂y_i · x̂_i out as full-size temporaries before
summing them; blocked, the forward reads x twice (moments, y) and the backward reads ∂ℓ/∂y and x
twice (sums, ∂ℓ/∂x), with no temporary (bfloat16 blocks are read as their 16-bit patterns and
widened in the loop: see `_bits`). XLA runs such a loop on one core, so the blocks are shared by
two calls of the reduction kernel, which TensorFlow runs side by side, and the elementwise kernel
that follows merges their sums: three launches a pass. Everything between the launches happens
inside them, so a layer adds only these calls to the training step's graph (each op there costs
memory and time when the step is traced and run for the first time).
The transform's inputs are cut off the GradientTape (the gradient is the hand-written one), so no
kernel keeps intermediates for an autodiff that never comes.
On a CPU, for float32 activations, the two reductions run instead as C++ TensorFlow ops
(`cpu_reductions.cc`, built and loaded by `cpu_ops`; `use_cpu_ops`): the same blocks, shift and
merge, with the rows shared among the intra-op pool's threads, and XLA's elementwise kernels as
above. The layer alone runs faster with them than with the XLA loops (a whole training step did
not, within noise: README); they never run inside an XLA compilation, where the XLA loops do.
`benchmarks/bn_layer.py` and `benchmarks/train_step.py` measure it against
`keras.layers.BatchNormalization`; `use_xla(False)` runs the very same kernels op by op.

Precision. σ²_B is computed from the deviations x_i − μ_B (two passes; blocked: from each block's
deviations from its own mean, after a shift by the first row, merged pairwise), never as
E[x²] − E[x]², so a feature with mean 1e4 and standard deviation 1 keeps its precision in float32.
float16/bfloat16 inputs are cast to float32 inside the kernels; statistics and the backward are
float32, y and ∂ℓ/∂x come back in the input's dtype.

BN + ReLU. `relu=True` computes z = max(y, 0) as one unit with one hand-written gradient: the
forward writes z instead of y, and the backward first keeps ∂ℓ/∂z_i where z_i > 0 (ReLU's
derivative, 0 at the kink as TensorFlow's) and then runs the chain above on it. ReLU's own passes
over memory (z from y; ∂ℓ/∂y from ∂ℓ/∂z and z) disappear, and the backward still needs only x: the
sign of z_i is recomputed from x_i with the forward's own arithmetic (z_i > 0 ⟺ γ x̂_i + β > 0 after
the cast to x's dtype), so z is neither read nor kept for it. x must be kept: where ReLU clips, x̂
cannot be recovered from z, and ∂ℓ/∂x_i needs x̂_i everywhere.

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

import concurrent.futures
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator

import tensorflow as tf
from tensorflow.python.ops import control_flow_util

__all__ = ["batch_norm_train", "use_blocked_reductions", "use_cpu_ops", "use_xla"]

_XLA = {"enabled": True}
# None: blocked reductions exactly when no GPU is visible (read when a function is traced).
_BLOCKED = {"enabled": None}
# None: the C++ ops of `cpu_ops` for the blocked float32 reductions whenever their library loads.
_CPU_OPS = {"enabled": None}


@contextlib.contextmanager
def _switched(setting: dict, enabled: bool | None) -> Iterator[None]:
    """Within the block, `setting["enabled"]` is `enabled` (None kept, else as a bool)."""
    previous = setting["enabled"]
    setting["enabled"] = None if enabled is None else bool(enabled)
    try:
        yield
    finally:
        setting["enabled"] = previous


def use_xla(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Within the block, run the kernels through XLA (the default) or op by op (`enabled=False`).

    Read when a function is traced: a `tf.function` traced inside the block keeps its choice.
    """
    return _switched(_XLA, bool(enabled))


def use_blocked_reductions(enabled: bool | None) -> contextlib.AbstractContextManager[None]:
    """Within the block, reduce over the batch in cache-sized blocks (True) or as one XLA reduce.

    `None` (the default) picks blocks when no GPU is visible: XLA's CPU backend writes the
    elementwise input of a reduction such as (x_i − μ_B)² out as a full-size temporary before
    summing it (for bfloat16 x, x widened to float32 too), while a loop over blocks of rows keeps
    it in cache; on GPUs XLA fuses the reduction with its input and the loop would only add
    launches (`benchmarks/bn_layer.py --reductions blocked`, then `single`, compares the two).
    Both formulations compute the same statistics (tested one against the other). Read when a
    function is traced.
    """
    return _switched(_BLOCKED, enabled)


def use_cpu_ops(enabled: bool | None) -> contextlib.AbstractContextManager[None]:
    """Within the block, compute the blocked float32 reductions with the C++ ops of `cpu_ops`
    (True: raises if their library does not load), with the XLA loops (False), or with the C++ ops
    when their library loads (None, the default). Read when a function is traced.

    The ops never run inside an XLA compilation (`tf.function(jit_compile=True)`, Keras'
    `jit_compile=True`), which cannot run them, nor where a GPU is visible: there the XLA kernels
    do.
    """
    from keras_bninception.layers import cpu_ops  # not at the top: see `cpu_ops`

    if enabled and cpu_ops.load() is None:
        raise RuntimeError(
            f"use_cpu_ops(True) needs {cpu_ops.LIBRARY}; build it with "
            "`python -m keras_bninception.layers.cpu_ops`"
        )
    return _switched(_CPU_OPS, enabled)


def _cpu_ops():
    """The C++ ops' module if they are to run in the function traced now, else None: not when
    switched off, inside an XLA compilation, or where a GPU is visible (they are CPU ops)."""
    if _CPU_OPS["enabled"] is False or tf.config.list_logical_devices("GPU"):
        return None
    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        return None
    from keras_bninception.layers import cpu_ops  # not at the top: see `cpu_ops`

    return cpu_ops.load()


def _blocked_reductions() -> bool:
    if _BLOCKED["enabled"] is None:
        return not tf.config.list_logical_devices("GPU")
    return _BLOCKED["enabled"]


def _kernel(fn: Callable) -> Callable:
    """One step of the algorithm: an XLA-fused loop, or the same ops run one by one.

    Traced once per set of Python arguments and of tensor dtypes and ranks, with every axis
    unknown: XLA compiles once per actual shape anyway, while TensorFlow keeps each traced
    function as long as the process runs (its graph, and every op's Python stack for error
    messages), so one function serves all the layers of a network. Shapes the kernels need as
    numbers (block sizes) come from `tf.shape`, which XLA knows when it compiles. A kernel
    called while another kernel is traced is inlined into it: XLA would inline it anyway. Its
    tensors must come cut off any GradientTape (`batch_norm_train` cuts them where they enter).
    """
    traced: dict[tuple, Callable] = {}

    @functools.wraps(fn)
    def run(*args):
        if not _XLA["enabled"] or _TRACING.depth:
            return fn(*args)
        is_tensor = tuple(isinstance(a, tf.Tensor) for a in args)
        tensors = [a for a, t in zip(args, is_tensor, strict=True) if t]
        statics = tuple(None if t else a for a, t in zip(args, is_tensor, strict=True))
        signature = tuple(tf.TensorSpec([None] * t.shape.rank, t.dtype) for t in tensors)
        key = (statics, is_tensor, signature)
        if key not in traced:
            function = tf.function(
                functools.partial(_traced_body, fn, statics, is_tensor),
                input_signature=signature,
                jit_compile=True,
                autograph=False,
            )
            # Every traced op keeps the Python stack it was created on, and XLA copies each
            # into text when it compiles; traced here, that stack is the whole Keras call chain.
            # A thread of its own starts the stack at the kernel.
            with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:
                thread.submit(function.get_concrete_function).result()
            traced[key] = function
        return traced[key](*tensors)

    run.traced = traced  # the traced functions by key: one per set of statics, dtypes and ranks
    return run


def _traced_body(fn: Callable, statics: tuple, is_tensor: tuple, *tensors: tf.Tensor):
    """fn on the Python arguments `statics` with the tensors put back where `is_tensor` says."""
    values = iter(tensors)
    _TRACING.depth += 1
    try:
        return fn(*(next(values) if t else a for a, t in zip(statics, is_tensor, strict=True)))
    finally:
        _TRACING.depth -= 1


class _Tracing(threading.local):
    depth = 0  # > 0 while a kernel's body is traced


_TRACING = _Tracing()


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


def _pre_activation(x, mean, inv_std, gamma, beta):
    """y_i = γ (x_i − μ_B) / sqrt(σ²_B + ε) + β (Algorithm 1, lines 3 and 4), in μ_B's dtype."""
    scale = _feature(gamma * inv_std, x)
    return (tf.cast(x, mean.dtype) - _feature(mean, x)) * scale + _feature(beta, x)


@_kernel
def _normalize(x, mean, inv_std, gamma, beta, relu):
    """y_i, or z_i = max(y_i, 0) for the BN + ReLU unit, in x's dtype.

    The ReLU comes before the cast: rounding is monotone and keeps 0, so max(round(y), 0) =
    round(max(y, 0)), and a half-precision z is rounded once (XLA's CPU backend would otherwise
    widen round(y) to float32 again for the max and round it a second time).
    """
    y = _pre_activation(x, mean, inv_std, gamma, beta)
    return tf.cast(tf.nn.relu(y) if relu else y, x.dtype)


def _relu_grad(dy, x, mean, inv_std, gamma, beta, relu, rounding=None):
    """∂ℓ/∂y in μ_B's dtype: ∂ℓ/∂z_i where z_i > 0, else 0 (z's sign recomputed from x with the
    forward's rounding to z's dtype, `rounding` or else x's); ∂ℓ/∂y if no ReLU."""
    dy = tf.cast(dy, mean.dtype)
    if not relu:
        return dy
    positive = tf.cast(_pre_activation(x, mean, inv_std, gamma, beta), rounding or x.dtype) > 0
    return tf.where(positive, dy, tf.zeros_like(dy))


@_kernel
def _grad_sums(dy, x, mean, inv_std, gamma, beta, relu):
    """∂ℓ/∂β = Σ ∂ℓ/∂y_i and ∂ℓ/∂γ = Σ ∂ℓ/∂y_i · x̂_i."""
    axes = _reduce_axes(x)
    dy = _relu_grad(dy, x, mean, inv_std, gamma, beta, relu)
    x_hat = (tf.cast(x, mean.dtype) - _feature(mean, x)) * _feature(inv_std, x)
    return tf.reduce_sum(dy, axes), tf.reduce_sum(dy * x_hat, axes)


@_kernel
def _grad_input(dy, x, w, mean, inv_std, gamma, beta, relu, dbeta, dgamma, count):
    """∂ℓ/∂x_i = γ/sqrt(σ²_B + ε) · (∂ℓ/∂y_i − w_i (∂ℓ/∂β + x̂_i ∂ℓ/∂γ) / m)."""
    dy = _relu_grad(dy, x, mean, inv_std, gamma, beta, relu)
    x_hat = (tf.cast(x, mean.dtype) - _feature(mean, x)) * _feature(inv_std, x)
    correction = (_feature(dbeta, x) + x_hat * _feature(dgamma, x)) / count
    if w is not None:
        correction = correction * tf.cast(w, mean.dtype)
    dx = _feature(gamma * inv_std, x) * (dy - correction)
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


def _forward(x, w, gamma, beta, epsilon, relu, sum_replicas=None):
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
    y = _normalize(x, mean, inv_std, gamma, beta, relu)  # lines 3-4
    return y, mean, variance, inv_std, count


def _backward(dy, x, w, mean, inv_std, gamma, beta, relu, count, sum_replicas=None):
    """The section-3 chain: ∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β (the last two per replica)."""
    dbeta, dgamma = _grad_sums(dy, x, mean, inv_std, gamma, beta, relu)
    dbeta_all, dgamma_all = sum_replicas(dbeta, dgamma) if sum_replicas else (dbeta, dgamma)
    dx = _grad_input(dy, x, w, mean, inv_std, gamma, beta, relu, dbeta_all, dgamma_all, count)
    return dx, dgamma, dbeta


# Without an all-reduce in between, a whole pass is one XLA computation: the steps above (each a
# kernel of its own when synchronized) are inlined into it, and a layer costs two launches a step.
_forward_fused = _kernel(_forward)
_backward_fused = _kernel(_backward)


# Blocked reductions, on the [m, C] view: rows are taken in blocks of about _BLOCK_ELEMENTS values
# (128 KiB of float32, cache-resident), each block reduced exactly, and the blocks combined.
_BLOCK_ELEMENTS = 32768
# ... and of at least _MIN_ROWS rows: XLA's CPU backend sums more than 32 rows as a tree of 32-row
# windows, vectorized across the features; 32 rows or fewer, it sums each feature's column in a
# scalar loop fused with the block's elementwise input, much slower (C = 1024 gave 32 rows).
_MIN_ROWS = 33


# The full blocks are reduced in _PARTS parts, each by a kernel call of its own: XLA runs a loop on
# one core, and TensorFlow runs the calls at once. Every call is given the whole x and reads only
# its blocks (XLA slices them in place, without a copy). The m mod rows rows after the full blocks
# (the rest) are reduced by the elementwise kernel that merges the parts' sums: it reads all rows
# anyway, and the loop kernels stay a loop alone (a branch for the rest there would be compiled
# into each of them, and each compiled kernel stays in memory as long as the process runs).
_PARTS = 2


def _bits(x: tf.Tensor) -> tf.Tensor:
    """A bfloat16 tensor as its 16-bit patterns (`tf.bitcast`: no copy); other dtypes as they are.

    The blocked kernels take bfloat16 tensors so: XLA's CPU backend slices bfloat16 only after
    widening it to float32, and it widens the whole tensor, before the loop, in every part's call.
    The bitcast happens outside the kernels (inside one, XLA copies it). float16 is left as it
    is: on CPUs it is rare (`mixed_float16` is for GPUs, where the single reduce runs).
    """
    return tf.bitcast(x, tf.uint16) if x.dtype == tf.bfloat16 else x


def _widen(t: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """t in `dtype`; `_bits` patterns become the float32 with the same upper 16 bits (exact)."""
    if t.dtype == tf.uint16:
        t = tf.bitcast(tf.bitwise.left_shift(tf.cast(t, tf.uint32), 16), tf.float32)
    return tf.cast(t, dtype)


def _rows(t: tf.Tensor) -> tf.Tensor:
    """The rows of a block of the [m, C] tensor t (a constant when XLA compiles)."""
    return tf.maximum(_MIN_ROWS, _BLOCK_ELEMENTS // tf.shape(t)[1])


def _blocks(tensors: tuple, part: tf.Tensor, dtype: tf.DType, step: Callable, initial: tuple):
    """Folds `step(carry, blocks)` over `part`'s share of the full blocks of rows of the [m, C]
    tensors; `blocks` are the tensors' blocks in `dtype` (`_bits` widened)."""
    channels = tf.shape(tensors[0])[1]
    rows = _rows(tensors[0])
    m = tf.shape(tensors[0])[0]
    full = m // rows

    def body(i, *carry):
        # The loop runs only when m ≥ rows, but XLA compiles its body for every m: clipping the
        # (compile-time) block size to m keeps the slice valid when m < rows.
        size = tf.minimum(rows, m)
        blocks = [_widen(tf.slice(t, [i * rows, 0], [size, channels]), dtype) for t in tensors]
        return (i + 1, *step(carry, blocks))

    first, end = full * part // _PARTS, full * (part + 1) // _PARTS
    _, *carry = tf.while_loop(lambda i, *_: i < end, body, (first, *initial))
    return tuple(carry)


def _rest(t: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """The rows of the [m, C] tensor t after its full blocks (m mod rows, maybe none), in dtype."""
    rows = _rows(t)
    return _widen(t[tf.shape(t)[0] // rows * rows :], dtype)


def _chan_merge(a: tuple, b: tuple) -> tuple:
    """(n, Σ, Σ squared deviations from the mean) of two sets of rows, from each set's own: the
    pairwise update of Chan, Golub & LeVeque, exact in the deviations (no E[x²] − E[x]²)."""
    n_a, sum_a, ssd_a = a
    n_b, sum_b, ssd_b = b
    n = n_a + n_b
    delta = sum_b / tf.maximum(n_b, 1) - sum_a / tf.maximum(n_a, 1)  # between the two means
    return n, sum_a + sum_b, ssd_a + ssd_b + tf.square(delta) * n_a * n_b / tf.maximum(n, 1)


def _shift(x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """K, x's first row in `dtype` (zeros when x has no rows)."""
    return tf.reduce_sum(_widen(x[:1], dtype), 0)


def _block_moments(block: tf.Tensor) -> tuple:
    """(n, Σ, Σ squared deviations from the mean) of a block's rows: two passes over it."""
    n = tf.cast(tf.shape(block)[0], block.dtype)
    total = tf.reduce_sum(block, 0)
    return n, total, tf.reduce_sum(tf.square(block - total / tf.maximum(n, 1)), 0)


@_kernel
def _blocked_moments(x, part, dtype):
    """n, Σ (x_i − K) and Σ (x_i − x̄)² over the full blocks of `part`, x̄ their mean, in one read.

    Values are first shifted by K (x_i − K is exact for x_i near K: with K a row of the batch, a
    feature of mean 1e4 and standard deviation 1 is summed as values of size 1); each block's
    mean and squared deviations from it are computed exactly (two passes over a block in cache),
    and blocks are merged by `_chan_merge`: the precision of the two-pass form.
    """
    shift = _shift(x, dtype)

    def merge(carry, blocks):
        return _chan_merge(carry, _block_moments(blocks[0] - shift))

    zeros = tf.zeros(tf.shape(x)[1:], dtype)
    return _blocks((x,), part, dtype, merge, (tf.constant(0, dtype), zeros, zeros))


@_kernel
def _blocked_normalize(x, gamma, beta, epsilon, relu, *moments):
    """μ_B, σ²_B from the parts' `_blocked_moments` (flat, three per part) and the rest's, then y
    as `_forward`."""
    shift = _shift(x, gamma.dtype)
    parts = [moments[i : i + 3] for i in range(0, len(moments), 3)]
    parts.append(_block_moments(_rest(x, gamma.dtype) - shift))
    count, total, ssd = functools.reduce(_chan_merge, parts)
    count = tf.maximum(count, 1)
    mean = total / count + shift  # μ_B, line 1
    variance = ssd / count  # σ²_B, line 2
    inv_std = tf.math.rsqrt(variance + epsilon)
    return _normalize(x, mean, inv_std, gamma, beta, relu), mean, variance, inv_std, count


def _block_grad_sums(dy, x, mean, inv_std, gamma, beta, relu, x_dtype) -> tuple:
    """Σ ∂ℓ/∂y_i and Σ ∂ℓ/∂y_i · (x_i − μ_B) over a block's rows (in μ_B's dtype); `x_dtype` is
    the layer input's, for ReLU's mask as in the forward."""
    dy = _relu_grad(dy, x, mean, inv_std, gamma, beta, relu, x_dtype)
    return tf.reduce_sum(dy, 0), tf.reduce_sum(dy * (x - mean), 0)


@_kernel
def _blocked_grad_sums(dy, x, part, mean, inv_std, gamma, beta, relu, x_dtype):
    """`_block_grad_sums` over the full blocks of `part`, in one read of them (x may come as
    `_bits`)."""
    statistics = (mean, inv_std, gamma, beta, relu, x_dtype)

    def accumulate(carry, blocks):
        sums = _block_grad_sums(*blocks, *statistics)
        return tuple(a + b for a, b in zip(carry, sums, strict=True))

    zeros = tf.zeros_like(mean)
    return _blocks((dy, x), part, mean.dtype, accumulate, (zeros, zeros))


@_kernel
def _blocked_grad_input(dy, x, mean, inv_std, gamma, beta, relu, count, *sums):
    """∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β from the parts' `_blocked_grad_sums` (flat, two per part) and the
    rest's."""
    rest = (_rest(dy, mean.dtype), _rest(x, mean.dtype))
    rest_dbeta, rest_dgamma = _block_grad_sums(*rest, mean, inv_std, gamma, beta, relu, x.dtype)
    dbeta = tf.add_n([*sums[0::2], rest_dbeta])
    dgamma = tf.add_n([*sums[1::2], rest_dgamma]) * inv_std  # Σ ∂ℓ/∂y_i · x̂_i
    dx = _grad_input(dy, x, None, mean, inv_std, gamma, beta, relu, dbeta, dgamma, count)
    return dx, dgamma, dbeta


def _forward_blocked(x, gamma, beta, epsilon, relu):
    """Algorithm 1 with blocked reductions: what `_forward` computes without a mask."""
    bits = _bits(x)
    parts = [_blocked_moments(bits, tf.constant(p), gamma.dtype) for p in range(_PARTS)]
    return _blocked_normalize(x, gamma, beta, epsilon, relu, *(v for s in parts for v in s))


def _backward_blocked(dy, x, mean, inv_std, gamma, beta, relu, count):
    """The section-3 chain with blocked reductions: what `_backward` computes without a mask."""
    statistics = (mean, inv_std, gamma, beta, relu)
    bits = (_bits(dy), _bits(x))
    parts = [_blocked_grad_sums(*bits, tf.constant(p), *statistics, x.dtype) for p in range(_PARTS)]
    return _blocked_grad_input(dy, x, *statistics, count, *(v for s in parts for v in s))


def _forward_cpu(ops, x, gamma, beta, epsilon, relu):
    """`_forward_blocked` with μ_B and σ²_B from the C++ op (same blocks, shift and merge)."""
    mean, variance, inv_std, count = ops.keras_bn_inception_moments(x, epsilon=epsilon)
    return _normalize(x, mean, inv_std, gamma, beta, relu), mean, variance, inv_std, count


def _backward_cpu(ops, dy, x, mean, inv_std, gamma, beta, relu, count):
    """`_backward_blocked` with ∂ℓ/∂β and ∂ℓ/∂γ from the C++ op."""
    dbeta, dgamma = ops.keras_bn_inception_grad_sums(dy, x, mean, inv_std, gamma, beta, relu=relu)
    dx = _grad_input(dy, x, None, mean, inv_std, gamma, beta, relu, dbeta, dgamma, count)
    return dx, dgamma, dbeta


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
    relu: bool = False,
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
        relu: return z = max(y, 0), BN and ReLU as one unit with one hand-written gradient.

    Returns:
        (y, μ_B, σ²_B, m): y (or z) in x's dtype; the statistics in the compute dtype (they carry no
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
    w_view = (
        None if mask is None else tf.stop_gradient(tf.reshape(tf.cast(mask, stats_dtype), [-1, 1]))
    )
    relu = bool(relu)
    blocked = not synchronized and mask is None and x_view.shape.rank == 2 and _blocked_reductions()
    ops = _cpu_ops() if blocked and x.dtype == tf.float32 else None

    @tf.autograph.experimental.do_not_convert
    @tf.custom_gradient
    def transform(x_view, gamma, beta):
        # No step is differentiated (the gradient is `backward`): cut off from any GradientTape,
        # which would otherwise have every kernel function keep its intermediates for it.
        x_view, gamma, beta = (tf.stop_gradient(t) for t in (x_view, gamma, beta))
        if synchronized:
            y, mean, variance, inv_std, count = _forward(
                x_view, w_view, gamma, beta, epsilon, relu, _cross_replica_sum
            )
        elif ops is not None:
            y, mean, variance, inv_std, count = _forward_cpu(
                ops, x_view, gamma, beta, epsilon, relu
            )
        elif blocked:
            y, mean, variance, inv_std, count = _forward_blocked(x_view, gamma, beta, epsilon, relu)
        else:
            y, mean, variance, inv_std, count = _forward_fused(
                x_view, w_view, gamma, beta, epsilon, relu
            )

        def backward(dy, *unused_statistics_grads):
            dy = tf.stop_gradient(dy)
            statistics = (mean, inv_std, gamma, beta, relu)
            if synchronized:
                return _backward(dy, x_view, w_view, *statistics, count, _cross_replica_sum)
            if ops is not None:
                return _backward_cpu(ops, dy, x_view, *statistics, count)
            if blocked:
                return _backward_blocked(dy, x_view, *statistics, count)
            return _backward_fused(dy, x_view, w_view, *statistics, count)

        return (y, mean, variance, count), backward

    y, mean, variance, count = transform(x_view, gamma, beta)
    y = tf.reshape(y, tf.shape(x))
    return y, tf.stop_gradient(mean), tf.stop_gradient(variance), tf.stop_gradient(count)
