"""The custom training loop in-process: MirroredStrategy == one device, TFDS (mocked) and folders.

Small BN-Inception (depth multiplier 0.25, 32x32 inputs) to keep each trace short.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from keras_bninception.models import BNInception
from keras_bninception.training import (
    TrainConfig,
    Trainer,
    TrainingError,
    build_model,
    experiment,
    run,
)
from keras_bninception.training.config import TrainerConfig
from keras_bninception.training.run_config import load_run_config, save_run_config

SIZE, CLASSES, GLOBAL_BATCH = 32, 10, 8


def _small_model(weights=None) -> keras.Model:
    model = BNInception(
        weights=None,
        input_shape=(SIZE, SIZE, 3),
        classes=CLASSES,
        classifier_activation=None,
        depth_multiplier=0.25,
        momentum=0.9,
        synchronized=True,
    )
    if weights is not None:
        model.set_weights(weights)
    return model


def _fixed_batches(context: tf.distribute.InputContext, start_step: int) -> tf.data.Dataset:
    """The same 3 global batches for any number of replicas (replicas take consecutive parts)."""
    rng = np.random.default_rng(7)
    images = rng.uniform(-1, 1, (3 * GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.float32)
    labels = rng.integers(0, CLASSES, 3 * GLOBAL_BATCH).astype(np.int32)
    per_replica = context.get_per_replica_batch_size(GLOBAL_BATCH)
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(per_replica).repeat()


def _train(strategy, weights, model_dir) -> tuple[list[float], list[np.ndarray], list]:
    """Two steps; returns both losses, the weights after the first and before it."""
    trainer = Trainer(
        strategy,
        lambda: _small_model(weights),
        lambda: keras.optimizers.SGD(0.01, momentum=0.9),
        str(model_dir),
        TrainerConfig(
            batch_size=GLOBAL_BATCH, weight_decay=4e-5, checkpoint_every=100, log_every=1
        ),
    )
    initial = trainer.model.get_weights()
    losses = [trainer.train(_fixed_batches, 1)["loss"]]
    after_one_step = [np.array(w) for w in trainer.model.weights]
    losses.append(trainer.train(_fixed_batches, 2)["loss"])
    return losses, after_one_step, initial


@pytest.mark.slow
def test_mirrored_two_replicas_match_one_device(mirrored_cpus, tmp_path):
    """Same global batch, synchronized BN: same losses and updates, to float tolerance."""
    one_device = tf.distribute.OneDeviceStrategy("/cpu:0")
    one_losses, one_weights, weights = _train(one_device, None, tmp_path)
    mirrored = mirrored_cpus
    assert mirrored.num_replicas_in_sync == 2
    two_losses, two_weights, _ = _train(mirrored, weights, tmp_path / "mirrored")
    # Only a few steps compare: at 32x32 with batches of 8, BN in the last modules normalizes
    # over 8 values, and float rounding differences grow chaotically from the third step on.
    np.testing.assert_allclose(two_losses[0], one_losses[0], rtol=1e-5)  # same weights, batch
    np.testing.assert_allclose(two_losses[1], one_losses[1], rtol=1e-3)  # after one update
    moved = 0
    for before, one, two in zip(weights, one_weights, two_weights, strict=True):
        update = np.abs(one - before).max()
        # The first step's updates (kernels, γ, β, moving statistics) agree to 0.1 % of their
        # size (measured: 2.4e-4 at most, 2.5e-5 typically).
        np.testing.assert_allclose(two - before, one - before, atol=1e-3 * update + 1e-9)
        moved += update > 0
    # Kernels, BN parameters and moving statistics all moved (the comparison is not vacuous).
    assert moved > 0.9 * len(weights)


def _config(tmp_path, **kwargs) -> TrainConfig:
    values = dict(
        image_size=SIZE,
        depth_multiplier=0.25,
        batch_size=4,
        train_steps=2,
        checkpoint_every=2,
        log_every=1,
        model_dir=str(tmp_path / "run"),
        seed=0,
        bn_momentum=0.9,
    )
    values.update(kwargs)
    return TrainConfig().replace(**values)


def _check_run(results: dict, model_dir: str, eval_examples: int) -> None:
    assert results["step"] == 2
    assert np.isfinite(results["train"]["loss"])
    assert results["eval"]["num_examples"] == eval_examples
    with open(os.path.join(model_dir, "metrics.json")) as f:
        written = json.load(f)
    assert written["eval"]["top_1_accuracy"] == results["eval"]["top_1_accuracy"]
    assert tf.train.latest_checkpoint(os.path.join(model_dir, "checkpoints")).endswith("ckpt-2")
    assert os.listdir(os.path.join(model_dir, "logs", "train"))


@pytest.mark.slow
def test_imagenet2012_mock_data_mirrored_float16(logical_cpus, tmp_path):
    """Mocked imagenet2012 on two replicas, float16 with dynamic loss scaling, synchronized BN."""
    with tfds.testing.mock_data(num_examples=8):
        config = _config(
            tmp_path,
            dataset="imagenet2012",
            eval_steps=1,
            distribution_strategy="mirrored",
            mixed_precision="float16",
            sync_batch_norm=True,
        )
        results = run(config)
    assert results["num_replicas"] == 2
    _check_run(results, config.model_dir, eval_examples=4)
    assert 0.0 <= results["eval"]["top_5_accuracy"] <= 1.0
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    checkpoint = tf.train.load_checkpoint(os.path.join(config.model_dir, "checkpoints"))
    scales = [n for n in checkpoint.get_variable_to_shape_map() if "dynamic_scale" in n]
    assert len(scales) == 1 and checkpoint.get_tensor(scales[0]) > 1.0  # saved with the rest


def _flat_folder(root, counts) -> str:
    """root/<label>/*.png (keras.utils.image_dataset_from_directory's layout), `counts` a label."""
    rng = np.random.default_rng(0)
    for label, colour in (("blue", (20, 40, 230)), ("red", (230, 30, 20))):
        os.makedirs(root / label)
        for i in range(counts):
            pixels = np.clip(np.array(colour) + rng.integers(-15, 16, (40, 48, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(root / label / f"{i}.png")
    return str(root)


def test_image_folder_bfloat16(tmp_path, monkeypatch):
    config = _config(
        tmp_path,
        dataset="image_folder",
        data_dir=_flat_folder(tmp_path / "images", 7),
        validation_split=0.4,  # round(0.4 * 7) = 3 images of each label held out
        mixed_precision="bfloat16",
        seed=None,
    )
    results = run(config)
    seed = results["config"]["runtime"]["seed"]  # drawn once, shared by the workers, recorded
    assert isinstance(seed, int) and 0 <= seed < 2**32
    _check_run(results, config.model_dir, eval_examples=6)
    assert results["eval"]["split"] == "validation" and results["eval"]["held_out"] is True
    # Rerunning the same command resumes: nothing left to train, the checkpoint is evaluated.
    again = run(config)
    assert again["train"]["train_seconds"] == 0.0
    assert again["weights_sha256"] == results["weights_sha256"]
    assert again["config"]["runtime"]["seed"] == seed  # the run's recorded seed, not a new one
    # Resuming with options that change the run's meaning is refused, listing them all.
    with pytest.raises(
        TrainingError,
        match=r"resuming would silently change it: --image_size=48 \(the run has 32\); "
        r"--batch_size=2 \(the run has 4\)\. Rerun with the run's options",
    ):
        run(config.replace(image_size=48, batch_size=2))
    # config.json beside the checkpoints rebuilds the trained network: the checkpoint restores
    # into it exactly.
    loaded, class_names = load_run_config(config.model_dir)
    assert loaded == config.replace(seed=seed) and class_names == ["blue", "red"]
    model = build_model(loaded, len(class_names))
    tf.train.Checkpoint(model=model).restore(
        tf.train.latest_checkpoint(os.path.join(config.model_dir, "checkpoints"))
    ).assert_existing_objects_matched()
    # --mode=eval with only the run's directory evaluates the network as the run built it, on
    # what it held out: the options left at their defaults are the run's (config.json: depth,
    # BN momentum, bfloat16, batch, data, held-out split), so its evaluation is the run's own. The
    # learning-rate plan is resolved once per run and passed on.
    evaluate = TrainConfig(mode="eval", model_dir=config.model_dir)
    plans = []
    real_plan = experiment.learning_rate_plan
    monkeypatch.setattr(
        experiment, "learning_rate_plan", lambda *args: plans.append(args) or real_plan(*args)
    )
    evaluated = run(evaluate)["eval"]
    assert len(plans) == 1
    assert evaluated["split"] == "validation" and evaluated["num_examples"] == 6
    assert evaluated["top_1_accuracy"] == results["eval"]["top_1_accuracy"]
    assert evaluated["loss"] == pytest.approx(results["eval"]["loss"], rel=1e-6)
    # Training-only options given are used, not refused (the optimizer is not restored).
    other = run(evaluate.replace(optimizer="adam", bn_momentum=0.5, sync_batch_norm=True))["eval"]
    assert other["top_1_accuracy"] == evaluated["top_1_accuracy"]
    # An option that would evaluate another network or on other data is refused, listed with
    # the run's value, before anything is written.
    written = _files(config.model_dir)
    for wrong, given in (
        (dict(depth_multiplier=0.5), r"--depth_multiplier=0\.5 \(the run has 0\.25\)"),
        (dict(validation_split=0.2), r"--validation_split=0\.2 \(the run has 0\.4\)"),
        (dict(seed=seed ^ 1), rf"--seed={seed ^ 1} \(the run has {seed}: it chose the held-out"),
    ):
        with pytest.raises(
            TrainingError, match=rf"--mode=eval would not evaluate it as trained: {given}"
        ):
            run(evaluate.replace(**wrong))
    assert _files(config.model_dir) == written


def _files(directory: str) -> dict:
    return {p: p.read_bytes() for p in sorted(Path(directory).rglob("*")) if p.is_file()}


def test_evaluation_on_the_training_split_is_not_called_held_out(tmp_path, capsys):
    from trainers.train import summary

    folder = _flat_folder(tmp_path / "images", 2)  # root/<label>/*, no validation split
    config = _config(tmp_path, dataset="image_folder", data_dir=folder, train_steps=1)
    results = run(config)
    assert results["eval"]["split"] == "train" and results["eval"]["held_out"] is False
    with open(os.path.join(config.model_dir, "metrics.json")) as f:
        assert json.load(f)["eval"]["held_out"] is False
    text = summary(config, results)
    assert "Held-out" not in text and "held out" not in text.replace("not held out", "")
    assert "Training split (not held out; train, 4 images): top-1 " in text
    assert "Set --validation_split" in text
    held = {**results, "eval": {**results["eval"], "split": "validation", "held_out": True}}
    assert "Held-out (validation, 4 images): top-1 " in summary(config, held)


def test_run_config_round_trip(tmp_path):
    config = _config(tmp_path, dataset="imagenet2012", bn_epsilon=1e-5, mixed_precision="float16")
    path = save_run_config(str(tmp_path / "run"), config, ["cat", "dog", "tench"])
    assert path == os.path.join(config.model_dir, "config.json")
    assert sorted(os.listdir(config.model_dir)) == ["config.json"]  # no temporary file left
    with open(path) as f:
        written = json.load(f)
    assert written["model"]["epsilon"] == 1e-5 and written["num_classes"] == 3
    assert load_run_config(config.model_dir) == (config, ["cat", "dog", "tench"])
    with pytest.raises(ValueError, match=r"`model_dir` must hold the config\.json"):
        load_run_config(str(tmp_path / "elsewhere"))
    with open(path, "w") as f:
        f.write('{"model": {"momentum": 0.9}, "class_names": ["a"]')  # truncated
    with pytest.raises(ValueError, match=r"config\.json is not a run configuration"):
        load_run_config(config.model_dir)


def test_agreed_value_is_replica_zeros(mirrored_cpus):
    from keras_bninception.training.strategy import agreed_value, any_replica

    strategy = mirrored_cpus
    assert agreed_value(strategy, 2**32 - 1) == 2**32 - 1  # int64, not truncated
    assert any_replica(strategy, True) and not any_replica(strategy, False)


def test_corrupt_image_in_a_streamed_split_is_named(tmp_path, monkeypatch):
    from keras_bninception.data import DataError, sources

    monkeypatch.setattr(sources, "IN_MEMORY_MAX_BYTES", 0)  # stream the folder from disk
    for label in ("blue", "red"):
        os.makedirs(tmp_path / "images" / "train" / label)
        for i in range(3):
            pixels = np.full((36, 36, 3), 60 * i + (label == "red") * 100, np.uint8)
            Image.fromarray(pixels).save(tmp_path / "images" / "train" / label / f"{i}.png")
    broken = tmp_path / "images" / "train" / "red" / "broken.jpg"
    broken.write_bytes(b"not an image at all")
    config = _config(
        tmp_path,
        dataset="image_folder",
        data_dir=str(tmp_path / "images"),
        mode="train",
        train_steps=4,
        checkpoint_every=4,
        log_every=4,
    )
    with pytest.raises(
        DataError,
        match=rf"^corrupt image file {broken}: not a JPEG.* \(--skip_corrupt_images leaves",
    ):
        run(config)


def test_global_batch_must_divide_over_replicas(logical_cpus, tmp_path):
    config = _config(tmp_path, distribution_strategy="mirrored", batch_size=3)
    with pytest.raises(
        ValueError,
        match=r"global batch size \(3\) must be divisible by the "
        r"number of replicas \(2\)",
    ):
        run(config)
    assert not os.path.exists(config.model_dir)


def test_jit_compile_follows_the_same_loss_trajectory(tmp_path):
    """--jit_compile (XLA over the whole replica step) trains like the step without it."""
    from keras_bninception.layers import BatchNormalization

    def model_fn() -> keras.Model:  # conv -> BN -> ReLU, small enough to compile fast
        keras.utils.set_random_seed(3)
        inputs = keras.Input((SIZE, SIZE, 3))
        h = keras.layers.Conv2D(16, 3, strides=2, use_bias=False)(inputs)
        h = keras.layers.ReLU()(BatchNormalization(momentum=0.9)(h))
        h = keras.layers.GlobalAveragePooling2D()(h)
        return keras.Model(inputs, keras.layers.Dense(CLASSES)(h))

    trajectories, kernels = [], []
    for jit_compile in (False, True):
        trainer = Trainer(
            tf.distribute.OneDeviceStrategy("/cpu:0"),
            model_fn,
            lambda: keras.optimizers.SGD(0.1, momentum=0.9),
            str(tmp_path / f"jit_{jit_compile}"),
            TrainerConfig(
                batch_size=GLOBAL_BATCH,
                weight_decay=4e-5,
                checkpoint_every=100,
                log_every=1,
                jit_compile=jit_compile,
            ),
        )
        trajectories.append([trainer.train(_fixed_batches, step)["loss"] for step in (1, 2, 3, 4)])
        kernels.append(_tensorflow_kernels_run(trainer, tmp_path))
    op_by_op, compiled = trajectories
    assert len(set(op_by_op)) == 4, op_by_op  # the loss moves: equal trajectories say something
    np.testing.assert_allclose(compiled, op_by_op, rtol=1e-5)

    # XLA really ran the step: the convolution, its gradients and the classifier's matmul ran as
    # TensorFlow kernels without --jit_compile (the check can fail) and not at all with it. On a
    # CPU where TensorFlow's oneDNN rewrite is on, they run as e.g. _MklNativeConv2D, _MklMatMul.
    op_by_op_kernels, compiled_kernels = (
        {name.removeprefix("_MklNative").removeprefix("_Mkl") for name in run} for run in kernels
    )
    step_kernels = {"Conv2D", "Conv2DBackpropFilter", "MatMul"}
    assert step_kernels <= op_by_op_kernels, " ".join(sorted(op_by_op_kernels))
    assert not step_kernels & compiled_kernels, " ".join(sorted(compiled_kernels))


def _tensorflow_kernels_run(trainer: Trainer, tmp_path) -> set[str]:
    """The types of the TensorFlow kernels (not XLA computations) run by a 5th training step."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    logdir = tmp_path / f"profile_{len(os.listdir(tmp_path))}"
    tf.profiler.experimental.start(str(logdir))
    try:
        trainer.train(_fixed_batches, 5)
    finally:
        tf.profiler.experimental.stop()
    (path,) = logdir.rglob("*.xplane.pb")
    space = xplane_pb2.XSpace.FromString(path.read_bytes())
    types = set()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:  # a TensorFlow kernel's event is named "op_name:OpType"
            types.update(names[e.metadata_id].rpartition(":")[2].strip() for e in line.events)
    return types
