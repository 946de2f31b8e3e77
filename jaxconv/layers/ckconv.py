"""Continuous kernel convolutions: CKConv (Romero et al. 2022, arXiv:2102.02611) and FlexConv's
learned Gaussian mask (Romero et al. 2022, arXiv:2110.08059), in 1-D ``[B, L, C]`` and 2-D
NHWC, as the CCNN (Knigge, Romero et al. 2023, arXiv:2206.03398) uses them.

A small network, :class:`KernelNet`, maps relative positions in ``[-1, 1]^D`` to kernel values,
so a kernel of any length or resolution costs the same parameters:

* ``"mlp"``: Linear - GELU stack.
* ``"siren"``: sine layers ``sin(omega_0 (W p + b))`` with SIREN's init (Sitzmann et al. 2020).
* ``"magnet"``: a multiplicative anisotropic Gabor network (MAGNet, Romero et al. 2022):
  ``h_0 = g_0(p)``, ``h_i = g_i(p) * (W_i h_{i-1} + b_i)``, ``g_i(p) = exp(-1/2 sum_d
  (gamma_i (p - mu_i))^2) sin(W'_i p + b'_i)``; gamma ~ Gamma(6 / (i + 1), 1), the sine's
  weight scaled by ``2 pi omega_0 gamma``.

Its last layer starts scaled by ``sqrt(1 / fan)`` (Chang et al. 2020's init as the authors apply
it: fan = the kernel's taps, times the input channels for a full conv). FlexConv multiplies the
kernel by ``exp(-1/2 ((p - mean) / sigma)^2)`` per dimension with a learned ``sigma`` (init
``mask_init``; mean 1 = the current step for causal 1-D, else 0), so the model learns its
kernel size. The authors' dynamic cropping (dropping kernel taps where the mask is below 0.1)
is a data-dependent shape and is not done here: the taps stay, scaled by the mask.

Convolution (never an FFT of its own): separable (``separable=True``, SepFlexConv: a depthwise
long conv, its bias, then a 1x1 ``channel_mixer``) runs 1-D kernels through
:func:`kernels_pallas.fft_conv` (causal, or two-sided with the op's centred kernel) and 2-D
kernels through :func:`kernels_pallas.depthwise_conv2d`; ``separable=False`` (one kernel per
input-output pair) through ``lax.conv_general_dilated``.

Relative positions: 1-D tap ``s`` of a ``Lk``-tap kernel sits at ``1 - 2 s / (Lk - 1)`` (for a
causal kernel tap ``s`` is lag ``s``, so position 1 is the current step); 2-D taps on the grid
``linspace(-1, 1, K)`` per axis. ``kernel_size=None`` uses the input's length / size ("same").

Streaming (``decode=True``, causal 1-D, ``kernel_size`` set): the kernel is generated once,
when the cache is created, and each step gathers its ``Lk`` taps from a ring buffer
(:func:`jaxconv.layers.tcn.ring_buffer_window`).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from jaxconv.layers.dtypes import canonical_dtype
from jaxconv.layers.tcn import ring_buffer_window
from jaxconv.models.checks import check_choice, positive_ints
from kernels_pallas import IMPLEMENTATIONS, depthwise_conv2d, fft_conv

__all__ = ["KERNEL_NETS", "CKConv", "KernelNet", "gaussian_mask", "relative_positions"]

#: Kernel generator networks :class:`KernelNet` builds.
KERNEL_NETS = ("mlp", "siren", "magnet")

#: PyTorch ``kaiming_uniform_(nonlinearity="linear")``: U(+-sqrt(3 / fan_in)).
_kaiming_uniform_linear = nn.initializers.variance_scaling(1.0, "fan_in", "uniform")
#: PyTorch ``kaiming_normal_`` (ReLU gain, fan_in, untruncated).
kaiming_normal = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def relative_positions(sizes: Sequence[int]):
    """Positions of a kernel's taps, ``[*sizes, D]`` float32 (module doc: 1-D runs from 1 at tap
    0 down to -1; 2-D is the ``linspace(-1, 1)`` grid)."""
    if len(sizes) == 1:
        (n,) = sizes
        return (1.0 - 2.0 * jnp.arange(n, dtype=jnp.float32) / max(n - 1, 1))[:, None]
    axes = [jnp.linspace(-1.0, 1.0, n, dtype=jnp.float32) for n in sizes]
    return jnp.stack(jnp.meshgrid(*axes, indexing="ij"), axis=-1)


def gaussian_mask(positions, mean, sigma):
    """FlexConv's mask: ``prod_d exp(-1/2 ((p_d - mean_d) / sigma_d)^2)`` over the last axis."""
    return jnp.exp(-0.5 * jnp.sum(((positions - mean) / sigma) ** 2, axis=-1))


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)
    return init


class KernelNet(nn.Module):
    """Positions ``[..., D]`` -> kernel values ``[..., out_features]`` (module doc).

    ``chang_fan`` scales the output layer's initial weights by ``sqrt(1 / chang_fan)``;
    ``causal`` and ``init_spatial_value`` place MAGNet's Gaussian centres (FlexConv passes
    ``1.667 * mask_init``: near 1 for causal kernels, in ``+-value`` otherwise).
    """

    out_features: int
    kind: str = "magnet"
    hidden: int = 32
    layers: int = 3
    omega_0: float = 100.0
    chang_fan: int = 1
    causal: bool = False
    init_spatial_value: float = 1.0

    def __post_init__(self):
        check_choice("kind", self.kind, KERNEL_NETS)
        positive_ints("out_features", self.out_features)
        positive_ints("hidden", self.hidden)
        positive_ints("layers", self.layers)
        if self.kind == "siren" and self.layers < 2:
            raise ValueError(f"layers must be >= 2 for a SIREN kernel net, got {self.layers}")
        if not self.omega_0 > 0:
            raise ValueError(f"omega_0 must be a positive float, got {self.omega_0!r}")
        super().__post_init__()

    def _output(self, h):
        scale = math.sqrt(1.0 / self.chang_fan)
        init = lambda key, shape, dtype=jnp.float32: (  # noqa: E731
            _kaiming_uniform_linear(key, shape, dtype) * scale)
        return nn.Dense(self.out_features, kernel_init=init, name="output")(h)

    @nn.compact
    def __call__(self, positions):
        dim = positions.shape[-1]
        if self.kind == "mlp":
            h = positions
            for i in range(self.layers - 1):
                h = nn.gelu(nn.Dense(self.hidden, name=f"linears_{i}")(h))
            return self._output(h)
        if self.kind == "siren":
            h = positions
            for i in range(self.layers - 1):
                fan_in = h.shape[-1]
                bound = 1.0 / fan_in if i == 0 else math.sqrt(6.0 / fan_in) / self.omega_0
                h = jnp.sin(self.omega_0 * nn.Dense(self.hidden, kernel_init=_uniform(bound),
                                                    name=f"linears_{i}")(h))
            return self._output(h)
        h = None
        for i in range(self.layers + 1):  # MAGNet
            g = self._gabor_filter(positions, dim, i)
            if h is not None:
                h = g * nn.Dense(self.hidden, kernel_init=_kaiming_uniform_linear,
                                 bias_init=nn.initializers.ones, name=f"linears_{i - 1}")(h)
            else:
                h = g
        return self._output(h)

    def _gabor_filter(self, positions, dim: int, i: int):
        hidden, isv = self.hidden, self.init_spatial_value

        def mu_init(key):
            u = jax.random.uniform(key, (hidden, dim))
            return 1.0 - isv * u if self.causal and isv != 1.0 else isv * (2.0 * u - 1.0)

        mu = self.param(f"filters_{i}_mu", mu_init)
        gamma = self.param(f"filters_{i}_gamma",
                           lambda key: jax.random.gamma(key, 6.0 / (i + 1), (hidden, dim)))
        bound = 1.0 / math.sqrt(dim)  # PyTorch's default init of a D -> hidden layer
        kernel = self.param(
            f"filters_{i}_kernel",
            lambda key: jax.random.uniform(key, (dim, hidden), jnp.float32, -bound, bound)
            * (2.0 * math.pi * self.omega_0) * gamma.T)
        bias = self.param(f"filters_{i}_bias", nn.initializers.zeros, (hidden,))
        window = jnp.exp(-0.5 * jnp.sum((gamma * (positions[..., None, :] - mu)) ** 2, -1))
        return window * jnp.sin(positions @ kernel + bias)


class CKConv(nn.Module):
    """Continuous-kernel conv over ``[B, L, C]`` (1-D) or ``[B, H, W, C]`` (2-D), module doc.

    Fields: features (output channels); kernel_size (None = the input's size; an int, or a pair
    in 2-D); separable; causal (1-D only); kernel_net / kernel_hidden / kernel_layers / omega_0
    (the :class:`KernelNet`); mask (FlexConv's Gaussian mask) and mask_init; use_bias;
    implementation (of ``fft_conv`` / ``depthwise_conv2d``); dtype; decode.

    Parameters: ``kernel_net/...``, ``mask_sigma`` [D] (with ``mask``), ``bias`` ([C_in]
    separable, [features] otherwise), ``channel_mixer/{kernel, bias}`` (separable).
    """

    features: int
    kernel_size: Any = None
    separable: bool = True
    causal: bool = True
    kernel_net: str = "magnet"
    kernel_hidden: int = 32
    kernel_layers: int = 3
    omega_0: float = 100.0
    mask: bool = True
    mask_init: float = 0.075
    use_bias: bool = True
    implementation: str | None = None
    dtype: Any = jnp.float32
    decode: bool = False

    def __post_init__(self):
        positive_ints("features", self.features)
        if self.kernel_size is not None:
            object.__setattr__(self, "kernel_size",
                               positive_ints("kernel_size", self.kernel_size))
        check_choice("kernel_net", self.kernel_net, KERNEL_NETS)
        check_choice("implementation", self.implementation, IMPLEMENTATIONS)
        if not self.mask_init > 0:
            raise ValueError(f"mask_init must be a positive float, got {self.mask_init!r}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.decode and not self.causal:
            raise ValueError("decode=True (streaming) needs causal=True")
        if self.decode and self.kernel_size is None:
            raise ValueError("decode=True needs an int kernel_size (the kernel length used by "
                             "the full forward), got None ('same' depends on the input length)")
        super().__post_init__()

    def _kernel_sizes(self, x) -> tuple[int, ...]:
        spatial = x.shape[1:-1]
        if len(spatial) not in (1, 2):
            raise ValueError(f"CKConv takes [B, L, C] or [B, H, W, C], got shape "
                             f"{tuple(x.shape)}")
        if len(spatial) == 2 and self.causal:
            raise ValueError("causal=True is for 1-D sequences [B, L, C]; build the 2-D CKConv "
                             "with causal=False")
        if self.kernel_size is None:
            return tuple(spatial)
        sizes = self.kernel_size * len(spatial) if len(self.kernel_size) == 1 else \
            self.kernel_size
        if len(sizes) != len(spatial):
            raise ValueError(f"kernel_size {self.kernel_size} must be one int or one per "
                             f"spatial dim ({len(spatial)})")
        if len(spatial) == 1 and not self.decode and sizes[0] > spatial[0]:
            raise ValueError(f"kernel_size {sizes[0]} exceeds the sequence length "
                             f"{spatial[0]}")
        return sizes

    def _make_kernel(self, sizes, in_channels):
        """The masked kernel ``[*sizes, C_in]`` (separable) or ``[*sizes, C_in, features]``."""
        dim = len(sizes)
        taps = math.prod(sizes)
        out = in_channels if self.separable else in_channels * self.features
        causal = self.causal and dim == 1
        net = KernelNet(out, self.kernel_net, self.kernel_hidden, self.kernel_layers,
                        self.omega_0, chang_fan=taps if self.separable else in_channels * taps,
                        causal=causal,
                        init_spatial_value=1.667 * self.mask_init if self.mask else 1.0,
                        name="kernel_net")
        positions = relative_positions(sizes)
        kernel = net(positions)
        if self.mask:
            sigma = self.param("mask_sigma", nn.initializers.constant(self.mask_init), (dim,))
            mean = jnp.full((dim,), 1.0 if causal else 0.0)
            kernel = kernel * gaussian_mask(positions, mean, sigma)[..., None]
        if not self.separable:
            kernel = kernel.reshape(*sizes, in_channels, self.features)
        return kernel

    @nn.compact
    def __call__(self, x):
        sizes = self._kernel_sizes(x)
        in_channels = x.shape[-1]
        x = jnp.asarray(x, self.dtype)
        if self.decode:
            y = self._decode_step(x, sizes[0], in_channels)
        else:
            kernel = self._make_kernel(sizes, in_channels).astype(self.dtype)
            self.sow("intermediates", "kernel", kernel)
            y = self._conv(x, kernel, sizes)
        if self.use_bias:
            width = in_channels if self.separable else self.features
            y = y + self.param("bias", nn.initializers.zeros, (width,)).astype(y.dtype)
        if self.separable:
            y = nn.Dense(self.features, dtype=self.dtype, param_dtype=jnp.float32,
                         kernel_init=kaiming_normal, name="channel_mixer")(y)
        return y

    def _conv(self, x, kernel, sizes):
        if len(sizes) == 1 and self.separable:
            return fft_conv(x, kernel.T, causal=self.causal, implementation=self.implementation)
        # Explicit pads: causal -> all on the left; otherwise the extra tap of an even kernel
        # on the high side of the sum (fft_conv's centring, flipped to a correlation).
        pads = [(k - 1, 0) if self.causal else ((k - 1) - (k - 1) // 2, (k - 1) // 2)
                for k in sizes]
        if self.separable:  # 2-D depthwise
            return depthwise_conv2d(x, kernel, padding=tuple(pads),
                                    implementation=self.implementation)
        # Dense conv: lax is a correlation, the kernel's tap 0 the newest step -> flip 1-D.
        kernel = kernel[::-1] if len(sizes) == 1 else kernel
        spec = ("NWC", "WIO", "NWC") if len(sizes) == 1 else ("NHWC", "HWIO", "NHWC")
        return lax.conv_general_dilated(x, kernel, (1,) * len(sizes), pads,
                                        dimension_numbers=spec)

    def _decode_step(self, x, taps: int, in_channels: int):
        if x.ndim != 3 or x.shape[1] != 1:
            raise ValueError(f"CKConv: decode=True takes one time step [B, 1, C], got shape "
                             f"{tuple(x.shape)}")
        # Generated once, when the cache is created (inference: parameters are fixed).
        kernel = self.variable("cache", "kernel", lambda: self._make_kernel(
            (taps,), in_channels).astype(self.dtype)).value
        window = x if taps == 1 else ring_buffer_window(self, x, taps - 1, taps, 1)
        newest_first = window[:, ::-1]  # window is oldest first; index s = lag s = tap s
        if self.separable:
            return jnp.einsum("bsc,sc->bc", newest_first, kernel)[:, None]
        return jnp.einsum("bsc,sco->bo", newest_first, kernel)[:, None]
