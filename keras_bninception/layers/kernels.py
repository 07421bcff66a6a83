"""The fast passes of Batch Normalization on each device: the one seam `batch_norm` calls.

`batch_norm` writes the algorithm as steps in plain TensorFlow ops. BN is memory-bound, and every
TensorFlow op is a pass over memory that writes a full-size temporary, so here the steps are
compiled by XLA (`compiled`) into few launches, in one of two ways:

- "accelerator" (GPUs, TPUs): a whole pass is one XLA computation, its reductions single reduces
  that XLA fuses with their elementwise input: the forward (μ_B, σ²_B, y) is one launch, the
  backward (the two sums, ∂ℓ/∂x) one more. Synchronized, all-reduces separate the steps: five.
- "cpu": XLA's CPU backend writes the elementwise input of a reduction, (x_i − μ_B)² or
  ∂ℓ/∂y_i · x̂_i, out as a full-size temporary before summing it. So the reductions run over
  cache-sized blocks of rows in XLA while-loops; XLA runs a loop on one core, so the blocks are
  shared by `_PARTS` calls that TensorFlow runs side by side, and the elementwise kernel that
  follows merges their sums (Chan's pairwise update for σ²_B, exact in the deviations). The
  forward reads x twice, the backward ∂ℓ/∂y and x twice, with no temporary; bfloat16 blocks are
  read as their 16-bit patterns and widened in the loop (`_bits`). Masked or synchronized BN,
  and tensors of less than `_BLOCKED_MIN_VALUES` values (they stay in the caches) unless they
  are bfloat16, take the accelerator's steps.

Which runs is chosen when a function is traced, per device: the device BN's ops are placed on (the
device scope, e.g. a `tf.distribute` replica's; else x's device; else TensorFlow's default, the
first GPU if there is one); CPU → "cpu", any other → "accelerator". `use(path)` forces a path
within a block (e.g. `use("accelerator")` runs what a GPU runs on CPUs); the layer reads it when it
is constructed, `batch_norm_train` when it is traced; its `kernels=` argument wins over both.

Each compiled step is traced once per set of Python arguments, dtypes and ranks, with every axis
unknown (XLA compiles once per shape anyway; TensorFlow keeps every traced function as long as the
process runs), so one function serves all the layers of a network.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import functools
import threading
from collections.abc import Callable, Iterator

import tensorflow as tf

from keras_bninception.layers import batch_norm as bn

ACCELERATOR = "accelerator"
CPU = "cpu"
PATHS = (ACCELERATOR, CPU)

_FORCED: contextvars.ContextVar[str | None] = contextvars.ContextVar("bn_kernels", default=None)


def check_path(path: str | None) -> str | None:
    """`path` if it names a path (or is None), else a ValueError saying what is accepted."""
    if path is not None and path not in PATHS:
        raise ValueError(f"kernels must be None, {ACCELERATOR!r} or {CPU!r}; received {path!r}")
    return path


@contextlib.contextmanager
def use(path: str | None) -> Iterator[None]:
    """Within the block (this thread, this context), BN runs `path`'s kernels on every device.

    `None` restores the per-device choice. Read when a layer is constructed and when
    `batch_norm_train` is traced: a `tf.function` traced before keeps its choice.
    """
    token = _FORCED.set(check_path(path))
    try:
        yield
    finally:
        _FORCED.reset(token)


def forced() -> str | None:
    """The path `use` forces here, or None."""
    return _FORCED.get()


def path_for(x: tf.Tensor, requested: str | None = None) -> str:
    """The path for BN on x: `requested`, else `use`'s, else the device's."""
    path = check_path(requested) or _FORCED.get()
    if path is not None:
        return path
    devices = [x.device] if tf.executing_eagerly() else [tf.constant(0.0).device, x.device]
    for device in devices:
        kind = tf.DeviceSpec.from_string(device or "").device_type
        if kind:
            return CPU if kind.upper() == "CPU" else ACCELERATOR
    return ACCELERATOR if tf.config.list_logical_devices("GPU") else CPU


def compiled(fn: Callable) -> Callable:
    """fn as an XLA computation, traced once per Python arguments and tensor dtypes and ranks.

    Shapes the kernels need as numbers (block sizes) come from `tf.shape`, which XLA knows when it
    compiles. A compiled function called while another one is traced is inlined into it. Tensors
    must come cut off any GradientTape (`batch_norm_train` cuts them where they enter).
    """
    traced: dict[tuple, Callable] = {}
    lock = threading.Lock()  # one trace a key, whichever thread (`_compile_ahead`'s) asks first

    @functools.wraps(fn)
    def run(*args):
        if _TRACING.depth:
            return fn(*args)
        is_tensor = tuple(isinstance(a, tf.Tensor) for a in args)
        tensors = [a for a, t in zip(args, is_tensor, strict=True) if t]
        statics = tuple(None if t else a for a, t in zip(args, is_tensor, strict=True))
        signature = tuple(tf.TensorSpec([None] * t.shape.rank, t.dtype) for t in tensors)
        key = (statics, is_tensor, signature)
        with lock:
            if key not in traced:
                traced[key] = _trace(fn, statics, is_tensor, signature)
        return traced[key](*tensors)

    run.traced = traced
    return run


def _trace(fn: Callable, statics: tuple, is_tensor: tuple, signature: tuple):
    """fn's XLA-compiled concrete function for these Python arguments and tensor specs."""
    function = tf.function(
        functools.partial(_traced_body, fn, statics, is_tensor),
        input_signature=signature,
        jit_compile=True,
        autograph=False,
    )
    # Every traced op keeps the Python stack it was created on, and XLA copies each into text
    # when it compiles; a thread of its own starts the stack here, not at Keras'.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(function.get_concrete_function).result()


def _traced_body(fn: Callable, statics: tuple, is_tensor: tuple, *tensors: tf.Tensor):
    values = iter(tensors)
    _TRACING.depth += 1
    try:
        return fn(*(next(values) if t else a for a, t in zip(statics, is_tensor, strict=True)))
    finally:
        _TRACING.depth -= 1


class _Tracing(threading.local):
    depth = 0  # > 0 while a compiled function's body is traced


_TRACING = _Tracing()

# The accelerator's steps, each compiled; inside `_forward` / `_backward` they are inlined.
STEPS = bn.Steps(*(compiled(step) for step in bn.REFERENCE))


def _renorm_args(renorm: bn.Renorm | None) -> tuple:
    """A Renorm as compiled functions' arguments: two tensors, then the clipping (static)."""
    if renorm is None:
        return None, None, None
    return renorm.mean, renorm.stddev, (renorm.rmin, renorm.rmax, renorm.dmax)


def _renorm(mean, stddev, clipping) -> bn.Renorm | None:
    return None if clipping is None else bn.Renorm(mean, stddev, *clipping)


@compiled
def _forward(x, w, gamma, beta, epsilon, relu, renorm_mean, renorm_stddev, clipping):
    renorm = _renorm(renorm_mean, renorm_stddev, clipping)
    return bn.forward(x, w, gamma, beta, epsilon, relu, renorm)


@compiled
def _backward(dy, x, w, *statistics_and_relu):
    *statistics, relu = statistics_and_relu
    return bn.backward(dy, x, w, bn.Statistics(*statistics), relu)


def _blocked(path, x, w) -> bool:
    """Whether BN on x runs the "cpu" path's blocked reductions: unmasked, on the [m, C] view,
    one full block of rows for each of the `_PARTS` calls, and at least `_BLOCKED_MIN_VALUES`
    values unless x is bfloat16. A smaller tensor stays in the caches, so the full-size
    temporaries of the single reduces cost it little, and they run in two kernels instead of
    four, each quicker to compile; but they widen a bfloat16 x to float32 whole first."""
    if path != CPU or w is not None or x.shape.rank != 2:
        return False
    m, channels = x.shape
    if m is None or channels is None:
        return True
    rows = max(_MIN_ROWS, _BLOCK_ELEMENTS // channels)  # `_rows`, as a number
    small = m * channels < _BLOCKED_MIN_VALUES and x.dtype != tf.bfloat16
    return m >= _PARTS * rows and not small


def forward(path, x, w, gamma, beta, epsilon, relu: bool, renorm=None, sum_replicas=None):
    """Algorithm 1 (`bn.forward`) on `path`'s kernels: y and the Statistics."""
    if sum_replicas is not None:
        return bn.forward(x, w, gamma, beta, epsilon, relu, renorm, sum_replicas, STEPS)
    _compile_ahead(path, x, w, gamma, epsilon, relu, renorm)
    return _forward_pass(path, x, w, gamma, beta, epsilon, relu, renorm)


def _forward_pass(path, x, w, gamma, beta, epsilon, relu, renorm):
    if _blocked(path, x, w):
        return _forward_blocked(x, gamma, beta, epsilon, relu, *_renorm_args(renorm))
    return _forward(x, w, gamma, beta, epsilon, relu, *_renorm_args(renorm))


def backward(path, dy, x, w, s: bn.Statistics, relu: bool, sum_replicas=None):
    """The section-3 chain (`bn.backward`) on `path`'s kernels: ∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β."""
    if sum_replicas is not None:
        return bn.backward(dy, x, w, s, relu, sum_replicas, STEPS)
    return _backward_pass(path, dy, x, w, s, relu)


def _backward_pass(path, dy, x, w, s, relu):
    if _blocked(path, x, w):
        return _backward_blocked(dy, x, s, relu)
    return _backward(dy, x, w, *s, relu)


# A step's graph runs an XLA computation when its executor reaches it, so the compilations of a
# network's BN kernels (two or four per layer shape) would all run in its first step, one after the
# other. `forward` hands them to a thread of their own as soon as it is traced into a graph: there
# a small graph runs the layer's forward and backward passes on zeros of the same shapes and
# dtypes, which fills the compilation cache (per device, by function and shapes) that the step's
# calls then read. XLA compiles outside Python's lock, on the core tracing leaves free. (A program
# that ends right after tracing a step, without running it, waits for what is queued.)
_AHEAD = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bn_compile")
_AHEAD_SEEN: dict[tuple, concurrent.futures.Future] = {}  # what was handed over, and its end
_AHEAD_LOCK = threading.Lock()


def _in_xla_computation() -> bool:
    """Whether ops traced here become part of an enclosing XLA computation (jit_compile)."""
    enclosing = getattr(tf.__internal__, "get_enclosing_xla_context", lambda: None)
    return enclosing() is not None


def _compile_ahead(path, x, w, gamma, epsilon, relu, renorm) -> None:
    """Compiles BN's kernels for x's shape in the background while a step's graph is traced."""
    if tf.executing_eagerly() or _in_xla_computation():
        return
    if not all(t.shape.is_fully_defined() for t in (x, gamma, *([] if w is None else [w]))):
        return
    specs = (
        tf.TensorSpec(x.shape, x.dtype),
        None if w is None else tf.TensorSpec(w.shape, w.dtype),
    )
    clipping = _renorm_args(renorm)[2]
    device = x.device
    key = (path, specs, gamma.dtype, float(epsilon), relu, clipping, device)

    def compile_now():
        with tf.device(device):
            x, w = (None if spec is None else tf.zeros(spec.shape, spec.dtype) for spec in specs)
            # A partial, not a closure: TensorFlow counts traces per function code and warns of
            # "excessive retracing" when one code is traced again and again, as a closure's is.
            passes = functools.partial(_passes, path, epsilon, relu, clipping)
            tf.function(passes, autograph=False)(x, w, tf.ones(gamma.shape, gamma.dtype))

    with _AHEAD_LOCK:
        if key not in _AHEAD_SEEN:
            _AHEAD_SEEN[key] = _AHEAD.submit(compile_now)


def _passes(path, epsilon, relu, clipping, x, w, ones):
    """BN's forward and backward passes on `path` with γ = β = 1 (a renorm's r and d too)."""
    renorm = None if clipping is None else bn.Renorm(ones, ones, *clipping)
    y, s = _forward_pass(path, x, w, ones, ones, epsilon, relu, renorm)
    return _backward_pass(path, y, x, w, s, relu)


def wait_for_compilations() -> None:
    """Returns when every compilation handed to the background so far has ended (or failed).

    For measurements that must not overlap them (memory, timing a step's trace apart from its
    compilation); training never needs it: a step waits for the kernels it runs.
    """
    with _AHEAD_LOCK:
        futures = list(_AHEAD_SEEN.values())
    concurrent.futures.wait(futures)


# Blocked reductions (the "cpu" path), on the [m, C] view: rows are taken in blocks of about
# _BLOCK_ELEMENTS values (128 KiB of float32, cache-resident), each block reduced exactly.
_BLOCK_ELEMENTS = 32768
# ... and of at least _MIN_ROWS rows: XLA's CPU backend sums more than 32 rows as a tree of 32-row
# windows, vectorized across the features; 32 rows or fewer, a scalar loop per feature.
_MIN_ROWS = 33
# Tensors of fewer values take the single reduces, unless bfloat16. BN-Inception at 224×224 × 32,
# whose BN inputs of 2**21 values and more are its 5 largest of 21 shapes, then compiles 52
# kernels instead of 84, and its whole step was 0.99–1.02× (one run) and 1.5–2 % faster (another)
# in float32 (`python benchmarks/train_step.py --networks "fused kernel" ours "ours, blocked at
# any size" ...`, a 2-core Xeon); under mixed bfloat16 the loops at any size were 2–3.5 % faster.
_BLOCKED_MIN_VALUES = 2**21  # 8 MiB of float32
# The full blocks are reduced in _PARTS parts, each a call of its own (given the whole x, XLA
# slices its blocks in place); the m mod rows rows left (the rest) are reduced by the elementwise
# kernel that merges the parts' sums, so no branch is compiled into the loop kernels.
_PARTS = 2


def _bits(x: tf.Tensor) -> tf.Tensor:
    """A bfloat16 tensor as its 16-bit patterns (`tf.bitcast`, no copy); other dtypes as they are.

    XLA's CPU backend slices bfloat16 only after widening the whole tensor to float32, in every
    part's call; the bitcast happens outside the kernels (inside one, XLA copies it).
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
        # XLA compiles the body for every m: the block size clipped to m keeps the slice valid.
        size = tf.minimum(rows, m)
        blocks = [_widen(tf.slice(t, [i * rows, 0], [size, channels]), dtype) for t in tensors]
        return (i + 1, *step(carry, blocks))

    first, end = full * part // _PARTS, full * (part + 1) // _PARTS
    _, *carry = tf.while_loop(lambda i, *_: i < end, body, (first, *initial))
    return tuple(carry)


def _rest(t: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """The rows of the [m, C] tensor t after its full blocks (maybe none), in dtype."""
    return _widen(t[tf.shape(t)[0] // _rows(t) * _rows(t) :], dtype)


def _chan_merge(a: tuple, b: tuple) -> tuple:
    """(n, Σ, Σ squared deviations from the mean) of two sets of rows from each set's own: the
    pairwise update of Chan, Golub & LeVeque, exact in the deviations."""
    n_a, sum_a, ssd_a = a
    n_b, sum_b, ssd_b = b
    n = n_a + n_b
    delta = sum_b / tf.maximum(n_b, 1) - sum_a / tf.maximum(n_a, 1)
    return n, sum_a + sum_b, ssd_a + ssd_b + tf.square(delta) * n_a * n_b / tf.maximum(n, 1)


def _shift(x: tf.Tensor, dtype: tf.DType) -> tf.Tensor:
    """K, x's first row in `dtype` (zeros when x has no rows)."""
    return tf.reduce_sum(_widen(x[:1], dtype), 0)


def _block_moments(block: tf.Tensor) -> tuple:
    """(n, Σ, Σ squared deviations from the mean) of a block's rows: two passes over it."""
    n = tf.cast(tf.shape(block)[0], block.dtype)
    total = tf.reduce_sum(block, 0)
    return n, total, tf.reduce_sum(tf.square(block - total / tf.maximum(n, 1)), 0)


@compiled
def _blocked_moments(x, part, dtype):
    """n, Σ (x_i − K), Σ (x_i − x̄)² over `part`'s full blocks, in one read; K is x's first row
    (a feature of mean 1e4 and standard deviation 1 is summed as values of size 1)."""
    shift = _shift(x, dtype)

    def merge(carry, blocks):
        return _chan_merge(carry, _block_moments(blocks[0] - shift))

    zeros = tf.zeros(tf.shape(x)[1:], dtype)
    return _blocks((x,), part, dtype, merge, (tf.constant(0, dtype), zeros, zeros))


@compiled
def _blocked_transform(x, gamma, beta, epsilon, relu, renorm_mean, renorm_stddev, clip, *moments):
    """μ_B, σ²_B from the parts' `_blocked_moments` (three each) and the rest's, then y."""
    shift = _shift(x, gamma.dtype)
    parts = [moments[i : i + 3] for i in range(0, len(moments), 3)]
    parts.append(_block_moments(_rest(x, gamma.dtype) - shift))
    count, total, ssd = functools.reduce(_chan_merge, parts)
    count = tf.maximum(count, 1)
    mean = total / count + shift  # μ_B, line 1
    variance = ssd / count  # σ²_B, line 2
    renorm = _renorm(renorm_mean, renorm_stddev, clip)
    return bn.transform(x, count, mean, variance, gamma, beta, epsilon, relu, renorm)


def _forward_blocked(x, gamma, beta, epsilon, relu, renorm_mean, renorm_stddev, clipping):
    bits = _bits(x)
    parts = [_blocked_moments(bits, tf.constant(p), gamma.dtype) for p in range(_PARTS)]
    moments = (v for part in parts for v in part)
    renorm = (renorm_mean, renorm_stddev, clipping)
    return _blocked_transform(x, gamma, beta, epsilon, relu, *renorm, *moments)


def _block_grad_sums(dy, x, mean, inv_std, scale, offset, relu, x_dtype) -> tuple:
    """Σ ∂ℓ/∂y_i and Σ ∂ℓ/∂y_i · (x_i − μ_B) over a block (ReLU's mask rounded to `x_dtype`)."""
    dy = bn.relu_grad(dy, x, mean, inv_std, scale, offset, relu, x_dtype)
    return tf.reduce_sum(dy, 0), tf.reduce_sum(dy * (x - mean), 0)


@compiled
def _blocked_grad_sums(dy, x, part, mean, inv_std, scale, offset, relu, x_dtype):
    """`_block_grad_sums` over `part`'s full blocks, in one read of them."""
    statistics = (mean, inv_std, scale, offset, relu, x_dtype)

    def accumulate(carry, blocks):
        sums = _block_grad_sums(*blocks, *statistics)
        return tuple(a + b for a, b in zip(carry, sums, strict=True))

    zeros = tf.zeros_like(mean)
    return _blocks((dy, x), part, mean.dtype, accumulate, (zeros, zeros))


@compiled
def _blocked_grad_input(dy, x, *statistics_relu_and_sums):
    """∂ℓ/∂x, ∂ℓ/∂γ, ∂ℓ/∂β from the parts' `_blocked_grad_sums` (two each) and the rest's."""
    s = bn.Statistics(*statistics_relu_and_sums[:8])
    relu, sums = statistics_relu_and_sums[8], statistics_relu_and_sums[9:]
    statistics = (s.mean, s.inv_std, s.scale, s.offset, relu)
    rest = (_rest(dy, s.mean.dtype), _rest(x, s.mean.dtype))
    rest_dbeta, rest_dgamma = _block_grad_sums(*rest, *statistics, x.dtype)
    dbeta = tf.add_n([*sums[0::2], rest_dbeta])
    dgamma = tf.add_n([*sums[1::2], rest_dgamma]) * s.inv_std  # Σ ∂ℓ/∂y_i · x̂_i
    dx = bn.grad_input(dy, x, None, *statistics, dbeta, dgamma, s.count)
    return dx, *bn.parameter_grads(dgamma, dbeta, s)


def _backward_blocked(dy, x, s: bn.Statistics, relu):
    statistics = (s.mean, s.inv_std, s.scale, s.offset, relu)
    bits = (_bits(dy), _bits(x))
    parts = [_blocked_grad_sums(*bits, tf.constant(p), *statistics, x.dtype) for p in range(_PARTS)]
    sums = (v for part in parts for v in part)
    return _blocked_grad_input(dy, x, *s, relu, *sums)
