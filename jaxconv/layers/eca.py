"""Efficient Channel Attention (Wang et al. 2020, ECA-Net: Efficient Channel Attention for Deep
Convolutional Neural Networks, arXiv:1910.03151).

Squeeze-and-excitation without the bottleneck MLP: the channel descriptor (global average pool)
goes through a 1-D convolution across channels (local cross-channel interaction, no
dimensionality reduction), a sigmoid gives one gate per channel. A block gains only ``k``
weights (3..7), e.g. 86 on all of ResNet-50's bottlenecks.

The kernel size adapts to the channel count (paper Eq. 12, with gamma=2, b=1):
``t = int(|log2(C) + b| / gamma)``, ``k = t`` if t is odd else ``t + 1``, and at least 3 (as timm's
``EcaModule``; the paper's code has no floor, which only matters below 16 channels).

Parameters: ``conv/kernel`` [k, 1, 1] (a 1-channel ``nn.Conv`` over the channel axis, no bias),
timm's ``conv.weight`` [1, 1, k].
"""

from __future__ import annotations

import math
import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers.conv import torch_linear_init

__all__ = ["ECA", "eca_kernel_size"]


def eca_kernel_size(channels: int, gamma: float = 2, beta: float = 1) -> int:
    """ECA's adaptive 1-D kernel size for ``channels`` (odd, >= 3; module docstring)."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
        raise ValueError(f"channels must be a positive int, got {channels!r}")
    if not gamma > 0:
        raise ValueError(f"gamma must be positive, got {gamma!r}")
    t = int(abs(math.log2(channels) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


class ECA(nn.Module):
    """``x * sigmoid(conv1d_k(mean_hw(x)))`` over NHWC input; the gate is computed in float32
    and cast to ``x``'s dtype.

    ``kernel_size=None`` picks :func:`eca_kernel_size` of the input's channels (with ``gamma``
    and ``beta``); an odd int fixes it. Conv init: PyTorch's Conv1d default, U(+-1/sqrt(k)).
    """

    kernel_size: int | None = None
    gamma: float = 2
    beta: float = 1

    def __post_init__(self):
        k = self.kernel_size
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k <= 0
                              or k % 2 == 0):
            raise ValueError(f"kernel_size must be None (adaptive) or a positive odd int, "
                             f"got {k!r}")
        if isinstance(self.gamma, bool) or not isinstance(self.gamma, (int, float)) \
                or not self.gamma > 0:
            raise ValueError(f"gamma must be a positive number, got {self.gamma!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        k = self.kernel_size or eca_kernel_size(channels, self.gamma, self.beta)
        y = jnp.mean(x.astype(jnp.float32), axis=(1, 2))[..., None]  # [B, C, 1]: C is the length
        y = nn.Conv(1, (k,), padding=((k // 2, k // 2),), use_bias=False, dtype=jnp.float32,
                    param_dtype=jnp.float32, kernel_init=torch_linear_init, name="conv")(y)
        gate = nn.sigmoid(y[..., 0])  # [B, C]
        return x * gate[:, None, None, :].astype(x.dtype)
