"""The trainer's configuration: the paper's recipes, option checks, schedule, progress line."""

from __future__ import annotations

import dataclasses

import pytest

from keras_bninception.training import RECIPES, TrainConfig, apply_recipe
from keras_bninception.training.optimizer import build_optimizer, learning_rate_schedule
from keras_bninception.training.progress import Progress


def test_recipes_follow_section_4_2():
    base = TrainConfig()
    inception = apply_recipe(base, "inception")
    assert inception.learning_rate == pytest.approx(0.0015)
    assert (inception.batch_norm, inception.dropout_rate, inception.batch_size) == (False, 0.4, 32)
    assert inception.num_epochs_per_decay == 8.0
    assert inception.learning_rate_decay_factor == pytest.approx(0.96)
    bn_baseline = apply_recipe(base, "bn_baseline")
    # "Same as Inception with Batch Normalization before each nonlinearity".
    assert dataclasses.replace(bn_baseline, batch_norm=False) == inception
    bn_x5 = apply_recipe(base, "bn_x5")
    assert bn_x5.batch_norm and bn_x5.dropout_rate == 0.0
    assert bn_x5.learning_rate == pytest.approx(5 * inception.learning_rate)
    assert bn_x5.weight_decay == pytest.approx(inception.weight_decay / 5)
    assert bn_x5.num_epochs_per_decay == pytest.approx(inception.num_epochs_per_decay / 6)
    bn_x30 = apply_recipe(base, "bn_x30")
    assert bn_x30.learning_rate == pytest.approx(30 * inception.learning_rate)
    assert dataclasses.replace(bn_x30, learning_rate=bn_x5.learning_rate) == bn_x5
    sigmoid = apply_recipe(base, "bn_x5_sigmoid")
    assert dataclasses.replace(sigmoid, activation="relu") == bn_x5
    assert sigmoid.activation == "sigmoid"
    assert set(RECIPES) == {"inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid"}


def test_explicit_options_override_the_recipe():
    config = dataclasses.replace(TrainConfig(), learning_rate=0.1, batch_size=8)
    result = apply_recipe(config, "bn_x30", explicit=["learning_rate"])
    assert result.learning_rate == 0.1  # kept: given explicitly
    assert result.batch_size == 32  # the recipe's: 8 was not marked explicit
    assert apply_recipe(config, None) is config


def test_unknown_recipe_names_the_choices():
    with pytest.raises(ValueError, match=r"should be one of \['bn_baseline', .*Received: recipe="):
        apply_recipe(TrainConfig(), "bn_x100")


@pytest.mark.parametrize(
    "change, pattern",
    [
        (dict(batch_size=0), r"`batch_size` .* integer >= 1\. Received: batch_size=0"),
        (dict(learning_rate=-1.0), r"`learning_rate` .* > 0\. Received: learning_rate=-1\.0"),
        (dict(learning_rate=float("nan")), r"`learning_rate` .* > 0"),
        (dict(image_size=16), r"`image_size` argument should be an integer >= 32"),
        (dict(momentum=1.0), r"`momentum` argument should be in \[0\.0, 1\.0\)"),
        (dict(label_smoothing=-0.1), r"`label_smoothing`"),
        (dict(optimizer="lamb"), r"`optimizer` argument should be one of \['momentum'"),
        (dict(mode="predict"), r"`mode` argument should be one of \['train', 'eval'"),
        (dict(distribution_strategy="ps"), r"one of \['default', 'one_device', 'mirrored'"),
        (dict(deterministic=True, seed=None), r"`deterministic=True` needs a `seed`"),
        (dict(learning_rate_decay_factor=1.5), r"`learning_rate_decay_factor` .* \(0, 1\]"),
        (dict(train_steps=0, epochs=0.0), r"`epochs` argument should be a finite number > 0"),
    ],
)
def test_out_of_range_options_are_rejected(change, pattern):
    with pytest.raises(ValueError, match=pattern):
        dataclasses.replace(TrainConfig(), **change).validate()


def test_defaults_are_valid():
    assert TrainConfig().validate() == TrainConfig()


def test_learning_rate_decays_by_staircase():
    schedule = learning_rate_schedule(0.045, 0.96, num_epochs_per_decay=2.0, steps_per_epoch=10)
    values = [float(schedule(step)) for step in (0, 19, 20, 39, 40)]
    assert values == pytest.approx([0.045, 0.045, 0.045 * 0.96, 0.045 * 0.96, 0.045 * 0.96**2])


def test_float16_uses_loss_scaling():
    plain = build_optimizer("momentum", 0.1)
    scaled = build_optimizer("momentum", 0.1, mixed_precision="float16")
    assert type(plain).__name__ == "SGD" and plain.momentum == 0.9
    assert scaled.inner_optimizer.__class__ is plain.__class__
    assert float(scaled.scale_loss(1.0)) > 1.0
    assert type(build_optimizer("rmsprop", 0.1, mixed_precision="bfloat16")).__name__ == "RMSprop"
    with pytest.raises(ValueError, match=r"one of \['momentum', 'sgd', 'rmsprop', 'adam'\]"):
        build_optimizer("adagrad", 0.1)


def test_progress_line():
    progress = Progress(total_steps=600, global_batch_size=64, start_step=0)
    line = progress.line(120, loss=0.81234, accuracy=0.7422, lr=0.0075, images_per_sec=320.0)
    # 480 steps left * 64 images / 320 img/s = 96 s.
    assert line == (
        "step 120/600 (20%)  loss 0.8123  top-1 74.22%  lr 0.0075  320.0 img/s  ETA 0:01:36"
    )
