"""ConvNeXt (Liu et al. 2022, A ConvNet for the 2020s, arXiv:2201.03545), as timm builds it.

A ResNet modernised step by step towards a Swin-like design: a 4x4/4 "patchify" stem, stages of
(3, 3, 9, 3) or (3, 3, 27, 3) inverted-bottleneck blocks with a 7x7 depthwise conv first,
LayerNorm instead of BatchNorm, GELU, separate 2x2/2 downsampling layers (LayerNorm + conv),
layer scale (a learned per-channel gain ``gamma`` initialised to 1e-6 that starts every block
close to the identity) and stochastic depth.

Block: ``conv_dw`` (7x7 depthwise) - LayerNorm (channels last, eps 1e-6) - Linear(4C) - GELU
(exact, erf) - Linear(C) - ``* gamma`` - drop_path, + shortcut.

The depthwise conv is :class:`jaxconv.layers.DepthwiseConv2D` (``implementation`` = ``None``,
``"xla"`` or ``"pallas"``, a model field so a config can select it) unless ``dw_conv`` injects
another layer: any factory called as ``factory(features=C, kernel_size=k, use_bias=True,
dtype=..., implementation=..., name="conv_dw")``, e.g.
``functools.partial(DclsDepthwiseConv2D, kernel_count=34)``.

Parameter layout (``variables["params"]``, no ``batch_stats``), 1:1 with timm's module tree
(Flax ``a_3/b`` is timm ``a.3.b``; kernels/scales are timm's ``weight``)::

    stem_0 (4x4/4 conv, bias), stem_1 (LayerNorm)
    stages_{i}/downsample_0 (LayerNorm), downsample_1 (2x2/2 conv)    i = 1, 2, 3
    stages_{i}/blocks_{j}/conv_dw {kernel [7, 7, C], bias}, norm, mlp/fc1, mlp/fc2, gamma [C]
    head/norm (LayerNorm after global average pooling), head/fc

The one layout difference: the depthwise kernel is ``[kh, kw, C]`` where timm's weight is
``[C, 1, kh, kw]``; ``jaxconv.convert.from_timm`` maps it by module type (every
``DepthwiseConv2D``). Initialisation follows timm
(truncated normal, std 0.02, zero biases) except the depthwise kernels, which keep
``DepthwiseConv2D``'s PyTorch-default init. Stage outputs are sown as ``intermediates/stage{i}``,
i = 0..3 at strides 4, 8, 16, 32 (timm's feature stages; ConvNeXt has no stride-2 feature).
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import DepthwiseConv2D, DropPath, canonical_dtype, conv2d, drop_path_rates
from jaxconv.layers.conv import exact_gelu, flat_dot_general, recompute_module_on_cpu
from jaxconv.models.checks import check_rate, positive_ints
from jaxconv.registry import register_model
from kernels_pallas import IMPLEMENTATIONS

__all__ = [
    "DW_CONVS",
    "ConvNeXt",
    "ConvNeXtBlock",
    "ConvNeXtStage",
    "Mlp",
    "NormClassifierHead",
    "layer_norm",
    "trunc_normal_init",
]

#: timm's init for ConvNeXt / InceptionNeXt convs and linears (biases start at zero).
trunc_normal_init = nn.initializers.truncated_normal(0.02)
#: timm's LayerNorm / LayerNorm2d epsilon.
LN_EPSILON = 1e-6


def layer_norm(*, dtype: Any = jnp.float32, name: str | None = None) -> nn.LayerNorm:
    """LayerNorm over the channel (last) axis, eps 1e-6, two-pass variance (as PyTorch)."""
    # On CPU the backward recomputes the normalization (recompute_module_on_cpu).
    return recompute_module_on_cpu(nn.LayerNorm)(
        epsilon=LN_EPSILON, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False,
        name=name)


def _linear(features: int, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=trunc_normal_init, dot_general=flat_dot_general,
                    name=name)


def _dense_depthwise(*, features: int, kernel_size, use_bias: bool = True, dtype=jnp.float32,
                     implementation=None, name=None) -> nn.Module:
    """The default depthwise conv (``features`` is implied by the input's channels)."""
    del features
    return DepthwiseConv2D(kernel_size, use_bias=use_bias, dtype=dtype,
                           implementation=implementation, name=name)


#: Depthwise-conv layers selectable by name (``dw_conv`` also takes a factory).
DW_CONVS: dict[str, Callable[..., nn.Module]] = {"dense": _dense_depthwise}


def _resolve_dw_conv(dw_conv) -> Callable[..., nn.Module]:
    if callable(dw_conv):
        return dw_conv
    if isinstance(dw_conv, str) and dw_conv in DW_CONVS:
        return DW_CONVS[dw_conv]
    raise ValueError(f"dw_conv must be one of {list(DW_CONVS)} or a factory "
                     f"(features=, kernel_size=, use_bias=, dtype=, implementation=, name=) -> "
                     f"module, got {dw_conv!r}")


class Mlp(nn.Module):
    """Linear - GELU (exact) - Linear over the channel axis (timm ``Mlp``: ``fc1``, ``fc2``)."""

    hidden_features: int
    out_features: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _linear(self.hidden_features, self.dtype, "fc1")(x)
        x = exact_gelu(x)
        return _linear(self.out_features, self.dtype, "fc2")(x)


class ConvNeXtBlock(nn.Module):
    """dwconv - LN - MLP - layer scale - drop path, + identity shortcut (timm ``ConvNeXtBlock``).

    ``ls_init_value=None`` drops the layer scale (no ``gamma``). ``train`` only matters for
    drop path (a field, like ResNet's blocks).
    """

    dim: int
    kernel_size: int = 7
    mlp_ratio: float = 4.0
    ls_init_value: float | None = 1e-6
    dw_conv: Any = "dense"
    implementation: str | None = None
    dtype: Any = jnp.float32
    train: bool = False

    @nn.compact
    def __call__(self, x, drop_path_rate: float = 0.0):
        shortcut = x
        x = _resolve_dw_conv(self.dw_conv)(
            features=self.dim, kernel_size=self.kernel_size, use_bias=True, dtype=self.dtype,
            implementation=self.implementation, name="conv_dw")(x)
        x = layer_norm(dtype=self.dtype, name="norm")(x)
        x = Mlp(int(self.mlp_ratio * self.dim), self.dim, dtype=self.dtype, name="mlp")(x)
        if self.ls_init_value is not None:
            gamma = self.param("gamma", nn.initializers.constant(self.ls_init_value),
                               (self.dim,), jnp.float32)
            x = x * gamma.astype(x.dtype)
        x = DropPath(name="drop_path")(x, deterministic=not self.train, rate=drop_path_rate)
        return shortcut + x


class ConvNeXtStage(nn.Module):
    """[LN - 2x2/2 conv] downsampling (stages after the first), then ``depth`` blocks."""

    dim: int
    depth: int
    downsample: bool
    drop_path_rates: Sequence[float] = ()
    block_kwargs: Any = None  # a tuple of (field, value) pairs for ConvNeXtBlock
    dtype: Any = jnp.float32
    train: bool = False

    #: The block module; a subclass may swap it (same constructor and call signature).
    block_cls: ClassVar[type] = ConvNeXtBlock

    @nn.compact
    def __call__(self, x):
        if self.downsample:
            x = layer_norm(dtype=self.dtype, name="downsample_0")(x)
            x = conv2d(self.dim, 2, 2, padding="VALID", use_bias=True, dtype=self.dtype,
                       kernel_init=trunc_normal_init, name="downsample_1")(x)
        kwargs = dict(self.block_kwargs or ())
        for j in range(self.depth):
            rate = self.drop_path_rates[j] if self.drop_path_rates else 0.0
            x = self.block_cls(self.dim, dtype=self.dtype, train=self.train, name=f"blocks_{j}",
                               **kwargs)(x, rate)
        return x


class NormClassifierHead(nn.Module):
    """Global average pool - LayerNorm - [dropout] - Linear (timm ``NormMlpClassifierHead``
    without hidden layer: ``head.norm``, ``head.fc``)."""

    num_classes: int
    drop_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.mean(x, axis=(1, 2))
        x = layer_norm(dtype=self.dtype, name="norm")(x)
        x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
        return _linear(self.num_classes, self.dtype, "fc")(x)


class ConvNeXt(nn.Module):
    """ConvNeXt over NHWC inputs; returns float32 logits ``[B, num_classes]``.

    Fields:
      depths, dims: blocks and channels per stage (4 stages in the paper; any number works).
      kernel_size: depthwise kernel size (7 in the paper; an int, or one per stage).
      mlp_ratio: MLP expansion (4).
      ls_init_value: layer-scale init (1e-6); ``None`` disables layer scale.
      patch_size: stem patch (4).
      dw_conv: ``"dense"`` (:class:`jaxconv.layers.DepthwiseConv2D`) or a factory (module doc).
      implementation: the depthwise op's path: ``None`` (auto), ``"xla"``, ``"pallas"``.
      num_classes, dtype (compute dtype; parameters float32), drop_path_rate (linear from 0 over
      all blocks, as timm), drop_rate (dropout before the classifier).
    """

    depths: Sequence[int] = (3, 3, 9, 3)
    dims: Sequence[int] = (96, 192, 384, 768)
    kernel_size: Any = 7
    mlp_ratio: float = 4.0
    ls_init_value: float | None = 1e-6
    patch_size: int = 4
    dw_conv: Any = "dense"
    implementation: str | None = None
    num_classes: int = 1000
    dtype: Any = jnp.float32
    drop_path_rate: float = 0.0
    drop_rate: float = 0.0

    #: The stage module; a subclass may swap it (same constructor and call signature), e.g. to
    #: share parameters across a stage's blocks.
    stage_cls: ClassVar[type] = ConvNeXtStage

    def __post_init__(self):
        object.__setattr__(self, "depths", positive_ints("depths", self.depths))
        object.__setattr__(self, "dims", positive_ints("dims", self.dims))
        if len(self.depths) != len(self.dims):
            raise ValueError(f"depths {self.depths} and dims {self.dims} must have equal length")
        # An int stays an int: expanding it to one per stage here would make clone(depths=...)
        # with another stage count fail.
        sizes = positive_ints("kernel_size", self.kernel_size)
        if len(sizes) not in (1, len(self.depths)) or any(k % 2 == 0 for k in sizes):
            raise ValueError(f"kernel_size must be an odd int or one odd int per stage "
                             f"({len(self.depths)}), got {self.kernel_size!r}")
        object.__setattr__(self, "kernel_size", sizes[0] if len(sizes) == 1 and not isinstance(
            self.kernel_size, (tuple, list)) else sizes)
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        check_positive_number("mlp_ratio", self.mlp_ratio)
        if self.ls_init_value is not None:
            check_positive_number("ls_init_value", self.ls_init_value)
        positive_ints("patch_size", self.patch_size)
        _resolve_dw_conv(self.dw_conv)
        check_implementation(self.implementation)
        positive_ints("num_classes", self.num_classes)
        check_rate("drop_path_rate", self.drop_path_rate)
        check_rate("drop_rate", self.drop_rate)
        super().__post_init__()

    @property
    def stage_kernel_sizes(self) -> tuple[int, ...]:
        """The depthwise kernel size of each stage."""
        sizes = positive_ints("kernel_size", self.kernel_size)
        return sizes * len(self.depths) if len(sizes) == 1 else sizes

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        p = self.patch_size
        x = conv2d(self.dims[0], p, p, padding="VALID", use_bias=True, dtype=self.dtype,
                   kernel_init=trunc_normal_init, name="stem_0")(x)
        x = layer_norm(dtype=self.dtype, name="stem_1")(x)
        rates = drop_path_rates(self.drop_path_rate, sum(self.depths))
        first = 0
        for i, (depth, dim) in enumerate(zip(self.depths, self.dims)):
            block_kwargs = (("kernel_size", self.stage_kernel_sizes[i]),
                            ("mlp_ratio", self.mlp_ratio),
                            ("ls_init_value", self.ls_init_value), ("dw_conv", self.dw_conv),
                            ("implementation", self.implementation))
            x = self.stage_cls(dim, depth, downsample=i > 0,
                               drop_path_rates=tuple(rates[first:first + depth]),
                               block_kwargs=block_kwargs, dtype=self.dtype, train=train,
                               name=f"stages_{i}")(x)
            first += depth
            self.sow("intermediates", f"stage{i}", x)
        x = NormClassifierHead(self.num_classes, self.drop_rate, dtype=self.dtype,
                               name="head")(x, train=train)
        return jnp.asarray(x, jnp.float32)


# ------------------------------------------------------------------------- field validation


def check_positive_number(field: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{field} must be a positive number, got {value!r}")


def check_implementation(value) -> None:
    if value not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {list(IMPLEMENTATIONS)}, got {value!r}")


# --------------------------------------------------------------------------------- registry

_PAPER = "Liu et al. 2022, A ConvNet for the 2020s, arXiv:2201.03545"


def _register():
    return register_model(family="convnext", paper=_PAPER, input_size=(224, 224, 3),
                          num_classes=1000)


@_register()
def convnext_tiny(**overrides) -> ConvNeXt:
    """ConvNeXt-T (depths 3-3-9-3, dims 96..768; timm structure), 28,589,128 params."""
    return ConvNeXt(**{"depths": (3, 3, 9, 3), "dims": (96, 192, 384, 768), **overrides})


@_register()
def convnext_small(**overrides) -> ConvNeXt:
    """ConvNeXt-S (depths 3-3-27-3, dims 96..768; timm structure), 50,223,688 params."""
    return ConvNeXt(**{"depths": (3, 3, 27, 3), "dims": (96, 192, 384, 768), **overrides})


@_register()
def convnext_base(**overrides) -> ConvNeXt:
    """ConvNeXt-B (depths 3-3-27-3, dims 128..1024; timm structure), 88,591,464 params."""
    return ConvNeXt(**{"depths": (3, 3, 27, 3), "dims": (128, 256, 512, 1024), **overrides})
