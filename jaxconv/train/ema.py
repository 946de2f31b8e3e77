"""Exponential moving average of the parameters and batch statistics (timm's ``ModelEmaV3``).

The EMA lives in ``TrainState.ema`` as ``{"params": ..., "model_state": ...}`` (None when off),
is updated after every optimizer update and is checkpointed with the state. After the n-th
update (n = ``state.step``, counting from 1) every float leaf becomes
``ema + (1 - d_n) * (value - ema)`` with timm's decay schedule (``ModelEmaV3.get_decay(n)``):

* ``d_1 = 0``: the first update copies the weights (timm skips ``max(0, n - 1) <= 0``);
* without warm-up ``d_n = decay``;
* with warm-up ``d_n = clip(1 - (1 + (n - 1)) ** (-2/3), 0, decay)`` (timm's defaults
  ``warmup_gamma=1``, ``warmup_power=2/3``, ``min_decay=0``): ~0.37 at n = 2, 0.99 at n ~ 1000,
  0.9999 only after ~10^6 updates, so short runs are not stuck near their initialization.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

#: timm ModelEmaV3's default warm-up parameters.
WARMUP_GAMMA = 1.0
WARMUP_POWER = 2.0 / 3.0


def ema_decay_at(num_updates, decay: float, warmup: bool = False):
    """The decay used by the ``num_updates``-th update (1 for the first), as a float32 scalar."""
    n = jnp.maximum(jnp.asarray(num_updates, jnp.float32) - 1.0, 0.0)
    if warmup:
        d = 1.0 - (1.0 + n / WARMUP_GAMMA) ** (-WARMUP_POWER)
        d = jnp.clip(d, 0.0, decay)
    else:
        d = jnp.asarray(decay, jnp.float32)
    return jnp.where(n <= 0, 0.0, d).astype(jnp.float32)


def init_ema(params, model_state) -> dict:
    """The EMA at step 0: a copy of the initial weights (timm deep-copies the model)."""
    return {"params": jax.tree.map(jnp.copy, params),
            "model_state": jax.tree.map(jnp.copy, dict(model_state))}


def update_ema(ema: dict, params, model_state, num_updates, decay: float,
               warmup: bool = False) -> dict:
    """``ema + (1 - d) * (new - ema)`` for float leaves (timm's ``lerp_``); other leaves (integer
    counters) are copied."""
    d = ema_decay_at(num_updates, decay, warmup)

    def lerp(e, v):
        if not jnp.issubdtype(v.dtype, jnp.inexact):
            return v
        return (e + (1.0 - d).astype(e.dtype) * (v - e)).astype(e.dtype)

    return {"params": jax.tree.map(lerp, ema["params"], params),
            "model_state": jax.tree.map(lerp, ema["model_state"], dict(model_state))}
