"""Optimizers and learning-rate schedules built from a config."""
from __future__ import annotations

import jax
import optax

OPTIMIZERS = ("sgd", "nesterov", "adamw")
SCHEDULES = ("cosine", "step", "constant")


def check_config(config) -> None:
    """The optimizer and schedule fields, checked before training (ValueError naming the field
    and the valid choices)."""
    for field, valid in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES)):
        if config[field] not in valid:
            raise ValueError(f"config.{field}={config[field]!r} is not valid; choose one of "
                             f"{sorted(valid)}")


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


def make_optimizer(config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
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
    else:
        raise ValueError(f"config.optimizer={config.optimizer!r}; valid: {OPTIMIZERS}")
    if config.get("grad_clip_norm"):
        tx = optax.chain(optax.clip_by_global_norm(float(config.grad_clip_norm)), tx)
    return tx, schedule
