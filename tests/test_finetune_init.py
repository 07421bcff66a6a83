"""keras_bninception.training.init_checkpoint: sources, loading with exclusions, trainable scopes.

The TF-slim source is tf_slim's own inception_v2 (tests/tf_slim_reference.py) with random values,
at depth multiplier 0.25 and 32x32 so that every model builds in about a second.
"""

from __future__ import annotations

import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
import tf_slim_reference

from keras_bninception.models import BNInception
from keras_bninception.training import init_checkpoint as ic

SIZE, DEPTH = 32, 0.25


def _model(classes: int = 5, depth_multiplier: float = DEPTH, **kwargs) -> keras.Model:
    kwargs.setdefault("slim_compatible", True)
    return BNInception(
        weights=None,
        input_shape=(SIZE, SIZE, 3),
        classes=classes,
        classifier_activation=None,
        depth_multiplier=depth_multiplier,
        **kwargs,
    )


def _values(model: keras.Model) -> dict[str, np.ndarray]:
    return {ic.weight_name(layer, w): np.array(w) for layer in model.layers for w in layer.weights}


@pytest.fixture(scope="module")
def slim(tmp_path_factory):
    return tf_slim_reference.build_checkpoint(
        tmp_path_factory.mktemp("slim"), image_size=SIZE, batch_size=1, depth_multiplier=DEPTH
    )


def test_tf_slim_source_loads_and_excludes_the_classifier(slim, caplog):
    source = ic.resolve_init_source(slim.checkpoint)
    assert (source.kind, source.num_classes) == (ic.TF_SLIM, 1001)
    # The directory and the .index file name the same checkpoint.
    assert ic.resolve_init_source(os.path.dirname(slim.checkpoint)) == source
    assert ic.resolve_init_source(slim.checkpoint + ".index") == source

    model = _model(classes=5)
    before = _values(model)
    with caplog.at_level(logging.INFO):
        report = ic.load_init_checkpoint(model, source)
    after = _values(model)
    reader = tf.train.load_checkpoint(slim.checkpoint)
    classifier = {"Logits/Conv2d_1c_1x1/weights", "Logits/Conv2d_1c_1x1/biases"}
    assert set(report.left_at_init) == classifier
    assert set(report.loaded) == set(after) - classifier
    assert len(report.loaded) == len(slim.variable_shapes) - 2
    for name in report.loaded:
        expected = reader.get_tensor("InceptionV2/" + name).reshape(after[name].shape)
        np.testing.assert_array_equal(after[name], expected, err_msg=name)
        assert not np.array_equal(before[name], expected), name  # it really changed
    for name in classifier:  # freshly initialized, untouched by the load
        np.testing.assert_array_equal(after[name], before[name])
    log = caplog.text
    assert f"Initialized {len(report.loaded)} of {len(after)} variables" in log
    assert "Left at their initial values (2):" in log
    assert "Logits/Conv2d_1c_1x1/weights" in log


def test_same_classes_keeps_the_classifier_and_explicit_exclusion(slim):
    source = ic.resolve_init_source(slim.checkpoint)
    model = _model(classes=1001)
    report = ic.load_init_checkpoint(model, source)
    assert report.left_at_init == ()
    logits = np.asarray(model(slim.images, training=False))
    np.testing.assert_allclose(logits, slim.logits, rtol=1e-4, atol=1e-4)

    # Exclusion by scope, by glob, with TF-slim's root, comma-separated.
    model = _model(classes=1001)
    before = _values(model)
    report = ic.load_init_checkpoint(model, source, "InceptionV2/Mixed_5c, */BatchNorm/moving_*")
    assert report.left_at_init
    assert all(n.startswith("Mixed_5c/") or "/BatchNorm/moving_" in n for n in report.left_at_init)
    assert "Mixed_5c/Branch_0/Conv2d_0a_1x1/weights" in report.left_at_init
    assert "Conv2d_2b_1x1/BatchNorm/moving_mean" in report.left_at_init
    after = _values(model)
    for name in report.left_at_init:
        np.testing.assert_array_equal(after[name], before[name])


def test_v1_checkpoint(slim, tmp_path):
    reader = tf.train.load_checkpoint(slim.checkpoint)
    path = str(tmp_path / "inception_v2_v1.ckpt")
    graph = tf.Graph()
    with graph.as_default():
        variables = [
            tf.compat.v1.Variable(reader.get_tensor(name), name=name)
            for name in slim.variable_shapes
        ]
        saver = tf.compat.v1.train.Saver(variables, write_version=tf.compat.v1.train.SaverDef.V1)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, path, write_meta_graph=False)
    assert os.path.isfile(path) and not os.path.exists(path + ".index")
    source = ic.resolve_init_source(path)
    assert (source.kind, source.path, source.num_classes) == (ic.TF_SLIM, path, 1001)
    model = _model(classes=1001)
    ic.load_init_checkpoint(model, source)
    name = "Mixed_4a/Branch_0/Conv2d_0a_1x1/weights"
    np.testing.assert_array_equal(_values(model)[name], reader.get_tensor("InceptionV2/" + name))


def test_keras_sources(tmp_path):
    trained = _model(classes=5, slim_compatible=False)
    for w in trained.weights:  # distinctive values, not the initializers'
        w.assign(np.random.default_rng(0).normal(size=w.shape).astype(np.float32))
    trained.save(tmp_path / "m.keras")
    trained.save_weights(tmp_path / "m.weights.h5")
    expected = _values(trained)

    source = ic.resolve_init_source(tmp_path / "m.keras")
    assert (source.kind, source.num_classes) == (ic.KERAS_MODEL, 5)
    model = _model(classes=3, slim_compatible=False)
    report = ic.load_init_checkpoint(model, source)
    assert set(report.left_at_init) == {
        "Logits/Conv2d_1c_1x1/weights",
        "Logits/Conv2d_1c_1x1/biases",
    }
    got = _values(model)
    for name in report.loaded:
        np.testing.assert_array_equal(got[name], expected[name])
    assert "Conv2d_2b_1x1/BatchNorm/gamma" in report.loaded

    source = ic.resolve_init_source(tmp_path / "m.weights.h5")
    assert (source.kind, source.num_classes) == (ic.KERAS_WEIGHTS, 5)
    model = _model(classes=5, slim_compatible=False)
    report = ic.load_init_checkpoint(
        model,
        source,
        build_source_model=lambda classes: _model(classes=classes, slim_compatible=False),
    )
    assert report.left_at_init == ()
    for name, value in _values(model).items():
        np.testing.assert_array_equal(value, expected[name])


def test_bad_sources_and_patterns(slim, tmp_path):
    with pytest.raises(ValueError, match=r"`init_checkpoint` '.*nope.ckpt' does not exist; it "):
        ic.resolve_init_source(tmp_path / "nope.ckpt")
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"is not a checkpoint; it must be a TF-slim"):
        ic.resolve_init_source(tmp_path / "notes.txt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"holds no checkpoint yet"):
        ic.resolve_init_source(tmp_path / "run")

    source = ic.resolve_init_source(slim.checkpoint)
    # A width that does not fit: every wrong shape listed, nothing assigned.
    model = _model(classes=5, depth_multiplier=0.5)
    before = _values(model)
    with pytest.raises(ValueError) as error:
        ic.load_init_checkpoint(model, source)
    message = str(error.value)
    assert "does not fit the model" in message
    assert "wrong shape (" in message
    assert "Mixed_3b/Branch_1/Conv2d_0a_1x1/weights: source (1, 1, 48, 16), model" in message
    for name, value in _values(model).items():
        np.testing.assert_array_equal(value, before[name])
    # A network that is not tf_slim's (BN on the first convolution, gamma): listed too.
    with pytest.raises(ValueError, match=r"missing from the source \(\d+\):\n  Conv2d_1a_7x7/Ba"):
        ic.load_init_checkpoint(_model(classes=5, slim_compatible=False), source)

    with pytest.raises(ValueError, match=r"`init_exclude` pattern 'Mixed_9z' matches no layer"):
        ic.load_init_checkpoint(model, source, "Logits,Mixed_9z")
    with pytest.raises(ValueError, match=r"`trainable_scopes` pattern 'Logit' matches no layer"):
        ic.apply_trainable_scopes(model, "Mixed_5c,Logit")


def test_trainable_scopes_and_frozen_batch_norm():
    model = _model()
    trainable = ic.apply_trainable_scopes(model, "Mixed_5c,InceptionV2/Logits", True)
    assert "Logits_Conv2d_1c_1x1" in trainable
    assert "Mixed_5c_Branch_0_Conv2d_0a_1x1" in trainable
    assert "Mixed_5b_Branch_0_Conv2d_0a_1x1" not in trainable
    assert not any(name.endswith("BatchNorm") for name in trainable)
    names = {v.path for v in model.trainable_weights}
    assert names and all("Mixed_5c" in n or "Logits" in n for n in names)
    assert not any("BatchNorm" in n for n in names)
    # Only BN frozen: every convolution trains, no BN variable does.
    model = _model()
    ic.apply_trainable_scopes(model, None, freeze_batch_norm=True)
    kernels = [w for w in model.weights if w.name.endswith(("kernel", "bias"))]
    assert {id(w) for w in model.trainable_weights} == {id(w) for w in kernels}


def test_background_class_mapping():
    source = ic.InitSource(ic.TF_SLIM, "x", 1001)
    assert ic.has_background_class(source, 1000)
    assert not ic.has_background_class(source, 1001)
    assert not ic.has_background_class(ic.InitSource(ic.RUN, "x", 1001), 1000)
    inputs = keras.Input((4,))
    base = keras.Model(inputs, keras.layers.Dense(4, name="Logits_Conv2d_1c_1x1")(inputs))
    mapped = ic.without_background_class(base)
    x = np.eye(4, dtype=np.float32)
    np.testing.assert_array_equal(mapped(x), np.asarray(base(x))[:, 1:])
    assert mapped.output.shape == (None, 3)
