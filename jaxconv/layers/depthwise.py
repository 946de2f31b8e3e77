"""Depthwise 2-D convolution layer on :func:`kernels_pallas.depthwise_conv2d`.

For the large depthwise kernels of modern ConvNets (7x7 ConvNeXt, band kernels in
InceptionNeXt, 13x13..31x31 RepLKNet/UniRepLKNet): the op picks a fast path per backend
(``implementation=None``: FFT or shifted multiply-adds on CPU, XLA's convolution on GPU/TPU
until the Pallas kernels are timed there), or a forced one from the model config
(``implementation="xla" | "pallas"``).

Parameters: ``kernel`` [KH, KW, C] and ``bias`` [C], float32. A timm/PyTorch depthwise
``nn.Conv2d(C, C, k, groups=C)`` weight of shape [C, 1, KH, KW] maps to
``kernel = weight[:, 0].transpose(1, 2, 0)`` and its bias maps unchanged.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv.layers.dtypes import canonical_dtype
from kernels_pallas import IMPLEMENTATIONS, depthwise_conv2d

#: Compute dtypes the layer accepts (the op accumulates in float32 for both).
DEPTHWISE_DTYPES = ("float32", "bfloat16")
#: Strides the op serves, per spatial dimension.
DEPTHWISE_STRIDES = (1, 2)
#: Padding strings; also None (PyTorch-style symmetric), an int, or ((lo, hi), (lo, hi)).
DEPTHWISE_PADDINGS = ("SAME", "VALID")


def _pair(field: str, value: Any, valid: Sequence[int] | None = None) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        pair = tuple(pair)
    except TypeError:
        pair = ()
    ok = len(pair) == 2 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                for v in pair)
    if ok and valid is not None:
        ok = all(v in valid for v in pair)
    if not ok:
        allowed = f"one of {list(valid)}" if valid is not None else "a positive int"
        raise ValueError(f"{field} must be an int or a pair of ints, each {allowed}; "
                         f"got {value!r}")
    return pair


def torch_depthwise_uniform(bound_from_shape):
    """PyTorch's default conv init (kaiming_uniform with a=sqrt(5)), U(-1/sqrt(fan_in), +...),
    where a depthwise conv's fan_in is KH*KW (one input channel per filter)."""

    def init(key, shape, dtype=jnp.float32):
        bound = 1.0 / (bound_from_shape(shape) ** 0.5)
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _grouped_init(init):
    """``init`` of a grouped conv's ``[kh, kw, 1, C]`` kernel, as a ``[kh, kw, C]`` init."""

    def wrapped(key, shape, dtype=jnp.float32):
        kh, kw, channels = shape
        return init(key, (kh, kw, 1, channels), dtype).reshape(shape)

    return wrapped


class DepthwiseConv2D(nn.Module):
    """Depthwise conv: one KHxKW filter per channel, NHWC in and out, channel count unchanged.

    ``padding=None`` pads ``dilation * (k - 1) // 2`` on both sides (PyTorch's symmetric
    convention, so timm weights give timm's outputs also for stride 2, where 'SAME' would pad
    (0, 1)); 'SAME', 'VALID', an int (symmetric) or explicit ((lo, hi), (lo, hi)) are accepted.
    ``dtype`` is the compute dtype (parameters stay float32; the kernel is cast to it, the bias
    is added in float32 before the result is rounded to it).

    ``kernel_init``: None (PyTorch's default conv init) or a Flax initializer called with the
    grouped-conv shape ``[KH, KW, 1, C]`` (what ``nn.Conv(feature_group_count=C)`` holds, so
    fan-in based inits see ``KH * KW`` and the same key draws the same values), then reshaped to
    ``[KH, KW, C]``.
    """

    kernel_size: int | Sequence[int]
    strides: int | Sequence[int] = 1
    padding: Any = None
    dilation: int | Sequence[int] = 1
    use_bias: bool = True
    dtype: Any = jnp.float32
    implementation: str | None = None
    kernel_init: Callable | None = None

    def __post_init__(self):
        # Normalise before Flax freezes the instance (tuples keep the module hashable).
        object.__setattr__(self, "kernel_size", _pair("kernel_size", self.kernel_size))
        object.__setattr__(self, "strides", _pair("strides", self.strides, DEPTHWISE_STRIDES))
        object.__setattr__(self, "dilation", _pair("dilation", self.dilation))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.dtype.name not in DEPTHWISE_DTYPES:
            raise ValueError(f"dtype must be one of {list(DEPTHWISE_DTYPES)}, got "
                             f"{self.dtype.name!r}")
        object.__setattr__(self, "padding", self._explicit_padding(self.padding))
        if self.implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {list(IMPLEMENTATIONS)}, got "
                             f"{self.implementation!r}")
        super().__post_init__()

    def _explicit_padding(self, padding):
        if padding is None:
            return tuple(((k - 1) * d // 2, (k - 1) * d // 2)
                         for k, d in zip(self.kernel_size, self.dilation))
        if isinstance(padding, int) and not isinstance(padding, bool):
            return ((padding, padding), (padding, padding))
        if isinstance(padding, str):
            if padding.upper() not in DEPTHWISE_PADDINGS:
                raise ValueError(f"padding must be None, an int, one of "
                                 f"{list(DEPTHWISE_PADDINGS)} or ((lo, hi), (lo, hi)); "
                                 f"got {padding!r}")
            return padding.upper()
        try:
            pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        except (TypeError, ValueError):
            pads = ()
        if len(pads) != 2:
            raise ValueError(f"padding must be None, an int, one of {list(DEPTHWISE_PADDINGS)} "
                             f"or ((lo, hi), (lo, hi)); got {padding!r}")
        return pads

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        kh, kw = self.kernel_size
        init = torch_depthwise_uniform(lambda s: s[0] * s[1])
        if self.kernel_init is not None:
            init = _grouped_init(self.kernel_init)
        kernel = self.param("kernel", init, (kh, kw, channels), jnp.float32)
        bias = None
        if self.use_bias:
            bias = self.param("bias", torch_depthwise_uniform(lambda s: kh * kw), (channels,),
                              jnp.float32)
        return depthwise_conv2d(
            jnp.asarray(x, self.dtype), kernel.astype(self.dtype), stride=self.strides,
            padding=self.padding, dilation=self.dilation, bias=bias,
            implementation=self.implementation)
