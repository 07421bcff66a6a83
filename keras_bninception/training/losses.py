"""The training objective: cross-entropy averaged over the global batch, plus L2 weight decay.

Both terms are written for `tf.distribute` (each replica's share, so that the SUM all-reduce of the
gradients gives the gradient of the global objective):

- cross-entropy of the logits (float32, even under mixed precision), with optional label
  smoothing, averaged with `tf.nn.compute_average_loss(..., global_batch_size)`;
- TF-slim's L2 penalty `weight_decay * sum(w ** 2) / 2` over the convolution / dense kernels
  (not biases nor BN parameters), plus any `model.losses`, scaled by 1 / num_replicas with
  `tf.nn.scale_regularization_loss`.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor, label_smoothing: float = 0.0) -> tf.Tensor:
    """Per-example softmax cross-entropy of integer `labels` [B] and `logits` [B, C]."""
    logits = tf.cast(logits, tf.float32)
    if label_smoothing:
        one_hot = tf.one_hot(labels, tf.shape(logits)[-1], dtype=tf.float32)
        return keras.losses.categorical_crossentropy(
            one_hot, logits, from_logits=True, label_smoothing=label_smoothing
        )
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def decayed_variables(model: keras.Model) -> list:
    """The variables the L2 penalty applies to: every trainable `*kernel` (conv, dense)."""
    return [v for v in model.trainable_variables if v.name.endswith("kernel")]


def regularization(model: keras.Model, weight_decay: float) -> tf.Tensor:
    """This replica's share of the L2 penalty and of `model.losses`."""
    terms = []
    if weight_decay:
        kernels = decayed_variables(model)
        if kernels:
            l2 = tf.add_n([tf.nn.l2_loss(tf.cast(v, tf.float32)) for v in kernels])
            terms.append(weight_decay * l2)
    terms.extend(tf.cast(loss, tf.float32) for loss in model.losses)
    if not terms:
        return tf.constant(0.0)
    return tf.nn.scale_regularization_loss(tf.add_n(terms))
