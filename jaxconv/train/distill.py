"""The distillation teacher: a frozen model and its variables, from ``config.distill``.

``config.distill.teacher`` names the model as ``create_model`` does (a registered name or
``module.path:factory``), built with ``config.distill.teacher_overrides`` (``num_classes``
defaults to the dataset's). ``config.distill.weights`` is

* a ``.npz`` / ``.safetensors`` timm state dict, converted by ``jaxconv.convert.from_timm``; or
* a jaxconv workdir (an orbax run of ``experiments.train``): its latest intact checkpoint.

The teacher runs with ``train=False`` inside the student's jitted step, on the student's mixed
batch (Beyer et al. 2022: the same view). Its variables are an argument of the step, not part of
``TrainState``: they are re-read on resume, never checkpointed.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.train.pretrained import check_weights_path, load_variables


def enabled(config) -> bool:
    return bool(config.distill.teacher)


def _overrides(config, num_classes: int | None) -> dict:
    overrides = dict(config.distill.teacher_overrides)
    if num_classes is not None:
        overrides.setdefault("num_classes", num_classes)
    return overrides


def check_config(config, num_classes: int | None = None) -> None:
    """The ``distill`` fields, checked before any work (ValueError naming the field): the teacher
    builds (unknown names / ``teacher_overrides`` fields fail as ``create_model``'s do), the
    weights exist, temperature > 0, weight in [0, 1]."""
    import jaxconv
    d = config.distill
    t = d.temperature
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not np.isfinite(t) or t <= 0:
        raise ValueError(f"config.distill.temperature={t!r} must be a number > 0")
    w = d.weight
    if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
        raise ValueError(f"config.distill.weight={w!r} must be a number in [0, 1] (1: the "
                         "teacher's outputs are the only targets, 'function matching')")
    if not d.teacher:
        if d.weights or dict(d.teacher_overrides):
            raise ValueError(f"config.distill.weights={d.weights!r} / teacher_overrides are set "
                             "but config.distill.teacher is empty: name the teacher model")
        return
    if not isinstance(d.teacher, str):
        raise ValueError(f"config.distill.teacher={d.teacher!r} must be a model name")
    try:
        jaxconv.create_model(d.teacher, **_overrides(config, num_classes))
    except ValueError as e:
        raise ValueError(f"config.distill.teacher / teacher_overrides: {e}") from None
    check_weights_path("config.distill.weights", d.weights)


def load_teacher(config, num_classes: int, dtype=jnp.float32):
    """``(model, variables)`` of the teacher, or ``(None, None)`` when distillation is off."""
    if not enabled(config):
        return None, None
    import jaxconv
    d = config.distill
    model = jaxconv.create_model(d.teacher, dtype=dtype, **_overrides(config, num_classes))
    return model, load_variables(d.weights, d.teacher, model)
