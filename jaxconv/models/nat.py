"""Neighborhood Attention Transformer (Hassani et al. 2023, Neighborhood Attention Transformer,
arXiv:2204.07143, CVPR 2023).

A hierarchical transformer whose attention is 2-D neighborhood attention
(:class:`jaxconv.layers.NeighborhoodAttention2D`, on :func:`kernels_pallas.neighborhood_attention`):
an overlapping convolutional tokenizer (two 3x3 stride-2 convs, stride 4 in all), four levels of
pre-norm NAT layers (LN -> neighborhood attention -> residual, LN -> MLP(GELU) -> residual) with a
3x3 stride-2 conv downsampler (doubling channels, then LN) between levels, a final LN, global
average pooling and a linear head.

timm has no NAT; names follow the authors' code (SHI-Labs/Neighborhood-Attention-Transformer,
``classification/nat.py``): a state-dict key maps to the parameter path by replacing each
``.`` by ``/`` and joining a list index to its parent with ``_``::

    patch_embed/proj_0, proj_1 (convs with bias), norm          tokenizer
    levels_{i}/blocks_{j}/norm1, attn/{qkv, rpb, proj}, norm2, mlp/{fc1, fc2}[, gamma1, gamma2]
    levels_{i}/downsample/reduction (conv, no bias), norm        i < 3
    norm, head

(``levels.0.blocks.1.attn.qkv.weight`` -> ``levels_0/blocks_1/attn/qkv/kernel``, transposed;
conv weights ``[O, I, kh, kw]`` -> ``kernel [kh, kw, I, O]``). Stage outputs
``intermediates/stage{i}`` (i = 0..3) are each level's output before its downsampler, at
strides 4, 8, 16, 32.

Each level's map must be at least ``kernel_size`` wide, or it is padded as NAT pads it (see the
layer); at 224x224 the last level is 7x7, exactly NAT's window.

:func:`variables_from_official` converts the authors' state dicts (their released checkpoints).
Checked once off-repo (2026-11-22; no NATTEN build exists for this CPU, so not a CI fixture):
the authors' ``nat.py`` with their pure-PyTorch ``LegacyNeighborhoodAttention`` (unfold +
replicate pad, their bias-index flip) on seeded nat_mini weights gave logits equal to
``nat_mini``'s within 3.6e-6 (|logits| <= 3.1) at 64x64 and 112x112 inputs, XLA and Pallas paths.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import unflatten_dict

import kernels_pallas
from jaxconv.layers import DropPath, canonical_dtype, conv2d, drop_path_rates
from jaxconv.layers.conv import exact_gelu, flat_dot_general, recompute_module_on_cpu
from jaxconv.layers.neighborhood_attention import NeighborhoodAttention2D, trunc_normal_02
from jaxconv.models.checks import positive_ints
from jaxconv.registry import register_model

__all__ = ["NAT", "NATLayer", "NATLevel", "ConvTokenizer", "variables_from_official"]

#: PyTorch's nn.LayerNorm epsilon (NAT's norm layer).
LN_EPSILON = 1e-5


def layer_norm(dtype, name):
    return recompute_module_on_cpu(nn.LayerNorm)(epsilon=LN_EPSILON, dtype=dtype,
                                                 param_dtype=jnp.float32, name=name)


def linear(features, dtype, name):
    """NAT's nn.Linear: trunc-normal(0.02) weight, zero bias."""
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=trunc_normal_02,
                    dot_general=flat_dot_general, name=name)


class Mlp(nn.Module):
    """fc1 -> GELU (exact, PyTorch's default) -> fc2."""

    hidden: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        out = x.shape[-1]
        x = exact_gelu(linear(self.hidden, self.dtype, "fc1")(x))
        return linear(out, self.dtype, "fc2")(x)


class ConvTokenizer(nn.Module):
    """Two overlapping 3x3 stride-2 convs (C/2 then C channels), then LayerNorm: stride 4."""

    embed_dim: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = conv2d(self.embed_dim // 2, 3, 2, use_bias=True, dtype=self.dtype, name="proj_0")(x)
        x = conv2d(self.embed_dim, 3, 2, use_bias=True, dtype=self.dtype, name="proj_1")(x)
        return layer_norm(self.dtype, "norm")(x)


class NATLayer(nn.Module):
    """x + drop_path(NA(LN(x))), then x + drop_path(MLP(LN(x))); optional layer scale."""

    num_heads: int
    kernel_size: int
    mlp_ratio: float
    drop_path_rate: float = 0.0
    layer_scale: float | None = None
    dtype: Any = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        dim = x.shape[-1]
        drop = DropPath(self.drop_path_rate, name="drop_path")
        h = layer_norm(self.dtype, "norm1")(x)
        h = NeighborhoodAttention2D(self.num_heads, self.kernel_size, dtype=self.dtype,
                                    implementation=self.implementation, name="attn")(h)
        if self.layer_scale is not None:
            h = h * self.param("gamma1", nn.initializers.constant(self.layer_scale), (dim,))
        x = x + drop(h, deterministic=not train)
        h = Mlp(int(dim * self.mlp_ratio), self.dtype, name="mlp")(layer_norm(self.dtype,
                                                                              "norm2")(x))
        if self.layer_scale is not None:
            h = h * self.param("gamma2", nn.initializers.constant(self.layer_scale), (dim,))
        return x + drop(h, deterministic=not train)


class NATLevel(nn.Module):
    """``depth`` NAT layers, then (if ``downsample``) a 3x3/2 conv doubling channels + LN.

    Returns ``(features, next_input)``: the level's output at its own resolution (the stage
    feature) and the downsampled map the next level takes.
    """

    depth: int
    num_heads: int
    kernel_size: int
    mlp_ratio: float
    drop_path_rates: Sequence[float]
    downsample: bool
    layer_scale: float | None = None
    dtype: Any = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        for j in range(self.depth):
            x = NATLayer(self.num_heads, self.kernel_size, self.mlp_ratio,
                         self.drop_path_rates[j], self.layer_scale, self.dtype,
                         self.implementation, name=f"blocks_{j}")(x, train)
        if not self.downsample:
            return x, x
        # Submodule path levels_i/downsample/{reduction, norm}: NAT's ConvDownsampler.
        return x, _Downsampler(self.dtype, name="downsample")(x)


class _Downsampler(nn.Module):
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = conv2d(2 * x.shape[-1], 3, 2, dtype=self.dtype, name="reduction")(x)
        return layer_norm(self.dtype, "norm")(x)


class NAT(nn.Module):
    """Neighborhood Attention Transformer over NHWC inputs; float32 logits ``[B, num_classes]``.

    Fields:
      depths, num_heads: NAT layers and attention heads per level (channels double per level).
      embed_dim: channels of level 0 (tokenizer output).
      mlp_ratio: MLP hidden width / channels.
      kernel_size: neighborhood window (odd; 7 in all NAT models).
      layer_scale: per-channel residual scale init (NAT-Small/Base: 1e-5), None for none.
      num_classes, dtype (compute dtype; parameters float32), drop_path_rate (stochastic depth,
        linear over all layers from 0 to this value; NAT trains Mini/Tiny with 0.2).
      implementation: neighborhood-attention op path (None: per backend; "xla"; "pallas").
    """

    depths: Sequence[int] = (3, 4, 6, 5)
    num_heads: Sequence[int] = (2, 4, 8, 16)
    embed_dim: int = 64
    mlp_ratio: float = 3.0
    kernel_size: int = 7
    layer_scale: float | None = None
    num_classes: int = 1000
    dtype: Any = jnp.float32
    drop_path_rate: float = 0.0
    implementation: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "depths", positive_ints("depths", self.depths))
        object.__setattr__(self, "num_heads", positive_ints("num_heads", self.num_heads))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if len(self.depths) != len(self.num_heads):
            raise ValueError(f"depths {self.depths} and num_heads {self.num_heads} must have "
                             f"equal length")
        positive_ints("embed_dim", (self.embed_dim,))
        positive_ints("num_classes", (self.num_classes,))
        for i, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2 ** i) % heads:
                raise ValueError(f"num_heads[{i}]={heads} must divide the level's channels "
                                 f"{self.embed_dim * 2 ** i} (embed_dim * 2**{i})")
        if self.embed_dim % 2:
            raise ValueError(f"embed_dim must be even (the tokenizer's first conv has "
                             f"embed_dim // 2 channels), got {self.embed_dim!r}")
        k = self.kernel_size
        if isinstance(k, bool) or not isinstance(k, int) or k < 3 or k % 2 == 0:
            raise ValueError(f"kernel_size must be an odd int >= 3 (3, 5, 7, ...), got {k!r}")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise ValueError(f"mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        if self.layer_scale is not None and not (isinstance(self.layer_scale, (int, float))
                                                 and self.layer_scale > 0):
            raise ValueError(f"layer_scale must be None or a positive float, got "
                             f"{self.layer_scale!r}")
        rate = self.drop_path_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"drop_path_rate must be a float in [0, 1), got {rate!r}")
        if self.implementation not in kernels_pallas.IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {list(kernels_pallas.IMPLEMENTATIONS)}"
                             f", got {self.implementation!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        x = ConvTokenizer(self.embed_dim, self.dtype, name="patch_embed")(x)
        rates = drop_path_rates(self.drop_path_rate, sum(self.depths))
        first = 0
        for i, (depth, heads) in enumerate(zip(self.depths, self.num_heads)):
            features, x = NATLevel(
                depth, heads, self.kernel_size, self.mlp_ratio, tuple(rates[first:first + depth]),
                downsample=i < len(self.depths) - 1, layer_scale=self.layer_scale,
                dtype=self.dtype, implementation=self.implementation, name=f"levels_{i}",
            )(x, train)
            first += depth
            self.sow("intermediates", f"stage{i}", features)
        x = layer_norm(self.dtype, "norm")(x)
        x = jnp.mean(x, axis=(1, 2))
        x = linear(self.num_classes, self.dtype, "head")(x)
        return jnp.asarray(x, jnp.float32)


# ------------------------------------------------------------------------ authors' weights

_AUTHORS_KEY = re.compile(r"(?:patch_embed\.proj\.(\d+)|.+)\.(weight|bias)$|.+\.(rpb|gamma[12])$")


def variables_from_official(state_dict) -> dict:
    """Variables for :class:`NAT` from a state dict of the authors' ``nat.py`` (their released
    checkpoints use it): arrays or tensors convertible with ``np.asarray``.

    The path rule of the module docstring: ``.`` -> ``/``, a list index joined to its parent
    with ``_`` (``levels.0.blocks.1`` -> ``levels_0/blocks_1``, ``patch_embed.proj.0`` ->
    ``patch_embed/proj_0``); linear weights are transposed to ``kernel``, conv weights
    ``[O, I, kh, kw]`` become ``[kh, kw, I, O]``, LayerNorm weights become ``scale``; ``rpb``
    and layer-scale ``gamma1/2`` are copied.
    """
    params = {}
    for key, value in state_dict.items():
        value = np.asarray(value, np.float32)
        if _AUTHORS_KEY.fullmatch(key) is None:
            raise ValueError(f"unexpected NAT state-dict key {key!r}")
        module, leaf = key.rsplit(".", 1)
        path = tuple(re.sub(r"\.(\d+)(?=\.|$)", r"_\1", module).split("."))
        if leaf in ("rpb", "gamma1", "gamma2"):
            params[path + (leaf,)] = value
        elif leaf == "bias":
            params[path + ("bias",)] = value
        elif value.ndim == 4:
            params[path + ("kernel",)] = value.transpose(2, 3, 1, 0)
        elif value.ndim == 2:
            params[path + ("kernel",)] = value.T
        elif value.ndim == 1:
            params[path + ("scale",)] = value
        else:
            raise ValueError(f"unexpected NAT state-dict key {key!r} with shape {value.shape}")
    return {"params": unflatten_dict(params)}


# --------------------------------------------------------------------------------- registry

_PAPER = "Hassani et al. 2023, Neighborhood Attention Transformer, arXiv:2204.07143"


def _register():
    return register_model(family="nat", paper=_PAPER, input_size=(224, 224, 3), num_classes=1000)


@_register()
def nat_mini(**overrides) -> NAT:
    """NAT-Mini (depths 3-4-6-5, dim 64, mlp 3, 7x7 windows), 20.0M params (paper: 20M)."""
    return NAT(**{**dict(depths=(3, 4, 6, 5), num_heads=(2, 4, 8, 16), embed_dim=64,
                         mlp_ratio=3.0), **overrides})


@_register()
def nat_tiny(**overrides) -> NAT:
    """NAT-Tiny (depths 3-4-18-5, dim 64, mlp 3, 7x7 windows), 27.9M params (paper: 28M)."""
    return NAT(**{**dict(depths=(3, 4, 18, 5), num_heads=(2, 4, 8, 16), embed_dim=64,
                         mlp_ratio=3.0), **overrides})


@_register()
def nat_small(**overrides) -> NAT:
    """NAT-Small (depths 3-4-18-5, dim 96, mlp 2, layer scale 1e-5), 50.7M params (paper: 51M)."""
    return NAT(**{**dict(depths=(3, 4, 18, 5), num_heads=(3, 6, 12, 24), embed_dim=96,
                         mlp_ratio=2.0, layer_scale=1e-5), **overrides})


@_register()
def nat_base(**overrides) -> NAT:
    """NAT-Base (depths 3-4-18-5, dim 128, mlp 2, layer scale 1e-5), 89.8M params (paper: 90M)."""
    return NAT(**{**dict(depths=(3, 4, 18, 5), num_heads=(4, 8, 16, 32), embed_dim=128,
                         mlp_ratio=2.0, layer_scale=1e-5), **overrides})
