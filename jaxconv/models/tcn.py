"""Temporal Convolutional Network (Bai et al. 2018, An Empirical Evaluation of Generic
Convolutional and Recurrent Networks for Sequence Modeling, arXiv:1803.01271), as
locuslab/TCN builds it, plus the sequence-model plumbing the long-convolution families share
(:func:`sequence_input`, :func:`pool_sequence`, :data:`POOLS`).

A TCN is a stack of :class:`jaxconv.layers.tcn.TCNBlock` s with dilation ``2**i`` at level
``i`` (two weight-normed causal convs of width ``kernel_size`` each), then a linear head.
Receptive field: ``1 + 2 (k - 1) (2**levels - 1)`` steps (8 levels of k=7: 3061 >= 784).

Sequence-model contract (issue 12): input ``[B, L, C]`` float, or ``[B, L]`` int32 token ids
when ``vocab_size`` is set (an embedding comes first); ``pool="last"`` / ``"mean"`` return
``[B, num_classes]``, ``pool="none"`` returns ``[B, L, num_classes]``. With ``decode=True``
the model takes one step ``[B, 1, ...]`` per call and keeps its state in the ``"cache"``
collection (see :mod:`jaxconv.streaming`).

Registered variants use the authors' script defaults (locuslab/TCN ``TCN/*/*_test.py``):

| name | task | levels x width, k | params (authors' defaults) |
| --- | --- | --- | --- |
| ``tcn_smnist`` | sequential / permuted MNIST, L=784 | 8 x 25, k=7, p=0.05 | 66,910 (paper 70K) |
| ``tcn_adding`` | adding problem, 2 channels, MSE | 8 x 30, k=7 | 96,001 |
| ``tcn_copy_memory`` | copy memory, T=1000 (L=1020), per step | 8 x 10, k=8 | 12,530 |
| ``tcn_tiny`` | tests / runlocal | 3 x 8, k=3 | |
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers.dtypes import canonical_dtype
from jaxconv.layers.tcn import TCNBlock, tcn_normal_init
from jaxconv.models.checks import check_choice, check_rate, positive_ints
from jaxconv.registry import register_model

__all__ = ["POOLS", "TCN", "pool_sequence", "sequence_input"]

#: Values of every sequence model's ``pool`` field (issue 12 contract).
POOLS = ("mean", "last", "none")


def sequence_input(module: nn.Module, x, *, vocab_size: int | None, embed_dim: int, dtype):
    """``x`` as ``[B, L, C]`` in ``dtype``: token ids (an integer ``[B, L]``) go through an
    ``nn.Embed`` named ``embed`` (which needs ``vocab_size``); floats must be ``[B, L, C]``."""
    name = type(module).__name__
    if jnp.issubdtype(x.dtype, jnp.integer):
        if vocab_size is None:
            raise ValueError(f"{name}: integer token input needs vocab_size (an int), got None; "
                             f"or pass float [B, L, C] signals")
        if x.ndim != 2:
            raise ValueError(f"{name}: token ids must be [B, L], got shape {tuple(x.shape)}")
        return nn.Embed(vocab_size, embed_dim, dtype=dtype, param_dtype=jnp.float32,
                        name="embed")(x)
    if x.ndim != 3:
        raise ValueError(f"{name}: float input must be [B, L, C], got shape {tuple(x.shape)}")
    return jnp.asarray(x, dtype)


def pool_sequence(module: nn.Module, y, pool: str, *, decode: bool = False):
    """``[B, L, C]`` -> ``[B, C]`` (``"mean"``, ``"last"``) or unchanged (``"none"``).

    In ``decode`` mode (one step per call) ``"mean"`` keeps a running sum and count in
    ``module``'s ``"cache"`` so step ``t`` returns the mean over steps ``0..t``, as the full
    forward of the first ``t + 1`` steps would.
    """
    if pool == "none":
        return y
    if pool == "last" or not decode:
        return y[:, -1] if pool == "last" else jnp.mean(y, axis=1)
    initialized = module.has_variable("cache", "pool_sum")
    total = module.variable("cache", "pool_sum", jnp.zeros, (y.shape[0], y.shape[-1]),
                            jnp.float32)
    count = module.variable("cache", "pool_count", lambda: jnp.zeros((), jnp.int32))
    new_total, new_count = total.value + y[:, 0].astype(jnp.float32), count.value + 1
    if initialized:
        total.value, count.value = new_total, new_count
    return (new_total / new_count).astype(y.dtype)


class TCN(nn.Module):
    """Bai et al.'s TCN (module doc). Returns float32 outputs (``pool`` contract).

    Fields: channels (width per level; level ``i`` has dilation ``2**i``), kernel_size,
    dropout_rate, num_classes, pool (``"last"`` as the paper's classifiers, ``"mean"``,
    ``"none"`` per step), weight_norm, vocab_size / embed_dim (token inputs), dtype, decode.
    """

    channels: Sequence[int] = (25,) * 8
    kernel_size: int = 7
    dropout_rate: float = 0.05
    num_classes: int = 10
    pool: str = "last"
    weight_norm: bool = True
    vocab_size: int | None = None
    embed_dim: int = 32
    dtype: Any = jnp.float32
    decode: bool = False

    def __post_init__(self):
        object.__setattr__(self, "channels", positive_ints("channels", self.channels))
        positive_ints("kernel_size", self.kernel_size)
        positive_ints("num_classes", self.num_classes)
        positive_ints("embed_dim", self.embed_dim)
        if self.vocab_size is not None:
            positive_ints("vocab_size", self.vocab_size)
        check_rate("dropout_rate", self.dropout_rate)
        check_choice("pool", self.pool, POOLS)
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = sequence_input(self, x, vocab_size=self.vocab_size, embed_dim=self.embed_dim,
                           dtype=self.dtype)
        for i, width in enumerate(self.channels):
            y = TCNBlock(width, self.kernel_size, 2 ** i, self.dropout_rate, self.weight_norm,
                         dtype=self.dtype, decode=self.decode, name=f"blocks_{i}")(y, train)
        y = pool_sequence(self, y, self.pool, decode=self.decode)
        y = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=tcn_normal_init, name="head")(y)
        return y.astype(jnp.float32)


_PAPER = ("Bai et al. 2018, An Empirical Evaluation of Generic Convolutional and Recurrent "
          "Networks for Sequence Modeling, arXiv:1803.01271")


@register_model(family="tcn", paper=_PAPER, input_size=(784, 1), num_classes=10)
def tcn_smnist(**overrides) -> TCN:
    """TCN for sequential / permuted MNIST: 8 levels of 25 channels, k=7 (66,910 params)."""
    return TCN(channels=(25,) * 8, kernel_size=7, dropout_rate=0.05, num_classes=10,
               pool="last", **overrides)


@register_model(family="tcn", paper=_PAPER, input_size=(600, 2), num_classes=1)
def tcn_adding(**overrides) -> TCN:
    """TCN for the adding problem (regression, 1 output): 8 levels of 30 channels, k=7."""
    return TCN(channels=(30,) * 8, kernel_size=7, dropout_rate=0.0, num_classes=1,
               pool="last", **overrides)


@register_model(family="tcn", paper=_PAPER, input_size=(1020, 1), num_classes=10)
def tcn_copy_memory(**overrides) -> TCN:
    """TCN for the copy-memory task (per-step digits): 8 levels of 10 channels, k=8."""
    return TCN(channels=(10,) * 8, kernel_size=8, dropout_rate=0.0, num_classes=10,
               pool="none", **overrides)


@register_model(family="tcn", paper=_PAPER, input_size=(64, 1), num_classes=10)
def tcn_tiny(**overrides) -> TCN:
    """A 3-level, 8-channel TCN (k=3) that compiles in seconds on CPU (tests, runlocal)."""
    return TCN(channels=(8,) * 3, kernel_size=3, dropout_rate=0.0, num_classes=10,
               pool="last", **overrides)
