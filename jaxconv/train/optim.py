"""Optimizers and learning-rate schedules built from a config.

The update of one step is, in order: adaptive gradient clipping (``grad_clip_agc``), global-norm
clipping (``grad_clip_norm``), the optimizer with its weight decay and learning-rate schedule,
then the per-parameter lr multipliers (``layer_decay`` x ``param_rules``, applied to the whole
update, weight decay included, as a per-group lr in timm). Parameters whose multiplier is 0 are
frozen: they skip every step above (``optax.multi_transform`` sends them to ``set_to_zero``),
hold no optimizer state and do not count in the clipping norm.
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxconv.train import param_groups

OPTIMIZERS = ("sgd", "nesterov", "adamw", "lamb", "lars")
SCHEDULES = ("cosine", "step", "constant")


def check_config(config) -> None:
    """The optimizer fields, checked before training (ValueError naming the field, the value and
    the valid choices): optimizer, schedule, layer_decay (a
    supported model family) and param_rules (valid regexes, multipliers >= 0, each rule taking
    at least one parameter of the model, not every parameter frozen). The clipping thresholds are
    range-checked with the other numbers (``validation.check_ranges``)."""
    for field, valid in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
        if config[field] not in valid:
            raise ValueError(f"config.{field}={config[field]!r} is not valid; choose one of "
                             f"{sorted(valid)}")
    decay = config.get("layer_decay")
    if decay is not None:
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay <= 1:
            raise ValueError(f"config.layer_decay={decay!r} must be in (0, 1] (e.g. 0.75; the "
                             "head's lr is the base lr, each layer below it x layer_decay) or "
                             "None (off)")
        family = param_groups.model_family(config.model)
        if family not in param_groups.LAYER_DECAY_FAMILIES:
            raise ValueError(f"config.layer_decay={decay!r}: model {config.model!r} (family "
                             f"{family!r}) has no layer groups; supported families: "
                             f"{list(param_groups.LAYER_DECAY_FAMILIES)}")
    rules = tuple(config.get("param_rules") or ())
    param_groups.check_param_rules(rules)
    if rules or decay is not None:
        params = _abstract_params(config)
        if params is not None:
            multipliers = param_groups.make_multipliers(config)(params)  # unused rules raise
            if decay is not None and param_groups.layer_ids(config.model, params)[1] < 2:
                raise ValueError(f"config.layer_decay={decay!r}: every parameter of "
                                 f"{config.model!r} falls in one layer group, so layer decay "
                                 "would change nothing")
            if multipliers and all(_frozen(m) for m in multipliers.values()):
                raise ValueError(f"config.param_rules={rules!r} freezes every parameter: "
                                 "nothing would train")


def _abstract_params(config):
    """The model's parameter shapes (traced, nothing allocated), or None when the dataset or the
    image size is not valid (validate_config reports those)."""
    from jaxconv import data
    from jaxconv.analysis import init_variables
    from jaxconv.registry import create_model
    from jaxconv.train.loop import model_input_shape  # lazy: loop imports this module
    try:
        info = data.dataset_info(config.dataset)
    except ValueError:
        return None
    size = config.get("image_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        return None
    overrides = dict(config.model_overrides)
    overrides.setdefault("num_classes", info.num_classes)
    model = create_model(config.model, **overrides)
    return init_variables(model, (1, *model_input_shape(config, info)),
                          input_dtype=info.input_dtype)["params"]


def _frozen(multiplier) -> bool:
    return bool(np.all(np.asarray(multiplier) == 0))  # static: names and shapes only


def make_schedule(config, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0, then cosine decay to 0, step decay (x ``config.step_factor`` at each
    fraction of ``total_steps`` in ``config.step_boundaries``: 0.1 in the ResNet papers, 0.2 in
    Wide ResNets) or constant."""
    warmup = min(int(config.warmup_steps), total_steps)
    base = float(config.learning_rate)
    if config.schedule == "cosine":
        after = optax.cosine_decay_schedule(base, max(total_steps - warmup, 1))
    elif config.schedule == "step":
        boundaries = {int(f * total_steps) - warmup: float(config.step_factor)
                      for f in config.step_boundaries}
        after = optax.piecewise_constant_schedule(base, boundaries)
    elif config.schedule == "constant":
        after = optax.constant_schedule(base)
    else:
        raise ValueError(f"config.schedule={config.schedule!r}; valid: {SCHEDULES}")
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, base, warmup), after], [warmup])


#: Parameters that are not weights and get no weight decay whatever their rank (as timm's
#: ``no_weight_decay``): relative position bias tables (CoAtNet, NAT), class tokens (CvT) and
#: DCLS kernel-element positions.
NO_WEIGHT_DECAY = ("relative_position_bias_table", "rpb", "cls_token", "positions")


def decay_mask(params):
    """Weight decay on kernels only: biases, norm scales/offsets (1-D leaves) and the
    :data:`NO_WEIGHT_DECAY` parameters are not decayed."""
    def decayed(path, p):
        name = str(getattr(path[-1], "key", path[-1]))
        return p.ndim > 1 and name not in NO_WEIGHT_DECAY

    return jax.tree_util.tree_map_with_path(decayed, params)


def _lamb(schedule, weight_decay: float) -> optax.GradientTransformation:
    """LAMB as timm's ``Lamb`` (eps 1e-6, bias-corrected Adam moments): weight decay and the
    layer-wise trust ratio only on :func:`decay_mask` parameters (timm adapts only groups with
    weight decay; ``optax.lamb`` would also adapt biases and norm scales)."""
    return optax.chain(
        optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-6),
        optax.add_decayed_weights(weight_decay, mask=decay_mask) if weight_decay
        else optax.identity(),
        optax.masked(optax.scale_by_trust_ratio(), decay_mask),
        optax.scale_by_learning_rate(schedule),
    )


_SCANNED = re.compile(r"^[^/]*_scan/")


def _unit_axes(name: str, ndim: int):
    """Axes of one AGC unit: all but the output (last) axis, and but the leading block axis of
    an ``nn.scan``-stacked leaf; the whole tensor for vectors (as timm's ``unitwise_norm``)."""
    first = 1 if _SCANNED.match(name) else 0
    return None if ndim - first <= 1 else tuple(range(first, ndim - 1))


def adaptive_grad_clip(clipping: float, eps: float = 1e-3) -> optax.GradientTransformation:
    """AGC (Brock et al. 2021) with optax's unit-wise norm and clip, each leaf's units chosen by
    :func:`_unit_axes` (``optax.adaptive_grad_clip`` takes one axis spec for all leaves; its
    default reduces only axis 0 of 3-D depthwise kernels ``[kh, kw, C]``)."""
    from optax.transforms import unitwise_clip, unitwise_norm

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("grad_clip_agc needs the parameters (optax update with params)")

        def clip(path, g, p):
            axes = _unit_axes(param_groups.path_name(path), g.ndim)
            g_norm, p_norm = unitwise_norm(g, axis=axes), unitwise_norm(p, axis=axes)
            return unitwise_clip(g_norm, clipping * jnp.maximum(p_norm, eps), g)

        return jax.tree_util.tree_map_with_path(clip, updates, params), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def scale_by_multipliers(multipliers) -> optax.GradientTransformation:
    """Multiplies each update by ``multipliers(updates)[path name]`` (a float, or an array that
    broadcasts against the leaf); no state. The multipliers depend on names and shapes only."""
    def update(updates, state, params=None):
        del params
        table = multipliers(updates)
        tree = param_groups.multiplier_tree(updates, table)
        return jax.tree.map(lambda u, m: u if isinstance(m, float) and m == 1.0
                            else u * jnp.asarray(m, u.dtype), updates, tree), state

    return optax.GradientTransformation(optax.init_empty_state, update)


def _num_classes(config) -> int:
    from jaxconv import data
    overrides = dict(config.model_overrides)
    return int(overrides.get("num_classes") or data.dataset_info(config.dataset).num_classes)


def make_optimizer(config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer of ``config`` (see the module docstring for the order of its parts) and
    its learning-rate schedule."""
    schedule = make_schedule(config, total_steps)
    wd = float(config.weight_decay)
    if config.optimizer in ("sgd", "nesterov"):
        # Coupled L2 (added to the gradient before momentum), as in the ResNet papers.
        tx = optax.chain(
            optax.add_decayed_weights(wd, mask=decay_mask) if wd else optax.identity(),
            optax.sgd(schedule, momentum=float(config.momentum),
                      nesterov=config.optimizer == "nesterov"),
        )
    elif config.optimizer == "adamw":
        tx = optax.adamw(schedule, b1=0.9, b2=0.999, weight_decay=wd, mask=decay_mask)
    elif config.optimizer == "lamb":
        tx = _lamb(schedule, wd)
    elif config.optimizer == "lars":
        # timm's / RSB's LARS: no weight decay and no trust ratio on biases and norm scales.
        tx = optax.lars(schedule, weight_decay=wd, weight_decay_mask=decay_mask,
                        trust_ratio_mask=decay_mask, momentum=float(config.momentum))
    else:
        raise ValueError(f"config.optimizer={config.optimizer!r}; valid: {OPTIMIZERS}")
    if config.get("grad_clip_norm"):
        tx = optax.chain(optax.clip_by_global_norm(float(config.grad_clip_norm)), tx)
    if config.get("grad_clip_agc"):
        num_classes = _num_classes(config)
        tx = optax.chain(optax.masked(adaptive_grad_clip(float(config.grad_clip_agc)),
                                      lambda p: param_groups.classifier_mask(p, num_classes)),
                         tx)
    multipliers = param_groups.make_multipliers(config)
    if multipliers is not None:
        def labels(params):
            table = multipliers(params)
            return jax.tree_util.tree_map_with_path(
                lambda p, _: "frozen" if _frozen(table.get(param_groups.path_name(p), 1.0))
                else "train", params)

        tx = optax.chain(optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()},
                                               labels),
                         scale_by_multipliers(multipliers))
    return tx, schedule
