"""ByteNet's decoder stack (Kalchbrenner et al. 2016, Neural Machine Translation in Linear
Time, arXiv:1610.10099) as a sequence model: token embedding (or a linear input projection for
float signals) to width ``2d``, residual blocks (:class:`jaxconv.layers.tcn.ByteNetBlock`) whose
dilations double from 1 to 16 and repeat (``dilations * repeats`` blocks; the paper uses 1..16
repeated 6 times for translation, 30 blocks), then LN - ReLU - 1x1 conv to the classes.

``causal=True`` (the decoder's masked convs) makes every output depend only on past and
present tokens: a character language model with ``pool="none"``; ``causal=False`` is the
encoder stack. The encoder-decoder with dynamic unfolding for translation is not built here.
Receptive field of one 1..16 repeat with k=3: 63 steps; ``repeats`` of them: ``62 r + 1``.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers.dtypes import canonical_dtype
from jaxconv.layers.tcn import ByteNetBlock
from jaxconv.models.checks import check_choice, positive_ints
from jaxconv.models.tcn import POOLS, pool_sequence, sequence_input
from jaxconv.registry import register_model

__all__ = ["ByteNet"]


class ByteNet(nn.Module):
    """ByteNet stack (module doc); float32 outputs per the ``pool`` contract.

    Fields: features (2d, the residual width), kernel_size (3), dilations (one repeat), repeats,
    causal, num_classes, pool, vocab_size (token ids in; None for float signals), dtype, decode.
    """

    features: int = 512
    kernel_size: int = 3
    dilations: Sequence[int] = (1, 2, 4, 8, 16)
    repeats: int = 6
    causal: bool = True
    num_classes: int = 256
    pool: str = "none"
    vocab_size: int | None = 256
    dtype: Any = jnp.float32
    decode: bool = False

    def __post_init__(self):
        positive_ints("features", self.features)
        if self.features % 2:
            raise ValueError(f"features (2d) must be even, got {self.features}")
        positive_ints("kernel_size", self.kernel_size)
        object.__setattr__(self, "dilations", positive_ints("dilations", self.dilations))
        positive_ints("repeats", self.repeats)
        positive_ints("num_classes", self.num_classes)
        if self.vocab_size is not None:
            positive_ints("vocab_size", self.vocab_size)
        check_choice("pool", self.pool, POOLS)
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.decode and not self.causal:
            raise ValueError("decode=True (streaming) needs causal=True")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = sequence_input(self, x, vocab_size=self.vocab_size, embed_dim=self.features,
                           dtype=self.dtype)
        if not jnp.issubdtype(x.dtype, jnp.integer):
            y = nn.Dense(self.features, dtype=self.dtype, param_dtype=jnp.float32,
                         name="input_proj")(y)
        i = 0
        for _ in range(self.repeats):
            for dilation in self.dilations:
                y = ByteNetBlock(self.features, self.kernel_size, dilation, self.causal,
                                 dtype=self.dtype, decode=self.decode,
                                 name=f"blocks_{i}")(y, train)
                i += 1
        y = nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name="norm")(y)
        y = pool_sequence(self, nn.relu(y), self.pool, decode=self.decode)
        y = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     name="head")(y)
        return y.astype(jnp.float32)


_PAPER = ("Kalchbrenner et al. 2016, Neural Machine Translation in Linear Time, "
          "arXiv:1610.10099")


@register_model(family="bytenet", paper=_PAPER, input_size=(1024,), num_classes=256,
                input_dtype="int32")
def bytenet_char(**overrides) -> ByteNet:
    """ByteNet decoder as a byte-level LM: 2d=512, 30 causal blocks (dilations 1..16 x 6)."""
    return ByteNet(**overrides)


@register_model(family="bytenet", paper=_PAPER, input_size=(64,), num_classes=16,
                input_dtype="int32")
def bytenet_tiny(**overrides) -> ByteNet:
    """A 2d=16, 2x(1, 2, 4) ByteNet over 16 tokens that compiles in seconds (tests, runlocal)."""
    return ByteNet(**{**dict(features=16, dilations=(1, 2, 4), repeats=2, num_classes=16,
                             vocab_size=16), **overrides})
