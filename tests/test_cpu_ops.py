"""The C++ CPU ops of BN's two reductions (keras_bninception/layers/cpu_reductions.cc)."""

import numpy as np
import pytest
import tensorflow as tf
from helpers import cpu_ops_or_skip

from keras_bninception.layers import batch_norm_transform, cpu_ops

OPS = ("KerasBnInceptionMoments", "KerasBnInceptionGradSums")


def _random(shape, seed, mean=0.0, std=1.0):
    return tf.random.stateless_normal(shape, seed=(seed, 0), mean=mean, stddev=std)


@pytest.fixture
def ops():
    return cpu_ops_or_skip()


def _step(x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = batch_norm_transform.batch_norm_train(
            x, tf.ones([x.shape[-1]]), tf.zeros([x.shape[-1]]), axis=3, epsilon=1e-3, relu=True
        )[0]
        loss = tf.reduce_sum(y * tf.range(1.0, 1.0 + x.shape[-1], dtype=y.dtype))
    return tape.gradient(loss, x)


def test_a_cpu_float32_step_runs_the_ops_and_an_xla_compiled_step_the_xla_kernels(ops):
    x = _random([2, 5, 5, 64], seed=1, mean=1.0)
    graphs = {}
    results = {}
    for jit in (False, True):
        step = tf.function(_step, jit_compile=jit)
        graph = step.get_concrete_function(tf.TensorSpec(x.shape)).graph
        graphs[jit] = {node.op for node in graph.as_graph_def().node}
        results[jit] = step(x)
    assert set(OPS) <= graphs[False]
    assert not set(OPS) & graphs[True]  # XLA cannot run a custom op: its own kernels run there
    np.testing.assert_allclose(results[False], results[True], rtol=1e-4, atol=1e-5)


def test_the_ops_stay_out_of_half_precision_and_when_switched_off(ops):
    for dtype, switch in (("bfloat16", None), ("float32", False)):
        step = tf.function(_step)
        with batch_norm_transform.use_cpu_ops(switch):
            graph = step.get_concrete_function(tf.TensorSpec([2, 5, 5, 64], dtype)).graph
        assert not {node.op for node in graph.as_graph_def().node} & set(OPS)


@pytest.mark.parametrize("rows", [1, 31, 32, 33, 1000])
def test_moments_against_float64(ops, rows):
    x = _random([rows, 96], seed=2, mean=1e4, std=1.0)  # the precision case: large mean
    mean, variance, inv_std, count = ops.keras_bn_inception_moments(x, epsilon=1e-3)
    x64 = x.numpy().astype("float64")
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-7)
    np.testing.assert_allclose(variance, x64.var(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(inv_std, 1 / np.sqrt(x64.var(0) + 1e-3), rtol=1e-4)
    assert count == rows


@pytest.mark.parametrize("relu", [False, True])
def test_grad_sums_equal_the_xla_kernel_on_the_same_statistics(ops, relu):
    x, dy = _random([777, 160], seed=3, mean=0.5), _random([777, 160], seed=4)
    mean, _, inv_std, _ = ops.keras_bn_inception_moments(x, epsilon=1e-3)
    gamma = tf.linspace(-1.0, 2.0, 160)  # some features mostly clipped by the ReLU, some not
    beta = tf.linspace(0.5, -0.5, 160)
    statistics = (mean, inv_std, gamma, beta)
    cpp = ops.keras_bn_inception_grad_sums(dy, x, *statistics, relu=relu)
    xla = batch_norm_transform._grad_sums(dy, x, *statistics, relu)
    for a, b in zip(cpp, xla, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)


def test_the_ops_reject_inputs_of_other_shapes(ops):
    x, c = tf.ones([4, 3]), tf.ones([3])
    with pytest.raises(tf.errors.InvalidArgumentError, match="same shape"):
        ops.keras_bn_inception_grad_sums(tf.ones([4, 2]), x, c, c, c, c, relu=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="matrix"):
        ops.keras_bn_inception_moments(tf.ones([4, 3, 1]), epsilon=1e-3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="matrix"):
        ops.keras_bn_inception_grad_sums(c, c, c, c, c, c, relu=False)


def test_without_the_library_the_switch_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_ops, "LIBRARY", tmp_path / "missing.so")
    cpu_ops.load.cache_clear()
    try:
        assert cpu_ops.load() is None
        with pytest.raises(RuntimeError, match="keras_bninception.layers.cpu_ops"):
            with batch_norm_transform.use_cpu_ops(True):
                pass
        broken = tmp_path / "broken.so"
        broken.write_bytes(b"not a library")
        monkeypatch.setattr(cpu_ops, "LIBRARY", broken)
        cpu_ops.load.cache_clear()
        with pytest.warns(UserWarning, match="does not load"):
            assert cpu_ops.load() is None
    finally:
        monkeypatch.undo()
        cpu_ops.load.cache_clear()
