"""Continuous CNN (CCNN; Knigge, Romero et al. 2023, Modelling Long Range Dependencies in ND:
From Task-Specific to a General Purpose CNN, arXiv:2206.03398), as the authors' repository
(david-knigge/ccnn, ``models/resnet.py`` + ``models/modules/s4_block.py``) builds it, in 1-D
``[B, L, C]`` and 2-D NHWC with the same code.

    dropout_in - SepFlexConv(C_in -> H) - BatchNorm - GELU
    - N x S4-style block: BN (pre-norm) - SepFlexConv(H -> H) - GELU - channel dropout
      - Linear(H) - GELU, + shortcut
    - BatchNorm - global average pool (over time / space) - Linear(num_classes)

Every SepFlexConv is a :class:`jaxconv.layers.CKConv` (separable, MAGNet kernel net, FlexConv
mask): causal with a kernel as long as the input for sequences, a 33x33 kernel for images.
CCNN_{N,H}: N blocks of H channels; the kernel net has 32 hidden units for CCNN_4,140 and 64 for
CCNN_6,380 (the authors' configs, ``experiments/README.md``).

Parameter counts (the authors' sMNIST configs, counted from their modules; the paper's table
rounds them to 200K and 2M): ``ccnn_4_140`` 198,769, ``ccnn_6_380`` 1,993,091. Linears and the
channel mixers start from Kaiming-normal weights and zero biases, as the authors'.
Stage outputs sown (one resolution throughout): ``stage0`` after the stem conv, ``stage1``
after the blocks. Differences: FlexConv's dynamic cropping is not done (see
:mod:`jaxconv.layers.ckconv`); BN statistics are Flax's (biased variance).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers.ckconv import KERNEL_NETS, CKConv, kaiming_normal
from jaxconv.layers.conv import exact_gelu
from jaxconv.layers.dtypes import canonical_dtype
from jaxconv.layers.norm import batch_norm
from jaxconv.models.checks import check_choice, check_rate, positive_ints
from jaxconv.models.tcn import POOLS, pool_sequence, sequence_input
from jaxconv.registry import register_model
from kernels_pallas import IMPLEMENTATIONS

__all__ = ["CCNN", "CCNNBlock"]


def _linear(features: int, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, kernel_init=kaiming_normal,
                    name=name)


class CCNNBlock(nn.Module):
    """The authors' S4-style pre-norm residual block (module doc); width unchanged."""

    conv: Any  # a functools.partial of CKConv (all fields but features)
    dropout_rate: float = 0.0
    dtype: Any = jnp.float32
    train: bool = False

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        y = batch_norm(self.train, dtype=self.dtype, name="norm")(x)
        y = exact_gelu(self.conv(width, name="conv")(y))
        # Channel dropout (PyTorch Dropout1d/2d): one draw per example and channel.
        y = nn.Dropout(self.dropout_rate, broadcast_dims=tuple(range(1, x.ndim - 1)),
                       deterministic=not self.train)(y)
        y = exact_gelu(_linear(width, self.dtype, "linear")(y))
        return x + y


class CCNN(nn.Module):
    """CCNN over ``[B, L, C]`` (``data_dim=1``) or NHWC (``data_dim=2``); float32 outputs.

    Fields: num_blocks, hidden; kernel_net, kernel_hidden, kernel_layers, omega_0, kernel_size
    (None = the input's size; 33 for the authors' images), mask_init; data_dim; causal (1-D);
    dropout_rate (in the blocks), dropout_in (on the input); num_classes; pool (1-D: "mean" as
    the authors, "last", "none"; 2-D: "mean" or "none"); vocab_size (1-D token ids [B, L]: an
    embedding to ``hidden`` comes first); implementation (of the conv ops); dtype;
    decode (1-D causal streaming, needs kernel_size).
    """

    num_blocks: int = 4
    hidden: int = 140
    kernel_net: str = "magnet"
    kernel_hidden: int = 32
    kernel_layers: int = 3
    omega_0: float = 2976.49
    kernel_size: Any = None
    mask_init: float = 0.075
    data_dim: int = 1
    causal: bool = True
    dropout_rate: float = 0.1
    dropout_in: float = 0.0
    num_classes: int = 10
    pool: str = "mean"
    vocab_size: int | None = None
    implementation: str | None = None
    dtype: Any = jnp.float32
    decode: bool = False

    def __post_init__(self):
        if self.vocab_size is not None:
            positive_ints("vocab_size", self.vocab_size)
        positive_ints("num_blocks", self.num_blocks)
        positive_ints("hidden", self.hidden)
        positive_ints("kernel_hidden", self.kernel_hidden)
        positive_ints("kernel_layers", self.kernel_layers)
        positive_ints("num_classes", self.num_classes)
        check_choice("kernel_net", self.kernel_net, KERNEL_NETS)
        check_choice("data_dim", self.data_dim, (1, 2))
        check_choice("pool", self.pool, POOLS if self.data_dim == 1 else ("mean", "none"))
        check_choice("implementation", self.implementation, IMPLEMENTATIONS)
        check_rate("dropout_rate", self.dropout_rate)
        check_rate("dropout_in", self.dropout_in)
        if self.data_dim == 2 and self.causal:
            raise ValueError("causal=True is for 1-D sequences (data_dim=1); build the 2-D "
                             "CCNN with causal=False")
        if self.decode and (not self.causal or self.kernel_size is None):
            raise ValueError("decode=True (streaming) needs causal=True and an int kernel_size "
                             f"(got causal={self.causal}, kernel_size={self.kernel_size})")
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        super().__post_init__()

    def _conv(self):
        """SepFlexConv as a ``CKConv`` factory (features, name=...) -> module."""
        return functools.partial(
            CKConv, kernel_size=self.kernel_size, separable=True, causal=self.causal,
            kernel_net=self.kernel_net, kernel_hidden=self.kernel_hidden,
            kernel_layers=self.kernel_layers, omega_0=self.omega_0, mask=True,
            mask_init=self.mask_init, implementation=self.implementation, dtype=self.dtype,
            decode=self.decode)

    @nn.compact
    def __call__(self, x, train: bool = False):
        tokens = self.data_dim == 1 and jnp.issubdtype(x.dtype, jnp.integer)
        if x.ndim != self.data_dim + 2 and not tokens:
            layout = "[B, L, C]" if self.data_dim == 1 else "[B, H, W, C]"
            raise ValueError(f"CCNN(data_dim={self.data_dim}) takes {layout}, got shape "
                             f"{tuple(x.shape)}")
        if tokens:  # [B, L] ids -> [B, L, hidden]
            x = sequence_input(self, x, vocab_size=self.vocab_size, embed_dim=self.hidden,
                               dtype=self.dtype)
        y = nn.Dropout(self.dropout_in, deterministic=not train)(jnp.asarray(x, self.dtype))
        y = self._conv()(self.hidden, name="conv1")(y)
        y = exact_gelu(batch_norm(train, dtype=self.dtype, name="norm1")(y))
        self.sow("intermediates", "stage0", y)
        for i in range(self.num_blocks):
            y = CCNNBlock(self._conv(), self.dropout_rate, self.dtype, train, name=f"blocks_{i}")(y)
        self.sow("intermediates", "stage1", y)
        y = batch_norm(train, dtype=self.dtype, name="out_norm")(y)
        if self.data_dim == 2:
            y = jnp.mean(y, axis=(1, 2)) if self.pool == "mean" else y
        else:
            y = pool_sequence(self, y, self.pool, decode=self.decode)
        return _linear(self.num_classes, self.dtype, "head")(y).astype(jnp.float32)


_PAPER = ("Knigge, Romero et al. 2023, Modelling Long Range Dependencies in ND: From "
          "Task-Specific to a General Purpose CNN, arXiv:2206.03398")


@register_model(family="ccnn", paper=_PAPER, input_size=(784, 1), num_classes=10)
def ccnn_4_140(**overrides) -> CCNN:
    """CCNN_4,140 for sequences (sMNIST config): 4 blocks of 140, causal, 198,769 params."""
    return CCNN(num_blocks=4, hidden=140, kernel_hidden=32, omega_0=2976.49, dropout_rate=0.1,
                **overrides)


@register_model(family="ccnn", paper=_PAPER, input_size=(784, 1), num_classes=10)
def ccnn_6_380(**overrides) -> CCNN:
    """CCNN_6,380 for sequences (sMNIST config): 6 blocks of 380, causal, 1,993,091 params."""
    return CCNN(num_blocks=6, hidden=380, kernel_hidden=64, omega_0=2976.49, dropout_rate=0.1,
                **overrides)


@register_model(family="ccnn", paper=_PAPER, input_size=(32, 32, 3), num_classes=10)
def ccnn_4_140_2d(**overrides) -> CCNN:
    """CCNN_4,140 for images (CIFAR-10 config): 33x33 continuous kernels, NHWC."""
    return CCNN(num_blocks=4, hidden=140, kernel_hidden=32, omega_0=4231.57, kernel_size=33,
                data_dim=2, causal=False, dropout_rate=0.1, **overrides)


@register_model(family="ccnn", paper=_PAPER, input_size=(32, 32, 3), num_classes=10)
def ccnn_6_380_2d(**overrides) -> CCNN:
    """CCNN_6,380 for images (CIFAR-10 config): 33x33 continuous kernels, NHWC."""
    return CCNN(num_blocks=6, hidden=380, kernel_hidden=64, omega_0=976.781, kernel_size=33,
                data_dim=2, causal=False, dropout_rate=0.15, **overrides)


@register_model(family="ccnn", paper=_PAPER, input_size=(64, 1), num_classes=10)
def ccnn_tiny(**overrides) -> CCNN:
    """A 2-block, 16-channel causal CCNN (kernel net 8 wide): seconds to compile on CPU."""
    return CCNN(num_blocks=2, hidden=16, kernel_hidden=8, omega_0=100.0, dropout_rate=0.0,
                **overrides)


@register_model(family="ccnn", paper=_PAPER, input_size=(32, 32, 3), num_classes=10)
def ccnn_tiny_2d(**overrides) -> CCNN:
    """A 2-block, 16-channel 2-D CCNN with 9x9 continuous kernels (tests, runlocal)."""
    return CCNN(num_blocks=2, hidden=16, kernel_hidden=8, omega_0=100.0, kernel_size=9,
                data_dim=2, causal=False, dropout_rate=0.0, **overrides)


@register_model(family="ccnn", paper=_PAPER, input_size=(64, 1), num_classes=10)
def ckconv_tiny(**overrides) -> CCNN:
    """The tiny causal CCNN under the name the long_range sweep runs (tokens via vocab_size)."""
    return CCNN(num_blocks=2, hidden=16, kernel_hidden=8, omega_0=100.0, dropout_rate=0.0,
                **overrides)
