"""XNOR-ResNet-20: ResNet-20 for CIFAR with binary convolutions (XNOR-Net).

Paper: Mohammad Rastegari, Vicente Ordonez, Joseph Redmon, Ali Farhadi, 2016, "XNOR-Net:
ImageNet Classification Using Binary Convolutional Neural Networks", arXiv:1603.05279.

As in the paper, the first conv and the classifier stay full precision and every binary conv is
preceded by BatchNorm (the paper's block order BN -> BinActiv -> BinConv; the sign of the
normalised input is taken inside :class:`jaxconv.layers.BinaryConv2D`). The residual structure
of He et al.'s CIFAR ResNet-20 (3 stages of 3 basic blocks, widths 16/32/64) is kept; a
down-sampling shortcut is a 2x2 average pool and a full-precision 1x1 conv with BN (the real-
valued shortcuts Bi-Real Net found to matter; they are 1x1 convs, a small share of the MACs).
``binarize_inputs=False`` gives the paper's binary-weight network (BWN) instead.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import BinaryConv2D, batch_norm, canonical_dtype, conv2d, dense
from jaxconv.models.checks import positive_ints
from jaxconv.registry import register_model

__all__ = ["XnorBasicBlock", "XnorResNet"]


class XnorBasicBlock(nn.Module):
    """BN -> binary 3x3 conv (stride) -> BN -> binary 3x3 conv, plus the shortcut."""

    features: int
    strides: int = 1
    binarize_inputs: bool = True
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        h = batch_norm(train, dtype=self.dtype, name="bn1")(x)
        h = BinaryConv2D(self.features, 3, self.strides, self.binarize_inputs, self.dtype,
                         name="conv1")(h)
        h = batch_norm(train, dtype=self.dtype, name="bn2")(h)
        h = BinaryConv2D(self.features, 3, 1, self.binarize_inputs, self.dtype, name="conv2")(h)
        if self.strides != 1 or x.shape[-1] != self.features:
            s = self.strides
            x = nn.avg_pool(x, (s, s), (s, s)) if s != 1 else x
            x = conv2d(self.features, 1, dtype=self.dtype, name="downsample_conv")(x)
            x = batch_norm(train, dtype=self.dtype, name="downsample_bn")(x)
        return h + x


class XnorResNet(nn.Module):
    """XNOR ResNet over NHWC inputs; returns float32 logits ``[B, num_classes]``.

    Fields: ``depth`` (6n + 2), ``widths`` per stage, ``num_classes``, ``binarize_inputs``,
    ``dtype`` (compute; parameters float32). ``drop_path_rate`` must be 0 (common API).
    """

    depth: int = 20
    widths: tuple[int, ...] = (16, 32, 64)
    num_classes: int = 10
    binarize_inputs: bool = True
    dtype: Any = jnp.float32
    drop_path_rate: float = 0.0

    def __post_init__(self):
        positive_ints("num_classes", self.num_classes)
        object.__setattr__(self, "widths", positive_ints("widths", self.widths))
        if isinstance(self.depth, bool) or not isinstance(self.depth, int) or self.depth < 8 \
                or (self.depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, ...), got "
                             f"{self.depth!r}")
        if self.drop_path_rate != 0:
            raise ValueError(f"drop_path_rate must be 0.0 for XnorResNet, got "
                             f"{self.drop_path_rate!r}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        n = (self.depth - 2) // 6
        x = jnp.asarray(x, self.dtype)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn_stem")(
            conv2d(self.widths[0], 3, dtype=self.dtype, name="conv_stem")(x)))
        for s, width in enumerate(self.widths):
            for b in range(n):
                x = XnorBasicBlock(width, 2 if s > 0 and b == 0 else 1, self.binarize_inputs,
                                   self.dtype, name=f"layer{s + 1}_{b}")(x, train)
            self.sow("intermediates", f"stage{s}", x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn_final")(x))
        x = dense(self.num_classes, dtype=self.dtype, name="fc")(jnp.mean(x, axis=(1, 2)))
        return jnp.asarray(x, jnp.float32)


@register_model(family="xnor", paper="Rastegari et al. 2016, XNOR-Net: ImageNet Classification "
                "Using Binary Convolutional Neural Networks, arXiv:1603.05279",
                input_size=(32, 32, 3), num_classes=10)
def xnor_resnet20(**overrides) -> XnorResNet:
    """ResNet-20 (CIFAR) with XNOR binary convs in every residual block."""
    return XnorResNet(**{"depth": 20, **overrides})
