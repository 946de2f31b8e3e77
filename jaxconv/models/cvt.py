"""CvT: Convolutional vision Transformer (Wu et al. 2021, CvT: Introducing Convolutions to Vision
Transformers, arXiv:2103.15808, ICCV 2021).

Three stages, each a convolutional token embedding (an overlapping strided conv + LayerNorm:
7x7/4 with padding 2, then 3x3/2, 3x3/2) followed by pre-norm transformer blocks whose
attention takes q, k and v from a *convolutional projection*: a depthwise 3x3 conv + BatchNorm
on the token map (stride 1 for q, stride 2 for k and v, so k/v have ~4x fewer tokens than q),
then a linear layer. A class token joins only in the last stage (it skips the convolutions) and
the head classifies it after a final LayerNorm. No position embedding.

As in the authors' code (microsoft/CvT ``lib/models/cls_cvt.py``): the MLP activation is
QuickGELU (``x * sigmoid(1.702 x)``; ``mlp_act="gelu"`` for the exact GELU used by Hugging
Face's port), LayerNorm eps is 1e-5 and the softmax scale is ``dim ** -0.5`` with ``dim`` the
*full* embedding width, not the head width (a quirk of that code, kept so its weights give its
outputs). The attention runs on :func:`kernels_pallas.flash_attention` (q ``[B, L, H, D]``,
k/v ``[B, S, H, D]`` with S < L).

timm has no CvT; names follow the authors' state dict (``.`` -> ``/``, list index joined with
``_``, and ``stage{i}`` -> ``stages_{i}`` because ``stage{i}`` names the sown stage outputs;
linear weights transposed, depthwise conv weights ``[C, 1, 3, 3]`` -> ``kernel [3, 3, C]``)::

    stages_{i}/patch_embed/proj (conv with bias), norm
    stages_{i}/cls_token [1, 1, C]                                     last stage only
    stages_{i}/blocks_{j}/norm1, norm2, mlp/{fc1, fc2},
        attn/conv_proj_{q,k,v}/{conv (depthwise, no bias), bn}, attn/proj_{q,k,v}, attn/proj
    norm, head

Stage outputs ``intermediates/stage{i}`` (i = 0..2) are the token maps (class token excluded)
at the end of each stage, NHWC at strides 4, 8, 16. The BatchNorms make train mode need
``mutable=["batch_stats"]``.

:func:`variables_from_hf` converts Hugging Face transformers' ``CvtForImageClassification``
state dicts (e.g. ``microsoft/cvt-13``; build with ``mlp_act="gelu"``, transformers' activation).
``tests/models/test_cvt.py`` checks ``cvt_13`` against transformers' CvT-13 on seeded weights
(fixture ``tests/models/hf_fixtures/cvt_13.npz``): max |logit difference| 4.2e-6.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import unflatten_dict

import kernels_pallas
from jaxconv.layers import DepthwiseConv2D, DropPath, batch_norm, canonical_dtype, conv2d
from jaxconv.layers import drop_path_rates
from jaxconv.layers.conv import exact_gelu, flat_dot_general, recompute_module_on_cpu
from jaxconv.registry import register_model

__all__ = ["CvT", "CvTAttention", "CvTBlock", "CvTStage", "MLP_ACTIVATIONS", "quick_gelu",
           "variables_from_hf"]

#: PyTorch's nn.LayerNorm epsilon (CvT's norm layer: LayerNorm(eps=1e-5)).
LN_EPSILON = 1e-5
#: CvT's init for linear weights and the class token (timm ``trunc_normal_(std=.02)``).
trunc_normal_02 = nn.initializers.truncated_normal(stddev=0.02)


def quick_gelu(x):
    """CLIP/CvT's sigmoid approximation of GELU: ``x * sigmoid(1.702 x)``."""
    return x * nn.sigmoid(1.702 * x)


MLP_ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": exact_gelu,
}


def _layer_norm(dtype, name):
    return recompute_module_on_cpu(nn.LayerNorm)(epsilon=LN_EPSILON, dtype=dtype,
                                                 param_dtype=jnp.float32, name=name)


def _linear(features, dtype, name, use_bias=True):
    return nn.Dense(features, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                    kernel_init=trunc_normal_02, dot_general=flat_dot_general, name=name)


class ConvProjection(nn.Module):
    """Depthwise ``kernel_size`` conv (no bias, symmetric padding k//2) + BatchNorm."""

    kernel_size: int = 3
    stride: int = 1
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = DepthwiseConv2D(self.kernel_size, strides=self.stride, use_bias=False,
                            dtype=self.dtype, name="conv")(x)
        return batch_norm(train, dtype=self.dtype, name="bn")(x)


class CvTAttention(nn.Module):
    """Multi-head attention with convolutional q/k/v projections.

    Takes the token map ``[B, H, W, C]`` and an optional class token ``[B, 1, C]`` (which skips
    the convs and is prepended to q, k and v); returns ``[B, (1 +) H*W, C]`` in q's order.
    """

    num_heads: int
    qkv_bias: bool = True
    kernel_size: int = 3
    stride_q: int = 1
    stride_kv: int = 2
    dtype: Any = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, image, cls=None, train: bool = False):
        batch, dim = image.shape[0], image.shape[-1]
        head_dim = dim // self.num_heads

        def project(which, stride):
            t = ConvProjection(self.kernel_size, stride, self.dtype,
                               name=f"conv_proj_{which}")(image, train)
            t = t.reshape(batch, -1, dim)
            if cls is not None:
                t = jnp.concatenate([cls.astype(t.dtype), t], axis=1)
            t = _linear(dim, self.dtype, f"proj_{which}", self.qkv_bias)(t)
            return t.reshape(batch, t.shape[1], self.num_heads, head_dim)

        q = project("q", self.stride_q)
        k = project("k", self.stride_kv)
        v = project("v", self.stride_kv)
        out = kernels_pallas.flash_attention(q, k, v, scale=dim ** -0.5,
                                             implementation=self.implementation)
        out = _linear(dim, self.dtype, "proj")(out.reshape(batch, -1, dim))
        return out


class CvTBlock(nn.Module):
    """tokens + drop_path(attn(LN(tokens))), then tokens + drop_path(MLP(LN(tokens)))."""

    num_heads: int
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    kernel_size: int = 3
    stride_kv: int = 2
    stride_q: int = 1
    mlp_act: str = "quick_gelu"
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32
    implementation: str | None = None

    @nn.compact
    def __call__(self, tokens, hw: tuple[int, int], has_cls: bool, train: bool = False):
        batch, _, dim = tokens.shape
        drop = DropPath(self.drop_path_rate, name="drop_path")
        h = _layer_norm(self.dtype, "norm1")(tokens)
        cls, spatial = (h[:, :1], h[:, 1:]) if has_cls else (None, h)
        h = CvTAttention(self.num_heads, self.qkv_bias, self.kernel_size, self.stride_q,
                         self.stride_kv, self.dtype, self.implementation, name="attn")(
            spatial.reshape(batch, *hw, dim), cls, train)
        tokens = tokens + drop(h, deterministic=not train)
        h = _layer_norm(self.dtype, "norm2")(tokens)
        h = _Mlp(int(dim * self.mlp_ratio), self.mlp_act, self.dtype, name="mlp")(h)
        return tokens + drop(h, deterministic=not train)


class _Mlp(nn.Module):
    hidden: int
    act: str = "quick_gelu"
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        out = x.shape[-1]
        x = MLP_ACTIVATIONS[self.act](_linear(self.hidden, self.dtype, "fc1")(x))
        return _linear(out, self.dtype, "fc2")(x)


class CvTStage(nn.Module):
    """Conv token embedding (conv + LN), [class token], ``depth`` blocks.

    Returns ``(image [B, H, W, C], cls [B, 1, C] or None)``.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    patch_stride: int
    patch_padding: int
    with_cls_token: bool
    drop_path_rates: Sequence[float]
    block: dict
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = _ConvEmbed(self.embed_dim, self.patch_size, self.patch_stride, self.patch_padding,
                       self.dtype, name="patch_embed")(x)
        batch, height, width, dim = x.shape
        tokens = x.reshape(batch, height * width, dim)
        if self.with_cls_token:
            cls = self.param("cls_token", trunc_normal_02, (1, 1, dim), jnp.float32)
            tokens = jnp.concatenate(
                [jnp.broadcast_to(cls, (batch, 1, dim)).astype(tokens.dtype), tokens], axis=1)
        for j in range(self.depth):
            tokens = CvTBlock(self.num_heads, drop_path_rate=self.drop_path_rates[j],
                              dtype=self.dtype, name=f"blocks_{j}", **self.block)(
                tokens, (height, width), self.with_cls_token, train)
        cls = tokens[:, :1] if self.with_cls_token else None
        spatial = tokens[:, 1:] if self.with_cls_token else tokens
        return spatial.reshape(batch, height, width, dim), cls


class _ConvEmbed(nn.Module):
    embed_dim: int
    patch_size: int
    stride: int
    padding: int
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = conv2d(self.embed_dim, self.patch_size, self.stride, padding=self.padding,
                   use_bias=True, dtype=self.dtype, name="proj")(x)
        return _layer_norm(self.dtype, "norm")(x)


class CvT(nn.Module):
    """Convolutional vision Transformer over NHWC inputs; float32 logits ``[B, num_classes]``.

    Fields (per-stage tuples of equal length):
      depths, embed_dims, num_heads: blocks, channels and heads per stage.
      patch_sizes, patch_strides, patch_paddings: each stage's token-embedding conv.
      mlp_ratio, qkv_bias, kernel_qkv (depthwise projection kernel), stride_kv (k/v
        projection stride; q's is 1 in all CvT models).
      cls_token: the last stage carries a class token that the head classifies (CvT); False
        classifies the mean of the last stage's tokens.
      mlp_act: one of :data:`MLP_ACTIVATIONS` (``quick_gelu``: the authors' code).
      num_classes, dtype (compute dtype; parameters float32), drop_path_rate: stochastic depth
        of the last stage, linear over its blocks from 0 to this value (CvT's configs: 0 in
        stages 1-2, 0.1 in stage 3).
      implementation: attention op path (None: per backend; "xla"; "pallas").
    """

    depths: Sequence[int] = (1, 2, 10)
    embed_dims: Sequence[int] = (64, 192, 384)
    num_heads: Sequence[int] = (1, 3, 6)
    patch_sizes: Sequence[int] = (7, 3, 3)
    patch_strides: Sequence[int] = (4, 2, 2)
    patch_paddings: Sequence[int] = (2, 1, 1)
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    kernel_qkv: int = 3
    stride_kv: int = 2
    cls_token: bool = True
    mlp_act: str = "quick_gelu"
    num_classes: int = 1000
    dtype: Any = jnp.float32
    drop_path_rate: float = 0.0
    implementation: str | None = None

    def __post_init__(self):
        stages = {}
        for field in ("depths", "embed_dims", "num_heads", "patch_sizes", "patch_strides"):
            stages[field] = _ints(field, getattr(self, field), minimum=1)
            object.__setattr__(self, field, stages[field])
        object.__setattr__(self, "patch_paddings",
                           _ints("patch_paddings", self.patch_paddings, minimum=0))
        lengths = {f: len(getattr(self, f)) for f in (*stages, "patch_paddings")}
        if len(set(lengths.values())) != 1:
            raise ValueError(f"per-stage fields must have equal lengths, got {lengths}")
        for i, (dim, heads) in enumerate(zip(self.embed_dims, self.num_heads)):
            if dim % heads:
                raise ValueError(f"num_heads[{i}]={heads} must divide embed_dims[{i}]={dim}")
        for field in ("kernel_qkv", "stride_kv", "num_classes"):
            _ints(field, getattr(self, field), minimum=1)
        if self.kernel_qkv % 2 == 0:
            raise ValueError(f"kernel_qkv must be odd (symmetric padding), got {self.kernel_qkv}")
        if self.stride_kv not in (1, 2):
            raise ValueError(f"stride_kv must be one of [1, 2] (the depthwise op's strides), "
                             f"got {self.stride_kv!r}")
        if self.mlp_act not in MLP_ACTIVATIONS:
            raise ValueError(f"mlp_act must be one of {list(MLP_ACTIVATIONS)}, got "
                             f"{self.mlp_act!r}")
        if not (isinstance(self.mlp_ratio, (int, float)) and self.mlp_ratio > 0):
            raise ValueError(f"mlp_ratio must be a positive number, got {self.mlp_ratio!r}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.dtype.name == "float16":
            raise ValueError("dtype must be one of ['float32', 'bfloat16'] (the depthwise "
                             "projection op's dtypes), got 'float16'")
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
        block = dict(mlp_ratio=self.mlp_ratio, qkv_bias=self.qkv_bias, kernel_size=self.kernel_qkv,
                     stride_kv=self.stride_kv, mlp_act=self.mlp_act,
                     implementation=self.implementation)
        last = len(self.depths) - 1
        cls = None
        for i in range(last + 1):
            rates = (drop_path_rates(self.drop_path_rate, self.depths[i]) if i == last
                     else [0.0] * self.depths[i])
            x, cls = CvTStage(
                self.embed_dims[i], self.depths[i], self.num_heads[i], self.patch_sizes[i],
                self.patch_strides[i], self.patch_paddings[i],
                with_cls_token=self.cls_token and i == last, drop_path_rates=tuple(rates),
                block=block, dtype=self.dtype, name=f"stages_{i}",
            )(x, train)
            self.sow("intermediates", f"stage{i}", x)
        norm = _layer_norm(self.dtype, "norm")
        if self.cls_token:
            features = norm(cls)[:, 0]
        else:
            features = jnp.mean(norm(x.reshape(x.shape[0], -1, x.shape[-1])), axis=1)
        return jnp.asarray(_linear(self.num_classes, self.dtype, "head")(features), jnp.float32)


def _ints(field: str, values, minimum: int) -> tuple[int, ...] | int:
    scalar = not isinstance(values, (list, tuple))
    seq = (values,) if scalar else tuple(values)
    if not seq or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum
                      for v in seq):
        kind = "positive ints" if minimum == 1 else f"ints >= {minimum}"
        raise ValueError(f"{field} must be {kind}, got {values!r}")
    return int(seq[0]) if scalar else tuple(int(v) for v in seq)


# ------------------------------------------------------------------ Hugging Face weights

_HF_LAYER_MODULES = {
    "attention.attention.projection_query": "attn/proj_q",
    "attention.attention.projection_key": "attn/proj_k",
    "attention.attention.projection_value": "attn/proj_v",
    "attention.output.dense": "attn/proj",
    "intermediate.dense": "mlp/fc1",
    "output.dense": "mlp/fc2",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
}
_HF_CONV_PROJ = re.compile(r"attention\.attention\.convolution_projection_(query|key|value)"
                           r"\.convolution_projection\.(convolution|normalization)$")


def _hf_module_path(module: str) -> str:
    """transformers' module name (without ``cvt.``/the leaf) -> our parameter path."""
    if module in ("layernorm", "classifier"):
        return {"layernorm": "norm", "classifier": "head"}[module]
    m = re.fullmatch(r"encoder\.stages\.(\d+)\.(.+)", module)
    if m is None:
        raise ValueError(f"unexpected CvT state-dict module {module!r}")
    stage, rest = f"stages_{m.group(1)}", m.group(2)
    if rest.startswith("embedding.convolution_embeddings."):
        leaf = rest.rsplit(".", 1)[1]
        return f"{stage}/patch_embed/" + {"projection": "proj", "normalization": "norm"}[leaf]
    m = re.fullmatch(r"layers\.(\d+)\.(.+)", rest)
    if m is None:
        raise ValueError(f"unexpected CvT state-dict module {module!r}")
    block, rest = f"{stage}/blocks_{m.group(1)}", m.group(2)
    conv = _HF_CONV_PROJ.match(rest)
    if conv:
        which, part = conv.groups()
        return f"{block}/attn/conv_proj_{which[0]}/" + ("conv" if part == "convolution" else "bn")
    if rest not in _HF_LAYER_MODULES:
        raise ValueError(f"unexpected CvT state-dict module {module!r}")
    return f"{block}/{_HF_LAYER_MODULES[rest]}"


def variables_from_hf(state_dict) -> dict:
    """Variables for :class:`CvT` from a Hugging Face transformers ``CvtForImageClassification``
    state dict (arrays or tensors convertible with ``np.asarray``).

    transformers' MLPs use exact GELU: build the model with ``mlp_act="gelu"`` for its outputs.
    Linear weights are transposed, conv weights ``[O, I, kh, kw]`` become ``[kh, kw, I, O]``,
    depthwise ones ``[C, 1, kh, kw]`` become ``[kh, kw, C]``; BatchNorm running statistics go to
    ``batch_stats``; ``num_batches_tracked`` is dropped.
    """
    params, stats = {}, {}
    for key, value in state_dict.items():
        value = np.asarray(value, np.float32)
        if not key.startswith("cvt.") and not key.startswith(("layernorm.", "classifier.")):
            raise ValueError(f"unexpected CvT state-dict key {key!r}")
        name = key[len("cvt."):] if key.startswith("cvt.") else key
        cls = re.fullmatch(r"encoder\.stages\.(\d+)\.cls_token", name)
        if cls:
            params[(f"stages_{cls.group(1)}", "cls_token")] = value
            continue
        module, leaf = name.rsplit(".", 1)
        path = tuple(_hf_module_path(module).split("/"))
        if leaf == "num_batches_tracked":
            continue
        if leaf in ("running_mean", "running_var"):
            stats[path + ({"running_mean": "mean", "running_var": "var"}[leaf],)] = value
        elif leaf == "bias":
            params[path + ("bias",)] = value
        elif leaf == "weight" and value.ndim == 4 and path[-2].startswith("conv_proj"):
            params[path + ("kernel",)] = value[:, 0].transpose(1, 2, 0)
        elif leaf == "weight" and value.ndim == 4:
            params[path + ("kernel",)] = value.transpose(2, 3, 1, 0)
        elif leaf == "weight" and value.ndim == 2:
            params[path + ("kernel",)] = value.T
        elif leaf == "weight" and value.ndim == 1:
            params[path + ("scale",)] = value
        else:
            raise ValueError(f"unexpected CvT state-dict key {key!r} with shape {value.shape}")
    return {"params": unflatten_dict(params), "batch_stats": unflatten_dict(stats)}


# --------------------------------------------------------------------------------- registry

_PAPER = "Wu et al. 2021, CvT: Introducing Convolutions to Vision Transformers, arXiv:2103.15808"


def _register():
    return register_model(family="cvt", paper=_PAPER, input_size=(224, 224, 3), num_classes=1000)


@_register()
def cvt_13(**overrides) -> CvT:
    """CvT-13 (depths 1-2-10, dims 64-192-384, heads 1-3-6), 20.0M params (paper: 20M)."""
    return CvT(**{**dict(depths=(1, 2, 10)), **overrides})


@_register()
def cvt_21(**overrides) -> CvT:
    """CvT-21 (depths 1-4-16, dims 64-192-384, heads 1-3-6), 31.6M params (paper: 32M)."""
    return CvT(**{**dict(depths=(1, 4, 16)), **overrides})
