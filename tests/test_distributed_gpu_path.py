"""The path a GPU takes, pinned on two logical CPUs: whole BN-Inception, `Trainer`, mirrored.

With the GPU's BN kernels forced (`helpers.force_accelerator_bn_path`), steps of the real trainer
(`build_trainer`, as `run()` builds it) over two replicas, in float32, mixed float16 and mixed
bfloat16, synchronized BN or not, with and without `jit_compile`, must

- agree with the CPU path's steps (blocked reductions) from the same weights and data;
- hold only what a GPU runs: no custom (CPU-only) op, no host callback, no loop kernel besides
  the training loop itself (`helpers.non_accelerator_ops` on the traced step's graph);
- all-reduce the gradients once per step, loss scaling included.

Tiny on purpose (64x64 images, width 0.25, global batch 8, two steps): each mode traces the
network once, and every factor is covered by some mode rather than all their combinations. (At
64x64 the first layers hold two blocks of rows a replica, so the CPU path's step runs its blocked
reductions there; smaller tensors take the single reduces on CPUs too.)
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from helpers import (
    force_accelerator_bn_path,
    force_cpu_bn_path,
    non_accelerator_ops,
)

from keras_bninception import data
from keras_bninception.training import TrainConfig, build_trainer

STEPS, BATCH, SIZE = 2, 8, 64


def _batches(context: tf.distribute.InputContext, start_step: int) -> tf.data.Dataset:
    """Fixed random images and digit labels: each replica its consecutive part of each global
    batch, the same for every run (the digits pipeline's order may vary between runs)."""
    rng = np.random.default_rng(7)
    images = rng.uniform(-1, 1, (STEPS * BATCH, SIZE, SIZE, 3)).astype(np.float32)
    labels = rng.integers(0, 10, STEPS * BATCH).astype(np.int32)
    per_replica = context.get_per_replica_batch_size(BATCH)
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(per_replica)
    # One pipeline feeds both replicas, in turn: a step takes BATCH / per_replica batches.
    return dataset.skip(start_step * (BATCH // per_replica)).repeat()


def _config(tmp_path, name: str, **options) -> TrainConfig:
    values = dict(
        dataset="digits",
        image_size=SIZE,
        depth_multiplier=0.25,
        bn_momentum=0.9,
        batch_size=BATCH,
        train_steps=STEPS,
        checkpoint_every=100,
        log_every=1,
        model_dir=str(tmp_path / name),
        seed=0,
    )
    return TrainConfig().replace(**(values | options))


def _train(strategy, config: TrainConfig, path, initial=None) -> dict:
    """`STEPS` steps from `initial` weights (or fresh ones), BN's kernels forced by the context
    manager `path`: their losses, the weights before and after the first, the number of
    trainable parameters and the traced step's graph."""
    keras.utils.set_random_seed(0)
    # Built and traced in the scope: BN layers keep the path they are constructed with (the
    # replicas' threads do not inherit the scope itself).
    with path():
        trainer, _, _ = build_trainer(config, data.get_info("digits"), strategy)
        if initial is not None:
            trainer.model.set_weights(initial)
        result = {"initial": trainer.model.get_weights(), "losses": []}
        for step in range(1, STEPS + 1):
            result["losses"].append(trainer.train(_batches, step)["loss"])
            if step == 1:
                result["weights"] = trainer.model.get_weights()
    # The step traced above (same input signature: no new trace).
    iterator = iter(strategy.distribute_datasets_from_function(lambda c: _batches(c, 0)))
    function = trainer.train_function.get_concrete_function(iterator, tf.constant(1, tf.int64))
    result["graph"] = function.graph.as_graph_def()
    result["parameters"] = sum(int(np.prod(v.shape)) for v in trainer.model.trainable_variables)
    trainer.close()
    return result


def _assert_same_steps(reference: dict, result: dict, loss_rtol: tuple, weight_atol) -> None:
    """Losses within `loss_rtol` (step 1: the forward on the same weights and batch; step 2:
    after one update), and the first update within `weight_atol` of its size."""
    for step, rtol in enumerate(loss_rtol):
        np.testing.assert_allclose(
            result["losses"][step], reference["losses"][step], rtol=rtol, err_msg=f"step {step}"
        )
    if weight_atol is None:
        return
    for before, ref, got in zip(
        reference["initial"], reference["weights"], result["weights"], strict=True
    ):
        update = np.abs(ref - before).max()
        np.testing.assert_allclose(got - before, ref - before, atol=weight_atol * update + 1e-9)


def _count_all_reduced_elements(monkeypatch) -> list[int]:
    """From now on, the number of elements of each `ReplicaContext.all_reduce` call, appended
    to the returned list when a step is traced (one call per replica)."""
    reduced: list[int] = []
    all_reduce = tf.distribute.ReplicaContext.all_reduce

    def counting_all_reduce(self, reduce_op, value, options=None):
        reduced.append(sum(t.shape.num_elements() for t in tf.nest.flatten(value)))
        return all_reduce(self, reduce_op, value, options)

    monkeypatch.setattr(tf.distribute.ReplicaContext, "all_reduce", counting_all_reduce)
    return reduced


# Every factor in some mode, one trace each: (mixed precision, synchronized BN, jit_compile, loss
# tolerance, weight-update tolerance). XLA over a whole replica step on CPUs needs unsynchronized BN
# (see `Trainer`). The CPU path differs from the GPU's only where BN is per replica (synchronized BN
# takes the single-reduce kernels on every device), so there each mode is compared with the CPU
# path's step in the same mode; the synchronized mode checks the step's graph, its all-reduces and a
# finite loss. BN per replica normalizes over 16 values in the last modules (2x2 maps), where the
# two formulations' rounding differences grow. One test per mode (each traces its own networks,
# nothing is shared between them), so that BUILD can spread them over shards.
MODES = {
    "float32_per_replica": (None, False, False, (1e-4, 2e-2), 1e-2),
    "bfloat16_per_replica_xla": ("bfloat16", False, True, (2e-2, 1e-1), None),
    "float16_sync": ("float16", True, False, None, None),
}


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(MODES))
def test_accelerator_path_matches_cpu_path_and_holds_only_gpu_ops(
    mirrored_cpus, tmp_path, monkeypatch, mode
):
    precision, sync, jit, loss_rtol, weight_atol = MODES[mode]
    reduced = _count_all_reduced_elements(monkeypatch)
    replicas = mirrored_cpus.num_replicas_in_sync
    config = _config(
        tmp_path, mode, sync_batch_norm=sync, mixed_precision=precision, jit_compile=jit
    )
    initial = None
    if loss_rtol is not None:
        cpu = _train(
            mirrored_cpus, config.replace(model_dir=f"{config.model_dir}_cpu"), force_cpu_bn_path
        )
        # Not vacuous: the CPU path's step holds CPU-only kernels (XLA loops).
        assert non_accelerator_ops(cpu["graph"]), f"{mode}: no CPU-only kernel on the CPU path"
        initial = cpu["initial"]
    reduced.clear()
    result = _train(mirrored_cpus, config, force_accelerator_bn_path, initial)
    assert non_accelerator_ops(result["graph"]) == [], mode
    assert np.all(np.isfinite(result["losses"])), mode
    if loss_rtol is not None:
        _assert_same_steps(cpu, result, loss_rtol, weight_atol)
    if precision == "float16":
        # Each replica (its step traced once) all-reduces the gradients once, in the optimizer,
        # loss scaling included (before: twice); the rest are BN's per-feature sums and the
        # skip-the-step flag.
        largest = sorted(reduced)[-replicas - 1 :]
        assert largest[1:] == [result["parameters"]] * replicas, reduced
        assert largest[0] < result["parameters"] / 100, reduced


def test_jit_compile_refuses_synchronized_bn_over_cpu_replicas(mirrored_cpus, tmp_path):
    config = _config(tmp_path, "run", sync_batch_norm=True, jit_compile=True)
    with pytest.raises(ValueError, match="jit_compile.* 2 CPU replicas cannot compile synchron"):
        build_trainer(config, data.get_info("digits"), mirrored_cpus)
