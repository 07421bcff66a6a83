"""The hand-written Batch Normalization layer against Keras', autodiff, numerics and the paper."""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
from unittest import mock

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_bninception.layers import BatchNormalization, batch_norm, kernels

# (input shape, feature axis): dense, channels-last conv, channels-first conv.
LAYOUTS = [((16, 5), -1), ((4, 6, 5, 3), -1), ((4, 3, 6, 5), 1)]
BLOCKED_MIN_VALUES = kernels._BLOCKED_MIN_VALUES  # the library's, before the fixture below


@pytest.fixture(autouse=True)
def _blocked_at_test_sizes(monkeypatch):
    # On the "cpu" path the blocked reductions take only tensors of 2**21 values and more; these
    # tests' tensors are small, so here they take them from one block of rows per part on.
    monkeypatch.setattr(kernels, "_BLOCKED_MIN_VALUES", 0)


def _random(shape, *, mean=0.0, std=1.0, seed=0, dtype="float32"):
    return tf.constant(np.random.default_rng(seed).normal(mean, std, size=shape).astype(dtype))


def _paired_layers(shape, axis, **kwargs):
    """Ours and Keras' layer with the same random weights (non-trivial γ, β, moving statistics)."""
    ours = BatchNormalization(axis=axis, **kwargs)
    ref = keras.layers.BatchNormalization(axis=axis, **kwargs)
    ours.build(shape)
    ref.build(shape)
    rng = np.random.default_rng(1)
    weights = [rng.normal(1.0, 0.3, size=w.shape).astype("float32") for w in ours.weights]
    weights[-1] = np.abs(weights[-1])  # moving variance > 0
    ours.set_weights(weights)
    ref.set_weights(weights)
    return ours, ref


def _loss(y):
    # A loss whose ∂ℓ/∂y varies per element, so every term of the backward is exercised.
    return tf.reduce_sum(tf.sin(y) * y)


def _textbook(x, gamma, beta, axis, epsilon):
    """Algorithm 1 written directly with TensorFlow ops; its gradient comes from autodiff."""
    axes = [a for a in range(x.shape.rank) if a != axis % x.shape.rank]
    shape = [1] * x.shape.rank
    shape[axis] = -1
    mu = tf.reduce_mean(x, axes, keepdims=True)
    var = tf.reduce_mean(tf.square(x - mu), axes, keepdims=True)
    x_hat = (x - mu) / tf.sqrt(var + epsilon)
    return tf.reshape(gamma, shape) * x_hat + tf.reshape(beta, shape)


def _paper_chain(x, gamma, dy, epsilon):
    """The backward chain of section 3, literally, in float64 NumPy on a [m, C] batch."""
    m = x.shape[0]
    mu = x.mean(0)
    var = ((x - mu) ** 2).mean(0)
    x_hat = (x - mu) / np.sqrt(var + epsilon)
    dx_hat = dy * gamma
    dvar = (dx_hat * (x - mu) * -0.5 * (var + epsilon) ** -1.5).sum(0)
    dmu = (dx_hat * -1 / np.sqrt(var + epsilon)).sum(0) + dvar * (-2 * (x - mu)).sum(0) / m
    dx = dx_hat / np.sqrt(var + epsilon) + dvar * 2 * (x - mu) / m + dmu / m
    return dx, (dy * x_hat).sum(0), dy.sum(0)


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("training", [True, False])
def test_forward_and_gradients_equal_keras(shape, axis, training):
    ours, ref = _paired_layers(shape, axis, momentum=0.7)
    x = _random(shape, mean=2.0, std=3.0)
    results = []
    for layer in (ours, ref):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=training)
            loss = _loss(y)
        results.append((y, tape.gradient(loss, [x, *layer.trainable_weights])))
    (y_ours, g_ours), (y_ref, g_ref) = results
    np.testing.assert_allclose(y_ours, y_ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_ours, g_ref, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    for a, b in zip(ours.non_trainable_weights, ref.non_trainable_weights, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_gradient_equals_autodiff_of_textbook_formula(shape, axis):
    x = _random(shape, mean=-1.0, std=2.0, seed=3)
    channels = shape[axis]
    gamma = _random([channels], mean=1.0, std=0.5, seed=4)
    beta = _random([channels], seed=5)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, gamma, beta])
        y_hand = batch_norm.batch_norm_train(x, gamma, beta, axis=axis % len(shape), epsilon=1e-3)[
            0
        ]
        y_auto = _textbook(x, gamma, beta, axis, 1e-3)
        loss_hand, loss_auto = _loss(y_hand), _loss(y_auto)
    np.testing.assert_allclose(y_hand, y_auto, atol=1e-5)
    for a, b in zip(
        tape.gradient(loss_hand, [x, gamma, beta]),
        tape.gradient(loss_auto, [x, gamma, beta]),
        strict=True,
    ):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_gradient_equals_the_papers_chain_in_float64():
    x = _random([12, 4], mean=3.0, std=2.0, seed=6, dtype="float64")
    gamma = _random([4], mean=1.0, std=0.5, seed=7, dtype="float64")
    beta = _random([4], seed=8, dtype="float64")
    dy = _random([12, 4], seed=9, dtype="float64")
    with tf.GradientTape() as tape:
        tape.watch([x, gamma, beta])
        y = batch_norm.batch_norm_train(x, gamma, beta, axis=1, epsilon=1e-3)[0]
    dx, dgamma, dbeta = tape.gradient(y, [x, gamma, beta], output_gradients=dy)
    ref = _paper_chain(x.numpy(), gamma.numpy(), dy.numpy(), 1e-3)
    for a, b in zip((dx, dgamma, dbeta), ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape,axis", [((6, 3), 1), ((3, 3, 2, 2), 3), ((2, 2, 3, 3), 1)])
def test_gradient_equals_float64_numerical_gradient(shape, axis):
    x = _random(shape, mean=0.5, std=1.5, seed=10, dtype="float64")
    gamma = _random([shape[axis]], mean=1.0, std=0.5, seed=11, dtype="float64")
    beta = _random([shape[axis]], seed=12, dtype="float64")

    def f(x, gamma, beta):
        y = batch_norm.batch_norm_train(x, gamma, beta, axis=axis, epsilon=1e-3)[0]
        return tf.sin(y) * y  # a non-linear head, so ∂ℓ/∂y is not constant

    theoretical, numerical = tf.test.compute_gradient(f, [x, gamma, beta], delta=1e-6)
    for t, n in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(t, n, atol=1e-6, rtol=1e-5)


def test_spec_identities_and_identity_recovery():
    x = _random([64, 3], mean=5.0, std=2.0, seed=13)
    eps = 1e-3
    y, mean, var, count = batch_norm.batch_norm_train(
        x, tf.ones([3]), tf.zeros([3]), axis=1, epsilon=eps
    )
    assert float(count) == 64
    x_hat = y.numpy().astype("float64")
    np.testing.assert_allclose(x_hat.sum(0), 0.0, atol=1e-4)  # Σ x̂_i = 0
    # 1/m Σ x̂² = σ²_B / (σ²_B + ε)
    np.testing.assert_allclose((x_hat**2).mean(0), var / (var + eps), rtol=1e-5)
    np.testing.assert_allclose(mean, x.numpy().mean(0), rtol=1e-5)
    np.testing.assert_allclose(var, x.numpy().astype("float64").var(0), rtol=1e-5)
    # γ = sqrt(σ²_B + ε), β = μ_B recovers the identity y = x.
    y_id = batch_norm.batch_norm_train(x, tf.sqrt(var + eps), mean, axis=1, epsilon=eps)[0]
    np.testing.assert_allclose(y_id, x, rtol=1e-5, atol=1e-5)


def test_large_mean_keeps_variance_precision():
    # Mean 1e4, std 1: E[x²] − E[x]² would lose every digit of σ² in float32 (ulp(1e8) = 8).
    x = _random([4, 8, 8, 2], mean=1e4, std=1.0, seed=14)
    _, mean, var, _ = batch_norm.batch_norm_train(
        x, tf.ones([2]), tf.zeros([2]), axis=3, epsilon=1e-3
    )
    x64 = x.numpy().astype("float64").reshape(-1, 2)
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-7)
    np.testing.assert_allclose(var, x64.var(0), rtol=1e-4)


def test_kernels_serve_both_views_after_many_shapes():
    # Channels-first inputs use the [A, C, B] view, dense ones [m, C]: after several shapes of one,
    # the compiled kernels must still reduce the right axes of the other.
    for shape in ([2, 3, 4, 5], [3, 3, 5, 6], [4, 3, 6, 7], [5, 3, 7, 8]):
        batch_norm.batch_norm_train(
            _random(shape, seed=16), tf.ones([3]), tf.zeros([3]), axis=1, epsilon=1e-3
        )
    for rows in (4, 5, 6):
        x = _random([rows, 2], seed=17)
        _, mean, var, _ = batch_norm.batch_norm_train(
            x, tf.ones([2]), tf.zeros([2]), axis=1, epsilon=1e-3
        )
        np.testing.assert_allclose(mean, x.numpy().mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, x.numpy().var(0), rtol=1e-4)


def test_constant_channel_and_batch_of_one_are_finite():
    layer = BatchNormalization()
    for x in (tf.fill([5, 3], 7.0), _random([1, 3], seed=15)):  # σ²_B = 0 both ways
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = _loss(y + 0.5)
        grads = tape.gradient(loss, [x, *layer.trainable_weights])
        assert np.all(np.isfinite(y)), y
        np.testing.assert_allclose(y, 0.0, atol=1e-6)  # x̂ = 0, y = β = 0
        for g in grads:
            assert np.all(np.isfinite(g)), g


def test_trainable_false_means_inference_and_no_updates():
    layer = BatchNormalization(momentum=0.5)
    x = _random([32, 4], mean=3.0, seed=16)
    layer.build(x.shape)
    layer.trainable = False
    before = [w.numpy().copy() for w in layer.weights]
    y = layer(x, training=True)
    np.testing.assert_allclose(y, layer(x, training=False))
    model = keras.Sequential([keras.Input((4,)), layer, keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(x, tf.ones([32, 1]), epochs=2, batch_size=8, verbose=0)
    for b, w in zip(before, layer.weights, strict=True):
        np.testing.assert_array_equal(b, w.numpy())


def test_momentum_zero_moving_statistics_equal_last_batch():
    for population_variance in (False, True):
        layer = BatchNormalization(momentum=0.0, population_variance=population_variance)
        for seed in (17, 18):
            x = _random([10, 3], mean=2.0, std=3.0, seed=seed)
            layer(x, training=True)
        x64 = x.numpy().astype("float64")
        np.testing.assert_allclose(layer.moving_mean, x64.mean(0), rtol=1e-5)
        ddof = 1 if population_variance else 0  # Algorithm 2: m/(m−1) · σ²_B
        np.testing.assert_allclose(layer.moving_variance, x64.var(0, ddof=ddof), rtol=1e-5)


def test_moving_statistics_follow_momentum():
    layer = BatchNormalization(momentum=0.9)
    x = _random([20, 2], mean=4.0, std=2.0, seed=19)
    layer(x, training=True)
    x64 = x.numpy().astype("float64")
    np.testing.assert_allclose(layer.moving_mean, 0.1 * x64.mean(0), rtol=1e-5)
    np.testing.assert_allclose(layer.moving_variance, 0.9 + 0.1 * x64.var(0), rtol=1e-5)


def test_mask_statistics_and_gradient():
    x = _random([3, 7, 4], mean=1.0, std=2.0, seed=20)
    mask = tf.constant(np.random.default_rng(21).random([3, 7]) > 0.4)
    ours, ref = _paired_layers(x.shape, -1, momentum=0.0)
    np.testing.assert_allclose(
        ours(x, training=True, mask=mask), ref(x, training=True, mask=mask), atol=1e-4, rtol=1e-4
    )
    kept = x.numpy()[mask.numpy()].astype("float64")
    np.testing.assert_allclose(ours.moving_mean, kept.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ours.moving_variance, kept.var(0), rtol=1e-4)

    x64 = tf.cast(x, "float64")
    gamma = _random([4], mean=1.0, std=0.5, seed=22, dtype="float64")
    beta = _random([4], seed=23, dtype="float64")

    def f(x, gamma, beta):
        y = batch_norm.batch_norm_train(x, gamma, beta, axis=2, epsilon=1e-3, mask=mask)[0]
        return tf.sin(y) * y

    theoretical, numerical = tf.test.compute_gradient(f, [x64, gamma, beta], delta=1e-6)
    for t, n in zip(theoretical, numerical, strict=True):
        np.testing.assert_allclose(t, n, atol=1e-6, rtol=1e-5)


def test_regularizers_constraints_and_initializers():
    layer = BatchNormalization(
        gamma_regularizer=keras.regularizers.L2(0.5),
        beta_regularizer="l1",
        gamma_initializer="random_uniform",
        beta_constraint="non_neg",
    )
    layer.build((None, 3))
    assert len(layer.losses) == 2
    expected = 0.5 * np.sum(layer.gamma.numpy() ** 2) + 0.01 * np.sum(np.abs(layer.beta.numpy()))
    np.testing.assert_allclose(sum(float(v) for v in layer.losses), expected, rtol=1e-6)
    assert expected > 0
    assert isinstance(layer.beta.constraint, keras.constraints.NonNeg)


def test_keras_model_round_trip_without_custom_objects(tmp_path):
    inputs = keras.Input((6, 6, 3))
    h = keras.layers.Conv2D(4, 3, use_bias=False)(inputs)
    h = BatchNormalization(momentum=0.8, population_variance=True)(h)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(h))
    x = _random([4, 6, 6, 3], seed=24)
    model(x, training=True)  # move the statistics off their initial values
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    bn = loaded.layers[2]
    assert type(bn) is BatchNormalization and bn.population_variance and bn.momentum == 0.8
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    assert BatchNormalization.from_config(bn.get_config()).get_config() == bn.get_config()


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_dtypes(policy):
    half = policy.split("_")[1]
    layer = BatchNormalization(dtype=policy)
    x = tf.cast(_random([8, 4, 4, 3], mean=2.0, seed=25), half)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        loss = tf.reduce_sum(tf.cast(y, "float32") ** 2)
    dx, dgamma, dbeta = tape.gradient(loss, [x, *layer.trainable_weights])
    assert y.dtype == half and dx.dtype == half
    assert dgamma.dtype == dbeta.dtype == layer.moving_mean.dtype == "float32"
    ref = _textbook(tf.cast(x, "float32"), tf.ones([3]), tf.zeros([3]), -1, 1e-3)
    np.testing.assert_allclose(tf.cast(y, "float32"), ref, atol=0.05)
    assert np.all(np.isfinite(tf.cast(dx, "float32")))


@pytest.mark.parametrize("path", kernels.PATHS)
@pytest.mark.parametrize("relu", [False, True])
def test_compiled_kernels_equal_the_reference_steps(path, relu):
    # Each path's compiled passes against `batch_norm`'s steps run op by op (the reference).
    # 512 features make a "cpu" block max(_MIN_ROWS, _BLOCK_ELEMENTS // 512) = 64 rows: the 200
    # rows are three full blocks, shared by both parts' while-loops, and 8 rows left over.
    channels = 512
    x = tf.reshape(_random([4, 5, 10, channels], mean=1.0, seed=26), [-1, channels])
    gamma, beta = _random([channels], mean=1.0, seed=27), _random([channels], seed=28)
    dy = _random([200, channels], seed=29)
    rows = max(kernels._MIN_ROWS, kernels._BLOCK_ELEMENTS // channels)
    assert 200 // rows >= kernels._PARTS and 200 % rows > 0
    y_ref, s_ref = batch_norm.forward(x, None, gamma, beta, 1e-3, relu)
    y, s = kernels.forward(path, x, None, gamma, beta, 1e-3, relu)
    grads_ref = batch_norm.backward(dy, x, None, s_ref, relu)
    grads = kernels.backward(path, dy, x, None, s, relu)
    for a, b in zip([y, *s[:4], *grads], [y_ref, *s_ref[:4], *grads_ref], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_runs_under_tf_function_and_xla(jit_compile):
    ours, ref = _paired_layers((8, 4, 4, 3), -1)
    x = _random([8, 4, 4, 3], seed=29)

    def step(layer):
        @tf.function(jit_compile=jit_compile)
        def run(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = _loss(layer(x, training=True))
            return loss, tape.gradient(loss, [x, *layer.trainable_weights])

        return run(x)

    (loss_a, grads_a), (loss_b, grads_b) = step(ours), step(ref)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
    for a, b in zip(grads_a, grads_b, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(ours.moving_mean, ref.moving_mean, atol=1e-6)


@pytest.mark.parametrize("activation", [None, "relu"])
def test_synchronized_mirrored_strategy_equals_one_device_on_global_batch(
    mirrored_cpus, activation
):
    # With activation="relu" the one-device reference is the plain layer followed by tf.nn.relu.
    shape, global_batch = (3, 3, 4), 8
    x = _random([global_batch, *shape], mean=1.5, std=2.0, seed=30)

    single = BatchNormalization(momentum=0.5, gamma_initializer="random_normal")
    single.build((None, *shape))
    initial_weights = single.get_weights()
    with tf.GradientTape() as tape:
        tape.watch(x)
        y_single = single(x, training=True)
        if activation:
            y_single = tf.nn.relu(y_single)
        loss = _loss(y_single)
    dx_single, *dparams_single = tape.gradient(loss, [x, *single.trainable_weights])

    strategy = mirrored_cpus
    with strategy.scope():
        synced = BatchNormalization(momentum=0.5, synchronized=True, activation=activation)
        synced.build((None, *shape))
    synced.set_weights(initial_weights)
    half = global_batch // 2
    shards = strategy.experimental_distribute_values_from_function(
        lambda ctx: x[ctx.replica_id_in_sync_group * half :][:half]
    )

    @tf.function
    def replica_step(x_local):
        with tf.GradientTape() as tape:
            tape.watch(x_local)
            y = synced(x_local, training=True)
            loss = _loss(y)
        return (y, *tape.gradient(loss, [x_local, *synced.trainable_weights]))

    y, dx, dgamma, dbeta = strategy.run(replica_step, args=(shards,))
    local = strategy.experimental_local_results
    np.testing.assert_allclose(tf.concat(local(y), 0), y_single, atol=1e-5)
    np.testing.assert_allclose(tf.concat(local(dx), 0), dx_single, atol=1e-5)
    # Per-replica ∂ℓ/∂γ, ∂ℓ/∂β add up (the optimizer's all-reduce) to the one-device gradient.
    np.testing.assert_allclose(tf.add_n(local(dgamma)), dparams_single[0], atol=1e-4)
    np.testing.assert_allclose(tf.add_n(local(dbeta)), dparams_single[1], atol=1e-4)
    for variable, expected in (
        (synced.moving_mean, single.moving_mean),
        (synced.moving_variance, single.moving_variance),
    ):
        replicas = [v.numpy() for v in strategy.experimental_local_results(variable.value)]
        assert len(replicas) == 2
        np.testing.assert_allclose(replicas[0], expected, atol=1e-5)
        np.testing.assert_array_equal(replicas[0], replicas[1])


@pytest.mark.parametrize(
    "kwargs,words",
    [
        ({"momentum": 1.5}, ["momentum", "[0, 1]"]),
        ({"momentum": -0.1}, ["momentum", "[0, 1]"]),
        ({"epsilon": -1e-3}, ["epsilon", "> 0"]),
        ({"gamma_initializer": "no_such_init"}, ["gamma_initializer", "'ones'"]),
        ({"beta_regularizer": "l3"}, ["beta_regularizer", "'l2'"]),
        ({"gamma_constraint": "bogus"}, ["gamma_constraint", "'non_neg'"]),
        ({"kernels": "gpu"}, ["kernels", "'accelerator'"]),
        ({"renorm": True, "renorm_clipping": {"rmin": 2.0, "rmax": 1.0}}, ["rmax", "rmin"]),
    ],
)
def test_bad_arguments_raise_value_error_naming_accepted_values(kwargs, words):
    with pytest.raises(ValueError) as error:
        BatchNormalization(**kwargs)
    for word in words:
        assert word in str(error.value)


def test_axis_out_of_range_names_accepted_range():
    with pytest.raises(ValueError, match=r"axis=3 .*\[-3, 2\]"):
        BatchNormalization(axis=3).build((None, 4, 5))


@pytest.mark.parametrize("unit", [False, True])
def test_inference_folds_into_the_convolution_for_tflite(unit):
    # Algorithm 2's affine map is plain ops, so the converter folds BN (and ReLU) into CONV_2D.
    inputs = keras.Input((12, 12, 3))
    h = keras.layers.Conv2D(8, 3, use_bias=False)(inputs)
    positive = keras.initializers.RandomUniform(0.5, 2.0)
    h = BatchNormalization(
        gamma_initializer="random_normal",
        beta_initializer="random_normal",
        moving_mean_initializer="random_normal",
        moving_variance_initializer=positive,
        activation="relu" if unit else None,
    )(h)
    model = keras.Model(inputs, h if unit else keras.layers.ReLU()(h))
    interpreter = tf.lite.Interpreter(
        model_content=tf.lite.TFLiteConverter.from_keras_model(model).convert()
    )
    assert [op["op_name"] for op in interpreter._get_ops_details()] == ["CONV_2D"]
    interpreter.allocate_tensors()
    x = _random([1, 12, 12, 3], seed=31)
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
    interpreter.invoke()
    y = interpreter.get_tensor(interpreter.get_output_details()[0]["index"])
    np.testing.assert_allclose(y, model(x, training=False), atol=1e-5)


@pytest.mark.parametrize("relu", [False, True])
def test_blocked_and_single_reduce_formulations_agree(relu):
    # 512 features: blocks of 64 rows; m = 2·9·11 = 198 rows, so three full blocks, one in the
    # first part, two in the second with the 6-row rest.
    x = _random([2, 9, 11, 512], mean=1.0, std=2.0, seed=32)
    gamma, beta = _random([512], mean=1.0, seed=33), _random([512], seed=34)
    outputs = []
    for blocked in (True, False):
        with (
            kernels.use(kernels.CPU if blocked else kernels.ACCELERATOR),
            tf.GradientTape() as tape,
        ):
            tape.watch([x, gamma, beta])
            y, mean, var, count = batch_norm.batch_norm_train(
                x, gamma, beta, axis=3, epsilon=1e-3, relu=relu
            )
            loss = _loss(y)
        outputs.append([[y, mean, var, count], tape.gradient(loss, [x, gamma, beta])])
    (forward_a, grads_a), (forward_b, grads_b) = outputs
    for a, b in zip(forward_a, forward_b, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_a, grads_b, strict=True):  # the tolerance of the gradient tests above
        np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("rows", "parts"), [(199, [(0, 64), (64, 192)]), (40, [(0, 0), (0, 0)])])
def test_blocked_parts_share_the_full_blocks_each_once(rows, parts):
    # 512 features: blocks of 64 rows. 199 rows: three full blocks, part 0 takes one, part 1 two;
    # 40 rows: no full block. The rows after the full blocks are left to the merging kernel.
    x = _random([rows, 512], mean=3.0, seed=36)
    x64 = x.numpy().astype("float64")
    for p, (begin, end) in enumerate(parts):
        n, total, ssd = kernels._blocked_moments(x, tf.constant(p), tf.float32)
        part = x64[begin:end]
        deviations = part - part.mean(0) if len(part) else part
        assert n == end - begin
        np.testing.assert_allclose(total, (part - x64[0]).sum(0), rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(ssd, (deviations**2).sum(0), rtol=1e-5)


@pytest.mark.parametrize("rows", [199, 192, 40, 1])
def test_blocked_statistics_count_every_row_once(rows):
    # The parts' full blocks and the rest (7 or none) make up μ_B and σ²_B; 40 rows or 1, fewer
    # than a block a part, are reduced whole by the single reduces.
    x = _random([rows, 512], mean=3.0, std=2.0, seed=37)
    with kernels.use(kernels.CPU):
        _, mean, var, count = batch_norm.batch_norm_train(
            x, tf.ones([512]), tf.zeros([512]), axis=1, epsilon=1e-3
        )
    x64 = x.numpy().astype("float64")
    assert count == rows
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, x64.var(0), rtol=1e-5)


def test_kernels_are_traced_once_for_every_shape():
    # A traced kernel stays in memory as long as the process runs, while XLA compiles per shape
    # anyway: layers of every shape (channels included) share one traced function a kernel.
    compiled = [
        kernels._blocked_moments,
        kernels._blocked_transform,
        kernels._blocked_grad_sums,
        kernels._blocked_grad_input,
    ]

    def forward_backward(shape, seed):
        x = _random(shape, mean=2.0, std=3.0, seed=seed)
        gamma, beta = tf.ones(shape[-1:]), tf.zeros(shape[-1:])
        with tf.GradientTape() as tape:
            tape.watch(x)
            y, mean, var, _ = batch_norm.batch_norm_train(
                x, gamma, beta, axis=3, epsilon=1e-3, relu=True
            )
        assert tape.gradient(y, x).shape == shape
        x64 = x.numpy().astype("float64").reshape(-1, shape[-1])
        np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, x64.var(0), rtol=1e-5)

    with kernels.use(kernels.CPU):
        forward_backward([2, 3, 3, 8], seed=47)
        traced = [len(kernel.traced) for kernel in compiled]
        forward_backward([3, 5, 5, 24], seed=48)
        forward_backward([1, 9, 9, 1024], seed=49)
    assert [len(kernel.traced) for kernel in compiled] == traced


_AHEAD_SCRIPT = """
import sys
import tensorflow as tf
from keras_bninception.layers import BatchNormalization, kernels

kernels._BLOCKED_MIN_VALUES = 0  # the blocked reductions for these small tensors too
layers = [BatchNormalization(activation="relu") for _ in range(2)]


@tf.function
def step(x, z):
    with tf.GradientTape() as tape:
        tape.watch([x, z])
        loss = sum(tf.reduce_sum(layer(t, training=True)) for layer, t in zip(layers, [x, z]))
    return tape.gradient(loss, [x, z])


# x: two blocks of rows (the blocked reductions' four kernels); z: fewer (the single reduces' two)
x, z = tf.random.normal([2, 16, 32, 64]), tf.random.normal([4, 4, 4, 32])
step.get_concrete_function(x, z)
assert len(kernels._AHEAD_SEEN) == 2, kernels._AHEAD_SEEN
for future in kernels._AHEAD_SEEN.values():
    future.result()  # the background compilation ended, without an error
print("STEP", file=sys.stderr, flush=True)
step(x, z)
"""


def test_a_traced_step_finds_its_kernels_compiled_ahead():
    # XLA's own log (device_compiler) says for each call of a compiled function whether its
    # executable was in the cache: after tracing and the background compilations, the step's
    # first run compiles nothing, i.e. the background filled the very entries the step reads.
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "device_compiler=2"}
    run = subprocess.run(
        [sys.executable, "-c", _AHEAD_SCRIPT], capture_output=True, text=True, env=env, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    before, _, after = run.stderr.partition("STEP")
    assert before.count("Compilation cache entry hit: 0") == 6  # 4 kernels + 2 kernels
    assert "Compilation cache entry hit: 2" in after
    assert "Compilation cache entry hit: 0" not in after


def test_compiling_ahead_for_many_shapes_warns_of_no_retracing(caplog):
    # A network has BN layers of many shapes, each compiled ahead by a function of its own; none
    # may set off TensorFlow's "excessive retracing" warning in the user's log.
    @tf.function
    def forward(*xs):
        ones, zeros = tf.ones([3]), tf.zeros([3])
        return [batch_norm.batch_norm_train(x, ones, zeros, axis=1, epsilon=1e-3)[0] for x in xs]

    with kernels.use(kernels.CPU):
        forward.get_concrete_function(*(tf.TensorSpec([n, 3]) for n in range(2, 9)))
    kernels.wait_for_compilations()
    assert not [r for r in caplog.records if "retracing" in r.getMessage()]


def _traced_step_graph(path, relu=False, shape=(2, 16, 32, 64), dtype=tf.float32):
    """The graph_def of a traced training step: BN on `shape` (by default two blocks of rows for
    the "cpu" path) on `path`, then ∂y/∂x."""

    @tf.function
    def step(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = batch_norm.batch_norm_train(
                x, tf.ones([64]), tf.zeros([64]), axis=3, epsilon=1e-3, relu=relu, kernels=path
            )[0]
        return tape.gradient(y, x)

    return step.get_concrete_function(tf.TensorSpec(shape, dtype)).graph.as_graph_def()


def test_blocked_reductions_add_few_ops_to_a_traced_step():
    # Every op of a traced training step costs memory and time when it is traced and first run;
    # a BN layer is called ~70 times in BN-Inception. The blocked path's glue (its parts' merge,
    # the statistics) lives inside its kernels or ops: it adds only its extra calls to the graph.
    def graph_ops(blocked):
        path = kernels.CPU if blocked else kernels.ACCELERATOR
        return len(_traced_step_graph(path, relu=True).node)

    blocked, single = graph_ops(True), graph_ops(False)
    assert blocked <= single + 12, (blocked, single)


def test_kernels_follow_the_device_and_the_scope():
    x = tf.ones([2, 3])
    assert kernels.path_for(x) == kernels.CPU  # eager: x's device
    seen = []

    @tf.function
    def traced(x):
        seen.append(kernels.path_for(x))
        return x

    with tf.device("/device:CPU:0"):
        traced(x)
    with kernels.use(kernels.ACCELERATOR):  # forced, also for the layers constructed here
        assert kernels.path_for(x) == kernels.ACCELERATOR
        assert kernels.path_for(x, kernels.CPU) == kernels.CPU  # an explicit argument wins
        layer = BatchNormalization()
        tf.function(traced.python_function)(x)
        with concurrent.futures.ThreadPoolExecutor(1) as thread:  # another thread: not forced
            assert thread.submit(kernels.path_for, x).result() == kernels.CPU
        with kernels.use(None):
            assert kernels.path_for(x) == kernels.CPU
    assert seen == [kernels.CPU, kernels.ACCELERATOR]
    assert kernels.forced() is None and layer.kernels == kernels.ACCELERATOR
    assert BatchNormalization().kernels is None
    with pytest.raises(
        ValueError, match="kernels must be None, 'accelerator' or 'cpu'; received 'gpu'"
    ):
        BatchNormalization(kernels="gpu")


def test_accelerator_kernels_hold_no_loop_and_cpu_kernels_do():
    # What a GPU runs is single reduces; the CPU's blocked reductions are XLA while-loops, for
    # tensors of at least a block of rows per part (64 features: blocks of 512 rows, so 1,024
    # rows); fewer rows take the single reduces there too.
    def ops(path, shape=(2, 16, 32, 64)):
        graph = _traced_step_graph(path, shape=shape)
        functions = graph.library.function
        return {n.op for f in functions for n in f.node_def} | {n.op for n in graph.node}

    loops = {"While", "StatelessWhile"}
    assert not loops & ops(kernels.ACCELERATOR)
    assert loops & ops(kernels.CPU)
    assert not loops & ops(kernels.CPU, shape=(2, 16, 31, 64))  # 992 rows


def test_cpu_path_blocks_only_tensors_beyond_the_caches(monkeypatch):
    # By default the loops run for float32 tensors of 2**21 values and more (they outgrow the
    # caches); a smaller one takes the single reduces, two kernels to compile instead of four.
    # bfloat16 takes the loops at any size: the single reduces would widen it whole first.
    monkeypatch.setattr(kernels, "_BLOCKED_MIN_VALUES", BLOCKED_MIN_VALUES)
    assert BLOCKED_MIN_VALUES == 2**21

    def loops(shape, dtype=tf.float32):
        graph = _traced_step_graph(kernels.CPU, shape=shape, dtype=dtype)
        ops = {n.op for f in graph.library.function for n in f.node_def}
        return bool({"While", "StatelessWhile"} & ops)

    assert loops((32, 32, 32, 64))  # 2**21 values
    assert not loops((32, 32, 31, 64))
    assert loops((2, 16, 32, 64), tf.bfloat16)  # two blocks of rows


def test_relu_backward_sums_compile_without_windowed_trees():
    # XLA's CPU backend compiles a sum whose input ends in a product as a tree of windowed sums
    # (three kernels more to compile), any other sum as one library call. With ReLU the
    # single-reduce backward sums ∂ℓ/∂y·x̂ under ReLU's mask (a select), so its kernel adds no
    # tree to the forward's (Σ (x − μ_B)² keeps one). The CPU's loops keep theirs.
    x = _random([8, 16, 16, 64], mean=1.0, std=2.0, seed=52)
    dy = _random([8, 16, 16, 64], seed=53)
    ones, zeros = tf.ones([64]), tf.zeros([64])

    def windowed_sums(blocked, backward):
        def passes(x, dy):
            with kernels.use(kernels.CPU):
                y, *_ = batch_norm.batch_norm_train(x, ones, zeros, axis=3, epsilon=1e-3, relu=True)
            return tf.gradients(y, x, dy) if backward else y

        threshold = 0 if blocked else BLOCKED_MIN_VALUES
        with mock.patch.object(kernels, "_BLOCKED_MIN_VALUES", threshold):
            compiled = tf.function(passes, jit_compile=True, autograph=False)
            hlo = compiled.experimental_get_compiler_ir(x, dy)(stage="optimized_hlo")
        return hlo.count("reduce-window(")

    forward = windowed_sums(blocked=False, backward=False)
    assert forward > 0
    assert windowed_sums(blocked=False, backward=True) == forward
    assert windowed_sums(blocked=True, backward=True) > windowed_sums(blocked=True, backward=False)


def test_blocked_bfloat16_blocks_are_read_exactly():
    # The blocked kernels read bfloat16 as 16-bit patterns and widen them themselves: the
    # statistics must be those of the same values given in float32, bit for bit.
    x = tf.cast(_random([2, 9, 11, 512], mean=2.0, std=3.0, seed=45), "bfloat16")
    ones, zeros = tf.ones([512]), tf.zeros([512])
    with kernels.use(kernels.CPU):
        half, full = (
            batch_norm.batch_norm_train(v, ones, zeros, axis=3, epsilon=1e-3)
            for v in (x, tf.cast(x, "float32"))
        )
    assert half[0].dtype == "bfloat16"
    for a, b in zip(half[1:], full[1:], strict=True):
        np.testing.assert_array_equal(a, b)


def test_blocked_moments_keep_variance_precision_at_large_mean():
    # Mean 1e4, std 1, m = 189: one block in the first part, one and a 61-row rest in the second
    # merging blocks and parts must not lose σ².
    x = _random([3, 7, 9, 512], mean=1e4, std=1.0, seed=35)
    with kernels.use(kernels.CPU):
        _, mean, var, _ = batch_norm.batch_norm_train(
            x, tf.ones([512]), tf.zeros([512]), axis=3, epsilon=1e-3
        )
    x64 = x.numpy().astype("float64").reshape(-1, 512)
    np.testing.assert_allclose(mean, x64.mean(0), rtol=1e-7)
    np.testing.assert_allclose(var, x64.var(0), rtol=1e-4)


# BN + ReLU as one unit (activation="relu"): one hand-written gradient for both.


def _at_the_kink(shape, axis, dtype):
    """Integer inputs whose batch mean is exactly 0 (each value also appears negated) and that
    hold zeros: there x̂ = 0 exactly, so z = relu(β) with β chosen at and near ReLU's kink."""
    rng = np.random.default_rng(40)
    half = rng.integers(-3, 4, size=(shape[0] // 2, *shape[1:])).astype(dtype)
    x = np.concatenate([half, -half], axis=0)
    channels = shape[axis]
    beta = rng.normal(size=channels)
    beta[:3] = [0.0, 1e-6, -1e-6]  # exactly at the kink, just above, just below
    gamma = rng.normal(1.0, 0.5, size=channels)
    return tf.constant(x), gamma.astype(dtype), beta.astype(dtype)


def _bn_relu_reference(x, gamma, beta, axis, epsilon, moving=None):
    """BN then ReLU in float64 TensorFlow ops; its gradient comes from autodiff."""
    if moving is None:
        y = _textbook(x, gamma, beta, axis, epsilon)
    else:
        shape = [1] * x.shape.rank
        shape[axis] = -1
        mean, variance = (tf.reshape(v, shape) for v in moving)
        y = tf.reshape(gamma, shape) * (x - mean) / tf.sqrt(variance + epsilon)
        y = y + tf.reshape(beta, shape)
    return tf.nn.relu(y)


@pytest.mark.parametrize("shape,axis", LAYOUTS)
@pytest.mark.parametrize("mode", ["training, cpu", "training, accelerator", "inference"])
def test_bn_relu_unit_gradient_equals_autodiff_of_float64_reference(shape, axis, mode):
    x, gamma, beta = _at_the_kink(shape, axis, "float64")
    unit = BatchNormalization(axis=axis, activation="relu", dtype="float64")
    unit.build(shape)
    channels = shape[axis]
    moving = (np.zeros(channels), np.random.default_rng(41).uniform(0.5, 2.0, channels))
    unit.set_weights([gamma, beta, *moving])
    training = mode != "inference"
    path = kernels.ACCELERATOR if mode == "training, accelerator" else kernels.CPU
    with (
        kernels.use(path),
        tf.GradientTape(persistent=True) as tape,
    ):
        tape.watch(x)
        z = unit(x, training=training)
        gamma_ref, beta_ref = tf.constant(gamma), tf.constant(beta)
        tape.watch([gamma_ref, beta_ref])
        reference = _bn_relu_reference(
            x, gamma_ref, beta_ref, axis, 1e-3, None if training else moving
        )
        # ∂ℓ/∂z ≠ 0 at z = 0 (_loss alone has a zero derivative there).
        loss, loss_ref = _loss(z + 1.0), _loss(reference + 1.0)
    np.testing.assert_allclose(z, reference, rtol=1e-12, atol=1e-12)
    grads = tape.gradient(loss, [x, unit.gamma, unit.beta])
    grads_ref = tape.gradient(loss_ref, [x, gamma_ref, beta_ref])
    for a, b in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    # The test sees the kink: ReLU's derivative at 0 is 0 (as TensorFlow's), and counting the
    # zeros of channel 0 (z = relu(0)) in ∂ℓ/∂β would change it.
    x_hat_zero = tf.equal(x, 0.0)
    if axis != -1:
        x_hat_zero = tf.transpose(x_hat_zero, [0, 2, 3, 1])
    assert bool(tf.reduce_any(tf.reshape(x_hat_zero, [-1, channels])[:, 0]))


@pytest.mark.parametrize("shape,axis", LAYOUTS)
def test_bn_relu_unit_float32_equals_bn_then_relu(shape, axis):
    """In float32, the unit and the plain layer followed by ReLU: same outputs and gradients."""
    x = _random(shape, mean=0.5, std=2.0, seed=42)
    outputs = []
    for unit in (True, False):
        layer = BatchNormalization(axis=axis, activation="relu" if unit else None, momentum=0.5)
        layer.build(shape)
        layer.set_weights(
            [_random([shape[axis]], mean=m, seed=43 + i) for i, m in enumerate([1, 0])]
            + layer.get_weights()[2:]
        )
        with tf.GradientTape() as tape:
            tape.watch(x)
            z = layer(x, training=True)
            z = z if unit else tf.nn.relu(z)
            loss = _loss(z)
        outputs.append(
            [z, *tape.gradient(loss, [x, *layer.trainable_weights]), *layer.non_trainable_weights]
        )
    for a, b in zip(*outputs, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("blocked", [True, False])
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_bn_relu_unit_mixed_precision(policy, blocked):
    # 512 features: blocks of 64 rows, so m = 2·9·11 = 198 runs the blocked loop and its rest.
    half = policy.split("_")[1]
    unit = BatchNormalization(dtype=policy, activation="relu")
    x = tf.cast(_random([2, 9, 11, 512], mean=2.0, seed=44), half)
    weights = tf.cast(tf.range(512) % 3, "float32")
    with kernels.use(kernels.CPU if blocked else kernels.ACCELERATOR), tf.GradientTape() as tape:
        tape.watch(x)
        z = unit(x, training=True)
        loss = tf.reduce_sum(tf.cast(z, "float32") * weights)
    dx, dgamma, dbeta = tape.gradient(loss, [x, *unit.trainable_weights])
    assert z.dtype == dx.dtype == half and dgamma.dtype == dbeta.dtype == "float32"
    # The backward's ReLU mask is the forward's z > 0 exactly (recomputed with its rounding).
    positives = tf.reduce_sum(tf.cast(z > 0, "float32"), [0, 1, 2])
    np.testing.assert_array_equal(dbeta, weights * positives)
    x32 = tf.cast(x, "float32")
    with tf.GradientTape() as tape:
        tape.watch(x32)
        ref = tf.nn.relu(_textbook(x32, tf.ones([512]), tf.zeros([512]), -1, 1e-3))
        loss_ref = tf.reduce_sum(ref * weights)
    np.testing.assert_allclose(tf.cast(z, "float32"), ref, atol=0.05)
    np.testing.assert_allclose(tf.cast(dx, "float32"), tape.gradient(loss_ref, x32), atol=0.05)


def test_bn_relu_unit_argument_and_round_trip():
    with pytest.raises(ValueError, match=r"activation must be None or 'relu'.*activation='gelu'"):
        BatchNormalization(activation="gelu")
    config = BatchNormalization(activation="relu").get_config()
    assert BatchNormalization.from_config(config).activation == "relu"


# Masks with the feature axis anywhere, and Batch Renormalization.


def _assert_gradients_equal(tape, loss, loss_ref, sources):
    """The gradients of loss and of loss_ref (autodiff's, float64) w.r.t. sources agree."""
    for a, b in zip(tape.gradient(loss, sources), tape.gradient(loss_ref, sources), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("path", kernels.PATHS)
@pytest.mark.parametrize(
    "shape,axis,mask_shape",
    [((3, 4, 5), 1, (3, 4)), ((2, 3, 4, 5), 1, (2, 3, 1)), ((2, 3, 4, 5), 3, (2, 1, 4))],
)
def test_masks_on_any_axis_equal_autodiff_of_the_float64_reference(path, shape, axis, mask_shape):
    # Keras' semantics: the mask gets a trailing axis and is broadcast to x, so with axis=1 it
    # varies along the features (each feature its own m).
    rng = np.random.default_rng(50)
    mask = tf.constant(rng.random(mask_shape) > 0.3)
    x = _random(shape, mean=1.0, std=2.0, seed=51, dtype="float64")
    gamma = _random([shape[axis]], mean=1.0, std=0.5, seed=52, dtype="float64")
    beta = _random([shape[axis]], seed=53, dtype="float64")
    w = tf.broadcast_to(tf.cast(mask, "float64")[..., None], shape)
    reduce = [a for a in range(len(shape)) if a != axis]
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, gamma, beta])
        y, mean, var, _ = batch_norm.batch_norm_train(
            x, gamma, beta, axis=axis, epsilon=1e-3, mask=mask, kernels=path
        )
        m = tf.maximum(tf.reduce_sum(w, reduce, keepdims=True), 1)
        mu = tf.reduce_sum(w * x, reduce, keepdims=True) / m
        sigma2 = tf.reduce_sum(w * tf.square(x - mu), reduce, keepdims=True) / m
        shape_c = [1] * len(shape)
        shape_c[axis] = -1
        y_ref = tf.reshape(gamma, shape_c) * (x - mu) / tf.sqrt(sigma2 + 1e-3)
        y_ref = y_ref + tf.reshape(beta, shape_c)
        loss, loss_ref = _loss(y), _loss(y_ref)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mean, tf.reshape(mu, [-1]), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(var, tf.reshape(sigma2, [-1]), rtol=1e-12, atol=1e-12)
    _assert_gradients_equal(tape, loss, loss_ref, [x, gamma, beta])


@pytest.mark.parametrize("path", kernels.PATHS)
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("clipping", [{}, {"rmin": 0.8, "rmax": 1.2, "dmax": 0.1}])
def test_renorm_gradient_equals_autodiff_in_float64(path, relu, clipping):
    # Batch Renormalization: y = γ (x̂ r + d) + β with r, d constants of the backward
    # (stop_gradient, as Keras' layer does); the hand-written chain against autodiff.
    shape = (6, 3, 4, 5)
    x = _random(shape, mean=1.0, std=2.0, seed=54, dtype="float64")
    gamma = _random([5], mean=1.0, std=0.5, seed=55, dtype="float64")
    beta = _random([5], seed=56, dtype="float64")
    moving_mean = _random([5], seed=57, dtype="float64")
    moving_stddev = tf.abs(_random([5], mean=2.0, seed=58, dtype="float64"))
    renorm = batch_norm.Renorm(moving_mean, moving_stddev, **clipping)
    eps = 1e-3
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([x, gamma, beta])
        y = batch_norm.batch_norm_train(
            x, gamma, beta, axis=3, epsilon=eps, renorm=renorm, relu=relu, kernels=path
        )[0]
        mu, sigma2 = tf.nn.moments(x, [0, 1, 2])
        sigma = tf.sqrt(sigma2 + eps)
        r = tf.stop_gradient(
            tf.clip_by_value(
                sigma / moving_stddev, clipping.get("rmin", 0), clipping.get("rmax", 1e9)
            )
        )
        d = tf.stop_gradient((mu - moving_mean) / moving_stddev)
        if "dmax" in clipping:
            d = tf.clip_by_value(d, -clipping["dmax"], clipping["dmax"])
        y_ref = gamma * ((x - mu) / sigma * r + d) + beta
        y_ref = tf.nn.relu(y_ref) if relu else y_ref
        loss, loss_ref = _loss(y + 1.0), _loss(y_ref + 1.0)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    assert not np.allclose(r, 1.0) and not np.allclose(d, 0.0)  # the correction is not trivial
    _assert_gradients_equal(tape, loss, loss_ref, [x, gamma, beta])


def test_renorm_layer_updates_keras_statistics_and_round_trips():
    ours, ref = (
        cls(renorm=True, renorm_momentum=0.5, momentum=0.8, renorm_clipping={"rmax": 2.0})
        for cls in (BatchNormalization, keras.layers.BatchNormalization)
    )
    x = _random([16, 4], mean=2.0, std=3.0, seed=59)
    for layer in (ours, ref):
        for _ in range(2):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = _loss(layer(x, training=True))
            layer.grads = tape.gradient(loss, [x, *layer.trainable_weights])
    for a, b in zip(ours.weights, ref.weights, strict=True):
        assert a.path.split("/")[-1] == b.path.split("/")[-1]
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours.grads, ref.grads, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    config = ours.get_config()
    assert BatchNormalization.from_config(config).get_config() == config
