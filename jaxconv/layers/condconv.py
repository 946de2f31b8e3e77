"""Conditionally parameterised convolution (CondConv, Yang et al. 2019, arXiv:1904.04971).

Each example gets its own kernel, a mixture of ``num_experts`` expert kernels weighted by a
routing function of the example: ``r = sigmoid(GAP(x) R + b)`` and ``W_x = sum_i r_i W_i``
(paper eq. 2-3; sigmoid, not softmax, so the weights need not sum to 1). The batch is convolved
in one call, not a Python loop: the examples are laid side by side as channel groups
(``[B, H, W, C] -> [1, H, W, B*C]``) and convolved with the per-example kernels stacked as
``B`` groups (``feature_group_count = B``; groups times ``groups`` when the layer is itself
grouped, e.g. a depthwise CondConv).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.layers.conv import kaiming_normal_fan_out
from jaxconv.models.checks import positive_ints

__all__ = ["CondConv2D"]


def _expert_init(key, shape, dtype=jnp.float32):
    """Each expert He-initialised like a plain conv kernel."""
    return jax.vmap(lambda k: kaiming_normal_fan_out(k, shape[1:], dtype))(
        jax.random.split(key, shape[0]))


class CondConv2D(nn.Module):
    """CondConv over NHWC inputs. Parameters: ``kernel`` [E, kh, kw, Cin/groups, features],
    ``routing/kernel`` [Cin, E] and ``routing/bias`` [E]; padding ``kernel_size // 2`` on both
    sides; ``use_bias`` adds one (shared) bias. ``__call__`` returns only the output; the
    routing weights are sown as ``intermediates/routing_weights`` ([B, E])."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    num_experts: int = 4
    groups: int = 1
    use_bias: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        for field in ("features", "kernel_size", "strides", "num_experts", "groups"):
            positive_ints(field, getattr(self, field))
        if self.features % self.groups:
            raise ValueError(f"features={self.features} must be divisible by groups="
                             f"{self.groups}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x):
        batch, _, _, cin = x.shape
        if cin % self.groups:
            raise ValueError(f"input channels {cin} must be divisible by groups={self.groups}")
        k, e, g = self.kernel_size, self.num_experts, self.groups
        x = jnp.asarray(x, self.dtype)
        routing = nn.sigmoid(nn.Dense(e, dtype=jnp.float32, name="routing")(
            jnp.mean(x.astype(jnp.float32), axis=(1, 2))))                       # [B, E]
        self.sow("intermediates", "routing_weights", routing)
        experts = self.param("kernel", _expert_init, (e, k, k, cin // g, self.features), jnp.float32)
        kernels = jnp.einsum("be,ehwio->bhwio", routing, experts)                 # [B,k,k,I,O]
        # Batch as channel groups: input channels (b, c), output channels (b, o).
        lhs = x.transpose(1, 2, 0, 3).reshape(1, *x.shape[1:3], batch * cin)
        rhs = kernels.transpose(1, 2, 3, 0, 4).reshape(k, k, cin // g, batch * self.features)
        pad = ((k // 2, k // 2), (k // 2, k // 2))
        y = lax.conv_general_dilated(lhs, rhs.astype(self.dtype), (self.strides,) * 2, pad,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=batch * g)
        y = y.reshape(*y.shape[1:3], batch, self.features).transpose(2, 0, 1, 3)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
        return y.astype(self.dtype)
