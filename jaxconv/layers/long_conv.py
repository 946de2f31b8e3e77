"""Long convolutions with explicit kernels as long as the sequence, channels-last [B, L, H]:

* :class:`LongConv` (Fu et al. 2023, Simple Hardware-Efficient Long Convolutions for Sequence
  Modeling, arXiv:2302.06646; HazyResearch/safari ``long_conv.py``): one free kernel of length
  ``max_len`` per feature and channel, regularised by a squash (soft threshold
  ``sign(k) * relu(|k| - lam)``), optional moving-average smoothing (before the squash) and
  kernel dropout.
* :class:`SGConv` (Li et al. 2022, What Makes Convolutional Models Great on Long Sequence
  Modeling?, arXiv:2210.09298; ctlllll/SGConv ``gconv_standalone.py``): the kernel is the
  concatenation of ``num_scales`` sub-kernels of ``kernel_dim`` taps, the i-th upsampled
  (linear or nearest interpolation) by ``2**max(0, i-1)`` and weighted by
  ``decay**(num_scales-1-i)``, so a kernel of ``kernel_dim * 2**(num_scales-1)`` taps costs
  ``num_scales * kernel_dim`` parameters and decays with distance; the whole kernel is divided
  by its L2 norm at initialisation (kept fixed, as the authors' buffer, in the ``"constants"``
  collection).

Both then do what the authors' layers do after the kernel: ``y_c = conv(u, k_c) + D_c * u`` for
each of ``channels`` kernels (one :func:`kernels_pallas.fft_conv` call over the stacked
channels, ``D`` as its ``bias``), GELU, dropout, and a position-wise linear from
``channels * H`` back to H (LongConv: with a GLU, ``postact="glu"``, as its configs).

``causal=True`` convolves with the past and present only. ``causal=False`` is the authors'
bidirectional form: a second set of kernels ``k1`` sees the strict future,
``y[t] += sum_m k1[m] u[t + 1 + m]``, computed as a causal ``fft_conv`` of the time-reversed
input with ``[0, k1]`` (the contract's centred two-sided kernel reaches only L/2 each way).

Parameter layout: ``kernel`` [S * channels, H, max_len] (LongConv) / ``kernel_{i}``
[S * channels, H, kernel_dim] (SGConv) with S = 1 (causal) or 2 (forward kernels first, as the
authors' ``'(s c) h l'``), ``D`` [channels, H], ``output_linear`` (Dense).
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv.layers.conv import exact_gelu
from jaxconv.layers.dtypes import canonical_dtype
from jaxconv.models.checks import check_choice, check_rate, positive_ints
from kernels_pallas.fft_conv import fft_conv

__all__ = ["LongConv", "SGConv", "long_conv_apply", "sgconv_kernel", "squash"]

SMOOTHING = (None, "ma")
INTERPOLATIONS = ("linear", "nearest")
POSTACTS = (None, "glu")


def squash(k, lam: float):
    """Soft threshold: entries with ``|k| <= lam`` become 0, the rest move ``lam`` towards 0."""
    return jnp.sign(k) * jax.nn.relu(jnp.abs(k) - lam)


def moving_average(k, window: int):
    """Box filter of odd ``window`` along the last axis, zeros beyond the ends counted (as
    PyTorch's ``AvgPool1d(window, 1, window // 2)``), via ``lax.reduce_window``."""
    half = window // 2
    summed = jax.lax.reduce_window(k, 0.0, jax.lax.add, (1,) * (k.ndim - 1) + (window,),
                                   (1,) * k.ndim, [(0, 0)] * (k.ndim - 1) + [(half, half)])
    return summed / window


def _upsample(k, factor: int, method: str):
    """PyTorch ``F.interpolate(k, scale_factor=factor)`` along the last axis: 'nearest' repeats,
    'linear' is half-pixel (``align_corners=False``) interpolation, which ``jax.image.resize``
    computes for an integer upsampling factor."""
    if factor == 1:
        return k
    if method == "nearest":
        return jnp.repeat(k, factor, axis=-1)
    return jax.image.resize(k, k.shape[:-1] + (k.shape[-1] * factor,), method="linear")


def sgconv_kernel(sub_kernels, multiplier, method: str = "linear"):
    """The SGConv kernel from its sub-kernels (each [..., H, kernel_dim]) and the per-feature
    decay ``multiplier`` [H]: scale i upsampled by ``2**max(0, i-1)``, times
    ``multiplier**(n-1-i)``, concatenated: [..., H, kernel_dim * 2**(n-1)] (unnormalised)."""
    n = len(sub_kernels)
    parts = [_upsample(sub, 2 ** max(0, i - 1), method) * (multiplier[:, None] ** (n - 1 - i))
             for i, sub in enumerate(sub_kernels)]
    return jnp.concatenate(parts, axis=-1)


def long_conv_apply(u, k, d, causal: bool):
    """``y_c = conv(u, k_c) + D_c u`` for stacked kernels ``k`` [S*C, H, Lk] and ``D`` [C, H]:
    [B, L, H] -> [B, L, C*H] (channel-major, as the authors' ``'(c h)'``). Lk is cut to L."""
    batch, length, features = u.shape
    taps = min(k.shape[-1], length)
    channels = d.shape[0]
    k = k[..., :taps]
    stacked = jnp.tile(u, (1, 1, channels))                   # [B, L, C*H]
    forward = k[:channels].reshape(channels * features, taps)
    y = fft_conv(stacked, forward.astype(jnp.float32), bias=d.reshape(-1).astype(jnp.float32))
    if not causal and length > 1:
        # y[t] += sum_m k1[m] u[t + 1 + m]: reverse time and convolve causally with [0, k1]
        # (cut to L taps: lags >= L reach no output).
        backward = k[channels:].reshape(channels * features, taps)
        shifted = jnp.pad(backward, ((0, 0), (1, 0)))[:, :min(taps + 1, length)]
        y = y + fft_conv(stacked[:, ::-1], shifted.astype(jnp.float32))[:, ::-1]
    return y


class _ConvHead(nn.Module):
    """GELU - dropout - Dense(C*H -> H, or 2H then GLU): the authors' post-kernel layers."""

    features: int
    postact: str | None
    dropout: float
    dtype: Any

    @nn.compact
    def __call__(self, y, train: bool):
        y = exact_gelu(y)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        width = self.features * (2 if self.postact == "glu" else 1)
        y = nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name="output_linear")(y)
        return nn.glu(y, axis=-1) if self.postact == "glu" else y


def _check_common(module) -> None:
    positive_ints("channels", module.channels)
    check_rate("dropout", module.dropout)
    check_choice("postact", module.postact, POSTACTS)
    if not isinstance(module.causal, bool):
        raise ValueError(f"causal must be a bool, got {module.causal!r}")
    object.__setattr__(module, "dtype", canonical_dtype(module.dtype))


class LongConv(nn.Module):
    """Long convolution with a squashed, optionally smoothed, explicit kernel (Fu et al. 2023).

    ``__call__(u [B, L, H], train=False) -> [B, L, H]``. Fields as safari's ``LongConv`` /
    ``LongConvKernel`` (defaults: the kernel's defaults; the LRA configs set ``channels=2``,
    ``lam=0.002..0.003``, ``kernel_dropout=0.2``): ``max_len`` kernel taps (a longer input
    sees only the last ``max_len`` positions), ``lam`` squash threshold, ``smoothing`` None or
    "ma" (moving average over ``smooth_window`` taps, odd), ``kernel_dropout`` on kernel
    entries in training. Kernel init N(0, 0.002^2), ``D`` N(0, 1).
    """

    max_len: int
    channels: int = 1
    causal: bool = True
    lam: float = 0.1
    smoothing: str | None = None
    smooth_window: int = 7
    kernel_dropout: float = 0.0
    dropout: float = 0.0
    postact: str | None = "glu"
    dtype: Any = jnp.float32

    def __post_init__(self):
        positive_ints("max_len", self.max_len)
        _check_common(self)
        check_choice("smoothing", self.smoothing, SMOOTHING)
        if isinstance(self.lam, bool) or not isinstance(self.lam, (int, float)) or self.lam < 0:
            raise ValueError(f"lam (squash threshold) must be a float >= 0, got {self.lam!r}")
        positive_ints("smooth_window", self.smooth_window)
        if self.smooth_window % 2 == 0:
            raise ValueError(f"smooth_window must be odd (a centred window), got "
                             f"{self.smooth_window}")
        check_rate("kernel_dropout", self.kernel_dropout)
        super().__post_init__()

    def kernel_from_params(self, k, train: bool = False):
        """The kernel the convolution uses: smoothed, squashed, dropped out (in training)."""
        if self.smoothing == "ma":
            k = moving_average(k, self.smooth_window)
        k = squash(k, self.lam)
        if self.kernel_dropout:
            k = nn.Dropout(self.kernel_dropout, deterministic=not train, name="kernel_drop")(k)
        return k

    @nn.compact
    def __call__(self, u, train: bool = False):
        features = u.shape[-1]
        stacks = self.channels * (1 if self.causal else 2)
        k = self.param("kernel", nn.initializers.normal(0.002),
                       (stacks, features, self.max_len), jnp.float32)
        d = self.param("D", nn.initializers.normal(1.0), (self.channels, features), jnp.float32)
        y = long_conv_apply(u.astype(self.dtype), self.kernel_from_params(k, train), d,
                            self.causal)
        return _ConvHead(features, self.postact, self.dropout, self.dtype, name="head")(y, train)


class SGConv(nn.Module):
    """Structured global convolution (Li et al. 2022), the authors' ``GConv`` in 'cat' mode.

    ``__call__(u [B, L, H], train=False) -> [B, L, H]``. ``kernel_dim`` taps per sub-kernel
    (authors' default 64); ``num_scales`` (None: ``1 + ceil(log2(max_len / kernel_dim))``, the
    fewest covering ``max_len``); per-feature decay multipliers ``linspace(decay_min,
    decay_max, H)`` (default 2: each coarser scale weighs half as much relative to the finer
    ones); ``interpolation`` 'linear' or 'nearest'; ``postact`` None (authors' default: a plain
    linear after GELU). Sub-kernels init N(0, 1), ``D`` N(0, 1).

    The fixed normaliser (the kernel's L2 norm per channel and feature at initialisation) is the
    variable ``constants/kernel_norm`` [S*channels, H, 1]: pass the ``"constants"`` collection
    with the params (``model.apply(variables, ...)`` does).
    """

    max_len: int
    kernel_dim: int = 64
    num_scales: int | None = None
    decay_min: float = 2.0
    decay_max: float = 2.0
    interpolation: str = "linear"
    channels: int = 1
    causal: bool = True
    dropout: float = 0.0
    postact: str | None = None
    dtype: Any = jnp.float32

    def __post_init__(self):
        positive_ints("max_len", self.max_len)
        positive_ints("kernel_dim", self.kernel_dim)
        if self.num_scales is not None:
            positive_ints("num_scales", self.num_scales)
        for name in ("decay_min", "decay_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ValueError(f"{name} must be a float > 0, got {value!r}")
        check_choice("interpolation", self.interpolation, INTERPOLATIONS)
        _check_common(self)
        super().__post_init__()

    @property
    def scales(self) -> int:
        if self.num_scales is not None:
            return self.num_scales
        return 1 + max(0, math.ceil(math.log2(self.max_len / self.kernel_dim)))

    @nn.compact
    def __call__(self, u, train: bool = False):
        features = u.shape[-1]
        stacks = self.channels * (1 if self.causal else 2)
        subs = [self.param(f"kernel_{i}", nn.initializers.normal(1.0),
                           (stacks, features, self.kernel_dim), jnp.float32)
                for i in range(self.scales)]
        d = self.param("D", nn.initializers.normal(1.0), (self.channels, features), jnp.float32)
        multiplier = jnp.linspace(self.decay_min, self.decay_max, features, dtype=jnp.float32)
        k = sgconv_kernel(subs, multiplier, self.interpolation)
        norm = self.variable("constants", "kernel_norm", lambda: jax.lax.stop_gradient(
            jnp.linalg.norm(k, axis=-1, keepdims=True)))
        k = k / norm.value  # cut to the input length by long_conv_apply, as the authors
        y = long_conv_apply(u.astype(self.dtype), k, d, self.causal)
        return _ConvHead(features, self.postact, self.dropout, self.dtype, name="head")(y, train)
