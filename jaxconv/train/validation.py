"""Range checks of the training config, run by ``validate_config`` before anything heavy.

Each raises ``ValueError`` naming the field, the value and the valid range. The memory check
estimates a training step's activation memory from a batch-1 trace of the model (no compile, no
allocation) and refuses a batch/image size that cannot fit.
"""
from __future__ import annotations

import functools
import json
import math
import re

import numpy as np

_NUMBER = (int, float, np.integer, np.floating)


def _number(config, field: str, low=None, high=None, *, low_open=False, high_open=True,
            integer=False, optional=False) -> None:
    value = config[field]
    if value is None and optional:
        return
    kind = "an int" if integer else "a number"
    ok = (not isinstance(value, bool) and isinstance(value, (int, np.integer) if integer else _NUMBER)
          and math.isfinite(value))
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else f"{'(' if low_open else '['}{low}, "
        hi = "inf)" if high is None else f"{high}{')' if high_open else ']'}"
        rng = f"in {lo}{hi}" if lo else f"<= {high}"
        raise ValueError(f"config.{field}={value!r} must be {kind} {rng}"
                         + (" or None" if optional else ""))


def check_ranges(config) -> None:
    """Numeric fields within their valid ranges (a negative learning rate would train by gradient
    ascent; keep_checkpoints=0 would end with no checkpoint at all)."""
    _number(config, "learning_rate", 0, low_open=True, high=None)
    _number(config, "momentum", 0, 1)
    _number(config, "weight_decay", 0, None)
    _number(config, "label_smoothing", 0, 1)
    _number(config, "warmup_steps", 0, None, integer=True)
    _number(config, "grad_clip_norm", 0, None, low_open=True, optional=True)
    _number(config, "grad_clip_agc", 0, None, low_open=True, optional=True)
    _number(config, "keep_checkpoints", 1, None, integer=True)
    _number(config, "num_data_threads", 0, None, integer=True)
    _number(config, "seed", 0, None, integer=True)
    _number(config, "batch_size", 1, None, integer=True)
    _number(config, "num_train_steps", 1, None, integer=True, optional=True)
    _number(config, "num_epochs", 0, None, low_open=True, optional=True)
    bounds = tuple(config.step_boundaries)
    if (any(isinstance(b, bool) or not isinstance(b, _NUMBER) or not 0 < b < 1 for b in bounds)
            or list(bounds) != sorted(bounds)):
        raise ValueError(f"config.step_boundaries={bounds!r} must be increasing fractions of "
                         "training, each in (0, 1)")


def _split_size(info, split: str) -> int | None:
    """Examples in a split from the static table (``train[:10%]``-style slices too), or None."""
    m = re.fullmatch(r"(\w+)(?:\[(-?\d*)(%?):(-?\d*)(%?)\])?", split)
    if not m:
        return None
    try:
        n = info.num_examples(m.group(1))
    except ValueError:
        return None
    if m.group(2) is None:
        return n
    def pos(text, pct, default):
        if not text:
            return default
        v = int(text) * n // 100 if pct else int(text)
        return v + n if v < 0 else min(v, n)
    return max(pos(m.group(4), m.group(5), n) - pos(m.group(2), m.group(3), 0), 0)


def check_batch_fits_data(config, info, num_examples: int | None = None) -> None:
    """batch_size no larger than the train split, unless ``config.repeat_data_in_batch``."""
    if config.get("repeat_data_in_batch"):
        return
    split = config.train_split or info.train_split
    n = num_examples if num_examples is not None else _split_size(info, split)
    if n is not None and config.batch_size > n:
        raise ValueError(f"config.batch_size={config.batch_size} is larger than the train split "
                         f"{config.dataset}:{split} ({n} examples): every batch would repeat "
                         f"examples. Use batch_size <= {n}, or set "
                         "config.repeat_data_in_batch=True if that is what you want")


def available_memory() -> tuple[int | None, str]:
    """(bytes one device can hold, its description): device memory on accelerators, the
    machine's available RAM on CPU; None when unknown."""
    import jax
    device = jax.local_devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return stats.get("bytes_limit"), f"{device.device_kind} memory"
    try:
        with open("/proc/meminfo") as f:
            kb = int(re.search(r"MemAvailable:\s+(\d+)", f.read()).group(1))
        return kb * 1024, "available RAM"
    except (OSError, AttributeError):
        return None, "RAM"


@functools.lru_cache(maxsize=64)
def _activations_per_example(model_name: str, overrides: str, num_classes: int, dtype: str,
                             shape: tuple) -> int:
    import jaxconv
    from jaxconv import analysis
    from jaxconv.train.loop import DTYPES
    model = jaxconv.create_model(model_name, dtype=DTYPES[dtype], num_classes=num_classes,
                                 **json.loads(overrides))
    return analysis.model_activations(model, (1, *shape))


#: Activations kept for the backward pass plus their gradients: a lower bound of a training
#: step's memory (norms and nonlinearities keep more), so only runs that surely cannot fit fail.
TRAIN_MEMORY_FACTOR = 2


def check_memory(config, info, input_shape) -> None:
    """Refuses a batch_size / image_size whose activations cannot fit in memory."""
    import jax
    limit, where = available_memory()
    if limit is None or info.is_sequence:
        return
    per_device = config.batch_size // max(jax.device_count(), 1)
    if jax.local_devices()[0].platform == "cpu":  # CPU devices share the machine's RAM
        per_device = config.batch_size // max(jax.process_count(), 1)
    # Gradient accumulation keeps one microbatch's activations at a time.
    per_device = max(per_device // max(int(config.get("grad_accum_steps") or 1), 1), 1)
    itemsize = 2 if config.dtype == "bfloat16" else 4
    overrides = dict(config.model_overrides)
    num_classes = overrides.pop("num_classes", info.num_classes)
    # The input alone first: an absurd image_size is refused without tracing the model.
    need = per_device * math.prod(input_shape) * itemsize * TRAIN_MEMORY_FACTOR
    if need <= limit:
        acts = _activations_per_example(config.model, json.dumps(overrides, sort_keys=True,
                                                                 default=list),
                                        num_classes, config.dtype, tuple(input_shape))
        need = per_device * acts * itemsize * TRAIN_MEMORY_FACTOR
    if need > limit:
        size = "x".join(map(str, input_shape))
        raise ValueError(
            f"config.batch_size={config.batch_size} at config.image_size={config.image_size} "
            f"({size} inputs) needs at least {need / 2**30:,.1f} GiB of activations per training "
            f"step ({config.model}, estimated from a batch-1 trace), more than the "
            f"{limit / 2**30:,.1f} GiB of {where}; lower image_size or batch_size")


def check_recipe(config, info) -> None:
    """The training-recipe fields (loss, mixing, EMA, accumulation, distillation), each refused
    with a ValueError naming the field, the value and the valid choices/range."""
    import jax
    from jaxconv.data.mix import mix_config_from
    from jaxconv.train import distill, losses
    losses.check_loss(config.loss)
    _number(config, "bce_target_thresh", 0, 1, low_open=True, high_open=False, optional=True)
    if config.bce_target_thresh is not None and config.loss != "sigmoid_xent":
        raise ValueError(f"config.bce_target_thresh={config.bce_target_thresh!r} applies to "
                         f"config.loss='sigmoid_xent' only (loss is {config.loss!r}); set it "
                         "to None or use sigmoid_xent")
    _number(config, "ema_decay", 0, 1, low_open=True, optional=True)
    if not isinstance(config.ema_warmup, (bool, np.bool_)):
        raise ValueError(f"config.ema_warmup={config.ema_warmup!r} must be True or False")
    if config.ema_warmup and config.ema_decay is None:
        raise ValueError("config.ema_warmup=True needs config.ema_decay (e.g. 0.9999); "
                         "ema_decay=None turns the EMA off")
    _number(config, "grad_accum_steps", 1, None, integer=True)
    k, devices = config.grad_accum_steps, jax.device_count()
    if config.batch_size % (k * devices):
        raise ValueError(f"config.batch_size={config.batch_size} must be divisible by "
                         f"config.grad_accum_steps x device count = {k} x {devices}: each "
                         "microbatch is split evenly over the devices")
    mix = mix_config_from(config)  # ranges and mix_mode choices
    if mix is not None and config.batch_size % 2:
        raise ValueError(f"config.batch_size={config.batch_size} must be even with mixup / "
                         "CutMix (each row is mixed with its mirror row)")
    distill.check_config(config, None if info.is_sequence else info.num_classes)
    if info.is_sequence:
        used = [name for name, on in (
            ("augment.mixup_alpha / augment.cutmix_alpha", mix is not None),
            ("loss", config.loss != "softmax_xent"),
            ("distill.teacher", distill.enabled(config)),
            ("grad_accum_steps", config.grad_accum_steps != 1)) if on]
        if used:
            raise ValueError(f"config.{used[0]}: mixing, sigmoid_xent, distillation and "
                             "gradient accumulation apply to image classification; "
                             f"{config.dataset} is a sequence dataset ({info.task}): leave "
                             "them at their defaults")
