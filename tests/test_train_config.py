"""The trainer's configuration: the paper's recipes, option checks, schedule, progress line."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from keras_bninception.models import BNInception
from keras_bninception.training import RECIPES, TrainConfig, apply_recipe
from keras_bninception.training.optimizer import build_optimizer, learning_rate_schedule
from keras_bninception.training.progress import Progress


def test_recipes_follow_section_4_2():
    base = TrainConfig()
    inception = apply_recipe(base, "inception")
    assert inception.optimizer.learning_rate == pytest.approx(0.0015)
    assert (
        inception.model.batch_norm,
        inception.model.dropout_rate,
        inception.trainer.batch_size,
    ) == (False, 0.4, 32)
    assert inception.optimizer.num_epochs_per_decay == 8.0
    assert inception.optimizer.learning_rate_decay_factor == pytest.approx(0.96)
    bn_baseline = apply_recipe(base, "bn_baseline")
    # "Same as Inception with Batch Normalization before each nonlinearity".
    assert bn_baseline.replace(batch_norm=False) == inception
    bn_x5 = apply_recipe(base, "bn_x5")
    assert bn_x5.model.batch_norm and bn_x5.model.dropout_rate == 0.0
    assert bn_x5.optimizer.learning_rate == pytest.approx(5 * inception.optimizer.learning_rate)
    assert bn_x5.trainer.weight_decay == pytest.approx(inception.trainer.weight_decay / 5)
    assert bn_x5.optimizer.num_epochs_per_decay == pytest.approx(
        inception.optimizer.num_epochs_per_decay / 6
    )
    bn_x30 = apply_recipe(base, "bn_x30")
    assert bn_x30.optimizer.learning_rate == pytest.approx(30 * inception.optimizer.learning_rate)
    assert bn_x30.replace(learning_rate=bn_x5.optimizer.learning_rate) == bn_x5
    sigmoid = apply_recipe(base, "bn_x5_sigmoid")
    assert sigmoid.replace(activation="relu") == bn_x5
    assert sigmoid.model.activation == "sigmoid"
    assert set(RECIPES) == {"inception", "bn_baseline", "bn_x5", "bn_x30", "bn_x5_sigmoid"}


def test_explicit_options_override_the_recipe():
    config = TrainConfig().replace(learning_rate=0.1, batch_size=8)
    result = apply_recipe(config, "bn_x30", explicit=["learning_rate"])
    assert result.optimizer.learning_rate == 0.1  # kept: given explicitly
    assert result.trainer.batch_size == 32  # the recipe's: 8 was not marked explicit
    assert apply_recipe(config, None) is config


def test_unknown_recipe_names_the_choices():
    with pytest.raises(ValueError, match=r"must be one of \['bn_baseline', .*; received recipe="):
        apply_recipe(TrainConfig(), "bn_x100")


@pytest.mark.parametrize(
    "change, pattern",
    [
        (dict(batch_size=0), r"`batch_size` must be an integer >= 1; received batch_size=0"),
        (dict(learning_rate=-1.0), r"`learning_rate` .* > 0; received learning_rate=-1\.0"),
        (dict(learning_rate=float("nan")), r"`learning_rate` .* > 0"),
        (dict(image_size=16), r"`image_size` must be an integer >= 32"),
        (dict(momentum=1.0), r"`momentum` must be in \[0\.0, 1\.0\)"),
        (dict(label_smoothing=-0.1), r"`label_smoothing`"),
        (dict(optimizer="lamb"), r"`optimizer` must be one of \['momentum'"),
        (dict(mode="predict"), r"`mode` must be one of \['train', 'eval'"),
        (dict(distribution_strategy="ps"), r"one of \['default', 'one_device', 'mirrored'"),
        (dict(deterministic=True, seed=None), r"`deterministic=True` needs a `seed`"),
        (dict(validation_split=1.0), r"`validation_split` must be in \[0\.0, 1\.0\)"),
        (dict(seed=2**32), r"`seed` must be an integer in \[0, 4294967295\]; received seed="),
        (dict(learning_rate_decay_factor=1.5), r"`learning_rate_decay_factor` .* \(0, 1\]"),
        (dict(train_steps=0, epochs=0.0), r"`epochs` must be a finite number > 0"),
        (
            dict(bn_momentum=1.5),
            r"`bn_momentum` must be in \[0\.0, 1\.0\); received bn_momentum=1\.5",
        ),
    ],
)
def test_out_of_range_options_are_rejected(change, pattern):
    with pytest.raises(ValueError, match=pattern):
        TrainConfig(model_dir="/tmp/x").replace(**change).validate()


def test_sections_use_bninception_argument_names():
    config = TrainConfig().replace(
        bn_momentum=0.5, bn_epsilon=1e-4, sync_batch_norm=True, momentum=0.8, optimizer="adam"
    )
    assert (config.model.momentum, config.model.epsilon, config.model.synchronized) == (
        0.5,
        1e-4,
        True,
    )
    assert (config.optimizer.momentum, config.optimizer.name) == (0.8, "adam")
    # The model section is BNInception's keyword arguments, unrenamed.
    accepted = inspect.signature(BNInception).parameters
    assert set(dataclasses.asdict(config.model)) <= set(accepted)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match=r"`bn_mometum` is not an option; .*bn_mometum=0\.5"):
        TrainConfig().replace(bn_mometum=0.5)
    with pytest.raises(ValueError, match=r"`model` must be a mapping of \['activation'"):
        TrainConfig.from_dict({"model": {"bn_momentum": 0.5}})


def test_defaults_are_valid():
    """Every default is valid; only `model_dir` has none (runs must not share a directory)."""
    assert TrainConfig(model_dir="runs/a").validate() == TrainConfig(model_dir="runs/a")


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


def test_seed_flag_is_bounded_at_parse_time():
    from absl import flags

    from trainers import train

    with pytest.raises(flags.IllegalFlagValueError, match=r"--seed=4294967296"):
        train.FLAGS(["train", "--seed=4294967296", "--model_dir=/tmp/x"])
    train.FLAGS.unparse_flags()
    assert train.FLAGS(["train", "--seed=4294967295", "--model_dir=/tmp/x"]) == ["train"]
    assert train.FLAGS.seed == 2**32 - 1
    train.FLAGS.unparse_flags()


def test_model_dir_is_required(capsys):
    """No shared default where two runs would collide and resume each other."""
    from trainers import train

    try:
        with pytest.raises(SystemExit) as exit_info:
            train.parse_flags(["train", "--dataset=digits"])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("error: flag --model_dir=None: ")
        assert "--model_dir must have a value other than None" in err
    finally:
        train.FLAGS.unparse_flags()
    assert TrainConfig().model_dir is None
    with pytest.raises(ValueError, match=r"`model_dir` must be a directory path; received "):
        TrainConfig().validate()


def test_learning_rate_follows_the_global_batch_with_warm_up():
    """Goyal et al. 2017: lr = base x global batch / reference batch, linear warm-up."""
    from keras_bninception.training.experiment import learning_rate_plan

    # bn_x30 at 8 x 32 images: 8 x 0.045, warmed up over 5 epochs of 1,281,167 / 256 steps.
    config = apply_recipe(
        TrainConfig(model_dir="m").replace(batch_size=256), "bn_x30", explicit=["batch_size"]
    )
    plan = learning_rate_plan(config, 1_281_167)
    assert plan["learning_rate"] == pytest.approx(0.36)
    assert (plan["warmup_epochs"], plan["warmup_steps"]) == (5.0, 25_023)
    assert plan["rule"] == "0.045 x global batch 256 / reference batch 32"
    # At the recipe's own batch: unchanged, no warm-up; an explicit warm-up wins.
    plan = learning_rate_plan(apply_recipe(TrainConfig(), "bn_x30"), 1_281_167)
    assert (plan["learning_rate"], plan["warmup_steps"]) == (0.045, 0)
    config = config.replace(warmup_epochs=0.5)
    assert learning_rate_plan(config, 1_281_167)["warmup_steps"] == 2503
    # Without a reference batch (the default): the learning rate as given.
    plain = learning_rate_plan(TrainConfig().replace(batch_size=256), 1000)
    assert (plain["learning_rate"], plain["warmup_steps"]) == (0.0075, 0)
    with pytest.raises(ValueError, match=r"`reference_batch_size` must be an integer >= 0"):
        TrainConfig(model_dir="m").replace(reference_batch_size=-1).validate()
    with pytest.raises(ValueError, match=r"`warmup_epochs` must be in \[0\.0, inf\)"):
        TrainConfig(model_dir="m").replace(warmup_epochs=-1.0).validate()


def test_warm_up_then_staircase_decay():
    schedule = learning_rate_schedule(0.4, 0.5, 1.0, steps_per_epoch=10, warmup_steps=4)
    rates = [float(schedule(step)) for step in range(0, 22, 1)]
    np.testing.assert_allclose(rates[:5], [0.1, 0.2, 0.3, 0.4, 0.4], rtol=1e-6)
    np.testing.assert_allclose(rates[9:12], [0.4, 0.2, 0.2], rtol=1e-6)  # the decay's own steps
    assert rates[21] == pytest.approx(0.1)
    again = type(schedule).from_config(schedule.get_config())
    assert float(again(2)) == pytest.approx(0.3) and float(again(15)) == pytest.approx(0.2)


def test_small_batch_norm_batches_warn():
    from keras_bninception.training.experiment import small_batch_norm_warning

    config = TrainConfig(model_dir="m").replace(batch_size=32)
    message = small_batch_norm_warning(config, replicas=8)
    assert message == (
        "Batch Normalization sees 4 image(s) per replica (global batch 32 over 8 replica(s)), "
        "fewer than 16: its batch statistics are noisy; use --sync_batch_norm (statistics over "
        "all replicas) or a larger --batch_size."
    )
    assert small_batch_norm_warning(config, replicas=2) is None  # 16 per replica
    assert small_batch_norm_warning(config.replace(sync_batch_norm=True), replicas=8) is None
    assert small_batch_norm_warning(config.replace(batch_norm=False), replicas=8) is None
    assert small_batch_norm_warning(config.replace(mode="eval"), replicas=8) is None  # moving
    one = small_batch_norm_warning(config.replace(batch_size=8), replicas=1)
    assert one.endswith("noisy; use a larger --batch_size.")


def test_eval_takes_the_recorded_run_but_not_how_it_ran():
    from keras_bninception.training.experiment import _with_recorded_run

    recorded = apply_recipe(TrainConfig(model_dir="m"), "inception").replace(
        depth_multiplier=0.5,
        batch_size=64,
        mixed_precision="float16",
        background_class=True,
        distribution_strategy="mirrored",
        eval_every=5,
        init_checkpoint="imagenet",
        log_every=7,
    )
    given = TrainConfig(mode="eval", model_dir="m").replace(optimizer="adam", bn_momentum=0.5)
    evaluated = _with_recorded_run(given, recorded)
    # The network, precision and recipe left at their defaults are the run's ...
    assert evaluated.model == dataclasses.replace(recorded.model, momentum=0.5)
    assert (evaluated.runtime.mixed_precision, evaluated.init.background_class) == ("float16", True)
    assert evaluated.optimizer == dataclasses.replace(recorded.optimizer, name="adam")
    assert evaluated.trainer.batch_size == 64 and evaluated.mode == "eval"
    # ... how it ran, and what it started from, are this process's.
    assert (
        evaluated.runtime.distribution_strategy == "default"
        and evaluated.init.init_checkpoint is None
    )
    assert (evaluated.trainer.eval_every, evaluated.trainer.log_every) == (0, 100)
