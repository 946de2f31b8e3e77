"""Depthwise convolution with learnable kernel-element positions (DCLS, 2-D, bilinear).

Khalfaoui-Hassani, Pellegrini, Masquelier 2023, "Dilated convolution with learnable spacings",
ICLR 2023, arXiv:2112.03740. A DCLS kernel has only ``kernel_count`` non-zero weights per
channel, each at a learnable real-valued 2-D position inside a ``kernel_size`` x ``kernel_size``
window (the "dilated kernel size"). The positions are made differentiable by interpolation:
each weight is spread over the 4 integer cells around its position with bilinear coefficients
(they sum to 1), which gives a dense [KH, KW, C] kernel; the convolution itself is an ordinary
depthwise convolution, here :func:`kernels_pallas.depthwise_conv2d` (the op
:class:`jaxconv.layers.DepthwiseConv2D` uses), so ``implementation`` selects XLA or Pallas as
for the dense layer. Gradients flow to the weights and, through the bilinear coefficients, to
the positions. Cost over a dense KxK depthwise conv: building the kernel, O(kernel_count * C *
KH * KW), negligible next to the conv's O(B * H * W * C * KH * KW).

Parameters (float32):

* ``weight`` [kernel_count, C]: the non-zero kernel values.
* ``positions`` [2, kernel_count, C]: (row, column) offsets from the window centre, in pixels.
  Positions are clamped to the window (|offset| <= (K - 1) / 2) when the kernel is built, with
  the gradient passed straight through: a position pushed outside acts as if on the border and
  gets the border's gradient, so it can come back (the official code clamps the parameter in
  place after each optimiser step instead; the forward result is the same).
* ``bias`` [C] when ``use_bias``.

Initialisation follows the official code (github.com/K-H-Ismail/Dilated-Convolution-with-
Learnable-Spacings-PyTorch, ``_DclsNd.reset_parameters``): positions ~ N(0, 0.5^2) clamped to
the window (so they start near the centre and spread out during training), weight and bias
~ U(-1/sqrt(kernel_count), 1/sqrt(kernel_count)) (PyTorch's conv default with fan_in =
kernel_count). ConvNeXt-dcls re-initialises the weight with a truncated normal (std 0.02) like
every ConvNeXt conv; pass ``weight_init`` for that.

Mapping from the official PyTorch ``Dcls2d(C, C, groups=C, version="v1")``: its ``weight``
[C, 1, count] is ``weight[:, 0].T`` here, and its ``P`` [2, C, 1, count] holds (column, row)
offsets, so ``positions = P[::-1, :, 0, :].transpose(0, 2, 1)``. Its ``v1`` kernel divides by
the sum of the interpolation coefficients plus 1e-7, which differs from this layer by a
relative 1e-7. Its padding is ``kernel_size // 2``, as ``padding=None`` here.

Model-level sharing: the official ConvNeXt-dcls shares one ``positions`` array between all
blocks of a stage; the ``positions`` call argument or the ``shared_positions`` field serve that
(a caller that owns the shared positions passes them in, and the layer then creates none;
see :mod:`jaxconv.models.convnext_dcls`).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv.layers.depthwise import (
    DEPTHWISE_DTYPES,
    DEPTHWISE_PADDINGS,
    DEPTHWISE_STRIDES,
    _pair,
    torch_depthwise_uniform,
)
from jaxconv.layers.dtypes import canonical_dtype
from kernels_pallas import IMPLEMENTATIONS, depthwise_conv2d

__all__ = ["DclsDepthwiseConv2D", "dcls_position_init", "interpolate_kernel",
           "window_limits"]

#: Standard deviation of the initial positions (official code: N(0, 0.5), clamped).
POSITION_INIT_STD = 0.5


def window_limits(kernel_size: Sequence[int]) -> tuple[float, float]:
    """Largest |offset| a position may have along (rows, columns): (K - 1) / 2."""
    return tuple((k - 1) / 2 for k in kernel_size)


def interpolate_kernel(weight: jax.Array, positions: jax.Array,
                       kernel_size: Sequence[int]) -> jax.Array:
    """Dense [KH, KW, C] kernel from ``weight`` [N, C] at ``positions`` [2, N, C] (bilinear).

    ``positions`` are (row, column) offsets from the window centre; they are clamped to the
    window (gradient passed straight through). Element n of channel c adds ``weight[n, c] * a_r * a_q`` to cell (r, q) for the two
    rows r around its row position and the two columns q around its column position, where a
    is 1 - |distance| (so an integer position lands on one cell, a half-integer one is split
    equally). Computed in float32, or float64 if an argument is float64.
    """
    kh, kw = kernel_size
    dtype = jnp.result_type(weight, positions, jnp.float32)
    weight = jnp.asarray(weight, dtype)
    positions = jnp.asarray(positions, dtype)

    def coefficients(offset, size):
        # Index space: 0 .. size - 1, centre (size - 1) / 2. The clamp passes gradients
        # straight through: a position beyond the border acts as on it, with its gradient.
        index = offset + (size - 1) / 2
        index = index + jax.lax.stop_gradient(jnp.clip(index, 0.0, size - 1) - index)
        low = jnp.clip(jnp.floor(index), 0, max(size - 2, 0))
        frac = index - low  # in [0, 1]; gradient 1 w.r.t. the position
        low = low.astype(jnp.int32)
        cells = jnp.arange(size)
        return ((1.0 - frac)[..., None] * (cells == low[..., None]).astype(dtype)
                + frac[..., None] * (cells == (low + 1)[..., None]).astype(dtype))  # [N, C, size]

    rows = coefficients(positions[0], kh)
    cols = coefficients(positions[1], kw)
    return jnp.einsum("nc,nch,ncw->hwc", weight, rows, cols)


def dcls_position_init(kernel_size: Sequence[int], std: float = POSITION_INIT_STD):
    """Initialiser for ``positions`` [2, N, C]: N(0, std^2) offsets clamped to the window."""
    limits = jnp.asarray(window_limits(kernel_size), jnp.float32)[:, None, None]

    def init(key, shape, dtype=jnp.float32):
        values = std * jax.random.normal(key, shape, jnp.float32)
        return jnp.clip(values, -limits, limits).astype(dtype)

    return init


class DclsDepthwiseConv2D(nn.Module):
    """Depthwise DCLS conv: a drop-in for :class:`DepthwiseConv2D` whose ``kernel_size`` is the
    dilated (window) size and whose kernel has ``kernel_count`` learnable-position elements.

    NHWC in and out, channels unchanged. ``features`` is optional and, if given, must equal
    the input's channel count (for factories that pass it). ``padding=None`` pads
    ``(k - 1) // 2`` on both sides like the dense layer (the official code's ``k // 2`` for the
    odd sizes it uses). Call with ``positions=`` [2, kernel_count, C] to use positions owned
    by the caller (shared across blocks), or set them as the ``shared_positions`` field (for
    factories that only pass ``x``); the layer then creates no ``positions`` parameter.
    """

    kernel_size: int | Sequence[int] = 17
    kernel_count: int = 34
    features: int | None = None
    strides: int | Sequence[int] = 1
    padding: Any = None
    use_bias: bool = True
    dtype: Any = jnp.float32
    implementation: str | None = None
    weight_init: Callable | None = None
    bias_init: Callable | None = None
    #: Positions [2, kernel_count, C] owned by the caller (e.g. one array per ConvNeXt stage,
    #: as the official ConvNeXt-dcls); the ``positions`` call argument takes precedence.
    shared_positions: Any = None

    def __post_init__(self):
        object.__setattr__(self, "kernel_size", _pair("kernel_size", self.kernel_size))
        object.__setattr__(self, "strides", _pair("strides", self.strides, DEPTHWISE_STRIDES))
        count = self.kernel_count
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"kernel_count must be a positive int, got {count!r}")
        features = self.features
        if features is not None and (isinstance(features, bool) or not isinstance(features, int)
                                     or features < 1):
            raise ValueError(f"features must be None or a positive int, got {features!r}")
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
            return tuple(((k - 1) // 2, (k - 1) // 2) for k in self.kernel_size)
        if isinstance(padding, int) and not isinstance(padding, bool) and padding >= 0:
            return ((padding, padding), (padding, padding))
        if isinstance(padding, str) and padding.upper() in DEPTHWISE_PADDINGS:
            return padding.upper()
        try:
            pads = tuple((int(lo), int(hi)) for lo, hi in padding)
        except (TypeError, ValueError):
            pads = ()
        if len(pads) != 2 or isinstance(padding, str):
            raise ValueError(f"padding must be None, a non-negative int, one of "
                             f"{list(DEPTHWISE_PADDINGS)} or ((lo, hi), (lo, hi)); "
                             f"got {padding!r}")
        return pads

    @nn.compact
    def __call__(self, x, positions=None):
        if positions is None:
            positions = self.shared_positions
        channels = x.shape[-1]
        if self.features is not None and self.features != channels:
            raise ValueError(f"features={self.features} does not match the input's "
                             f"{channels} channels")
        count = self.kernel_count
        uniform = torch_depthwise_uniform(lambda s: count)
        weight = self.param("weight", self.weight_init or uniform, (count, channels),
                            jnp.float32)
        if positions is None:
            positions = self.param("positions", dcls_position_init(self.kernel_size),
                                   (2, count, channels), jnp.float32)
        elif tuple(positions.shape) != (2, count, channels):
            raise ValueError(f"positions must be [2, kernel_count, C] = [2, {count}, "
                             f"{channels}], got {tuple(positions.shape)}")
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init or uniform, (channels,), jnp.float32)
        kernel = interpolate_kernel(weight, positions, self.kernel_size)
        return depthwise_conv2d(
            jnp.asarray(x, self.dtype), kernel.astype(self.dtype), stride=self.strides,
            padding=self.padding, bias=bias, implementation=self.implementation)
