"""Hyena (Poli et al. 2023, Hyena Hierarchy: Towards Larger Convolutional Language Models,
arXiv:2302.10866), channels-last [B, L, D], following HazyResearch/safari ``hyena.py``.

:class:`HyenaFilter` generates long implicit filters: positional features of each position
(``t`` in [0, 1] and ``(emb_dim - 1) // 2`` complex-exponential bands) go through a small MLP
with sine activations (one learnable frequency vector shared by every sine, init ``w``), and
the result is multiplied by an exponential decay ``exp(-t |delta_h|)`` whose rate differs per
channel (fixed, from ``log(target) / slow_decay_pct`` to ``log(target) / fast_decay_pct``).

:class:`HyenaOperator` of order N: ``in_proj`` (D -> (N+1) D), a short causal depthwise conv
(``short_filter_order`` taps, :class:`jaxconv.layers.DepthwiseConv2D` on [B, 1, L, C]), split
into ``x_0 .. x_{N-1}, v``; then for ``i = N-1 .. 1``: ``v = conv(x_i * v, h_i) + b_i x_i v``
with the i-th implicit filter (:func:`kernels_pallas.fft_conv`, ``x_i`` as its pre-gate,
``b`` the filter's ``bias`` as the skip term), finally ``y = out_proj(x_0 * v)`` (``x_0`` as
the last call's post-gate). Causal by construction.

Positional features: safari registers the table ``z`` as a parameter when its learning rate is
non-zero (the default; the Pile configs) and as a buffer otherwise (associative recall):
``train_pos_emb`` chooses (the table then needs ``max_len``; without it ``max_len=None`` builds
the features for the input's own length). Filters are built for the input length
``L <= max_len`` from the first L rows, as safari does.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxconv.layers.depthwise import DepthwiseConv2D
from jaxconv.layers.dtypes import canonical_dtype
from jaxconv.models.checks import check_rate, positive_ints
from kernels_pallas.fft_conv import fft_conv

__all__ = ["HyenaFilter", "HyenaOperator", "exponential_decay", "positional_features"]


def positional_features(length: int, emb_dim: int) -> np.ndarray:
    """[length, emb_dim]: ``t = linspace(0, 1, length)``, then the real and imaginary parts of
    ``exp(-i f 2 pi n / length)`` for ``f = linspace(1e-4, bands - 1, bands)``,
    ``bands = (emb_dim - 1) // 2`` (safari's ``PositionalEmbedding``)."""
    bands = (emb_dim - 1) // 2
    t = np.linspace(0.0, 1.0, length)[:, None]
    angle = 2 * np.pi * np.arange(length)[:, None] / length
    freqs = np.linspace(1e-4, bands - 1, bands)[None]
    z = np.exp(-1j * freqs * angle)
    return np.concatenate([t, z.real, z.imag], axis=-1).astype(np.float32)


def exponential_decay(t, channels: int, fast_decay_pct: float, slow_decay_pct: float,
                      target: float, shift: float = 0.0):
    """[L, channels] window ``exp(-t |delta|) + shift``: channel rates spread linearly so the
    window reaches ``target`` at ``t = slow_decay_pct`` (slowest) .. ``fast_decay_pct``."""
    deltas = jnp.linspace(math.log(target) / slow_decay_pct, math.log(target) / fast_decay_pct,
                          channels, dtype=jnp.float32)
    return jnp.exp(-t[:, None] * jnp.abs(deltas)[None]) + shift


def _positive_float(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{name} must be a float > 0, got {value!r}")


class HyenaFilter(nn.Module):
    """Implicit long filters: ``__call__(length) -> (k [channels, length], bias [channels])``.

    Parameters: ``implicit_filter_0`` Dense(emb_dim -> filter_order), ``implicit_filter_{1..}``
    Dense(filter_order -> filter_order) x ``num_inner_mlps``, ``implicit_filter_out``
    Dense(filter_order -> channels, no bias), ``freq`` [filter_order] (the shared sine
    frequency), ``bias`` [channels] N(0, 1), and ``z`` [max_len, emb_dim] if ``train_pos_emb``.
    ``normalized`` divides by the L1 norm over channels at each position (as safari's
    ``normalized=True``).
    """

    channels: int
    max_len: int | None = None
    emb_dim: int = 3
    filter_order: int = 16
    num_inner_mlps: int = 2
    w: float = 1.0
    train_pos_emb: bool = True
    modulate: bool = True
    fast_decay_pct: float = 0.3
    slow_decay_pct: float = 1.5
    target: float = 1e-2
    shift: float = 0.0
    normalized: bool = False

    def __post_init__(self):
        positive_ints("channels", self.channels)
        positive_ints("filter_order", self.filter_order)
        if isinstance(self.num_inner_mlps, bool) or not isinstance(self.num_inner_mlps, int) \
                or self.num_inner_mlps < 0:
            raise ValueError(f"num_inner_mlps must be an int >= 0, got {self.num_inner_mlps!r}")
        if isinstance(self.emb_dim, bool) or not isinstance(self.emb_dim, int) \
                or self.emb_dim < 3 or self.emb_dim % 2 == 0:
            raise ValueError(f"emb_dim must be an odd int >= 3 (time, then cosine and sine "
                             f"bands), got {self.emb_dim!r}")
        if self.max_len is not None:
            positive_ints("max_len", self.max_len)
        elif self.train_pos_emb:
            raise ValueError("max_len=None needs train_pos_emb=False: a learned positional "
                             "table has max_len rows")
        for name in ("fast_decay_pct", "slow_decay_pct", "w"):
            _positive_float(name, getattr(self, name))
        if not 0 < self.target < 1:
            raise ValueError(f"target (the decay window's value at the *_decay_pct time) must "
                             f"be in (0, 1), got {self.target!r}")
        super().__post_init__()

    def check_length(self, length: int) -> None:
        if self.max_len is not None and length > self.max_len:
            raise ValueError(f"sequence length {length} exceeds the filter's max_len="
                             f"{self.max_len}; build the layer with a larger max_len")

    @nn.compact
    def __call__(self, length: int):
        self.check_length(length)
        table_len = self.max_len if self.max_len is not None else length
        table = positional_features(table_len, self.emb_dim)
        if self.train_pos_emb:
            z = self.param("z", lambda _: jnp.asarray(table))[:length]
        else:
            z = jnp.asarray(table[:length])
        t = jnp.asarray(table[:length, 0])
        freq = self.param("freq", lambda _, s: jnp.full(s, self.w, jnp.float32),
                          (self.filter_order,))
        h = z
        for i in range(self.num_inner_mlps + 1):
            h = jnp.sin(freq * nn.Dense(self.filter_order, name=f"implicit_filter_{i}")(h))
        h = nn.Dense(self.channels, use_bias=False, name="implicit_filter_out")(h)  # [L, C]
        if self.modulate:
            h = h * exponential_decay(t, self.channels, self.fast_decay_pct,
                                      self.slow_decay_pct, self.target, self.shift)
        if self.normalized:
            h = h / jnp.sum(jnp.abs(h), axis=-1, keepdims=True)
        bias = self.param("bias", nn.initializers.normal(1.0), (self.channels,), jnp.float32)
        return h.T, bias


class HyenaOperator(nn.Module):
    """The order-N Hyena recurrence (safari's ``HyenaOperator`` with one head, one block).

    ``__call__(u [B, L, D], train=False) -> [B, L, D]``. Fields: ``max_len`` (see the module
    docstring), ``order`` N >= 2, ``filter_order`` (implicit MLP width, safari's 64),
    ``short_filter_order`` (3), ``dropout`` (on ``x_i * v``), and the filter's fields via
    ``filter_kwargs`` (a tuple of (name, value) pairs, e.g. ``(("emb_dim", 5), ("w", 10.0))``).
    Parameters: ``in_proj``, ``short_filter`` (kernel [1, K, (N+1) D], bias), ``filter_fn``
    (:class:`HyenaFilter` with ``(N-1) D`` channels: filter i is rows i*D..(i+1)*D), ``out_proj``.
    """

    max_len: int | None = None
    order: int = 2
    filter_order: int = 64
    short_filter_order: int = 3
    dropout: float = 0.0
    filter_kwargs: Any = ()
    dtype: Any = jnp.float32
    implementation: str | None = None

    def __post_init__(self):
        positive_ints("short_filter_order", self.short_filter_order)
        if isinstance(self.order, bool) or not isinstance(self.order, int) or self.order < 2:
            raise ValueError(f"order must be an int >= 2, got {self.order!r}")
        check_rate("dropout", self.dropout)
        object.__setattr__(self, "filter_kwargs", tuple(dict(self.filter_kwargs).items()))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        super().__post_init__()

    @nn.compact
    def __call__(self, u, train: bool = False):
        batch, length, width = u.shape
        filters = HyenaFilter((self.order - 1) * width, max_len=self.max_len,
                              filter_order=self.filter_order, name="filter_fn",
                              **dict(self.filter_kwargs))
        filters.check_length(length)  # before the projections are traced
        u = nn.Dense((self.order + 1) * width, dtype=self.dtype, param_dtype=jnp.float32,
                     name="in_proj")(u.astype(self.dtype))
        taps = self.short_filter_order
        u = DepthwiseConv2D((1, taps), padding=((0, 0), (taps - 1, 0)), dtype=self.dtype,
                            name="short_filter")(u[:, None])[:, 0]
        *xs, v = jnp.split(u, self.order + 1, axis=-1)
        k, bias = filters(length)
        drop = nn.Dropout(self.dropout, deterministic=not train)
        for i, x_i in enumerate(reversed(xs[1:])):
            if self.dropout:
                v, gate = drop(v * x_i), None
            else:
                gate = x_i  # fused: conv(x_i * v) inside the op
            post = xs[0] if i == self.order - 2 else None
            v = fft_conv(v, k[i * width:(i + 1) * width], bias=bias[i * width:(i + 1) * width],
                         pregate=gate, postgate=post, implementation=self.implementation)
        return nn.Dense(width, dtype=self.dtype, param_dtype=jnp.float32, name="out_proj")(v)
