"""Hyena language models and classifiers (Poli et al. 2023, arXiv:2302.10866), as safari's
``ConvLMHeadModel`` builds them with :class:`jaxconv.layers.HyenaOperator` mixers.

Input: token ids [B, L] (an embedding of ``vocab_size``, embedding dropout) or float [B, L, C]
(a Dense encoder). ``n_layer`` pre-norm blocks ``x = x + drop(mixer(LN(x)))``,
``x = x + drop(MLP(LN(x)))`` (MLP: ``d_inner``, tanh-GELU), a final LayerNorm, then the
``pool`` contract: "none" -> per-position logits [B, L, num_classes] (a language model: with
``tie_embeddings`` the logits are the embedding's transpose, as safari's tied ``lm_head``, and
``num_classes`` must equal ``vocab_size``), "mean" / "last" -> [B, num_classes] through a Dense.
Causal end to end when ``pool`` is "none" or "last".

Initialisation: embeddings and Dense kernels of the blocks' MLPs N(0, 0.02) (GPT-2 style, as
safari's ``_init_weights``; ``fc2`` rescaled by 1/sqrt(2 n_layer)); the Hyena operator keeps
its own (Flax default) projections.

Registered variants:

* ``hyena_153m`` (153,700,416 params; the paper's "Hyena-153M"): safari's
  ``configs/experiment/pile/hyena.yaml``: d 864, 18 layers, d_inner 1728, vocab 50257 padded
  to 50264, emb_dim 33, filter_order 64, w 14, learned positional table, l_max 2048, tied head.
* ``hyena_lm_tiny`` (128,768): safari's associative-recall config (d 64, 2 layers, d_inner
  256, emb_dim 5, w 10, fixed positional features) with this repo's default vocabulary 20.
* ``hyena_classifier_tiny``: float [L, C] input, 2 x 64, mean pool.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import HyenaFilter, HyenaOperator, canonical_dtype
from jaxconv.models.checks import check_choice, check_rate, positive_ints
from jaxconv.models.long_conv import project
from jaxconv.models.tcn import POOLS, pool_sequence
from jaxconv.registry import register_model

__all__ = ["Hyena", "HyenaBlock"]

_normal = nn.initializers.normal(0.02)


class HyenaBlock(nn.Module):
    """Pre-norm residual block: Hyena mixer, then a tanh-GELU MLP."""

    d_inner: int
    n_layer: int
    max_len: int | None
    order: int
    filter_order: int
    short_filter_order: int
    filter_kwargs: Any
    resid_dropout: float
    dtype: Any
    implementation: str | None = None

    @nn.compact
    def __call__(self, x, train: bool):
        width = x.shape[-1]
        drop = nn.Dropout(self.resid_dropout, deterministic=not train)
        norm = dict(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32)
        h = nn.LayerNorm(name="norm1", **norm)(x)
        h = HyenaOperator(max_len=self.max_len, order=self.order, filter_order=self.filter_order,
                          short_filter_order=self.short_filter_order,
                          filter_kwargs=self.filter_kwargs, dtype=self.dtype,
                          implementation=self.implementation, name="mixer")(h, train)
        x = x + drop(h)
        h = nn.LayerNorm(name="norm2", **norm)(x)
        dense = dict(dtype=self.dtype, param_dtype=jnp.float32)
        h = nn.Dense(self.d_inner, kernel_init=_normal, name="fc1", **dense)(h)
        h = nn.gelu(h, approximate=True)
        h = nn.Dense(width, kernel_init=nn.initializers.normal(0.02 / math.sqrt(2 * self.n_layer)),
                     name="fc2", **dense)(h)
        return x + drop(h)


class Hyena(nn.Module):
    """A Hyena LM / sequence classifier (module docstring)."""

    num_classes: int
    vocab_size: int | None = None
    d_model: int = 64
    n_layer: int = 2
    d_inner: int | None = None
    max_len: int | None = None
    order: int = 2
    filter_order: int = 64
    short_filter_order: int = 3
    filter_kwargs: Any = ()
    embed_dropout: float = 0.1
    resid_dropout: float = 0.0
    pool: str = "none"
    tie_embeddings: bool = True
    dtype: Any = jnp.float32
    implementation: str | None = None

    def __post_init__(self):
        positive_ints("num_classes", self.num_classes)
        positive_ints("d_model", self.d_model)
        positive_ints("n_layer", self.n_layer)
        if self.vocab_size is not None:
            positive_ints("vocab_size", self.vocab_size)
        if self.d_inner is not None:
            positive_ints("d_inner", self.d_inner)
        check_choice("pool", self.pool, POOLS)
        check_rate("embed_dropout", self.embed_dropout)
        check_rate("resid_dropout", self.resid_dropout)
        if self.tie_embeddings and self.pool == "none" and self.vocab_size is not None \
                and self.num_classes != self.vocab_size:
            raise ValueError(f"tie_embeddings=True makes the logits the embedding's transpose: "
                             f"num_classes ({self.num_classes}) must equal vocab_size "
                             f"({self.vocab_size}); or set tie_embeddings=False")
        object.__setattr__(self, "filter_kwargs", tuple(sorted(dict(self.filter_kwargs).items())))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        # Build the operator and its filter once so bad fields fail here, naming the field.
        HyenaOperator(max_len=self.max_len, order=self.order, filter_order=self.filter_order,
                      short_filter_order=self.short_filter_order, parent=None)
        try:
            HyenaFilter(self.d_model, max_len=self.max_len, filter_order=self.filter_order,
                        parent=None, **dict(self.filter_kwargs))
        except TypeError as err:
            raise ValueError(f"filter_kwargs {dict(self.filter_kwargs)} do not fit "
                             f"HyenaFilter: {err}") from None
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        tokens = jnp.issubdtype(x.dtype, jnp.integer)
        embed = None
        if tokens:
            if self.vocab_size is None or x.ndim != 2:
                raise ValueError(f"token input must be [B, L] int with vocab_size set; got "
                                 f"shape {tuple(x.shape)} and vocab_size={self.vocab_size!r}")
            embed = nn.Embed(self.vocab_size, self.d_model, embedding_init=_normal,
                             dtype=self.dtype, param_dtype=jnp.float32, name="embed")
            h = embed(x)
        elif x.ndim == 3:
            h = nn.Dense(self.d_model, dtype=self.dtype, param_dtype=jnp.float32,
                         name="encoder")(x.astype(self.dtype))
        else:
            raise ValueError(f"float input must be [B, L, C], got shape {tuple(x.shape)}")
        h = nn.Dropout(self.embed_dropout, deterministic=not train)(h)
        for i in range(self.n_layer):
            h = HyenaBlock(self.d_inner or 4 * self.d_model, self.n_layer, self.max_len,
                           self.order, self.filter_order, self.short_filter_order,
                           self.filter_kwargs, self.resid_dropout, self.dtype,
                           self.implementation, name=f"blocks_{i}")(h, train)
        h = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32,
                         name="ln_f")(h)
        if self.pool == "none" and self.tie_embeddings and embed is not None:
            return embed.attend(h).astype(jnp.float32)
        return project(pool_sequence(self, h, self.pool), self.num_classes, dtype=self.dtype,
                       name="head")


_PAPER = ("Poli et al. 2023, Hyena Hierarchy: Towards Larger Convolutional Language Models, "
          "arXiv:2302.10866")
#: GPT-2's vocabulary padded to a multiple of 8 (safari's pad_vocab_size_multiple).
PILE_VOCAB = 50264


@register_model(family="hyena", paper=_PAPER, input_size=(2048,), num_classes=PILE_VOCAB,
                input_dtype="int32")
def hyena_153m(**overrides) -> Hyena:
    """Hyena-153M, the Pile language model of safari's pile/hyena.yaml (18 x 864)."""
    return Hyena(num_classes=PILE_VOCAB, vocab_size=PILE_VOCAB, d_model=864, n_layer=18,
                 d_inner=2 * 864, max_len=2048, filter_order=64, short_filter_order=3,
                 filter_kwargs={"emb_dim": 33, "w": 14.0, "train_pos_emb": True},
                 embed_dropout=0.1, pool="none", **overrides)


@register_model(family="hyena", paper=_PAPER, input_size=(256,), num_classes=20,
                input_dtype="int32")
def hyena_lm_tiny(**overrides) -> Hyena:
    """A 2 x 64 Hyena LM (safari's associative-recall config) for CPU runs and tests."""
    return Hyena(num_classes=20, vocab_size=20, d_model=64, n_layer=2, d_inner=256,
                 max_len=None, filter_order=64,
                 filter_kwargs={"emb_dim": 5, "w": 10.0, "train_pos_emb": False},
                 embed_dropout=0.1, pool="none", **overrides)


@register_model(family="hyena", paper=_PAPER, input_size=(64, 1), num_classes=10)
def hyena_classifier_tiny(**overrides) -> Hyena:
    """A 2 x 64 Hyena classifier over float sequences (mean pool) for CPU runs and tests."""
    return Hyena(num_classes=10, d_model=64, n_layer=2, d_inner=256, max_len=None,
                 filter_order=32, filter_kwargs={"emb_dim": 5, "w": 10.0,
                                                 "train_pos_emb": False},
                 embed_dropout=0.0, pool="mean", **overrides)
