"""2-D neighborhood attention layer (Hassani et al. 2023, NAT, arXiv:2204.07143).

Each query pixel attends to the ``kernel_size x kernel_size`` keys around it; at the borders the
window shifts inward (it is never zero-padded), so every query sees exactly ``kernel_size**2``
keys. The attention itself is :func:`kernels_pallas.neighborhood_attention` (NATTEN's semantics,
heads-last ``[B, X, Y, heads, head_dim]``); this module adds what NAT wraps around it: the fused
qkv projection, the learned relative positional bias and the output projection.

Parameters (NAT/NATTEN's ``NeighborhoodAttention2D`` names; a PyTorch ``nn.Linear`` weight
``[out, in]`` maps to ``kernel = weight.T``)::

    qkv    kernel [C, 3C], bias [3C]   output channels ordered (q|k|v, head, head_dim)
    rpb    [heads, 2k-1, 2k-1]         bias of key offset (dx, dy) at [h, dx+k-1, dy+k-1]
    proj   kernel [C, C], bias [C]

Feature maps smaller than the window (``kernel_size * dilation``) are zero-padded at the
bottom/right before the qkv projection and cropped after the attention, as NAT's
NeighborhoodAttention module does, so a model built for 224x224 also runs on small inputs
(the padded tokens then take part in the attention like NAT's). Attention dropout is not
offered: the op is fused (NAT trains with attention dropout 0).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

import kernels_pallas
from jaxconv.layers.conv import flat_dot_general
from jaxconv.layers.dtypes import canonical_dtype

__all__ = ["NeighborhoodAttention2D", "trunc_normal_02"]

#: NAT's init for linear weights and the bias table (timm ``trunc_normal_(std=.02)``).
trunc_normal_02 = nn.initializers.truncated_normal(stddev=0.02)


def _positive_int(field: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{field} must be a positive int, got {value!r}")
    return value


class NeighborhoodAttention2D(nn.Module):
    """Multi-head 2-D neighborhood attention over an NHWC feature map ``[B, X, Y, C]``.

    Fields: ``num_heads`` (must divide C), ``kernel_size`` (odd, >= 3: NAT uses 7),
    ``dilation`` (DiNAT's dilated windows; 1 in NAT), ``qkv_bias``, ``qk_scale`` (default
    ``head_dim ** -0.5``), ``dtype`` (compute dtype; parameters float32) and
    ``implementation`` of the op (``None`` picks per backend, ``"xla"``/``"pallas"`` force one;
    a model exposes it as a config field).
    """

    num_heads: int
    kernel_size: int = 7
    dilation: int = 1
    qkv_bias: bool = True
    qk_scale: float | None = None
    dtype: Any = jnp.float32
    implementation: str | None = None

    def __post_init__(self):
        _positive_int("num_heads", self.num_heads)
        _positive_int("kernel_size", self.kernel_size)
        _positive_int("dilation", self.dilation)
        if self.kernel_size < 3 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 3 (3, 5, 7, ...), "
                             f"got {self.kernel_size!r}")
        if self.qk_scale is not None and not (isinstance(self.qk_scale, (int, float))
                                              and self.qk_scale > 0):
            raise ValueError(f"qk_scale must be None or a positive float, got {self.qk_scale!r}")
        if self.implementation not in kernels_pallas.IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {list(kernels_pallas.IMPLEMENTATIONS)}"
                             f", got {self.implementation!r}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        super().__post_init__()

    @nn.compact
    def __call__(self, x):
        if x.ndim != 4:
            raise ValueError(f"NeighborhoodAttention2D expects [B, X, Y, C], got shape {x.shape}")
        _, height, width, channels = x.shape
        if channels % self.num_heads:
            raise ValueError(f"channels {channels} must be divisible by num_heads "
                             f"{self.num_heads}")
        head_dim = channels // self.num_heads
        window = self.kernel_size * self.dilation
        pad_h, pad_w = max(0, window - height), max(0, window - width)
        x = jnp.asarray(x, self.dtype)
        if pad_h or pad_w:
            x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))

        qkv = nn.Dense(3 * channels, use_bias=self.qkv_bias, dtype=self.dtype,
                       param_dtype=jnp.float32, kernel_init=trunc_normal_02,
                       dot_general=flat_dot_general, name="qkv")(x)
        qkv = qkv.reshape(*x.shape[:3], 3, self.num_heads, head_dim)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        span = 2 * self.kernel_size - 1
        rpb = self.param("rpb", trunc_normal_02, (self.num_heads, span, span), jnp.float32)

        out = kernels_pallas.neighborhood_attention(
            q, k, v, kernel_size=self.kernel_size, dilation=self.dilation, rpb=rpb,
            scale=self.qk_scale, implementation=self.implementation)
        out = out.reshape(*x.shape[:3], channels)[:, :height, :width, :]
        return nn.Dense(channels, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=trunc_normal_02, dot_general=flat_dot_general,
                        name="proj")(out)
