"""Normalisation factories."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers.conv import recompute_module_on_cpu

#: PyTorch's BatchNorm defaults (torch momentum 0.1 == flax momentum 0.9).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def batch_norm(
    train: bool, *, dtype: Any = jnp.float32, zero_init: bool = False, name: str | None = None
) -> nn.BatchNorm:
    """BatchNorm over the batch the jitted function sees (no ``axis_name``).

    ``use_running_average = not train``; ``zero_init`` starts the scale (gamma) at 0, which makes
    the layer output exactly its bias (0 at init). Statistics are reduced in float32 whatever
    ``dtype`` is. Note: Flax tracks the biased batch variance in ``batch_stats/var`` where PyTorch
    tracks the unbiased one; weight converters copy ``running_var`` as is.
    """
    # Training on CPU: the backward recomputes the normalization (recompute_module_on_cpu).
    cls = recompute_module_on_cpu(nn.BatchNorm) if train else nn.BatchNorm
    return cls(
        use_running_average=not train,
        momentum=BN_MOMENTUM,
        epsilon=BN_EPSILON,
        dtype=dtype,
        param_dtype=jnp.float32,
        scale_init=nn.initializers.zeros if zero_init else nn.initializers.ones,
        name=name,
    )
