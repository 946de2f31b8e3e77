"""Multi-head self-attention and a learned relative position bias, on
:func:`kernels_pallas.flash_attention`.

:class:`MultiHeadAttention` is the block the attention models share (CoAtNet, CvT, ...): one
fused ``qkv`` projection, per-head scaled dot-product attention with an optional additive bias
``[B|1, H|1, N, N]``, and an output projection ``proj``. The attention itself is the kernel op,
so the model config picks its path with ``implementation`` (``None``: the op's choice per
backend; ``"xla"`` | ``"pallas"``: forced).

:class:`RelativePositionBias` is the Swin / CoAtNet relative bias: a learned table with one row
per 2-D offset, ``[(2h-1) * (2w-1), heads]``, gathered into ``[1, heads, h*w, h*w]`` for the
tokens of an ``h x w`` map (row-major). Its parameter ``relative_position_bias_table`` has timm's
name and layout (``timm.layers.RelPosBias``), so timm weights convert unchanged.

Parameters (float32): ``qkv/kernel [C, 3 * A]``, ``qkv/bias``, ``proj/kernel [A, C_out]``,
``proj/bias`` with ``A = num_heads * head_dim``. A timm 1x1-conv or linear weight ``[O, I(, 1,
1)]`` is ``kernel = weight.reshape(O, I).T``. ``qkv_layout`` says how the ``3 * A`` qkv channels
are ordered: ``"qkv_first"`` ([3][heads][head_dim], timm's ViT ``Attention``) or
``"heads_first"`` ([heads][3][head_dim], timm's MaxxViT/CoAtNet ``head_first=True``).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.layers.conv import flat_dot_general
from jaxconv.layers.dtypes import canonical_dtype
from kernels_pallas import flash_attention
from kernels_pallas.flash_attention.api import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS

__all__ = ["ATTENTION_IMPLEMENTATIONS", "QKV_LAYOUTS", "MultiHeadAttention", "RelativePositionBias",
           "relative_position_index"]

#: Channel orders of the fused qkv projection (see the module docstring).
QKV_LAYOUTS = ("qkv_first", "heads_first")


def _positive_int(field: str, value: Any, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        what = "None or a positive int" if optional else "a positive int"
        raise ValueError(f"{field} must be {what}, got {value!r}")


def _rate(field: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{field} must be a float in [0, 1), got {value!r}")


class MultiHeadAttention(nn.Module):
    """Self-attention over the tokens of ``x [B, N, C]`` (or ``[B, ..., C]``, flattened).

    Fields:
      num_heads: number of heads (required).
      head_dim: channels per head; default ``C // num_heads`` (``C`` the input width, which must
        then divide evenly).
      out_features: output width; default ``C``.
      qkv_bias / proj_bias: biases of the two projections.
      qkv_layout: one of :data:`QKV_LAYOUTS`.
      scale: softmax scale; default ``1 / sqrt(head_dim)``.
      attn_drop: dropout on the attention probabilities in training. The kernel op has no
        dropout, so ``attn_drop > 0`` in training computes the attention explicitly (jnp); at
        evaluation, or with 0, the op runs.
      proj_drop: dropout on the output projection in training.
      dtype: compute dtype (float32 | bfloat16 | float16); parameters stay float32 and the op
        takes its softmax in float32.
      rel_pos_window: ``(h, w)`` to add a learned :class:`RelativePositionBias` (child
        ``rel_pos``, timm's ``attn.rel_pos``) for the tokens of an ``h x w`` map; the input must
        then have ``h * w`` tokens. None: no built-in bias.
      implementation: passed to :func:`kernels_pallas.flash_attention`, one of
        :data:`ATTENTION_IMPLEMENTATIONS` (None, "xla", "pallas", "cudnn").
      kernel_init: initialiser of both projection kernels (biases start at 0).

    Call: ``attn(x, bias=None, *, train=False)``; ``bias`` is added to the scaled scores, shape
    ``[B|1, H|1, N, N]`` (on top of the built-in relative bias, if any) and receives gradients.
    """

    num_heads: int
    head_dim: int | None = None
    out_features: int | None = None
    qkv_bias: bool = True
    proj_bias: bool = True
    qkv_layout: str = "qkv_first"
    scale: float | None = None
    attn_drop: float = 0.0
    proj_drop: float = 0.0
    rel_pos_window: tuple[int, int] | None = None
    dtype: Any = jnp.float32
    implementation: str | None = None
    kernel_init: Any = nn.initializers.xavier_uniform()

    def __post_init__(self):
        _positive_int("num_heads", self.num_heads)
        _positive_int("head_dim", self.head_dim, optional=True)
        _positive_int("out_features", self.out_features, optional=True)
        if self.qkv_layout not in QKV_LAYOUTS:
            raise ValueError(f"qkv_layout must be one of {list(QKV_LAYOUTS)}, got "
                             f"{self.qkv_layout!r}")
        if self.scale is not None and (isinstance(self.scale, bool)
                                       or not isinstance(self.scale, (int, float))
                                       or self.scale <= 0):
            raise ValueError(f"scale must be None or a positive float, got {self.scale!r}")
        _rate("attn_drop", self.attn_drop)
        _rate("proj_drop", self.proj_drop)
        if self.rel_pos_window is not None:
            object.__setattr__(self, "rel_pos_window",
                               _window("rel_pos_window", self.rel_pos_window))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of "
                             f"{list(ATTENTION_IMPLEMENTATIONS)}, got {self.implementation!r}")
        super().__post_init__()

    def _head_dim(self, channels: int) -> int:
        if self.head_dim is not None:
            return self.head_dim
        if channels % self.num_heads:
            raise ValueError(f"input width {channels} is not divisible by num_heads="
                             f"{self.num_heads}; set head_dim explicitly")
        return channels // self.num_heads

    def _dense(self, features, use_bias, name):
        return nn.Dense(features, use_bias=use_bias, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=self.kernel_init, bias_init=nn.initializers.zeros,
                        dot_general=flat_dot_general, name=name)

    @nn.compact
    def __call__(self, x, bias=None, *, train: bool = False):
        batch, *spatial, channels = x.shape
        tokens = int(np.prod(spatial))
        heads, head_dim = self.num_heads, self._head_dim(channels)
        out_features = self.out_features or channels
        x = jnp.asarray(x, self.dtype).reshape(batch, tokens, channels)

        qkv = self._dense(3 * heads * head_dim, self.qkv_bias, "qkv")(x)
        if self.qkv_layout == "qkv_first":
            qkv = qkv.reshape(batch, tokens, 3, heads, head_dim)
        else:
            qkv = qkv.reshape(batch, tokens, heads, 3, head_dim).swapaxes(2, 3)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, D] each

        if self.rel_pos_window is not None:
            h, w = self.rel_pos_window
            if h * w != tokens:
                raise ValueError(f"rel_pos_window={self.rel_pos_window} needs {h * w} tokens, "
                                 f"the input has {tokens} (shape {tuple(x.shape)})")
            rel = RelativePositionBias(self.rel_pos_window, heads, name="rel_pos")()
            bias = rel if bias is None else bias + rel
        scale = self.scale if self.scale is not None else head_dim ** -0.5
        if train and self.attn_drop > 0:
            out = _explicit_attention(q, k, v, bias, scale, self.attn_drop,
                                      self.make_rng("dropout"))
        else:
            out = flash_attention(q, k, v, bias=bias, scale=scale,
                                  implementation=self.implementation)
        out = out.reshape(batch, tokens, heads * head_dim)
        out = self._dense(out_features, self.proj_bias, "proj")(out)
        out = nn.Dropout(self.proj_drop, deterministic=not train)(out)
        return out.reshape(batch, *spatial, out_features)


def _explicit_attention(q, k, v, bias, scale, rate, key):
    """softmax(q k^T * scale + bias) v with dropout on the probabilities (training only)."""
    scores = jnp.einsum("blhd,bshd->bhls", q, k, preferred_element_type=jnp.float32) * scale
    if bias is not None:
        scores = scores + bias.astype(jnp.float32)
    probs = jax.nn.softmax(scores, axis=-1)
    keep = jax.random.bernoulli(key, 1.0 - rate, probs.shape)
    probs = jnp.where(keep, probs / (1.0 - rate), 0.0).astype(v.dtype)
    return jnp.einsum("bhls,bshd->blhd", probs, v)


def _window(field: str, value: Any) -> tuple[int, int]:
    size = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    try:
        size = tuple(size)
    except TypeError:
        size = ()
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) or s <= 0
                             for s in size):
        raise ValueError(f"{field} must be a positive int or a pair of them, got {value!r}")
    return size


def relative_position_index(height: int, width: int) -> np.ndarray:
    """``[h*w, h*w]`` table row of each (query, key) token pair of an ``h x w`` map.

    Tokens are row-major; the pair's offset ``(dy, dx) = query - key`` (each in
    ``[-(n-1), n-1]``) maps to row ``(dy + h - 1) * (2w - 1) + (dx + w - 1)``: timm's / Swin's
    ordering, so timm tables are used as they are.
    """
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    ys, xs = ys.reshape(-1), xs.reshape(-1)
    dy = ys[:, None] - ys[None, :] + height - 1
    dx = xs[:, None] - xs[None, :] + width - 1
    return (dy * (2 * width - 1) + dx).astype(np.int32)


class RelativePositionBias(nn.Module):
    """Learned per-head bias for each 2-D offset between tokens of a ``window_size`` map.

    Returns ``[1, num_heads, h*w, h*w]`` float32, the ``bias`` of :class:`MultiHeadAttention`.
    The table ``relative_position_bias_table [(2h-1)*(2w-1), num_heads]`` starts at N(0, 0.02^2)
    (timm: truncated at +-2, i.e. 100 std, so the same). The gather is a constant index: its
    gradient sums the gradients of the pairs sharing an offset.
    """

    window_size: tuple[int, int]
    num_heads: int

    def __post_init__(self):
        object.__setattr__(self, "window_size", _window("window_size", self.window_size))
        _positive_int("num_heads", self.num_heads)
        super().__post_init__()

    @nn.compact
    def __call__(self):
        height, width = self.window_size
        shape = ((2 * height - 1) * (2 * width - 1), self.num_heads)
        if self.has_variable("params", "relative_position_bias_table"):
            given = tuple(self.get_variable("params", "relative_position_bias_table").shape)
            if given != shape:
                raise ValueError(
                    f"relative_position_bias_table has shape {given}, a {height}x{width} window "
                    f"with {self.num_heads} heads needs {shape}: the variables were made for "
                    "another input size (the table covers the whole window)")
        table = self.param("relative_position_bias_table", nn.initializers.normal(0.02),
                           shape, jnp.float32)
        index = relative_position_index(height, width)
        bias = jnp.take(table, index.reshape(-1), axis=0)          # [N*N, H]
        bias = bias.reshape(height * width, height * width, self.num_heads)
        return bias.transpose(2, 0, 1)[None]
