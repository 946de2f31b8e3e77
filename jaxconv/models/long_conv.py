"""LongConv and SGConv sequence classifiers on the S4 backbone their LRA configs use.

Backbone (HazyResearch/safari ``SequenceModel`` with ``SequenceResidualBlock``): an encoder
(token ids [B, L] through an embedding of ``vocab_size``; float [B, L, C] through a Dense),
``n_layers`` residual blocks of ``d_model`` features, each ``x = norm(x + dropout(mixer(x)))``
(post-norm, ``prenorm=False``, the LRA setting) or ``x = x + dropout(mixer(norm(x)))`` (pre-norm,
then a final norm), with ``norm`` "batch" (over batch and length) or "layer"; then the ``pool``
contract of issue 12: "mean" / "last" -> Dense -> [B, num_classes], "none" -> Dense per
position -> [B, L, num_classes].

The mixer is :class:`jaxconv.layers.LongConv` (``mixer="long_conv"``) or
:class:`jaxconv.layers.SGConv` (``mixer="sgconv"``), built with ``max_len``, ``causal`` and
``dropout`` plus ``mixer_kwargs`` (pairs or a dict: ``channels``, ``lam``, ``kernel_dropout``,
``kernel_dim``, ...). SGConv needs the ``"constants"`` collection beside the params (its fixed
kernel norm): ``model.apply(variables, ...)`` with the variables ``init`` returned.

Registered variants and parameter counts (float32, including BatchNorm scale/bias):

* ``long_conv_listops`` (4,728,330): safari's
  ``configs/experiment/lra/long-conv-lra-listops.yaml``: 8 x 128, channels 2, lam 0.002,
  kernel dropout 0.2, causal, BatchNorm post-norm, mean pool, l_max 2048, 18 token ids.
* ``sgconv_listops`` (925,194): the same S4 ListOps backbone with ctlllll/SGConv ``GConv``
  defaults (kernel_dim 64, 6 scales for 2048, decay 2, one channel), bidirectional as the S4
  LRA runs SGConv follows.
* ``long_conv_tiny`` / ``sgconv_tiny``: 2 x 32 on float [L, 1], for tests and runlocal.

Neither paper states a per-task parameter count for ListOps; the tests check these counts
against the arithmetic of the configs above (``tests/models/test_sequence_lm.py``).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import LongConv, SGConv, batch_norm, canonical_dtype
from jaxconv.models.checks import check_choice, check_rate, positive_ints
from jaxconv.models.tcn import POOLS, pool_sequence
from jaxconv.registry import register_model

__all__ = ["LongConvNet", "MIXERS", "NORMS", "encode_sequence", "project"]

MIXERS = {"long_conv": LongConv, "sgconv": SGConv}
NORMS = ("batch", "layer")


def encode_sequence(x, *, vocab_size: int | None, features: int, dtype, name: str = "encoder"):
    """Token ids [B, L] (integer) -> ``nn.Embed``; float [B, L, C] -> ``nn.Dense``: [B, L, F].
    Call from a compact method."""
    if jnp.issubdtype(x.dtype, jnp.integer):
        if vocab_size is None or x.ndim != 2:
            raise ValueError(f"token input must be [B, L] int with vocab_size set; got shape "
                             f"{tuple(x.shape)} and vocab_size={vocab_size!r}")
        return nn.Embed(vocab_size, features, dtype=dtype, param_dtype=jnp.float32,
                        embedding_init=nn.initializers.normal(1.0), name=name)(x)
    if x.ndim != 3:
        raise ValueError(f"float input must be [B, L, C], got shape {tuple(x.shape)}")
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name)(x.astype(dtype))


def project(x, num_classes: int, *, dtype, name: str = "decoder"):
    """The classifier / per-position head after pooling: a Dense, float32 out."""
    y = nn.Dense(num_classes, dtype=dtype, param_dtype=jnp.float32, name=name)(x)
    return y.astype(jnp.float32)


class LongConvNet(nn.Module):
    """S4-style residual stack of long-convolution mixers (module docstring)."""

    num_classes: int
    mixer: str = "long_conv"
    d_model: int = 128
    n_layers: int = 8
    max_len: int = 2048
    vocab_size: int | None = None
    causal: bool = True
    prenorm: bool = False
    norm: str = "batch"
    dropout: float = 0.0
    pool: str = "mean"
    mixer_kwargs: Any = ()
    dtype: Any = jnp.float32

    def __post_init__(self):
        positive_ints("num_classes", self.num_classes)
        positive_ints("d_model", self.d_model)
        positive_ints("n_layers", self.n_layers)
        positive_ints("max_len", self.max_len)
        if self.vocab_size is not None:
            positive_ints("vocab_size", self.vocab_size)
        check_choice("mixer", self.mixer, MIXERS)
        check_choice("norm", self.norm, NORMS)
        check_choice("pool", self.pool, POOLS)
        check_rate("dropout", self.dropout)
        object.__setattr__(self, "mixer_kwargs", tuple(sorted(dict(self.mixer_kwargs).items())))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        # Build one mixer now so a bad mixer_kwargs entry fails here, naming the field.
        try:
            MIXERS[self.mixer](max_len=self.max_len, parent=None, **dict(self.mixer_kwargs))
        except TypeError as err:
            raise ValueError(f"mixer_kwargs {dict(self.mixer_kwargs)} do not fit "
                             f"{MIXERS[self.mixer].__name__}: {err}") from None
        super().__post_init__()

    def _norm(self, train: bool, name: str):
        if self.norm == "batch":
            return batch_norm(train, dtype=self.dtype, name=name)
        return nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32, name=name)

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = encode_sequence(x, vocab_size=self.vocab_size, features=self.d_model,
                            dtype=self.dtype)
        drop = nn.Dropout(self.dropout, deterministic=not train)
        for i in range(self.n_layers):
            mixer = MIXERS[self.mixer](max_len=self.max_len, causal=self.causal,
                                       dropout=self.dropout, dtype=self.dtype,
                                       name=f"layers_{i}", **dict(self.mixer_kwargs))
            if self.prenorm:
                x = x + drop(mixer(self._norm(train, f"norm_{i}")(x), train))
            else:
                x = self._norm(train, f"norm_{i}")(x + drop(mixer(x, train)))
        if self.prenorm:
            x = self._norm(train, "norm_final")(x)
        return project(pool_sequence(self, x, self.pool), self.num_classes, dtype=self.dtype)


_LONG_CONV_PAPER = ("Fu et al. 2023, Simple Hardware-Efficient Long Convolutions for Sequence "
                    "Modeling, arXiv:2302.06646")
_SGCONV_PAPER = ("Li et al. 2022, What Makes Convolutional Models Great on Long Sequence "
                 "Modeling?, arXiv:2210.09298")
#: LRA ListOps through safari's tokenizer: 18 ids (this repo's generator uses 16 of them).
LISTOPS_VOCAB = 18


@register_model(family="long_conv", paper=_LONG_CONV_PAPER, input_size=(2000,),
                num_classes=10, input_dtype="int32")
def long_conv_listops(**overrides) -> LongConvNet:
    """LongConv on LRA ListOps, safari's long-conv-lra-listops config (8 x 128, channels 2)."""
    return LongConvNet(num_classes=10, mixer="long_conv", d_model=128, n_layers=8,
                       max_len=2048, vocab_size=LISTOPS_VOCAB, causal=True, norm="batch",
                       pool="mean", mixer_kwargs={"channels": 2, "lam": 0.002,
                                                  "kernel_dropout": 0.2}, **overrides)


@register_model(family="long_conv", paper=_SGCONV_PAPER, input_size=(2000,), num_classes=10,
                input_dtype="int32")
def sgconv_listops(**overrides) -> LongConvNet:
    """SGConv on LRA ListOps: the S4 ListOps backbone (8 x 128) with GConv's default kernel."""
    return LongConvNet(num_classes=10, mixer="sgconv", d_model=128, n_layers=8, max_len=2048,
                       vocab_size=LISTOPS_VOCAB, causal=False, norm="batch", pool="mean",
                       mixer_kwargs={"kernel_dim": 64}, **overrides)


@register_model(family="long_conv", paper=_LONG_CONV_PAPER, input_size=(64, 1),
                num_classes=10)
def long_conv_tiny(**overrides) -> LongConvNet:
    """A 2 x 32 LongConv classifier that compiles in seconds on CPU (tests, runlocal)."""
    return LongConvNet(num_classes=10, mixer="long_conv", d_model=32, n_layers=2, max_len=1024,
                       causal=True, norm="batch", pool="mean",
                       mixer_kwargs={"channels": 2, "lam": 0.002}, **overrides)


@register_model(family="long_conv", paper=_SGCONV_PAPER, input_size=(64, 1), num_classes=10)
def sgconv_tiny(**overrides) -> LongConvNet:
    """A 2 x 32 SGConv classifier that compiles in seconds on CPU (tests, runlocal)."""
    return LongConvNet(num_classes=10, mixer="sgconv", d_model=32, n_layers=2, max_len=1024,
                       causal=True, norm="batch", pool="mean",
                       mixer_kwargs={"kernel_dim": 16}, **overrides)
