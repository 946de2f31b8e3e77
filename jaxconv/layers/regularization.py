"""Stochastic depth (drop path)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def drop_path_rates(drop_path_rate: float, num_blocks: int) -> list[float]:
    """Per-block stochastic-depth rates rising linearly from 0 to ``drop_path_rate``.

    Same schedule as timm (``rate * i / (num_blocks - 1)``): the first block is never dropped,
    the last block is dropped with probability ``drop_path_rate``.
    """
    if num_blocks <= 1:
        return [0.0] * num_blocks
    return [float(r) for r in np.linspace(0.0, drop_path_rate, num_blocks)]


class DropPath(nn.Module):
    """Drops whole samples of a residual branch (Huang et al. 2016, stochastic depth).

    Kept samples are scaled by ``1 / (1 - rate)`` so the expectation is unchanged. Randomness
    comes from the ``"dropout"`` rng stream. ``rate`` may be given at call time as a traced
    scalar (used by scanned blocks, whose per-block rate is a scanned input); a Python
    ``rate == 0`` or ``deterministic=True`` returns ``x`` without drawing a key.
    """

    rate: float = 0.0
    rng_collection: str = "dropout"

    @nn.compact
    def __call__(self, x, deterministic: bool, rate=None):
        rate = self.rate if rate is None else rate
        if deterministic or (isinstance(rate, (int, float)) and rate == 0):
            return x
        keep = 1.0 - jnp.asarray(rate, jnp.float32)
        key = self.make_rng(self.rng_collection)
        mask = jax.random.bernoulli(key, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
        scale = jnp.where(keep > 0, 1.0 / keep, 0.0)
        return x * (mask * scale).astype(x.dtype)
