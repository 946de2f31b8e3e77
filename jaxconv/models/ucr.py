"""Time-series classification baselines of Wang et al. 2017 (Time Series Classification from
Scratch with Deep Neural Networks: A Strong Baseline, arXiv:1611.06455): FCN and ResNet for the
UCR archive, over ``[B, L, C]`` signals.

* FCN: three conv blocks (128 filters k=8, 256 k=5, 128 k=3; conv - BatchNorm - ReLU, 'same'
  padding, stride 1, no pooling), global average pooling over time, a linear classifier.
* ResNet: three residual blocks of 64, 128, 128 filters, each three convs (k=8, 5, 3) with BN
  (ReLU after the first two), the shortcut a 1x1 conv + BN when the width changes (else BN),
  the sum through ReLU; global average pooling; linear classifier.

'same' padding of an even kernel puts the extra zero on the right (as Keras). Convs and the
classifier use Glorot-uniform init with zero biases (Keras defaults, the authors' framework).
Parameters (1 input channel, K classes): FCN 264,704 + 129 K; ResNet 504,000 + 129 K
(BatchNorm scale/bias counted; running statistics are ``batch_stats``).
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers.dtypes import canonical_dtype
from jaxconv.layers.norm import batch_norm
from jaxconv.layers.tcn import DilatedConv1D
from jaxconv.models.checks import check_choice, positive_ints
from jaxconv.models.tcn import POOLS, pool_sequence, sequence_input
from jaxconv.registry import register_model

__all__ = ["UCRFCN", "UCRResNet"]

_glorot = nn.initializers.glorot_uniform()


def _conv(features: int, k: int, dtype, name: str) -> DilatedConv1D:
    return DilatedConv1D(features, k, causal=False, kernel_init=_glorot, dtype=dtype, name=name)


class _UCRBase(nn.Module):
    num_classes: int = 2
    pool: str = "mean"
    dtype: Any = jnp.float32

    def __post_init__(self):
        positive_ints("num_classes", self.num_classes)
        check_choice("pool", self.pool, POOLS)
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        super().__post_init__()

    def _head(self, y):
        y = pool_sequence(self, y, self.pool)
        y = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=_glorot, name="head")(y)
        return y.astype(jnp.float32)


class UCRFCN(_UCRBase):
    """Wang et al.'s FCN (module doc). Fields: filters, kernel_sizes, num_classes, pool, dtype."""

    filters: Sequence[int] = (128, 256, 128)
    kernel_sizes: Sequence[int] = (8, 5, 3)

    def __post_init__(self):
        object.__setattr__(self, "filters", positive_ints("filters", self.filters))
        object.__setattr__(self, "kernel_sizes", positive_ints("kernel_sizes",
                                                               self.kernel_sizes))
        if len(self.filters) != len(self.kernel_sizes):
            raise ValueError(f"filters {self.filters} and kernel_sizes {self.kernel_sizes} "
                             f"must have equal length")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = sequence_input(self, x, vocab_size=None, embed_dim=1, dtype=self.dtype)
        for i, (f, k) in enumerate(zip(self.filters, self.kernel_sizes)):
            y = _conv(f, k, self.dtype, f"conv{i}")(y)
            y = nn.relu(batch_norm(train, dtype=self.dtype, name=f"bn{i}")(y))
        return self._head(y)


class UCRResNet(_UCRBase):
    """Wang et al.'s ResNet (module doc). Fields: filters (per block), kernel_sizes (per conv
    of a block), num_classes, pool, dtype."""

    filters: Sequence[int] = (64, 128, 128)
    kernel_sizes: Sequence[int] = (8, 5, 3)

    def __post_init__(self):
        object.__setattr__(self, "filters", positive_ints("filters", self.filters))
        object.__setattr__(self, "kernel_sizes", positive_ints("kernel_sizes",
                                                               self.kernel_sizes))
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = sequence_input(self, x, vocab_size=None, embed_dim=1, dtype=self.dtype)
        for b, f in enumerate(self.filters):
            shortcut = y
            for i, k in enumerate(self.kernel_sizes):
                y = _conv(f, k, self.dtype, f"block{b}_conv{i}")(y)
                y = batch_norm(train, dtype=self.dtype, name=f"block{b}_bn{i}")(y)
                if i < len(self.kernel_sizes) - 1:
                    y = nn.relu(y)
            if shortcut.shape[-1] != f:
                shortcut = _conv(f, 1, self.dtype, f"block{b}_shortcut_conv")(shortcut)
            shortcut = batch_norm(train, dtype=self.dtype, name=f"block{b}_shortcut_bn")(shortcut)
            y = nn.relu(y + shortcut)
        return self._head(y)


_PAPER = ("Wang et al. 2017, Time Series Classification from Scratch with Deep Neural "
          "Networks: A Strong Baseline, arXiv:1611.06455")


@register_model(family="ucr", paper=_PAPER, input_size=(150, 1), num_classes=2)
def ucr_fcn(**overrides) -> UCRFCN:
    """Wang et al.'s FCN (128-256-128 filters, k 8-5-3, GAP); defaults sized for GunPoint."""
    return UCRFCN(**overrides)


@register_model(family="ucr", paper=_PAPER, input_size=(150, 1), num_classes=2)
def ucr_resnet(**overrides) -> UCRResNet:
    """Wang et al.'s ResNet (3 blocks of 64-128-128, k 8-5-3, GAP); defaults for GunPoint."""
    return UCRResNet(**overrides)


@register_model(family="ucr", paper=_PAPER, input_size=(64, 1), num_classes=2)
def ucr_fcn_tiny(**overrides) -> UCRFCN:
    """FCN with 8-16-8 filters: compiles in seconds (tests, runlocal)."""
    return UCRFCN(filters=(8, 16, 8), **overrides)
