"""Lightweight and dynamic convolutions (Wu et al. 2019, Pay Less Attention with Lightweight and
Dynamic Convolutions, arXiv:1901.10430), channels-last [B, L, C].

Both split the C channels into ``num_heads`` contiguous groups (channel c belongs to head
``c // (C // num_heads)``, as fairseq's ``LightweightConv1dTBC`` / ``DynamicConv1dTBC``) and
convolve every channel of a head with that head's length-``kernel_size`` kernel:

    y[b, t, c] = sum_k w[k] x[b, t - pad_left + k, c]        (zero outside [0, L))

with ``pad_left = kernel_size - 1`` when ``causal`` (only the past and present) and
``kernel_size // 2`` otherwise (centred for odd sizes). The kernel is softmax-normalised over
its taps (``weight_softmax``) and dropped out as a whole tap (DropConnect, ``weight_dropout``)
in training.

* :class:`LightweightConv`: one learned kernel per head, shared over positions:
  ``weight [num_heads, kernel_size]``, a depthwise conv run by
  :func:`kernels_pallas.depthwise_conv2d` on a [B, 1, L, C] view.
* :class:`DynamicConv`: the kernel of each position and head is predicted from that position's
  input by a linear layer (``weight_linear``: C -> num_heads * kernel_size), then applied to
  the window as a weighted sum of ``kernel_size`` shifted copies (memory ``kernel_size`` x the
  input: fine for the paper's kernels of 3..31).

The paper's full block (Linear + GLU before the convolution, Linear after it) is left to the
model that uses these layers; ``use_bias`` adds the per-channel ``conv_bias`` of fairseq.
Initialisation: fairseq's Xavier-uniform for ``weight`` / ``weight_linear``, zero biases.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv.layers.dtypes import canonical_dtype
from jaxconv.models.checks import check_rate, positive_ints
from kernels_pallas import depthwise_conv2d

__all__ = ["DynamicConv", "LightweightConv", "conv_padding", "split_heads_check"]


def conv_padding(kernel_size: int, causal: bool) -> tuple[int, int]:
    """(left, right) zero padding along the sequence for a ``kernel_size`` window."""
    left = kernel_size - 1 if causal else kernel_size // 2
    return left, kernel_size - 1 - left


def split_heads_check(channels: int, num_heads: int) -> int:
    """Channels per head; a clear error when ``num_heads`` does not divide the channels."""
    if channels % num_heads:
        raise ValueError(f"num_heads={num_heads} must divide the input channels, got "
                         f"{channels} channels")
    return channels // num_heads


def _validate(module) -> None:
    positive_ints("num_heads", module.num_heads)
    positive_ints("kernel_size", module.kernel_size)
    check_rate("weight_dropout", module.weight_dropout)
    if not isinstance(module.causal, bool):
        raise ValueError(f"causal must be a bool, got {module.causal!r}")
    object.__setattr__(module, "dtype", canonical_dtype(module.dtype))


def _normalise(weight, softmax: bool, rate: float, train: bool):
    """Softmax over the taps (last axis), then DropConnect on the taps in training."""
    if softmax:
        weight = jax.nn.softmax(weight.astype(jnp.float32), axis=-1)
    # Called inside the caller's compact __call__, so the Dropout binds to it.
    return nn.Dropout(rate, deterministic=not train, name="weight_drop")(weight) if rate \
        else weight


class LightweightConv(nn.Module):
    """Depthwise conv whose ``num_heads`` kernels are shared by groups of channels (LightConv).

    ``__call__(x [B, L, C], train=False) -> [B, L, C]``; parameters ``weight
    [num_heads, kernel_size]`` and, with ``use_bias``, ``bias [C]``.
    """

    num_heads: int
    kernel_size: int
    causal: bool = True
    weight_softmax: bool = True
    weight_dropout: float = 0.0
    use_bias: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        _validate(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        batch, length, channels = x.shape
        per_head = split_heads_check(channels, self.num_heads)
        weight = self.param("weight", nn.initializers.xavier_uniform(),
                            (self.num_heads, self.kernel_size), jnp.float32)
        weight = _normalise(weight, self.weight_softmax, self.weight_dropout, train)
        # [H, K] -> depthwise kernel [1, K, C]: channel c uses head c // per_head.
        kernel = jnp.repeat(weight, per_head, axis=0).T[None]
        bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32) \
            if self.use_bias else None
        y = depthwise_conv2d(
            x.astype(self.dtype)[:, None], kernel.astype(self.dtype),
            padding=((0, 0), conv_padding(self.kernel_size, self.causal)), bias=bias)
        return y[:, 0]


class DynamicConv(nn.Module):
    """Convolution with a kernel predicted per position and head from the input (DynamicConv).

    ``__call__(x [B, L, C], train=False) -> [B, L, C]``; parameters ``weight_linear``
    (Dense C -> num_heads * kernel_size, with bias) and, with ``use_bias``, ``bias [C]``.
    """

    num_heads: int
    kernel_size: int
    causal: bool = True
    weight_softmax: bool = True
    weight_dropout: float = 0.0
    use_bias: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self):
        _validate(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        batch, length, channels = x.shape
        per_head = split_heads_check(channels, self.num_heads)
        heads, taps = self.num_heads, self.kernel_size
        x = x.astype(self.dtype)
        weight = nn.Dense(heads * taps, dtype=self.dtype, param_dtype=jnp.float32,
                          kernel_init=nn.initializers.xavier_uniform(),
                          name="weight_linear")(x).reshape(batch, length, heads, taps)
        weight = _normalise(weight, self.weight_softmax, self.weight_dropout, train)
        left, right = conv_padding(taps, self.causal)
        padded = jnp.pad(x, ((0, 0), (left, right), (0, 0)))
        # windows[b, t, k, c] = x[b, t - left + k, c]
        windows = jnp.stack([padded[:, k:k + length] for k in range(taps)], axis=2)
        windows = windows.reshape(batch, length, taps, heads, per_head)
        y = jnp.einsum("blkhr,blhk->blhr", windows, weight.astype(self.dtype),
                       preferred_element_type=jnp.float32).reshape(batch, length, channels)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
        return y.astype(self.dtype)
