"""Jittable train and eval steps for the three dataset tasks (``DatasetInfo.task``):

* ``classification``: logits [B, K], int labels [B]; cross-entropy, top-1 accuracy.
* ``per_position``: logits [B, L, K], int labels [B, L] with -1 at unlabelled positions;
  cross-entropy and accuracy averaged over the labelled positions only.
* ``regression``: outputs [B, K], float targets [B, K]; mean squared error (no accuracy).

The classification path is unchanged from the image-only version (bitwise-identical steps).
"""
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

TASKS = ("classification", "per_position", "regression")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not valid; choose one of {list(TASKS)}")
    return task


def _check_outputs(task: str, outputs, labels) -> None:
    """Shapes are static, so a model whose output does not fit the task fails at trace time."""
    if task == "per_position":
        ok, want = outputs.ndim == 3 and outputs.shape[:2] == labels.shape, "[B, L, num_classes]"
        hint = "a per-position model (pool='none')"
    elif task == "regression":
        ok, want = outputs.shape == labels.shape, f"{list(labels.shape)} (the targets' shape)"
        hint = "num_classes = the number of targets and pool='mean' or 'last'"
    else:
        ok, want = outputs.ndim == 2 and outputs.shape[0] == labels.shape[0], "[B, num_classes]"
        hint = "a classifier (for sequence models: pool='mean' or 'last')"
    if not ok:
        raise ValueError(f"the model returns shape {list(outputs.shape)} but task {task!r} needs "
                         f"{want} (labels {list(labels.shape)}); use {hint}")


def sequence_loss_terms(task: str, outputs, labels, num_classes: int,
                        label_smoothing: float = 0.0):
    """(loss per element, weight per element, correct per element or None) of a per-position
    or regression batch; the loss is ``sum(loss * weight) / sum(weight)``."""
    _check_outputs(task, outputs, labels)
    if task == "regression":
        err = outputs.astype(jnp.float32) - labels.astype(jnp.float32)
        return jnp.mean(jnp.square(err), axis=-1), jnp.ones(labels.shape[:1], jnp.float32), None
    weight = (labels >= 0).astype(jnp.float32)
    safe = jnp.maximum(labels, 0)  # -1 positions: any class; their weight is 0
    loss = cross_entropy(outputs, safe, num_classes, label_smoothing)
    correct = (jnp.argmax(outputs, -1) == safe).astype(jnp.float32) * weight
    return loss, weight, correct


def train_apply(model, variables, x, *, mutable, rng, step):
    """The train-mode forward: ``model.apply(..., train=True)``, or ``model.apply_train(...,
    step=step)`` for a model whose training forward changes with the step (QAT schedules,
    :class:`jaxconv.quantize.qat.QATSchedule`). ``mutable=False``, not [], for models without
    BatchNorm: Flax returns the bare output only when nothing is mutable."""
    rngs = {"dropout": rng}
    if hasattr(model, "apply_train"):
        return model.apply_train(variables, x, mutable=mutable, rngs=rngs, step=step)
    return model.apply(variables, x, train=True, mutable=mutable or False, rngs=rngs)


def make_train_step(model, tx: optax.GradientTransformation, schedule, *, num_classes: int,
                    label_smoothing: float = 0.0, image_size: int | None = None,
                    task: str = "classification"):
    """Returns ``step(state, batch) -> (state, metrics)``; BN statistics are over the global batch
    because the batch is one logical array sharded over the mesh. ``image_size`` resizes each
    batch on device first (resolution scaling without touching the data pipeline). A model that
    returns ``(logits, aux_logits)`` in train mode gets ``AUX_LOSS_WEIGHT`` times the auxiliary
    cross-entropy added to its loss. ``task`` is the dataset's (see the module docstring);
    regression steps report no ``top1``."""
    if check_task(task) != "classification":
        if image_size is not None:
            raise ValueError("image_size (resizing) applies to image classification only")
        return _make_sequence_train_step(model, tx, schedule, num_classes=num_classes,
                                         label_smoothing=label_smoothing, task=task)

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        mutable = list(state.model_state.keys())
        images = resize_images(batch["image"], image_size)

        def loss_fn(params):
            out = train_apply(model, {"params": params, **state.model_state}, images,
                              mutable=mutable, rng=rng, step=state.step)
            logits, new_model_state = out if mutable else (out, {})
            aux = None
            if isinstance(logits, tuple):  # (logits, aux_logits)
                logits, aux = logits
            _check_outputs("classification", logits, batch["label"])
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


def _make_sequence_train_step(model, tx, schedule, *, num_classes, label_smoothing, task):
    def step(state: TrainState, batch):
        rng = jax.random.fold_in(state.rng, state.step)
        mutable = list(state.model_state.keys())

        def loss_fn(params):
            out = train_apply(model, {"params": params, **state.model_state}, batch["image"],
                              mutable=mutable, rng=rng, step=state.step)
            outputs, new_model_state = out if mutable else (out, {})
            loss, weight, correct = sequence_loss_terms(task, outputs, batch["label"],
                                                        num_classes, label_smoothing)
            count = jnp.maximum(jnp.sum(weight), 1.0)
            return jnp.sum(loss * weight) / count, (correct, count, new_model_state)

        (loss, (correct, count, new_model_state)), grads = jax.value_and_grad(
            loss_fn, has_aux=True)(state.params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "learning_rate": schedule(state.step),
                   "grad_norm": optax.tree.norm(grads)}
        if correct is not None:
            metrics["top1"] = jnp.sum(correct) / count
        new_state = state.replace(step=state.step + 1, params=params,
                                  model_state=dict(new_model_state), opt_state=opt_state)
        return new_state, metrics

    return step


def make_eval_step(model, *, num_classes: int, image_size: int | None = None,
                   task: str = "classification"):
    """Returns ``step(state, batch) -> sums``; padded rows (mask False) count for nothing.

    Sums: ``loss_sum``, ``count`` and (not for regression) ``correct``; per-position tasks count
    labelled positions, so ``correct / count`` is the accuracy over them and ``loss_sum / count``
    the mean cross-entropy; for regression ``loss_sum / count`` is the mean squared error."""
    if check_task(task) != "classification":
        def sequence_step(state: TrainState, batch):
            outputs = model.apply({"params": state.params, **state.model_state}, batch["image"],
                                  train=False)
            loss, weight, correct = sequence_loss_terms(task, outputs, batch["label"],
                                                        num_classes)
            rows = batch["mask"].astype(jnp.float32).reshape(
                batch["mask"].shape + (1,) * (weight.ndim - 1))
            weight = weight * rows
            sums = {"loss_sum": jnp.sum(loss * weight), "count": jnp.sum(weight)}
            if correct is not None:
                sums["correct"] = jnp.sum(correct * rows)
            return sums
        return sequence_step

    def step(state: TrainState, batch):
        logits = model.apply({"params": state.params, **state.model_state},
                             resize_images(batch["image"], image_size), train=False)
        _check_outputs("classification", logits, batch["label"])
        mask = batch["mask"].astype(jnp.float32)
        loss = cross_entropy(logits, batch["label"], num_classes)
        correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return {"loss_sum": jnp.sum(loss * mask), "correct": jnp.sum(correct * mask),
                "count": jnp.sum(mask)}

    return step
