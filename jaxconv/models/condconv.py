"""CondConv MobileNet v1: MobileNet v1 whose late pointwise convs are CondConv layers.

Paper: Brandon Yang, Gabriel Bender, Quoc V. Le, Jiquan Ngiam, 2019, "CondConv: Conditionally
Parameterized Convolutions for Efficient Inference", arXiv:1904.04971. The paper applies CondConv
to MobileNet v1 (Table 1) in the final layers: here the 1x1 pointwise convs of the blocks from
stage ``condconv_from_stage`` on (default 3: the six 512-wide and two 1024-wide blocks, where the
paper's gains come from) are :class:`jaxconv.layers.CondConv2D` with ``num_experts`` experts
(paper: 8), each routed per example from its block input's global average; the rest is
:class:`jaxconv.models.mobilenet.MobileNetV1` unchanged (same names and widths).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import CondConv2D, DepthwiseConv2D, batch_norm
from jaxconv.models.checks import positive_ints
from jaxconv.models.mobilenet import STAGES, DepthwiseSeparable, MobileNetV1
from jaxconv.registry import register_model

__all__ = ["CondConvMobileNetV1", "CondConvSeparable"]


class CondConvSeparable(nn.Module):
    """3x3 depthwise conv - BN - ReLU6 - 1x1 CondConv - BN - ReLU6."""

    features: int
    strides: int = 1
    num_experts: int = 8
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = DepthwiseConv2D(3, strides=self.strides, use_bias=False, dtype=self.dtype,
                            name="conv_dw")(x)
        x = nn.relu6(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        x = CondConv2D(self.features, 1, num_experts=self.num_experts, dtype=self.dtype,
                       name="conv_pw")(x)
        return nn.relu6(batch_norm(train, dtype=self.dtype, name="bn2")(x))


class CondConvMobileNetV1(MobileNetV1):
    """MobileNet v1 with CondConv pointwise convs from ``condconv_from_stage`` (0-4) on."""

    num_experts: int = 8
    condconv_from_stage: int = 3

    def __post_init__(self):
        positive_ints("num_experts", self.num_experts)
        if self.condconv_from_stage not in range(len(STAGES)):
            raise ValueError(f"condconv_from_stage must be one of {list(range(len(STAGES)))}, "
                             f"got {self.condconv_from_stage!r}")
        super().__post_init__()

    def block_for(self, stage: int):
        if stage < self.condconv_from_stage:
            return DepthwiseSeparable
        return functools.partial(CondConvSeparable, num_experts=self.num_experts)


def _register():
    return register_model(family="condconv", paper="Yang et al. 2019, CondConv: Conditionally "
                          "Parameterized Convolutions for Efficient Inference, arXiv:1904.04971",
                          input_size=(224, 224, 3), num_classes=1000)


@_register()
def condconv_mobilenetv1_100(**overrides) -> CondConvMobileNetV1:
    """1.0 MobileNet v1, 8-expert CondConv pointwise convs in the last 8 blocks."""
    return CondConvMobileNetV1(**{"width_multiplier": 1.0, **overrides})


@_register()
def condconv_mobilenetv1_050(**overrides) -> CondConvMobileNetV1:
    """0.5 MobileNet v1, 8-expert CondConv pointwise convs in the last 8 blocks."""
    return CondConvMobileNetV1(**{"width_multiplier": 0.5, **overrides})


@_register()
def condconv_mobilenetv1_025(**overrides) -> CondConvMobileNetV1:
    """0.25 MobileNet v1, 8-expert CondConv pointwise convs in the last 8 blocks."""
    return CondConvMobileNetV1(**{"width_multiplier": 0.25, **overrides})
