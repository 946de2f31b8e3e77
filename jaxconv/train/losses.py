"""Classification losses on soft targets, and the distillation loss.

All return one value per example ([B]); the train step averages them over the batch.

* ``softmax_xent``: cross-entropy against soft targets (mixed / smoothed one-hots).
* ``sigmoid_xent``: timm's ``BinaryCrossEntropy``: per-class sigmoid cross-entropy, the mean over
  classes (so the batch mean is the mean over all B*K elements, as timm's ``reduction='mean'``);
  with ``target_thresh`` the targets are binarized first (``target > thresh``), as in ResNet
  strikes back.
* distillation: ``(1 - w) * loss + w * T^2 * KL(teacher_T || student_T)`` on logits divided by
  the temperature T (Hinton et al. 2015); KL per example, summed over classes. ``w = 1`` is
  'function matching' (Beyer et al. 2022: the teacher's outputs are the only targets).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

LOSSES = ("softmax_xent", "sigmoid_xent")


def check_loss(loss: str) -> str:
    if loss not in LOSSES:
        raise ValueError(f"config.loss={loss!r} is not valid; choose one of {list(LOSSES)}")
    return loss


def softmax_xent(logits, targets):
    """Cross-entropy of ``logits`` [B, K] against soft ``targets`` [B, K]; [B]."""
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def sigmoid_xent(logits, targets, target_thresh: float | None = None):
    """Mean over classes of the sigmoid (binary) cross-entropy; [B]."""
    if target_thresh is not None:
        targets = (targets > target_thresh).astype(jnp.float32)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets), -1)


def classification_loss(loss: str, logits, targets, *, bce_target_thresh=None):
    """The per-example loss named by ``config.loss``."""
    if check_loss(loss) == "sigmoid_xent":
        return sigmoid_xent(logits, targets, bce_target_thresh)
    return softmax_xent(logits, targets)


def distill_kl(student_logits, teacher_logits, temperature: float = 1.0):
    """KL(softmax(teacher / T) || softmax(student / T)) per example ([B]), without the T^2."""
    t = teacher_logits.astype(jnp.float32) / temperature
    s = student_logits.astype(jnp.float32) / temperature
    log_p_t = jax.nn.log_softmax(t, -1)
    return jnp.sum(jnp.exp(log_p_t) * (log_p_t - jax.nn.log_softmax(s, -1)), -1)


def distillation_loss(base_loss, student_logits, teacher_logits, *, temperature: float,
                      weight: float):
    """``(1 - weight) * base_loss + weight * T^2 * KL`` per example; ``base_loss`` is [B]."""
    kl = distill_kl(student_logits, jax.lax.stop_gradient(teacher_logits), temperature)
    return (1.0 - weight) * base_loss + weight * temperature ** 2 * kl
