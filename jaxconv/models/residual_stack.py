"""Deep (sequential) and shallow (parallel) stacks of residual conv layers.

Bermeitinger, Hrycej & Handschuh 2023, 'Make Deep Networks Shallow Again', arXiv:2309.08414.
A stack of residual layers ``h_{i+1} = h_i + f_i(h_i)`` expands like a Taylor series into the
identity, the sum of the first-order terms ``f_i(h_0)`` and higher-order compositions. Truncating
after the first order gives a shallow network of the same layers side by side,
``y = h_0 + sum_i f_i(h_0)``. The paper trains both layouts over numbers of conv layers, filters
and kernel sizes on MNIST and CIFAR-10 and finds them about equally good;
``experiments/configs/sweeps/deep_vs_shallow.py`` repeats that comparison.

:class:`ResidualStack` has both layouts with identical parameters, so a sweep changes only
``layout``. Each residual layer is pre-activation, ``f_i(h) = conv_i(relu(bn_i(h)))``, with
its own BatchNorm in either layout.

Parameter layout::

    stem_conv, stem_bn          k x k conv (stride ``stem_stride``) + BN-ReLU to ``features``
    layer{i}_bn, layer{i}_conv  residual layer i (from 0)
    final_bn, fc                BN-ReLU, global average pool, classifier

Stage outputs sown: ``stage0`` (stem) and ``stage1`` (after the residual layers).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import batch_norm, canonical_dtype, conv2d, dense
from jaxconv.registry import register_model

__all__ = ["LAYOUTS", "ResidualStack"]

LAYOUTS = ("sequential", "parallel")


class ResidualStack(nn.Module):
    """``num_layers`` residual k x k conv layers of ``features`` channels, arranged sequentially
    (deep) or in parallel (shallow), between a conv stem and a pooled linear classifier."""

    num_layers: int = 4
    features: int = 32
    kernel_size: int = 3
    layout: str = "sequential"
    stem_stride: int = 1
    num_classes: int = 10
    dtype: Any = jnp.float32

    def __post_init__(self):
        for field in ("num_layers", "features", "kernel_size", "stem_stride", "num_classes"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ResidualStack.{field} must be a positive int, got {value!r}")
        if self.kernel_size % 2 == 0:
            raise ValueError(f"ResidualStack.kernel_size must be odd (same-size outputs), got "
                             f"{self.kernel_size}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"ResidualStack.layout={self.layout!r}; valid: {LAYOUTS}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        x = conv2d(self.features, self.kernel_size, self.stem_stride, dtype=self.dtype,
                   name="stem_conv")(x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="stem_bn")(x))
        self.sow("intermediates", "stage0", x)

        def residual(i, h):
            h = nn.relu(batch_norm(train, dtype=self.dtype, name=f"layer{i}_bn")(h))
            return conv2d(self.features, self.kernel_size, dtype=self.dtype,
                          name=f"layer{i}_conv")(h)

        if self.layout == "sequential":
            for i in range(self.num_layers):
                x = x + residual(i, x)
        else:  # every layer sees the stem output; their outputs are summed
            x = x + sum(residual(i, x) for i in range(self.num_layers))
        self.sow("intermediates", "stage1", x)

        x = nn.relu(batch_norm(train, dtype=self.dtype, name="final_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        return dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)


@register_model(family="residual_stack", input_size=(32, 32, 3), num_classes=10,
                paper="Bermeitinger et al. 2023, Make Deep Networks Shallow Again, "
                      "arXiv:2309.08414")
def residual_stack(**overrides) -> ResidualStack:
    """Residual conv layers, deep (layout='sequential', default) or shallow ('parallel')."""
    return ResidualStack(**overrides)
