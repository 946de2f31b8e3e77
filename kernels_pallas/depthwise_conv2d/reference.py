"""The correctness oracle: XLA's grouped convolution (``feature_group_count=C``).

Every other path of :func:`kernels_pallas.depthwise_conv2d` must give this function's answer,
forward and gradients (tests/kernels). It is also the fallback: on GPU/TPU the ``"xla"``
implementation is exactly this (cuDNN / the TPU convolution emitter are fast there); on CPU it
is slow (~0.6 GFLOP/s), which is why the CPU has its own formulations (``xla_cpu.py``).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax


def depthwise_conv2d_reference(x, w, *, stride=(1, 1), padding=((0, 0), (0, 0)),
                               dilation=(1, 1), bias=None):
    """Depthwise conv of NHWC ``x`` with ``w`` [KH, KW, C], float32 accumulation, ``x.dtype`` out.

    ``padding`` is 'SAME', 'VALID' or explicit ((lo, hi), (lo, hi)), exactly as in
    ``lax.conv_general_dilated``. Inputs are upcast to float32 (exact), so float32 and bfloat16
    share one oracle; the bias is added in float32 before the single rounding to ``x.dtype``.
    """
    channels = x.shape[-1]
    y = lax.conv_general_dilated(
        x.astype(jnp.float32), w.astype(jnp.float32)[:, :, None, :],
        window_strides=tuple(stride), padding=padding if isinstance(padding, str) else
        tuple(tuple(p) for p in padding),
        rhs_dilation=tuple(dilation), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=channels, precision=lax.Precision.HIGHEST)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)
