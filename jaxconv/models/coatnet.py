"""CoAtNet: depthwise-conv (MBConv) stages, then relative-attention transformer stages.

Dai, Liu, Le & Tan 2021, CoAtNet: Marrying Convolution and Attention for All Data Sizes,
arXiv:2106.04803. Two models, both exactly as timm (``timm/models/maxxvit.py``) builds them:

* ``coatnet_0_rw_224``: timm's own CoAtNet-0 (Ross Wightman's config, 27,435,562 params): a
  deeper stage 3 (depths 2-3-7-2), a 32-64 stem, SiLU MBConvs with pre-norm activation, avg-pool
  downsampling, expansion from the input width, squeeze-excitation before the second norm, no
  biases on the MBConv output and shortcut convs, attention at the input width.
* ``coatnet_0_224``: the paper's CoAtNet-0 (Table 3: C-C-T-T, L = 2/2/3/5/2 with the two stem
  convs as L0, D = 64/96/192/384/768; "25M" params, Table 4), as timm's ``coatnet_0_224``
  reads it: GELU MBConvs expanding from the output width with the stride in the depthwise conv,
  squeeze-excitation (SiLU) after the second norm, attention expanded to the output width, and
  timm's norm + pre-logits (tanh) MLP head. 25,036,820 params (25.0M).

Both are one :class:`CoAtNet` module; ``style`` ("rw" or "paper") selects the conventions above.
The transformer blocks' relative position bias covers the whole feature map (CoAtNet's global
attention), so its tables are sized by the input: stage 3 and 4 see ``H/16 x W/16`` and
``H/32 x W/32`` maps, tables ``[(2h-1)(2w-1), heads]``. Variables made at one input size do not
fit another (a clear ``ValueError``); the input side must be a multiple of 32. The attention
runs through :class:`jaxconv.layers.attention.MultiHeadAttention`, i.e.
:func:`kernels_pallas.flash_attention` with the gathered bias; ``implementation`` picks its path.

Parameter layout = timm's module tree (``from_timm`` uses the default rule: ``stages_2`` ->
``stages.2``; 1x1 convs are ``nn.Dense`` whose kernel is timm's ``[O, I, 1, 1]`` weight
transposed)::

    stem/conv1, stem/norm1 (BN), stem/conv2
    stages_{s}/blocks_{b}          s, b from 0
      MBConv ("C"):  shortcut/expand (stride 2 only), pre_norm (BN), conv1_1x1, norm1 (BN),
                     conv2_kxk (depthwise 3x3), se_early|se {fc1, fc2}, norm2 (BN), conv3_1x1
      Transformer ("T"): shortcut/expand and norm1/norm (stride 2) or norm1 (stride 1),
                     attn {qkv, rel_pos/relative_position_bias_table, proj}, norm2,
                     mlp {fc1, fc2}
    norm (LayerNorm) + head/fc                       ("rw")
    head/norm, head/pre_logits/fc (tanh), head/fc    ("paper")

Stage outputs are sown as ``intermediates/stage{i}``: ``stage0`` the stem (stride 2),
``stage1..4`` the four stages (strides 4..32), timm's feature_info.

The depthwise 3x3 convs are :class:`jaxconv.layers.DepthwiseConv2D` (kernel ``[3, 3, C]``;
``from_timm`` maps timm's ``[C, 1, 3, 3]`` onto it by module type).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import (DepthwiseConv2D, DropPath, batch_norm, canonical_dtype, conv2d,
                            drop_path_rates)
from jaxconv.layers.attention import ATTENTION_IMPLEMENTATIONS, MultiHeadAttention
from jaxconv.layers.conv import exact_gelu, flat_dot_general, recompute_module_on_cpu
from jaxconv.registry import register_model

__all__ = ["STYLES", "CoAtNet", "MBConvBlock", "TransformerBlock", "make_divisible"]

_PAPER = ("Dai et al. 2021, CoAtNet: Marrying Convolution and Attention for All Data Sizes, "
          "arXiv:2106.04803")
BLOCK_TYPES = ("C", "T")
LN_EPSILON = 1e-6  # timm's LayerNorm2d in these models


@dataclasses.dataclass(frozen=True)
class Style:
    """The structural choices in which timm's "rw" CoAtNets differ from the paper's."""

    act: str                    # MBConv and stem activation: "silu" | "gelu"
    stride_in_pool: bool        # MBConv downsamples by 2x2 avg pool before conv1 (else: dw stride)
    pre_norm_act: bool          # activation after the MBConv pre-norm
    expand_from_output: bool    # MBConv hidden width = 4 * output (else 4 * input)
    conv_bias: bool             # bias on MBConv conv3_1x1 and its shortcut conv
    se_early: bool              # SE between the depthwise conv and norm2 (else after norm2)
    se_act: str                 # SE activation
    attn_expand_first: bool     # attention width = output width (else input width)
    attn_shortcut_bias: bool    # bias on the transformer shortcut conv
    head_hidden: bool           # norm + tanh pre-logits head (else final norm on the map)


#: "rw": timm's ``coatnet_*_rw`` (``_rw_coat_cfg``); "paper": timm's ``coatnet_N_224``.
STYLES = {
    "rw": Style(act="silu", stride_in_pool=True, pre_norm_act=True, expand_from_output=False,
                conv_bias=False, se_early=True, se_act="relu", attn_expand_first=False,
                attn_shortcut_bias=False, head_hidden=False),
    "paper": Style(act="gelu", stride_in_pool=False, pre_norm_act=False, expand_from_output=True,
                   conv_bias=True, se_early=False, se_act="silu", attn_expand_first=True,
                   attn_shortcut_bias=True, head_hidden=True),
}
_ACTIVATIONS = {
    "silu": nn.silu,
    "relu": nn.relu,
    "gelu": exact_gelu,  # torch.nn.GELU: the exact erf form
}

# Initialisers (timm's "vit_eff" scheme, for training from scratch): convs normal with
# std sqrt(2 / fan_out) (fan_out per group), transformer linears Xavier-uniform.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
_dw_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")  # fan_in = k*k = fan_out/group
_xavier = nn.initializers.xavier_uniform()


def make_divisible(value: float, divisor: int = 8, round_limit: float = 0.9) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, never more than 10% below it."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


def _avg_pool2(x):
    return nn.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


def _dense(features, *, use_bias=True, dtype, kernel_init=_conv_init, name=None):
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=kernel_init, bias_init=nn.initializers.zeros,
                    dot_general=flat_dot_general, name=name)


def _layer_norm(dtype, name=None):
    return recompute_module_on_cpu(nn.LayerNorm)(
        epsilon=LN_EPSILON, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False,
        name=name)


class Downsample(nn.Module):
    """2x2/2 average pool, then a 1x1 conv ``expand`` if the width changes (timm Downsample2d)."""

    features: int
    use_bias: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = _avg_pool2(x)
        if x.shape[-1] != self.features:
            x = _dense(self.features, use_bias=self.use_bias, dtype=self.dtype, name="expand")(x)
        return x


class SqueezeExcite(nn.Module):
    """Channel gate: global mean -> fc1 -> act -> fc2 -> sigmoid, times the input."""

    reduced: int
    act: str
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        s = jnp.mean(x, axis=(1, 2), keepdims=True)
        s = _dense(self.reduced, dtype=self.dtype, name="fc1")(s)
        s = _dense(x.shape[-1], dtype=self.dtype, name="fc2")(_ACTIVATIONS[self.act](s))
        return x * nn.sigmoid(s)


class MBConvBlock(nn.Module):
    """Pre-norm inverted bottleneck: BN(-act), 1x1 expand x4, BN-act, depthwise 3x3, SE, BN-act,
    1x1 project; plus the (pooled, projected) shortcut. Stride 2 only in a stage's first block."""

    features: int
    strides: int = 1
    style: str = "rw"
    drop_path_rate: float = 0.0
    train: bool = False
    dtype: Any = jnp.float32

    def _bn(self, name):
        return batch_norm(self.train, dtype=self.dtype, name=name)

    @nn.compact
    def __call__(self, x):
        style = STYLES[self.style]
        act = _ACTIVATIONS[style.act]
        channels = x.shape[-1]
        if self.strides == 2:
            shortcut = Downsample(self.features, style.conv_bias, self.dtype, name="shortcut")(x)
        elif channels == self.features:
            shortcut = x
        else:
            raise ValueError(f"an MBConv block with stride 1 needs equal widths, got "
                             f"{channels} -> {self.features}")
        h = self._bn("pre_norm")(x)
        if style.pre_norm_act:
            h = act(h)
        dw_stride = self.strides
        if self.strides == 2 and style.stride_in_pool:
            h, dw_stride = _avg_pool2(h), 1
        hidden = make_divisible((self.features if style.expand_from_output else channels) * 4)
        h = _dense(hidden, use_bias=False, dtype=self.dtype, name="conv1_1x1")(h)
        h = act(self._bn("norm1")(h))
        h = DepthwiseConv2D(3, strides=dw_stride, use_bias=False, dtype=self.dtype,
                            kernel_init=_dw_init, name="conv2_kxk")(h)
        se = SqueezeExcite(int(0.25 * (self.features if style.expand_from_output else hidden)),
                           style.se_act, self.dtype, name="se_early" if style.se_early else "se")
        if style.se_early:
            h = se(h)
        h = act(self._bn("norm2")(h))
        if not style.se_early:
            h = se(h)
        h = _dense(self.features, use_bias=style.conv_bias, dtype=self.dtype,
                   name="conv3_1x1")(h)
        h = DropPath(self.drop_path_rate, name="drop_path")(h, deterministic=not self.train)
        return shortcut + h


class _NormDown(nn.Module):
    """LayerNorm ``norm``, then 2x2/2 average pool (timm's ``norm1`` Sequential at stride 2)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return _avg_pool2(_layer_norm(self.dtype, name="norm")(x))


class Mlp(nn.Module):
    """fc1 (x4) - GELU - fc2 (timm ConvMlp with 1x1 convs)."""

    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = _dense(self.hidden, dtype=self.dtype, kernel_init=_xavier, name="fc1")(x)
        h = _ACTIVATIONS["gelu"](h)
        return _dense(x.shape[-1], dtype=self.dtype, kernel_init=_xavier, name="fc2")(h)


class TransformerBlock(nn.Module):
    """Pre-norm global self-attention with a relative position bias over the whole map, then a
    pre-norm MLP. At stride 2 the attention branch pools after its norm and the shortcut pools
    and projects (timm TransformerBlock2d)."""

    features: int
    strides: int = 1
    style: str = "rw"
    head_dim: int = 32
    drop_path_rate: float = 0.0
    train: bool = False
    dtype: Any = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x):
        style = STYLES[self.style]
        channels = x.shape[-1]
        if self.strides == 2:
            shortcut = Downsample(self.features, style.attn_shortcut_bias, self.dtype,
                                  name="shortcut")(x)
            h = _NormDown(self.dtype, name="norm1")(x)
        elif channels == self.features:
            shortcut, h = x, _layer_norm(self.dtype, name="norm1")(x)
        else:
            raise ValueError(f"a transformer block with stride 1 needs equal widths, got "
                             f"{channels} -> {self.features}")
        width = self.features if style.attn_expand_first else channels
        if width % self.head_dim:
            raise ValueError(f"attention width {width} is not a multiple of head_dim="
                             f"{self.head_dim}")
        h = MultiHeadAttention(
            num_heads=width // self.head_dim, head_dim=self.head_dim,
            out_features=self.features, qkv_layout="heads_first",
            rel_pos_window=tuple(h.shape[1:3]), dtype=self.dtype,
            implementation=self.implementation, name="attn")(h, train=self.train)
        x = shortcut + DropPath(self.drop_path_rate, name="drop_path1")(
            h, deterministic=not self.train)
        h = Mlp(4 * self.features, self.dtype, name="mlp")(_layer_norm(self.dtype, "norm2")(x))
        return x + DropPath(self.drop_path_rate, name="drop_path2")(
            h, deterministic=not self.train)


class _Stem(nn.Module):
    widths: tuple[int, int]
    act: str
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = conv2d(self.widths[0], 3, 2, dtype=self.dtype, name="conv1")(x)
        x = _ACTIVATIONS[self.act](batch_norm(self.train, dtype=self.dtype, name="norm1")(x))
        return conv2d(self.widths[1], 3, 1, dtype=self.dtype, name="conv2")(x)


class _Stage(nn.Module):
    """``blocks_{b}``: the first block halves the map and changes the width."""

    features: int
    depth: int
    block_type: str
    style: str
    drop_path_rates: tuple[float, ...]
    head_dim: int = 32
    train: bool = False
    dtype: Any = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x):
        for b in range(self.depth):
            common = dict(features=self.features, strides=2 if b == 0 else 1, style=self.style,
                          drop_path_rate=self.drop_path_rates[b], train=self.train,
                          dtype=self.dtype, name=f"blocks_{b}")
            if self.block_type == "C":
                x = MBConvBlock(**common)(x)
            else:
                x = TransformerBlock(head_dim=self.head_dim, implementation=self.implementation,
                                     **common)(x)
        return x


class _PreLogits(nn.Module):
    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(_dense(self.hidden, dtype=self.dtype, kernel_init=_xavier, name="fc")(x))


class _Head(nn.Module):
    num_classes: int
    hidden: int | None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):  # x: pooled [B, C]
        if self.hidden:
            x = _layer_norm(self.dtype, name="norm")(x)
            x = _PreLogits(self.hidden, self.dtype, name="pre_logits")(x)
        return _dense(self.num_classes, dtype=self.dtype, kernel_init=_xavier, name="fc")(x)


class CoAtNet(nn.Module):
    """CoAtNet over NHWC inputs whose sides are multiples of 32; float32 logits.

    Fields:
      depths / embed_dims / block_types: per stage (4 stages, strides 4, 8, 16, 32); block
        types "C" (MBConv) or "T" (transformer).
      stem_widths: the two 3x3 stem convs (the first has stride 2).
      style: one of :data:`STYLES` ("rw": timm's coatnet_*_rw; "paper": the paper / timm's
        coatnet_N_224); see :class:`Style`.
      head_dim: channels per attention head (32 in CoAtNet).
      num_classes, dtype (compute dtype; parameters float32), drop_path_rate (linear over all
        blocks, timm's schedule).
      implementation: attention path for :func:`kernels_pallas.flash_attention`
        (``None`` | "xla" | "pallas" | "cudnn").
    """

    depths: Sequence[int] = (2, 3, 7, 2)
    embed_dims: Sequence[int] = (96, 192, 384, 768)
    block_types: Sequence[str] = ("C", "C", "T", "T")
    stem_widths: Sequence[int] = (32, 64)
    style: str = "rw"
    head_dim: int = 32
    num_classes: int = 1000
    dtype: Any = jnp.float32
    drop_path_rate: float = 0.0
    implementation: str | None = None

    def __post_init__(self):
        for field in ("depths", "embed_dims", "block_types", "stem_widths"):
            object.__setattr__(self, field, tuple(getattr(self, field)))
        if not (len(self.depths) == len(self.embed_dims) == len(self.block_types)) \
                or not self.depths:
            raise ValueError(f"depths, embed_dims and block_types must have one entry per stage, "
                             f"got {self.depths}, {self.embed_dims}, {self.block_types}")
        for field in ("depths", "embed_dims", "stem_widths"):
            values = getattr(self, field)
            if any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in values):
                raise ValueError(f"{field} must be positive ints, got {values}")
        if len(self.stem_widths) != 2:
            raise ValueError(f"stem_widths must be two ints, got {self.stem_widths}")
        if any(t not in BLOCK_TYPES for t in self.block_types):
            raise ValueError(f"block_types must each be one of {list(BLOCK_TYPES)}, got "
                             f"{self.block_types}")
        if self.style not in STYLES:
            raise ValueError(f"style must be one of {list(STYLES)}, got {self.style!r}")
        if isinstance(self.head_dim, bool) or not isinstance(self.head_dim, int) \
                or self.head_dim <= 0:
            raise ValueError(f"head_dim must be a positive int, got {self.head_dim!r}")
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int) \
                or self.num_classes <= 0:
            raise ValueError(f"num_classes must be a positive int, got {self.num_classes!r}")
        if not isinstance(self.drop_path_rate, (int, float)) or isinstance(
                self.drop_path_rate, bool) or not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be a float in [0, 1), got "
                             f"{self.drop_path_rate!r}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of "
                             f"{list(ATTENTION_IMPLEMENTATIONS)}, got {self.implementation!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        reduction = 2 ** (len(self.depths) + 1)
        if x.ndim != 4 or x.shape[1] % reduction or x.shape[2] % reduction:
            raise ValueError(f"CoAtNet takes NHWC inputs with sides that are multiples of "
                             f"{reduction}, got shape {tuple(x.shape)}")
        style = STYLES[self.style]
        x = jnp.asarray(x, self.dtype)
        x = _Stem(self.stem_widths, style.act, train, self.dtype, name="stem")(x)
        self.sow("intermediates", "stage0", x)
        rates = drop_path_rates(self.drop_path_rate, sum(self.depths))
        start = 0
        for s, (depth, width, kind) in enumerate(zip(self.depths, self.embed_dims,
                                                     self.block_types)):
            x = _Stage(width, depth, kind, self.style, tuple(rates[start:start + depth]),
                       self.head_dim, train, self.dtype, self.implementation,
                       name=f"stages_{s}")(x)
            start += depth
            self.sow("intermediates", f"stage{s + 1}", x)
        if not style.head_hidden:
            x = _layer_norm(self.dtype, name="norm")(x)
        x = jnp.mean(x, axis=(1, 2))
        hidden = self.embed_dims[-1] if style.head_hidden else None
        x = _Head(self.num_classes, hidden, self.dtype, name="head")(x)
        return jnp.asarray(x, jnp.float32)


def _register():
    return register_model(family="coatnet", paper=_PAPER, input_size=(224, 224, 3),
                          num_classes=1000)


@_register()
def coatnet_0_rw_224(**overrides) -> CoAtNet:
    """CoAtNet-0 as timm's coatnet_0_rw_224 (depths 2-3-7-2, SiLU MBConv), 27,435,562 params."""
    return CoAtNet(**{**dict(depths=(2, 3, 7, 2), stem_widths=(32, 64), style="rw"),
                      **overrides})


@_register()
def coatnet_0_224(**overrides) -> CoAtNet:
    """The paper's CoAtNet-0 (C-C-T-T, depths 2-3-5-2; timm coatnet_0_224), 25,036,820 params."""
    return CoAtNet(**{**dict(depths=(2, 3, 5, 2), stem_widths=(64, 64), style="paper"),
                      **overrides})
