"""Step-by-step inference of causal conv models with cached state (ring buffers).

A model with a ``decode`` field (TCN, ByteNet, causal CCNN, ...) built of causal layers that
support it (:class:`jaxconv.layers.tcn.DilatedConv1D`, :class:`jaxconv.layers.ckconv.CKConv`)
runs one time step per call when ``decode=True``: every dilated conv keeps its last
``(k - 1) * dilation`` inputs in a ring buffer in the ``"cache"`` collection and gathers its
``k`` taps from it, so a step costs one output column of each layer instead of recomputing the
receptive field (the idea of Fast WaveNet and StreamiNNC). Per-position layers (norms in eval
mode, 1x1 convs, activations) need no state; ``pool="mean"`` keeps a running sum.

    cache = init_cache(model, variables, x[:, :1])
    for t in range(L):
        y_t, cache = step(model, variables, cache, x[:, t:t + 1])

``y_t`` equals the full forward's output at ``t`` (``pool="none"``), or the output the full
forward would give for the first ``t + 1`` steps (``pool="last"`` / ``"mean"``).
:func:`stream` runs the loop under ``lax.scan``. Inference only: train-mode dropout and batch
statistics are not per-step operations.
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

__all__ = ["decoder", "init_cache", "step", "stream"]


def decoder(model: nn.Module) -> nn.Module:
    """``model`` with ``decode=True`` (a ``ValueError`` names what is needed if it has no
    ``decode`` field or is not causal)."""
    fields = {f.name for f in dataclasses.fields(model)}
    if "decode" not in fields:
        raise ValueError(f"{type(model).__name__} cannot stream: it has no `decode` field "
                         f"(streamable: TCN, ByteNet, CCNN with causal=True, ...)")
    if "causal" in fields and not model.causal:
        raise ValueError(f"{type(model).__name__} cannot stream with causal=False: its outputs "
                         f"read future steps; build it with causal=True")
    return model.clone(decode=True)


def _variables(variables) -> dict:
    return {k: v for k, v in variables.items() if k != "cache"}


def init_cache(model: nn.Module, variables, x_step):
    """The zero state for streaming ``model`` on steps shaped like ``x_step`` (``[B, 1, C]``
    floats or ``[B, 1]`` token ids); nothing is advanced."""
    if x_step.ndim < 2 or x_step.shape[1] != 1:
        raise ValueError(f"x_step must be one time step [B, 1, ...], got shape "
                         f"{tuple(x_step.shape)}")
    _, state = decoder(model).apply(_variables(variables), x_step, train=False,
                                    mutable=["cache"])
    return state["cache"]


def step(model: nn.Module, variables, cache, x_step):
    """One step: ``(y_t, new_cache)``; ``y_t`` is ``[B, 1, classes]`` for ``pool="none"``,
    else ``[B, classes]``."""
    y, state = decoder(model).apply({**_variables(variables), "cache": cache}, x_step,
                                    train=False, mutable=["cache"])
    return y, state["cache"]


def stream(model: nn.Module, variables, x, cache=None):
    """Runs ``x`` (``[B, L, ...]``) through ``model`` one step at a time (``lax.scan``);
    returns ``(outputs [B, L, classes], final cache)``. ``cache=None`` starts from zeros;
    pass a previous call's cache to continue a stream."""
    if cache is None:
        cache = init_cache(model, variables, x[:, :1])

    def body(cache, x_t):
        y, cache = step(model, variables, cache, x_t[:, None])
        return cache, y.reshape(y.shape[0], -1)

    cache, ys = jax.lax.scan(body, cache, jnp.moveaxis(x, 1, 0))
    return jnp.moveaxis(ys, 0, 1), cache
