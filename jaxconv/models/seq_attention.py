"""A small transformer over sequences: the attention baseline of the long-range sweep (issue 12).

Pre-norm blocks of multi-head self-attention (:func:`kernels_pallas.flash_attention`, causal by
default) and a GELU MLP, over a width-``width`` stream: token ids go through an embedding,
float ``[B, L, C]`` signals through a linear stem, and fixed sinusoidal positions (Vaswani et
al. 2017) are added, so any length runs without a position table. The sequence-model contract
of the long-convolution families holds (input via :func:`jaxconv.models.tcn.sequence_input`,
``pool`` "mean" / "last" -> ``[B, num_classes]``, "none" -> ``[B, L, num_classes]``).

The attention is written here rather than with :class:`jaxconv.layers.MultiHeadAttention`
because that layer has no causal mask, which next-token tasks (associative recall) need.
Attention costs O(L^2) time (and memory on the XLA path), the point of the comparison with the
O(L log L) long convolutions.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from jaxconv.layers.attention import ATTENTION_IMPLEMENTATIONS
from jaxconv.layers.dtypes import canonical_dtype
from jaxconv.models.checks import check_choice, check_rate, positive_ints
from jaxconv.models.tcn import POOLS, pool_sequence, sequence_input
from jaxconv.registry import register_model
from kernels_pallas import flash_attention

__all__ = ["SequenceTransformer", "sinusoidal_positions"]


def sinusoidal_positions(length: int, width: int) -> np.ndarray:
    """[length, width] float32: sin on the even channels, cos on the odd, wavelengths 2pi..1e4*2pi."""
    pos = np.arange(length, dtype=np.float64)[:, None]
    freq = np.exp(-np.log(10000.0) * np.arange(0, width, 2) / width)[None, :]
    table = np.zeros((length, width))
    table[:, 0::2] = np.sin(pos * freq)
    table[:, 1::2] = np.cos(pos * freq[:, :width // 2])
    return table.astype(np.float32)


class SequenceTransformer(nn.Module):
    """Fields: num_classes, width, depth, num_heads (width must divide), mlp_ratio, causal,
    pool (one of POOLS), vocab_size (token inputs), dropout_rate (after attention and MLP),
    dtype (compute; params float32), implementation (of flash_attention)."""

    num_classes: int = 10
    width: int = 64
    depth: int = 2
    num_heads: int = 4
    mlp_ratio: int = 2
    causal: bool = True
    pool: str = "last"
    vocab_size: int | None = None
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    implementation: str | None = None

    def __post_init__(self):
        for field in ("num_classes", "width", "depth", "num_heads", "mlp_ratio"):
            positive_ints(field, getattr(self, field))
        if self.width % self.num_heads:
            raise ValueError(f"width={self.width} must be divisible by num_heads="
                             f"{self.num_heads}")
        if self.vocab_size is not None:
            positive_ints("vocab_size", self.vocab_size)
        check_choice("pool", self.pool, POOLS)
        check_choice("implementation", self.implementation, ATTENTION_IMPLEMENTATIONS)
        check_rate("dropout_rate", self.dropout_rate)
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be a bool, got {self.causal!r}")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        super().__post_init__()

    def _dense(self, features, name):
        return nn.Dense(features, dtype=self.dtype, param_dtype=jnp.float32, name=name)

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = sequence_input(self, x, vocab_size=self.vocab_size, embed_dim=self.width,
                           dtype=self.dtype)
        if not jnp.issubdtype(x.dtype, jnp.integer):
            y = self._dense(self.width, "stem")(y)
        batch, length, _ = y.shape
        y = y + jnp.asarray(sinusoidal_positions(length, self.width), self.dtype)
        heads, head_dim = self.num_heads, self.width // self.num_heads
        drop = nn.Dropout(self.dropout_rate, deterministic=not train)
        for i in range(self.depth):
            h = nn.LayerNorm(dtype=self.dtype, name=f"blocks_{i}_norm1")(y)
            q, k, v = jnp.split(
                self._dense(3 * self.width, f"blocks_{i}_qkv")(h).reshape(
                    batch, length, 3 * heads, head_dim), 3, axis=2)
            a = flash_attention(q, k, v, causal=self.causal, implementation=self.implementation)
            y = y + drop(self._dense(self.width, f"blocks_{i}_proj")(
                a.reshape(batch, length, self.width)))
            h = nn.LayerNorm(dtype=self.dtype, name=f"blocks_{i}_norm2")(y)
            h = nn.gelu(self._dense(self.mlp_ratio * self.width, f"blocks_{i}_fc1")(h))
            y = y + drop(self._dense(self.width, f"blocks_{i}_fc2")(h))
        y = nn.LayerNorm(dtype=self.dtype, name="norm")(y)
        y = pool_sequence(self, y, self.pool)
        return self._dense(self.num_classes, "head")(y).astype(jnp.float32)


_PAPER = ("Vaswani et al. 2017, Attention Is All You Need, arXiv:1706.03762 (pre-norm blocks; "
          "the attention baseline of the Hyena / long-convolution comparisons)")


@register_model(family="seq_attention", paper=_PAPER, input_size=(64, 1), num_classes=10)
def seq_attention_tiny(**overrides) -> SequenceTransformer:
    """2 blocks of width 32, 2 heads: compiles in seconds on a CPU (tests, runlocal)."""
    return SequenceTransformer(**{"width": 32, "depth": 2, "num_heads": 2, **overrides})


@register_model(family="seq_attention", paper=_PAPER, input_size=(256,), num_classes=20,
                input_dtype="int32")
def seq_attention_lm(**overrides) -> SequenceTransformer:
    """2 blocks of width 64, 4 heads, causal, per-position outputs over a 20-token vocabulary
    (associative recall: the attention row of Hyena's comparisons)."""
    return SequenceTransformer(**{"width": 64, "depth": 2, "num_heads": 4, "num_classes": 20,
                                  "vocab_size": 20, "pool": "none", **overrides})
