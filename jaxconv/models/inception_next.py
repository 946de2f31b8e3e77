"""InceptionNeXt (Yu, Zhou, Yan, Wang 2024, InceptionNeXt: When Inception Meets ConvNeXt,
arXiv:2303.16900), as timm builds it (``MetaNeXt``).

ConvNeXt's macro design with its 7x7 depthwise conv replaced by an Inception-style token mixer
that leaves most channels alone: the channels are split into an identity part and three
branches of ``gc = int(C * 0.125)`` channels each, convolved depthwise with a 3x3 square kernel,
a 1x11 band and an 11x1 band, then concatenated in the order (identity, square, 1xk, kx1). It
keeps a large receptive field at a fraction of the depthwise FLOPs and memory traffic (the
paper: 1.6x ConvNeXt-T's training throughput on A100).

MetaNeXt block: token mixer - BatchNorm - ConvMlp (1x1 conv, GELU, 1x1 conv) - ``* gamma``
(layer scale, 1e-6) - drop_path, + identity.
Stem 4x4/4 conv + BN; stages 2..4 open with BN + 2x2/2 conv; MLP ratios (4, 4, 4, 3); the head
pools, then Linear(3C) - GELU - LayerNorm (eps 1e-6) - Linear(num_classes).

Every depthwise conv is :class:`jaxconv.layers.DepthwiseConv2D` (``implementation`` from the
model config) unless ``dw_conv`` injects another layer (the factory protocol of
:mod:`jaxconv.models.convnext`).

Parameter layout, 1:1 with timm (Flax ``a_3/b`` is timm ``a.3.b``)::

    stem_0 (conv, bias), stem_1 (BatchNorm)
    stages_{i}/downsample_0 (BatchNorm), downsample_1 (2x2/2 conv)        i = 1, 2, 3
    stages_{i}/blocks_{j}/token_mixer/{dwconv_hw, dwconv_w, dwconv_h}   kernels [kh, kw, gc]
                          norm (BatchNorm), mlp/{fc1, fc2} (1x1 convs), gamma [C]
    head/fc1, head/norm (LayerNorm), head/fc2

The one layout difference from timm, handled by the converter: depthwise kernels are
``[kh, kw, C]`` (timm ``[C, 1, kh, kw]``). Initialisation follows timm (truncated normal 0.02,
zero biases) except the depthwise kernels (DepthwiseConv2D's PyTorch default). Stage outputs
are sown as ``intermediates/stage{i}``, i = 0..3 at strides 4, 8, 16, 32 (timm's feature
stages).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import DropPath, batch_norm, canonical_dtype, conv2d, drop_path_rates
from jaxconv.layers.conv import exact_gelu, flat_dot_general
from jaxconv.models.checks import check_rate, positive_ints
from jaxconv.models.convnext import (
    _resolve_dw_conv,
    check_implementation,
    check_positive_number,
    layer_norm,
    trunc_normal_init,
)
from jaxconv.registry import register_model

__all__ = ["ConvMlp", "InceptionDWConv2d", "InceptionNeXt", "MetaNeXtBlock", "MlpClassifierHead",
           "branch_channels"]


def _dense(features: int, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=trunc_normal_init, dot_general=flat_dot_general,
                    name=name)


def _conv(features: int, size: int, dtype, name: str) -> nn.Conv:
    """A size x size / size patch conv with bias (stem, downsampling, 1x1 MLP convs)."""
    return conv2d(features, size, size, padding="VALID", use_bias=True, dtype=dtype,
                  kernel_init=trunc_normal_init, name=name)


def branch_channels(channels: int, branch_ratio: float) -> int:
    """Channels of each conv branch: ``int(channels * branch_ratio)`` (timm's ``gc``)."""
    return int(channels * branch_ratio)


class InceptionDWConv2d(nn.Module):
    """Identity | 3x3 | 1x11 | 11x1 depthwise convs over channel splits, concatenated.

    Channels split as ``(C - 3 gc, gc, gc, gc)`` with ``gc = int(C * branch_ratio)``.
    """

    square_kernel_size: int = 3
    band_kernel_size: int = 11
    branch_ratio: float = 0.125
    dw_conv: Any = "dense"
    implementation: str | None = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        channels = x.shape[-1]
        gc = branch_channels(channels, self.branch_ratio)
        if gc < 1:
            raise ValueError(f"InceptionDWConv2d: int({channels} * branch_ratio "
                             f"{self.branch_ratio}) = {gc}; need at least 1 channel per branch")
        ident = channels - 3 * gc
        factory = _resolve_dw_conv(self.dw_conv)
        sq, band = self.square_kernel_size, self.band_kernel_size
        branches = [x[..., :ident]]
        for b, (name, size) in enumerate((("dwconv_hw", (sq, sq)), ("dwconv_w", (1, band)),
                                          ("dwconv_h", (band, 1)))):
            lo = ident + b * gc
            conv = factory(features=gc, kernel_size=size, use_bias=True, dtype=self.dtype,
                           implementation=self.implementation, name=name)
            branches.append(conv(x[..., lo:lo + gc]).astype(x.dtype))
        return jnp.concatenate(branches, axis=-1)


class ConvMlp(nn.Module):
    """1x1 conv - GELU (exact) - 1x1 conv, with biases (timm ``ConvMlp``: ``fc1``, ``fc2``;
    1x1 convs rather than Dense layers so the kernels are timm's ``[O, I, 1, 1]`` transposed)."""

    hidden_features: int
    out_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _conv(self.hidden_features, 1, self.dtype, "fc1")(x)
        x = exact_gelu(x)
        return _conv(self.out_features, 1, self.dtype, "fc2")(x)


class MetaNeXtBlock(nn.Module):
    """token mixer - BN - ConvMlp (GELU) - layer scale - drop path, + identity (timm
    ``MetaNeXtBlock``). ``ls_init_value=None`` drops the layer scale."""

    dim: int
    mlp_ratio: float = 4.0
    ls_init_value: float | None = 1e-6
    mixer_kwargs: Any = None  # (field, value) pairs for InceptionDWConv2d
    dtype: Any = jnp.float32
    train: bool = False

    @nn.compact
    def __call__(self, x, drop_path_rate: float = 0.0):
        shortcut = x
        x = InceptionDWConv2d(dtype=self.dtype, name="token_mixer",
                              **dict(self.mixer_kwargs or ()))(x)
        x = batch_norm(self.train, dtype=self.dtype, name="norm")(x)
        x = ConvMlp(int(self.mlp_ratio * self.dim), self.dim, dtype=self.dtype, name="mlp")(x)
        if self.ls_init_value is not None:
            gamma = self.param("gamma", nn.initializers.constant(self.ls_init_value),
                               (self.dim,), jnp.float32)
            x = x * gamma.astype(x.dtype)
        x = DropPath(name="drop_path")(x, deterministic=not self.train, rate=drop_path_rate)
        return shortcut + x


class MlpClassifierHead(nn.Module):
    """Global average pool - Linear(hidden) - GELU - LayerNorm - [dropout] - Linear (timm
    ``MlpClassifierHead``: ``head.fc1``, ``head.norm``, ``head.fc2``)."""

    hidden_features: int
    num_classes: int
    drop_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.mean(x, axis=(1, 2))
        x = _dense(self.hidden_features, self.dtype, "fc1")(x)
        x = exact_gelu(x)
        x = layer_norm(dtype=self.dtype, name="norm")(x)
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        return _dense(self.num_classes, self.dtype, "fc2")(x)


class InceptionNeXt(nn.Module):
    """InceptionNeXt (timm ``MetaNeXt``) over NHWC inputs; returns float32 logits.

    Fields:
      depths, dims: blocks and channels per stage.
      mlp_ratios: per-stage MLP expansion: a number, one per stage, or None for timm's rule
        (4, except 3 in the last stage: (4, 4, 4, 3)).
      square_kernel_size (3), band_kernel_size (11), branch_ratio (0.125): the token mixer.
      ls_init_value: layer-scale init (1e-6); ``None`` disables it.
      head_mlp_ratio: hidden width of the head's MLP over the last stage's channels (3).
      dw_conv: ``"dense"`` (DepthwiseConv2D) or a depthwise-layer factory (see convnext.py).
      implementation: the depthwise op's path: ``None`` (auto), ``"xla"``, ``"pallas"``.
      num_classes, dtype (compute; parameters float32), drop_path_rate (linear over all
      blocks), drop_rate (dropout in the head).
    """

    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    mlp_ratios: Any = None
    square_kernel_size: int = 3
    band_kernel_size: int = 11
    branch_ratio: float = 0.125
    ls_init_value: float | None = 1e-6
    head_mlp_ratio: float = 3.0
    dw_conv: Any = "dense"
    implementation: str | None = None
    num_classes: int = 1000
    dtype: Any = jnp.float32
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "depths", positive_ints("depths", self.depths))
        object.__setattr__(self, "dims", positive_ints("dims", self.dims))
        if len(self.depths) != len(self.dims):
            raise ValueError(f"depths {self.depths} and dims {self.dims} must have equal length")
        ratios, n = self.mlp_ratios, len(self.depths)
        if ratios is None:
            ratios = (4,) * (n - 1) + (3,)
        ratios = tuple(ratios) if isinstance(ratios, (list, tuple)) else (ratios,) * n
        if len(ratios) != len(self.depths):
            raise ValueError(f"mlp_ratios must be a number or one per stage "
                             f"({len(self.depths)}), got {self.mlp_ratios!r}")
        for r in ratios:
            check_positive_number("mlp_ratios", r)
        object.__setattr__(self, "mlp_ratios", ratios)
        for field in ("square_kernel_size", "band_kernel_size"):
            (k,) = positive_ints(field, getattr(self, field))
            if k % 2 == 0:
                raise ValueError(f"{field} must be odd (symmetric padding), got {k!r}")
        check_positive_number("branch_ratio", self.branch_ratio)
        if not self.branch_ratio * 3 <= 1:
            raise ValueError(f"branch_ratio must be in (0, 1/3] (three branches), got "
                             f"{self.branch_ratio!r}")
        small = [d for d in self.dims if branch_channels(d, self.branch_ratio) < 1]
        if small:
            raise ValueError(f"dims {small} leave int(dim * branch_ratio) = 0 channels per "
                             f"branch (branch_ratio={self.branch_ratio})")
        if self.ls_init_value is not None:
            check_positive_number("ls_init_value", self.ls_init_value)
        check_positive_number("head_mlp_ratio", self.head_mlp_ratio)
        _resolve_dw_conv(self.dw_conv)
        check_implementation(self.implementation)
        positive_ints("num_classes", self.num_classes)
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        check_rate("drop_path_rate", self.drop_path_rate)
        check_rate("drop_rate", self.drop_rate)
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        x = _conv(self.dims[0], 4, self.dtype, "stem_0")(x)
        x = batch_norm(train, dtype=self.dtype, name="stem_1")(x)
        mixer_kwargs = (("square_kernel_size", self.square_kernel_size),
                        ("band_kernel_size", self.band_kernel_size),
                        ("branch_ratio", self.branch_ratio), ("dw_conv", self.dw_conv),
                        ("implementation", self.implementation))
        rates = drop_path_rates(self.drop_path_rate, sum(self.depths))
        first = 0
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            x = _MetaNeXtStage(dim, depth, downsample=i > 0, mlp_ratio=self.mlp_ratios[i],
                               ls_init_value=self.ls_init_value,
                               drop_path_rates=tuple(rates[first:first + depth]),
                               mixer_kwargs=mixer_kwargs, dtype=self.dtype, train=train,
                               name=f"stages_{i}")(x)
            first += depth
            self.sow("intermediates", f"stage{i}", x)
        hidden = int(self.head_mlp_ratio * self.dims[-1])
        x = MlpClassifierHead(hidden, self.num_classes, self.drop_rate, dtype=self.dtype,
                              name="head")(x, train=train)
        return jnp.asarray(x, jnp.float32)


class _MetaNeXtStage(nn.Module):
    """[BN - 2x2/2 conv] downsampling (stages after the first), then ``depth`` blocks."""

    dim: int
    depth: int
    downsample: bool
    mlp_ratio: float
    ls_init_value: float | None
    drop_path_rates: Sequence[float]
    mixer_kwargs: Any
    dtype: Any = jnp.float32
    train: bool = False

    @nn.compact
    def __call__(self, x):
        if self.downsample:
            x = batch_norm(self.train, dtype=self.dtype, name="downsample_0")(x)
            x = _conv(self.dim, 2, self.dtype, "downsample_1")(x)
        for j in range(self.depth):
            x = MetaNeXtBlock(self.dim, self.mlp_ratio, self.ls_init_value, self.mixer_kwargs,
                              dtype=self.dtype, train=self.train, name=f"blocks_{j}")(
                x, self.drop_path_rates[j])
        return x


# --------------------------------------------------------------------------------- registry

_PAPER = ("Yu et al. 2024, InceptionNeXt: When Inception Meets ConvNeXt, arXiv:2303.16900")


def _register():
    return register_model(family="inception_next", paper=_PAPER, input_size=(224, 224, 3),
                          num_classes=1000)


@_register()
def inception_next_tiny(**overrides) -> InceptionNeXt:
    """InceptionNeXt-T (depths 3-3-9-3, dims 96..768; timm structure), 28,055,680 params."""
    return InceptionNeXt(**{"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768), **overrides})


@_register()
def inception_next_small(**overrides) -> InceptionNeXt:
    """InceptionNeXt-S (depths 3-3-27-3, dims 96..768; timm structure), 49,374,016 params."""
    return InceptionNeXt(**{"depths": (3, 3, 27, 3), "dims": (96, 192, 384, 768), **overrides})


@_register()
def inception_next_base(**overrides) -> InceptionNeXt:
    """InceptionNeXt-B (depths 3-3-27-3, dims 128..1024; timm structure), 86,672,136 params."""
    return InceptionNeXt(**{"depths": (3, 3, 27, 3), "dims": (128, 256, 512, 1024),
                            **overrides})
