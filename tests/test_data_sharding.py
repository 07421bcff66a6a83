"""Per-replica input pipelines (`input_context`) of `keras_bninception.data.build_dataset`."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_bninception import data
from keras_bninception.data import digits

GLOBAL_BATCH = 16
NUM_PIPELINES = 2


def _context(pipeline_id: int) -> tf.distribute.InputContext:
    return tf.distribute.InputContext(
        num_input_pipelines=NUM_PIPELINES,
        input_pipeline_id=pipeline_id,
        num_replicas_in_sync=NUM_PIPELINES,
    )


def _take(ds: tf.data.Dataset, n: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    ds = ds if n is None else ds.take(n)
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_replica_batches_make_up_the_global_batch():
    common = dict(image_size=32, training=True, seed=11, deterministic=True)
    single = _take(data.build_dataset("digits", "train", batch_size=GLOBAL_BATCH, **common), 3)
    per_replica = []
    for pipeline_id in range(NUM_PIPELINES):
        context = _context(pipeline_id)
        batch = context.get_per_replica_batch_size(GLOBAL_BATCH)
        assert batch == GLOBAL_BATCH // NUM_PIPELINES
        ds = data.build_dataset(
            "digits", "train", batch_size=batch, input_context=context, **common
        )
        per_replica.append(_take(ds, 3))
    for step, (x, y) in enumerate(single):
        # Pipeline p holds the global elements p, p + 2, p + 4, ... of the step.
        (x0, y0), (x1, y1) = per_replica[0][step], per_replica[1][step]
        np.testing.assert_array_equal(x[0::2], x0)
        np.testing.assert_array_equal(x[1::2], x1)
        np.testing.assert_array_equal(y[0::2], y0)
        np.testing.assert_array_equal(y[1::2], y1)


def test_eval_shards_are_disjoint_and_cover_the_split():
    seen = []
    for pipeline_id in range(NUM_PIPELINES):
        ds = data.build_dataset(
            "digits",
            "test",
            image_size=32,
            batch_size=64,
            training=False,
            deterministic=True,
            input_context=_context(pipeline_id),
        )
        shard = _take(ds)
        assert sum(len(y) for _, y in shard) == 180
        seen.append(np.concatenate([y for _, y in shard]))
    labels = digits.load_split("test")[1]
    np.testing.assert_array_equal(seen[0], labels[0::2])
    np.testing.assert_array_equal(seen[1], labels[1::2])


def test_distribute_datasets_from_function(mirrored_cpus):
    strategy = mirrored_cpus

    def dataset_fn(context: tf.distribute.InputContext) -> tf.data.Dataset:
        return data.build_dataset(
            "digits",
            "train",
            image_size=32,
            training=True,
            seed=11,
            deterministic=True,
            batch_size=context.get_per_replica_batch_size(GLOBAL_BATCH),
            input_context=context,
        )

    distributed = strategy.distribute_datasets_from_function(dataset_fn)
    x, y = next(iter(distributed))
    shapes = [tuple(t.shape) for t in strategy.experimental_local_results(x)]
    assert shapes == [(GLOBAL_BATCH // 2, 32, 32, 3)] * 2
    labels = np.concatenate([t.numpy() for t in strategy.experimental_local_results(y)])
    single = _take(
        data.build_dataset(
            "digits",
            "train",
            image_size=32,
            batch_size=GLOBAL_BATCH,
            training=True,
            seed=11,
            deterministic=True,
        ),
        1,
    )[0][1]
    np.testing.assert_array_equal(np.sort(labels), np.sort(single))
