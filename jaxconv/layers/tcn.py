"""Dilated 1-D convolutions for sequence models: TCN (Bai et al. 2018) and ByteNet
(Kalchbrenner et al. 2016) residual blocks, channels-last ``[B, L, C]``.

:class:`DilatedConv1D` is the one conv both blocks use: ``causal=True`` pads ``(k - 1) * d``
steps on the left only (the output at ``t`` sees inputs ``t, t - d, ..., t - (k - 1) d``);
``causal=False`` pads symmetrically ('same'). Optional weight normalisation (Salimans & Kingma
2016: ``w = g * v / ||v||`` per output channel, as ``torch.nn.utils.weight_norm`` with
``dim=0``) is how the TCN paper trains its convs.

Streaming (``decode=True``, causal only): each call takes ONE time step ``[B, 1, C]`` and keeps
the last ``(k - 1) * d`` inputs in a ring buffer in the ``"cache"`` collection (``buffer``
``[B, (k - 1) d, C]`` and the step ``index``): the taps are gathered from the buffer, so a step
costs ``k * C_in * C_out`` whatever the dilation. Run a model this way through
:mod:`jaxconv.streaming`; step by step it equals the full-sequence forward.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from jaxconv.layers.dtypes import canonical_dtype
from jaxconv.models.checks import check_rate, positive_ints

__all__ = ["ByteNetBlock", "DilatedConv1D", "TCNBlock", "tcn_normal_init"]

#: Bai et al.'s conv and head init: N(0, 0.01).
tcn_normal_init = nn.initializers.normal(0.01)

_NWC = ("NWC", "WIO", "NWC")


def _check_decode_input(x, name: str) -> None:
    if x.ndim != 3 or x.shape[1] != 1:
        raise ValueError(f"{name}: decode=True takes one time step [B, 1, C], got shape "
                         f"{tuple(x.shape)}")


def ring_buffer_window(module: nn.Module, x, span: int, taps: int, dilation: int):
    """One streaming step of a dilated causal window: returns ``[B, taps, C]`` holding
    ``x[t - (taps - 1) d], ..., x[t - d], x[t]`` (zeros before the sequence start) and stores
    ``x[t]`` in ``module``'s ring buffer of ``span = (taps - 1) d`` steps.

    The buffer holds step ``s`` in slot ``s mod span``; the slot written at ``t`` held step
    ``t - span``, the oldest one the window no longer needs. At ``init`` (no cache yet) the
    cache is created at zero and not advanced.
    """
    initialized = module.has_variable("cache", "buffer")
    batch, _, channels = x.shape
    buffer = module.variable("cache", "buffer", jnp.zeros, (batch, span, channels), x.dtype)
    index = module.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
    t = index.value
    lags = jnp.arange(taps - 1, 0, -1) * dilation  # oldest first
    past = jnp.take(buffer.value, (t - lags) % span, axis=1)
    window = jnp.concatenate([past, x], axis=1)
    if initialized:
        buffer.value = lax.dynamic_update_slice_in_dim(buffer.value, x, t % span, axis=1)
        index.value = t + 1
    return window


class DilatedConv1D(nn.Module):
    """Dilated conv over ``[B, L, C_in] -> [B, L, features]`` (module doc).

    Parameters: ``kernel`` ``[k, C_in, features]`` (or ``kernel_v`` of that shape and
    ``kernel_g`` ``[features]`` with ``weight_norm``), ``bias`` ``[features]``. With weight
    norm, ``g`` starts at ``||v||`` so the initial weight is ``v`` (PyTorch's ``weight_norm``).
    """

    features: int
    kernel_size: int
    dilation: int = 1
    causal: bool = True
    weight_norm: bool = False
    use_bias: bool = True
    kernel_init: Any = tcn_normal_init
    dtype: Any = jnp.float32
    decode: bool = False

    def __post_init__(self):
        positive_ints("features", self.features)
        positive_ints("kernel_size", self.kernel_size)
        positive_ints("dilation", self.dilation)
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.decode and not self.causal:
            raise ValueError("decode=True (streaming) needs causal=True: a non-causal conv "
                             "reads future steps")
        super().__post_init__()

    def _weight(self, in_channels: int):
        shape = (self.kernel_size, in_channels, self.features)
        if not self.weight_norm:
            return self.param("kernel", self.kernel_init, shape, jnp.float32)
        v = self.param("kernel_v", self.kernel_init, shape, jnp.float32)
        g = self.param("kernel_g", lambda _key: jnp.sqrt(jnp.sum(v * v, axis=(0, 1))))
        return v * (g / jnp.sqrt(jnp.sum(v * v, axis=(0, 1))))

    @property
    def span(self) -> int:
        """How many past steps the conv reads: ``(kernel_size - 1) * dilation``."""
        return (self.kernel_size - 1) * self.dilation

    @nn.compact
    def __call__(self, x):
        if x.ndim != 3:
            raise ValueError(f"DilatedConv1D takes [B, L, C], got shape {tuple(x.shape)}")
        w = self._weight(x.shape[-1]).astype(self.dtype)
        x = jnp.asarray(x, self.dtype)
        if self.decode and self.span:
            _check_decode_input(x, "DilatedConv1D")
            window = ring_buffer_window(self, x, self.span, self.kernel_size, self.dilation)
            y = jnp.einsum("bkc,kco->bo", window, w)[:, None]
        else:
            if self.decode:
                _check_decode_input(x, "DilatedConv1D")
            left = self.span if self.causal else self.span // 2
            y = lax.conv_general_dilated(x, w, (1,), [(left, self.span - left)],
                                         rhs_dilation=(self.dilation,), dimension_numbers=_NWC)
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


class TCNBlock(nn.Module):
    """Bai et al.'s residual block: [weight-normed dilated causal conv - ReLU - dropout] x 2,
    plus the input (through a 1x1 conv ``downsample`` when the width changes), then ReLU.

    Submodules ``conv1``, ``conv2``, ``downsample`` (as locuslab/TCN's ``TemporalBlock``).
    Dropout is element-wise, from the ``"dropout"`` rng stream, on when ``train``.
    """

    features: int
    kernel_size: int = 2
    dilation: int = 1
    dropout_rate: float = 0.0
    weight_norm: bool = True
    causal: bool = True
    dtype: Any = jnp.float32
    decode: bool = False

    def __post_init__(self):
        positive_ints("features", self.features)
        positive_ints("kernel_size", self.kernel_size)
        positive_ints("dilation", self.dilation)
        check_rate("dropout_rate", self.dropout_rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = dict(kernel_size=self.kernel_size, dilation=self.dilation, causal=self.causal,
                    weight_norm=self.weight_norm, dtype=self.dtype, decode=self.decode)
        y = x
        for i in (1, 2):
            y = DilatedConv1D(self.features, name=f"conv{i}", **conv)(y)
            y = nn.Dropout(self.dropout_rate, deterministic=not train)(nn.relu(y))
        res = x
        if x.shape[-1] != self.features:
            res = DilatedConv1D(self.features, 1, dtype=self.dtype, decode=self.decode,
                                name="downsample")(x)
        return nn.relu(y + jnp.asarray(res, y.dtype))


class ByteNetBlock(nn.Module):
    """ByteNet's residual block (Kalchbrenner et al. 2016, Fig. 3 left), width ``2d = features``:
    LN - ReLU - 1x1 conv (d) - LN - ReLU - dilated k-wide conv (d; masked, i.e. causal, in the
    decoder) - LN - ReLU - 1x1 conv (2d), added to the input. LayerNorm here where the paper's
    language model used sub-batch norm (its translation model used layer norm).
    """

    features: int
    kernel_size: int = 3
    dilation: int = 1
    causal: bool = True
    dtype: Any = jnp.float32
    decode: bool = False

    def __post_init__(self):
        positive_ints("features", self.features)
        if self.features % 2:
            raise ValueError(f"features (2d, the residual width) must be even, got "
                             f"{self.features}")
        positive_ints("kernel_size", self.kernel_size)
        positive_ints("dilation", self.dilation)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # no dropout or batch statistics
        if x.shape[-1] != self.features:
            raise ValueError(f"ByteNetBlock: input channels {x.shape[-1]} must equal features "
                             f"(2d) = {self.features} for the residual sum")
        hidden = self.features // 2
        init = nn.initializers.variance_scaling(1.0, "fan_in", "normal")
        y = x
        for i, (width, k, dilation) in enumerate(((hidden, 1, 1),
                                                  (hidden, self.kernel_size, self.dilation),
                                                  (self.features, 1, 1))):
            y = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name=f"norm{i}")(y)
            y = DilatedConv1D(width, k, dilation, causal=self.causal, kernel_init=init,
                              dtype=self.dtype, decode=self.decode,
                              name=f"conv{i}")(nn.relu(y))
        return jnp.asarray(x, y.dtype) + y


def receptive_field(kernel_size: int, dilations) -> int:
    """Steps a stack of dilated convs sees: ``1 + sum((k - 1) * d)``."""
    return 1 + sum((kernel_size - 1) * d for d in dilations)

