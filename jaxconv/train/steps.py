"""Jittable train and eval steps (cross-entropy classification)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxconv.train.state import TrainState


def resize_images(images, image_size: int | None):
    """Bilinear resize of an NHWC batch to ``image_size`` x ``image_size`` (antialiased when
    shrinking); ``None`` or the current size returns ``images`` unchanged."""
    if image_size is None or images.shape[1:3] == (image_size, image_size):
        return images
    shape = (images.shape[0], image_size, image_size, images.shape[3])
    return jax.image.resize(images, shape, method="bilinear", antialias=True)


def cross_entropy(logits, labels, num_classes: int, label_smoothing: float = 0.0):
    targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), label_smoothing) \
        if label_smoothing else jax.nn.one_hot(labels, num_classes)
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


#: Weight of an auxiliary classifier's loss (Inception v3's aux head; Szegedy et al. 2016 use 0.4).
AUX_LOSS_WEIGHT = 0.4


def make_train_step(model, tx: optax.GradientTransformation, schedule, *, num_classes: int,
                    label_smoothing: float = 0.0, image_size: int | None = None):
    """Returns ``step(state, batch) -> (state, metrics)``; BN statistics are over the global batch
    because the batch is one logical array sharded over the mesh. ``image_size`` resizes each
    batch on device first (resolution scaling without touching the data pipeline). A model that
    returns ``(logits, aux_logits)`` in train mode gets ``AUX_LOSS_WEIGHT`` times the auxiliary
    cross-entropy added to its loss."""

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        mutable = list(state.model_state.keys())
        images = resize_images(batch["image"], image_size)

        def loss_fn(params):
            # mutable=False, not [], for models without BatchNorm: Flax returns the bare output
            # only when nothing is mutable.
            out = model.apply({"params": params, **state.model_state}, images, train=True,
                              mutable=mutable or False, rngs={"dropout": rng})
            logits, new_model_state = out if mutable else (out, {})
            aux = None
            if isinstance(logits, tuple):  # (logits, aux_logits)
                logits, aux = logits
            loss = cross_entropy(logits, batch["label"], num_classes, label_smoothing).mean()
            if aux is not None:
                loss = loss + AUX_LOSS_WEIGHT * cross_entropy(
                    aux, batch["label"], num_classes, label_smoothing).mean()
            return loss, (logits, new_model_state)

        (loss, (logits, new_model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "top1": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
            "learning_rate": schedule(state.step),
            "grad_norm": optax.tree.norm(grads),
        }
        new_state = state.replace(step=state.step + 1, params=params,
                                  model_state=dict(new_model_state), opt_state=opt_state)
        return new_state, metrics

    return step


def make_eval_step(model, *, num_classes: int, image_size: int | None = None):
    """Returns ``step(state, batch) -> sums``; padded rows (mask False) count for nothing."""

    def step(state: TrainState, batch):
        logits = model.apply({"params": state.params, **state.model_state},
                             resize_images(batch["image"], image_size), train=False)
        mask = batch["mask"].astype(jnp.float32)
        loss = cross_entropy(logits, batch["label"], num_classes)
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {"loss_sum": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask),
                "count": jnp.sum(mask)}

    return step
