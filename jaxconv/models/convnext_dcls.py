"""ConvNeXt-dcls: ConvNeXt with its depthwise convs replaced by DCLS convs.

Khalfaoui-Hassani, Pellegrini, Masquelier 2023, "Dilated convolution with learnable spacings",
ICLR 2023, arXiv:2112.03740 (ConvNeXt-T-dcls: 82.5% ImageNet-1k top-1 vs ConvNeXt-T's 82.1%,
5.0 vs 4.5 GFLOPs, "iso-parameters"; the official README lists 28M parameters). Every 7x7
depthwise conv of ConvNeXt-T becomes a :class:`jaxconv.layers.dcls.DclsDepthwiseConv2D` with a
17x17 window ("dilated kernel size") and 34 learnable-position elements per channel (official
code,
github.com/K-H-Ismail/ConvNeXt-dcls, ``models/convnext_dcls.py``: ``convnext_dcls_tiny`` =
depths 3-3-9-3, dims 96..768, ``dcls_kernel_size=17, dcls_kernel_count=34``). Everything else is
:class:`jaxconv.models.convnext.ConvNeXt` unchanged.

As in the official code, the positions are shared by all blocks of a stage: one ``positions``
[2, kernel_count, C] array per stage (``share_positions=True``, the default). That is why the
model stays "iso-parameters" with ConvNeXt-T: per block, 34 weights replace 49, and the
positions cost 2 * 34 * C once per stage. ``share_positions=False`` gives every block its own
positions (a plain drop-in of the layer).

Parameter layout (relative to ``convnext_tiny``, whose names follow timm): each
``stages_{i}/blocks_{j}/conv_dw`` holds ``weight`` [34, C] and ``bias`` [C] instead of
``kernel`` [7, 7, C]; each ``stages_{i}`` holds ``positions`` [2, 34, C] (row, column offsets
from the window centre). timm has no ConvNeXt-dcls, so there is no ``from_timm`` rule; the
official checkpoints' ``stages.{i}.{j}.dwconv.weight`` [C, 1, 34] map to ``weight[:, 0].T`` and
their per-stage ``P`` [2, C, 1, 34] (column, row) to ``P[::-1, :, 0].transpose(0, 2, 1)``.

Parameter count of convnext_dcls_tiny, derived from convnext_tiny's 28,589,128 (timm):
the 7x7 kernels hold 49 * sum(depth_i * dim_i) = 49 * 6,624 = 324,576 parameters; DCLS weights
hold 34 * 6,624 = 225,216 and the shared positions 2 * 34 * (96 + 192 + 384 + 768) = 97,920,
so 28,589,128 - 324,576 + 225,216 + 97,920 = 28,587,688 (README: 28M; ConvNeXt-T: 28.6M).

Multiply-adds at 224x224: the interpolated kernel is a dense 17x17 one, so the depthwise convs
cost 289 taps per output instead of 49: 2,145,024 outputs (sum of depth * H * W * C) give
0.620 G MACs instead of 0.105 G; with the 4.350 G of every other conv and linear layer
(``jaxconv.analysis.count_macs``, which counts ``nn.Conv``/``nn.Dense`` only) that is 4.97 G vs
ConvNeXt-T's 4.46 G, the README's "5.0G" vs "4.5G" FLOPs.

Initialisation as the official ConvNeXt-dcls: DCLS weights truncated normal (std 0.02) and zero
biases like every ConvNeXt conv, positions N(0, 0.5^2) clamped to the window. The official
training also clamps positions after each step and gives them their own learning rate; here
the clamp happens in the forward pass (:mod:`jaxconv.layers.dcls`).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers.conv import conv2d
from jaxconv.layers.dcls import DclsDepthwiseConv2D, dcls_position_init
from jaxconv.models.convnext import (
    ConvNeXt,
    ConvNeXtStage,
    layer_norm,
    trunc_normal_init,
)
from jaxconv.registry import register_model

__all__ = ["ConvNeXtDcls", "DclsConvNeXtStage", "convnext_dcls_tiny", "dcls_factory"]


def dcls_factory(kernel_count: int, shared_positions=None):
    """A ConvNeXt ``dw_conv`` factory building DCLS convs with ConvNeXt-dcls's init."""
    return functools.partial(DclsDepthwiseConv2D, kernel_count=kernel_count,
                             weight_init=trunc_normal_init, bias_init=nn.initializers.zeros,
                             shared_positions=shared_positions)


class DclsConvNeXtStage(ConvNeXtStage):
    """A ConvNeXt stage whose blocks' DCLS convs share this stage's ``positions``."""

    kernel_count: int = 34

    @nn.compact
    def __call__(self, x):
        if self.downsample:
            x = layer_norm(dtype=self.dtype, name="downsample_0")(x)
            x = conv2d(self.dim, 2, 2, padding="VALID", use_bias=True, dtype=self.dtype,
                       kernel_init=trunc_normal_init, name="downsample_1")(x)
        kwargs = dict(self.block_kwargs or ())
        size = kwargs["kernel_size"]
        positions = self.param("positions", dcls_position_init((size, size)),
                               (2, self.kernel_count, self.dim), jnp.float32)
        kwargs["dw_conv"] = dcls_factory(self.kernel_count, shared_positions=positions)
        for j in range(self.depth):
            rate = self.drop_path_rates[j] if self.drop_path_rates else 0.0
            x = self.block_cls(self.dim, dtype=self.dtype, train=self.train, name=f"blocks_{j}",
                               **kwargs)(x, rate)
        return x


class ConvNeXtDcls(ConvNeXt):
    """:class:`ConvNeXt` with DCLS depthwise convs (module docstring).

    Extra fields: ``kernel_count`` (elements per channel, 34 for the tiny model) and
    ``share_positions`` (one positions array per stage, as the official code; default True).
    ``kernel_size`` is the DCLS window ("dilated kernel size", 17). ``dw_conv`` is set from
    these and must not be given.
    """

    kernel_size: Any = 17
    dw_conv: Any = None
    kernel_count: int = 34
    share_positions: bool = True

    def __post_init__(self):
        count = self.kernel_count
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"kernel_count must be a positive int, got {count!r}")
        if not isinstance(self.share_positions, bool):
            raise ValueError(f"share_positions must be True or False, got "
                             f"{self.share_positions!r}")
        # Rebuilt from kernel_count every time (also on clone, which passes the old factory).
        ours = (isinstance(self.dw_conv, functools.partial)
                and self.dw_conv.func is DclsDepthwiseConv2D)
        if self.dw_conv is not None and not ours:
            raise ValueError(f"dw_conv is set by ConvNeXtDcls from kernel_count; leave it "
                             f"unset (None), got {self.dw_conv!r}")
        object.__setattr__(self, "dw_conv", dcls_factory(count))
        super().__post_init__()

    @property
    def stage_cls(self):
        """The stage module (ConvNeXt's hook): shared positions or ConvNeXt's own stage."""
        if not self.share_positions:
            return ConvNeXtStage
        return functools.partial(DclsConvNeXtStage, kernel_count=self.kernel_count)


# --------------------------------------------------------------------------------- registry

_PAPER = ("Khalfaoui-Hassani, Pellegrini, Masquelier 2023, Dilated convolution with learnable "
          "spacings, arXiv:2112.03740")


@register_model(family="convnext_dcls", paper=_PAPER, input_size=(224, 224, 3),
                num_classes=1000)
def convnext_dcls_tiny(**overrides) -> ConvNeXtDcls:
    """ConvNeXt-T-dcls (17x17 window, 34 elements, positions shared per stage), 28,587,688
    params."""
    return ConvNeXtDcls(**{"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768),
                           "kernel_size": 17, "kernel_count": 34, **overrides})
