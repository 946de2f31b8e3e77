"""Jittable train and eval steps for the three dataset tasks (``DatasetInfo.task``):

* ``classification``: logits [B, K], int labels [B]; cross-entropy, top-1 accuracy.
* ``per_position``: logits [B, L, K], int labels [B, L] with -1 at unlabelled positions;
  cross-entropy and accuracy averaged over the labelled positions only.
* ``regression``: outputs [B, K], float targets [B, K]; mean squared error (no accuracy).

The classification path is unchanged from the image-only version (bitwise-identical steps)
when the recipe options are off; with any of them on (``mix``, ``loss='sigmoid_xent'``, a
``teacher``, ``grad_accum_steps > 1``) the recipe step runs instead, and ``ema_decay`` adds the
EMA update to either (see :func:`make_train_step`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxconv.data.mix import MixConfig, mix_batch, smooth_one_hot
from jaxconv.train import losses
from jaxconv.train.ema import update_ema
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
                    task: str = "classification", loss: str = "softmax_xent",
                    bce_target_thresh: float | None = None, mix: MixConfig | None = None,
                    grad_accum_steps: int = 1, teacher=None, distill_temperature: float = 1.0,
                    distill_weight: float = 1.0, ema_decay: float | None = None,
                    ema_warmup: bool = False):
    """Returns ``step(state, batch) -> (state, metrics)``; BN statistics are over the global batch
    because the batch is one logical array sharded over the mesh. ``image_size`` resizes each
    batch on device first (resolution scaling without touching the data pipeline). A model that
    returns ``(logits, aux_logits)`` in train mode gets ``AUX_LOSS_WEIGHT`` times the auxiliary
    cross-entropy added to its loss. ``task`` is the dataset's (see the module docstring);
    regression steps report no ``top1``.

    Recipe options (image classification; see :func:`_make_recipe_step`): ``mix`` (mixup /
    CutMix on device, ``jaxconv.data.mix``; its ``label_smoothing`` is used), ``loss``
    (``jaxconv.train.losses.LOSSES``), ``teacher`` (a Linen module: the step becomes
    ``step(state, batch, teacher_variables)``, distilled with ``distill_temperature`` and
    ``distill_weight``), ``grad_accum_steps``. ``ema_decay`` (any task; ``state.ema`` must be set,
    ``create_train_state(..., ema=True)``) updates the EMA after each optimizer update.
    """
    recipe = (mix is not None or losses.check_loss(loss) != "softmax_xent"
              or teacher is not None or grad_accum_steps != 1)
    if check_task(task) != "classification":
        if image_size is not None:
            raise ValueError("image_size (resizing) applies to image classification only")
        if recipe:
            raise ValueError("mixup/CutMix, sigmoid_xent, distillation and grad_accum_steps "
                             f"apply to image classification only (task {task!r})")
        step = _make_sequence_train_step(model, tx, schedule, num_classes=num_classes,
                                         label_smoothing=label_smoothing, task=task)
    elif recipe:
        step = _make_recipe_step(
            model, tx, schedule, num_classes=num_classes, label_smoothing=label_smoothing,
            image_size=image_size, loss=loss, bce_target_thresh=bce_target_thresh, mix=mix,
            grad_accum_steps=grad_accum_steps, teacher=teacher,
            distill_temperature=distill_temperature, distill_weight=distill_weight)
    else:
        step = _make_classification_step(model, tx, schedule, num_classes=num_classes,
                                          label_smoothing=label_smoothing, image_size=image_size)
    return step if ema_decay is None else _with_ema(step, ema_decay, ema_warmup)


def apply_update(state: TrainState, tx, schedule, grads, new_model_state, **metrics):
    """One optimizer update of ``state`` with ``grads`` (every train step ends here): the next
    state and ``metrics`` plus the step's learning rate and gradient norm."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(learning_rate=schedule(state.step), grad_norm=optax.tree.norm(grads))
    new_state = state.replace(step=state.step + 1, params=params,
                              model_state=dict(new_model_state), opt_state=opt_state)
    return new_state, metrics


def _with_ema(step_fn, decay: float, warmup: bool):
    """``step_fn`` followed by the EMA update of the new params and model_state."""
    def step(state: TrainState, *args):
        if state.ema is None:
            raise ValueError("ema_decay is set but state.ema is None: create the state with "
                             "create_train_state(..., ema=True)")
        new_state, metrics = step_fn(state, *args)
        ema = update_ema(new_state.ema, new_state.params, new_state.model_state, new_state.step,
                         decay, warmup)
        return new_state.replace(ema=ema), metrics

    return step


def _make_classification_step(model, tx, schedule, *, num_classes, label_smoothing, image_size):
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
        return apply_update(state, tx, schedule, grads, new_model_state, loss=loss,
                            top1=jnp.mean(jnp.argmax(logits, -1) == batch["label"]))

    return step


#: fold_in salt of the step key for the mixup/CutMix draw (the step key itself drives dropout).
MIX_SALT = 0x6D6978


def microbatches(tree, k: int):
    """Splits the leading axis B of every leaf into ``[k, B // k, ...]``, microbatch j taking
    rows j, j + k, j + 2k, ...: each device's contiguous shard of the batch holds an equal part
    of every microbatch, so no microbatch lives on a subset of the devices."""
    def split(x):
        if x.shape[0] % k:
            raise ValueError(f"grad_accum_steps={k} must divide the batch size {x.shape[0]}")
        return jnp.swapaxes(x.reshape(x.shape[0] // k, k, *x.shape[1:]), 0, 1)
    return jax.tree.map(split, tree)


def _make_recipe_step(model, tx, schedule, *, num_classes, label_smoothing, image_size, loss,
                      bce_target_thresh, mix, grad_accum_steps, teacher, distill_temperature,
                      distill_weight):
    """The classification step with the training-recipe options.

    Order within one jitted step: resize, mixup/CutMix of the whole global batch (soft targets
    with label smoothing folded in; without mixing, the smoothed one-hots), the teacher's logits
    on the mixed images (``train=False``, no gradient), then ``grad_accum_steps`` microbatches
    (``lax.scan``): each a forward/backward of ``B / k`` rows whose gradients are summed and
    divided by k, so for a model without BatchNorm the update equals that of one batch of B (up
    to float32 summation order). One optimizer update per step.

    BatchNorm under accumulation: each microbatch is normalized with its own statistics (B / k
    rows, not B) and the running statistics are updated k times per step, one per microbatch in
    order (as PyTorch accumulation loops do). ``top1`` compares the argmax with the unmixed
    labels.
    """
    k = int(grad_accum_steps)
    if isinstance(grad_accum_steps, bool) or k != grad_accum_steps or k < 1:
        raise ValueError(f"grad_accum_steps={grad_accum_steps!r} must be an int >= 1")

    def base_loss(logits, targets):
        return losses.classification_loss(loss, logits, targets,
                                          bce_target_thresh=bce_target_thresh)

    def step(state: TrainState, batch, teacher_variables=None):
        if (teacher is None) != (teacher_variables is None):
            raise ValueError("a step built with a teacher takes (state, batch, teacher_variables)"
                             "; without one, (state, batch)")
        rng = jax.random.fold_in(state.rng, state.step)
        mutable = list(state.model_state.keys())
        images, labels = resize_images(batch["image"], image_size), batch["label"]
        if mix is not None:
            images, targets, _ = mix_batch(jax.random.fold_in(rng, MIX_SALT), images, labels,
                                           num_classes, mix)
        else:
            targets = smooth_one_hot(labels, num_classes, label_smoothing)
        inputs = {"image": images, "target": targets, "label": labels}
        if teacher is not None:
            inputs["teacher"] = teacher.apply(teacher_variables, images, train=False)

        def loss_fn(params, model_state, x, dropout_rng):
            out = train_apply(model, {"params": params, **model_state}, x["image"],
                              mutable=mutable, rng=dropout_rng, step=state.step)
            logits, new_model_state = out if mutable else (out, {})
            aux = None
            if isinstance(logits, tuple):  # (logits, aux_logits)
                logits, aux = logits
            _check_outputs("classification", logits, x["label"])
            per_example = base_loss(logits, x["target"])
            if aux is not None:
                per_example = per_example + AUX_LOSS_WEIGHT * base_loss(aux, x["target"])
            if teacher is not None:
                per_example = losses.distillation_loss(
                    per_example, logits, x["teacher"], temperature=distill_temperature,
                    weight=distill_weight)
            correct = jnp.sum(jnp.argmax(logits, -1) == x["label"])
            return per_example.mean(), (correct, new_model_state)

        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        if k == 1:
            (loss_value, (correct, new_model_state)), grads = grad_fn(
                state.params, state.model_state, inputs, rng)
        else:
            def body(carry, xs):
                grad_sum, loss_sum, correct_sum, model_state = carry
                index, x = xs
                (value, (c, new_ms)), g = grad_fn(state.params, model_state, x,
                                                  jax.random.fold_in(rng, index))
                return (jax.tree.map(jnp.add, grad_sum, g), loss_sum + value,
                        correct_sum + c, dict(new_ms) if mutable else model_state), None

            init = (jax.tree.map(jnp.zeros_like, state.params), jnp.zeros((), jnp.float32),
                    jnp.zeros((), jnp.int32), dict(state.model_state))
            (grad_sum, loss_sum, correct, new_model_state), _ = jax.lax.scan(
                body, init, (jnp.arange(k), microbatches(inputs, k)))
            grads = jax.tree.map(lambda g: g / k, grad_sum)
            loss_value = loss_sum / k
        return apply_update(state, tx, schedule, grads, new_model_state, loss=loss_value,
                            top1=correct / labels.shape[0])

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
        metrics = {"loss": loss}
        if correct is not None:
            metrics["top1"] = jnp.sum(correct) / count
        return apply_update(state, tx, schedule, grads, new_model_state, **metrics)

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
