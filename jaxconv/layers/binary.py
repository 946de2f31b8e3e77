"""Binary convolution (XNOR-Net, Rastegari et al. 2016, arXiv:1603.05279).

Weights: ``W ~ alpha * sign(W)`` with one scale per output filter, ``alpha = mean |W|`` over the
filter (the L2-optimal binary approximation, paper eq. 4). Inputs (``binarize_inputs=True``, the
XNOR-Net form; False gives the "binary-weight network"): ``I ~ K * sign(I)``, where the spatial
scale map ``K = A conv k``, ``A`` the mean of |I| over channels and ``k`` a ``kh x kw`` box filter
of value 1/(kh*kw) (paper section 3.2). So

    BinaryConv2D(I) = (sign(I) conv sign(W)) * K * alpha

Gradients: the straight-through estimator of sign, ``d sign(x)/dx = 1{|x| <= 1}`` (paper eq. 5),
for inputs and for the real-valued latent weights that training updates; alpha and K get their
true gradients. ``sign(0) = +1`` so binary values are exactly +-1.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.layers.conv import kaiming_normal_fan_out
from jaxconv.models.checks import positive_ints

__all__ = ["BinaryConv2D", "ste_sign"]


def ste_sign(x):
    """sign(x) in {-1, +1} forward; gradient 1 where |x| <= 1, else 0 (straight-through)."""
    mask = lax.stop_gradient((jnp.abs(x) <= 1).astype(x.dtype))
    sign = jnp.where(x >= 0, 1.0, -1.0).astype(x.dtype)
    return x * mask + lax.stop_gradient(sign - x * mask)


class BinaryConv2D(nn.Module):
    """XNOR-Net convolution, NHWC in and out (module docstring). Padding ``kernel_size // 2``
    on both sides; the latent ``kernel`` [kh, kw, Cin, features] is float32."""

    features: int
    kernel_size: int = 3
    strides: int = 1
    binarize_inputs: bool = True
    dtype: Any = jnp.float32

    def __post_init__(self):
        positive_ints("features", self.features)
        positive_ints("kernel_size", self.kernel_size)
        positive_ints("strides", self.strides)
        super().__post_init__()

    @nn.compact
    def __call__(self, x):
        k, s = self.kernel_size, self.strides
        kernel = self.param("kernel", kaiming_normal_fan_out, (k, k, x.shape[-1], self.features),
                            jnp.float32)
        alpha = jnp.mean(jnp.abs(kernel), axis=(0, 1, 2))                      # [features]
        pad = ((k // 2, k // 2), (k // 2, k // 2))
        conv = lambda a, w: lax.conv_general_dilated(  # noqa: E731
            a, w, (s, s), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        x = jnp.asarray(x, self.dtype)
        if self.binarize_inputs:
            scale_map = jnp.mean(jnp.abs(x), axis=-1, keepdims=True)           # A
            box = jnp.full((k, k, 1, 1), 1.0 / (k * k), self.dtype)
            scale_map = conv(scale_map, box)                                    # K
            x = ste_sign(x)
        else:
            scale_map = 1.0
        y = conv(x, ste_sign(kernel).astype(self.dtype))
        return y * scale_map * alpha.astype(self.dtype)
