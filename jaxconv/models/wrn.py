"""Wide Residual Networks for CIFAR: WRN-d-k with pre-activation basic blocks and dropout.

Paper: Sergey Zagoruyko, Nikos Komodakis, 2016, "Wide Residual Networks", arXiv:1605.07146.

WRN-d-k: a 3x3 conv stem with 16 channels, then three groups of ``n = (d - 4) / 6`` blocks of
widths ``16k, 32k, 64k`` (strides 1, 2, 2), then BN-ReLU, global average pooling and a linear
classifier. A block is BN-ReLU-conv3x3(stride)-BN-ReLU-[dropout]-conv3x3 plus its shortcut: the
identity, or a 1x1 conv of the pre-activated input where the shape changes (the first block of
every group, including the first group: 16 -> 16k channels). The paper's dropout sits between
the two convs (its section 2.4), on the ``dropout`` rng stream.

Without dropout WRN-d-k *is* the pre-activation ResNet of :mod:`jaxconv.models.resnet` with
``block="preact_basic"``, ``stem="cifar"``, ``stem_width=16``, ``widths=(16k, 32k, 64k)`` and
``shortcut="B"``; this module reuses its block code (:class:`WideBasicBlock` subclasses
:class:`~jaxconv.models.resnet.PreActBasicBlock`) and its parameter layout, so the two give the
same numbers on the same variables (tested). It is a module of its own only because
``ResNet`` has no dropout field, and adding one would change ``resnet.py``.

Parameter layout (as a pre-activation :class:`~jaxconv.models.resnet.ResNet`, unrolled)::

    conv1                      stem
    layer{g}_{b}               block b of group g (g from 1, b from 0):
        bn1 conv1 bn2 conv2 [downsample_conv]
    final_bn                   BN-ReLU before pooling
    fc                         classifier (kernel [64k, num_classes], bias)

Stage outputs are sown as ``intermediates/stage{g-1}`` at the end of each group (strides 1, 2, 4;
before ``final_bn``, as the ResNets).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import batch_norm, canonical_dtype, conv2d, dense, drop_path_rates
from jaxconv.models.checks import positive_ints
from jaxconv.models.resnet import PreActBasicBlock
from jaxconv.registry import register_model

__all__ = ["WideBasicBlock", "WideResNet", "wide_resnet_cifar"]


class WideBasicBlock(PreActBasicBlock):
    """Pre-activation basic block with dropout between its two convs (Zagoruyko & Komodakis §2.4).

    With ``dropout_rate=0`` it computes exactly :class:`PreActBasicBlock`.
    """

    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x, drop_path_rate=0.0):
        x_act = nn.relu(self._bn("bn1")(x))
        shortcut = self._preact_shortcut(x, x_act)
        h = self._conv(self.features, 3, self.strides, name="conv1")(x_act)
        h = nn.relu(self._bn("bn2")(h))
        if self.dropout_rate > 0:
            h = nn.Dropout(self.dropout_rate)(h, deterministic=not self.train)
        h = self._conv(self.features, 3, name="conv2", zero_init=self.zero_init_last)(h)
        return shortcut + self._drop_path(h, drop_path_rate)


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` over NHWC inputs; float32 logits ``[B, num_classes]``.

    Fields:
      depth: total conv/linear layers counted as in the paper, ``6n + 4`` (10, 16, 22, 28, 40...).
      widen_factor: ``k``; group widths are ``16k, 32k, 64k``.
      dropout_rate: dropout between each block's convs in train mode (the paper uses 0.3 on
        CIFAR); ``dropout`` rng stream.
      num_classes, dtype (compute dtype; parameters are float32), drop_path_rate (stochastic
        depth over the blocks, linear from 0 to this value; 0 in the paper).
    """

    depth: int = 28
    widen_factor: int = 10
    dropout_rate: float = 0.0
    num_classes: int = 10
    dtype: Any = jnp.float32
    drop_path_rate: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        positive_ints("widen_factor", (self.widen_factor,))
        positive_ints("num_classes", (self.num_classes,))
        d = self.depth
        if isinstance(d, bool) or not isinstance(d, int) or d < 10 or (d - 4) % 6:
            raise ValueError(f"depth must be 6n + 4 for a positive int n (10, 16, 22, 28, 40, "
                             f"...), got {d!r}")
        for field in ("dropout_rate", "drop_path_rate"):
            rate = getattr(self, field)
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
                raise ValueError(f"{field} must be a float in [0, 1), got {rate!r}")
        super().__post_init__()

    @property
    def blocks_per_group(self) -> int:
        return (self.depth - 4) // 6

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        x = conv2d(16, 3, dtype=self.dtype, name="conv1")(x)
        n = self.blocks_per_group
        rates = drop_path_rates(self.drop_path_rate, 3 * n)
        for group, width in enumerate((16, 32, 64)):
            for b in range(n):
                x = WideBasicBlock(
                    features=width * self.widen_factor,
                    strides=2 if group > 0 and b == 0 else 1,
                    shortcut="B",
                    use_drop_path=self.drop_path_rate > 0,
                    dropout_rate=self.dropout_rate,
                    train=train,
                    dtype=self.dtype,
                    name=f"layer{group + 1}_{b}",
                )(x, rates[group * n + b])
            self.sow("intermediates", f"stage{group}", x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="final_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return jnp.asarray(x, jnp.float32)


def wide_resnet_cifar(depth: int, widen_factor: int, **overrides) -> WideResNet:
    """WRN-``depth``-``widen_factor`` for CIFAR (any valid pair; the registered ones fix both)."""
    return WideResNet(**{"depth": depth, "widen_factor": widen_factor, **overrides})


_PAPER = "Zagoruyko & Komodakis 2016, Wide Residual Networks, arXiv:1605.07146"


def _register():
    return register_model(family="wrn", paper=_PAPER, input_size=(32, 32, 3), num_classes=10)


@_register()
def wrn16_4(**overrides) -> WideResNet:
    """WRN-16-4 for CIFAR (n=2 blocks per group, widths 64-128-256), 2.7M params."""
    return wide_resnet_cifar(16, 4, **overrides)


@_register()
def wrn16_8(**overrides) -> WideResNet:
    """WRN-16-8 for CIFAR (n=2 blocks per group, widths 128-256-512), 11.0M params."""
    return wide_resnet_cifar(16, 8, **overrides)


@_register()
def wrn28_10(**overrides) -> WideResNet:
    """WRN-28-10 for CIFAR (n=4 blocks per group, widths 160-320-640), 36.5M params."""
    return wide_resnet_cifar(28, 10, **overrides)


@_register()
def wrn40_4(**overrides) -> WideResNet:
    """WRN-40-4 for CIFAR (n=6 blocks per group, widths 64-128-256), 8.9M params."""
    return wide_resnet_cifar(40, 4, **overrides)
