"""Inception v3 as timm builds ``inception_v3`` (the torchvision structure).

Paper: Christian Szegedy, Vincent Vanhoucke, Sergey Ioffe, Jonathon Shlens, Zbigniew Wojna, 2016,
"Rethinking the Inception Architecture for Computer Vision", arXiv:1512.00567.

Every convolution is a ``BasicConv2d``: conv (no bias) - BatchNorm (eps 1e-3, as timm's
``norm_eps``; momentum PyTorch's default 0.1, i.e. Flax 0.9) - ReLU. Padding is PyTorch's:
explicit and symmetric where timm gives one, none ("valid") otherwise; 1x7/7x1 factorised convs
pad only along their long side. Average pools inside the modules count the zero padding
(PyTorch's ``count_include_pad=True``).

Parameter layout (``variables["params"]``; ``batch_stats`` mirrors it for the BatchNorms) is
timm's ``state_dict`` with ``.`` read as ``/`` (the ``inception`` rule of :mod:`jaxconv.convert`,
registered at the bottom)::

    Conv2d_1a_3x3, Conv2d_2a_3x3, Conv2d_2b_3x3, Conv2d_3b_1x1, Conv2d_4a_3x3     stem
    Mixed_5b, Mixed_5c, Mixed_5d          InceptionA (35x35 at 299 input)
    Mixed_6a                              InceptionB (grid reduction to 17x17)
    Mixed_6b .. Mixed_6e                  InceptionC (factorised 7x7)
    AuxLogits                             only with ``aux_logits=True``: conv0 conv1 fc
    Mixed_7a                              InceptionD (grid reduction to 8x8)
    Mixed_7b, Mixed_7c                    InceptionE (expanded filter banks)
    fc                                    Dense (kernel [2048, num_classes], bias)

each BasicConv2d being ``NAME/conv/kernel`` and ``NAME/bn/{scale,bias}`` (timm's
``NAME.conv.weight``, ``NAME.bn.weight/bias``); branch names are timm's (``branch1x1``,
``branch5x5_1``, ``branch7x7dbl_3``, ``branch_pool``, ...). timm's default ``inception_v3`` has no
auxiliary head and 23,834,568 parameters; the head adds 3,326,696 (torchvision's 27,161,264).

Auxiliary head convention: with ``aux_logits=True`` the train-mode call returns
``(logits, aux_logits)`` (the caller adds the auxiliary loss, weighted 0.4 in torchvision's
reference recipe); eval mode returns the logits alone, as torchvision does (timm returns the pair
in both modes); ``init`` creates the head's parameters either way. The default ``aux_logits=False`` returns logits in both modes, so the
project's standard train step works unchanged. The head needs the 17x17 grid of a >=299 input
(its 5x5 valid conv runs on a 5x5 pool of that grid); the network itself needs >=75x75.

Stage outputs are sown as ``intermediates/stage{i}``, timm's feature stages: Conv2d_2b_3x3
(stride 2), Conv2d_4a_3x3 (4), Mixed_5d (8), Mixed_6e (16), Mixed_7c (32) - nominal strides; the
valid convolutions make the maps a little smaller than input/stride (147, 71, 35, 17, 8 at 299).

No CIFAR config: at 32x32 the valid-padded stem leaves nothing for the later grid reductions
(the smallest input the network accepts is 75x75), so CIFAR would have to be upsampled >= 2.3x
(possible with the training config's ``image_size``), multiplying the cost by >= 5.5 to run an
ImageNet stem on 32x32 content; a CIFAR-sized Inception is a different network (a new stem), not
this one.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxconv.layers import BN_MOMENTUM, canonical_dtype, conv2d
from jaxconv.models.checks import positive_ints
from jaxconv.registry import register_model

__all__ = ["BasicConv2d", "InceptionV3", "min_input_size"]

#: timm's InceptionV3 ``norm_eps``.
BN_EPSILON = 1e-3

# timm initialises every conv and linear weight with trunc_normal_(std=0.1) (the aux head's conv1
# with 0.01 and fc with 0.001); Flax truncates at 2 std where timm truncates at +-2 absolute,
# which at these std is no truncation at all.
_INIT_STD = 0.1


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


class BasicConv2d(nn.Module):
    """conv (no bias) - BatchNorm(eps 1e-3) - ReLU, submodules named ``conv`` and ``bn`` (timm)."""

    features: int
    kernel_size: Any = 1            # int or (kh, kw)
    strides: int = 1
    padding: Any = 0                # int or (ph, pw): symmetric padding per axis
    init_std: float = _INIT_STD
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        ph, pw = _pair(self.padding)
        x = conv2d(
            self.features, _pair(self.kernel_size), _pair(self.strides),
            padding=((ph, ph), (pw, pw)), use_bias=False, dtype=self.dtype,
            kernel_init=nn.initializers.truncated_normal(self.init_std), name="conv",
        )(x)
        x = nn.BatchNorm(
            use_running_average=not self.train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON,
            dtype=self.dtype, param_dtype=jnp.float32, name="bn",
        )(x)
        return nn.relu(x)


class _Mixed(nn.Module):
    """Shared plumbing of the Inception modules: a BasicConv2d factory bound to train/dtype."""

    train: bool = False
    dtype: Any = jnp.float32

    def conv(self, name, features, kernel_size=1, strides=1, padding=0):
        return BasicConv2d(features, kernel_size, strides, padding, train=self.train,
                           dtype=self.dtype, name=name)


def _avg_pool_3x3(x):
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=True)


def _max_pool_3x3_s2(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(_Mixed):
    """35x35 module: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1 (``pool_features``)."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x):
        b1 = self.conv("branch1x1", 64)(x)
        b5 = self.conv("branch5x5_1", 48)(x)
        b5 = self.conv("branch5x5_2", 64, 5, padding=2)(b5)
        b3 = self.conv("branch3x3dbl_1", 64)(x)
        b3 = self.conv("branch3x3dbl_2", 96, 3, padding=1)(b3)
        b3 = self.conv("branch3x3dbl_3", 96, 3, padding=1)(b3)
        bp = self.conv("branch_pool", self.pool_features)(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Mixed):
    """Grid reduction 35 -> 17: 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3x3/2."""

    @nn.compact
    def __call__(self, x):
        b3 = self.conv("branch3x3", 384, 3, strides=2)(x)
        bd = self.conv("branch3x3dbl_1", 64)(x)
        bd = self.conv("branch3x3dbl_2", 96, 3, padding=1)(bd)
        bd = self.conv("branch3x3dbl_3", 96, 3, strides=2)(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class InceptionC(_Mixed):
    """17x17 module with 7x7 convs factorised into 1x7 and 7x1 (``channels_7x7`` inside)."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = self.conv("branch1x1", 192)(x)
        b7 = self.conv("branch7x7_1", c7)(x)
        b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
        bd = self.conv("branch7x7dbl_1", c7)(x)
        bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
        bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
        bp = self.conv("branch_pool", 192)(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Mixed):
    """Grid reduction 17 -> 8: 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3x3/2."""

    @nn.compact
    def __call__(self, x):
        b3 = self.conv("branch3x3_1", 192)(x)
        b3 = self.conv("branch3x3_2", 320, 3, strides=2)(b3)
        b7 = self.conv("branch7x7x3_1", 192)(x)
        b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
        b7 = self.conv("branch7x7x3_4", 192, 3, strides=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class InceptionE(_Mixed):
    """8x8 module with expanded filter banks (parallel 1x3 and 3x1 outputs concatenated)."""

    @nn.compact
    def __call__(self, x):
        b1 = self.conv("branch1x1", 320)(x)
        b3 = self.conv("branch3x3_1", 384)(x)
        b3 = jnp.concatenate([self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
                              self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3)], -1)
        bd = self.conv("branch3x3dbl_1", 448)(x)
        bd = self.conv("branch3x3dbl_2", 384, 3, padding=1)(bd)
        bd = jnp.concatenate([self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
                              self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd)], -1)
        bp = self.conv("branch_pool", 192)(_avg_pool_3x3(x))
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionAux(_Mixed):
    """Auxiliary classifier on the 17x17 grid: avgpool 5x5/3 - 1x1(128) - 5x5(768) - fc."""

    num_classes: int = 1000

    @nn.compact
    def __call__(self, x):
        x = nn.avg_pool(x, (5, 5), strides=(3, 3))
        x = self.conv("conv0", 128)(x)
        x = BasicConv2d(768, 5, init_std=0.01, train=self.train, dtype=self.dtype,
                        name="conv1")(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                        kernel_init=nn.initializers.truncated_normal(0.001), name="fc")(x)


def _conv_out(size: int, kernel: int, stride: int = 1, pad: int = 0) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _grid_sizes(size: int) -> dict[str, int]:
    """Spatial size after each resolution change, for an input side of ``size``."""
    s = {}
    s["Conv2d_2b_3x3"] = _conv_out(_conv_out(size, 3, 2), 3)
    s["Conv2d_4a_3x3"] = _conv_out(_conv_out(s["Conv2d_2b_3x3"], 3, 2), 3)
    s["Mixed_5d"] = _conv_out(s["Conv2d_4a_3x3"], 3, 2)
    s["Mixed_6e"] = _conv_out(s["Mixed_5d"], 3, 2)
    s["Mixed_7c"] = _conv_out(s["Mixed_6e"], 3, 2)
    s["AuxLogits"] = _conv_out(_conv_out(s["Mixed_6e"], 5, 3), 5)
    return s


def min_input_size(aux_logits: bool = False) -> int:
    """Smallest square input side InceptionV3 accepts (75; 299 with the auxiliary head)."""
    size = 1
    key = "AuxLogits" if aux_logits else "Mixed_7c"
    while _grid_sizes(size)[key] < 1:
        size += 1
    return size


class InceptionV3(nn.Module):
    """Inception v3 over NHWC inputs (>= 75x75); float32 logits ``[B, num_classes]``.

    Fields:
      num_classes, dtype (compute dtype; parameters are float32).
      dropout_rate: dropout before ``fc`` in train mode (timm's ``drop_rate``; 0 by default as
        in timm), on the ``dropout`` rng stream. No ``drop_path_rate``: no residual branches.
      aux_logits: add timm's ``AuxLogits`` head; train mode then returns
        ``(logits, aux_logits)`` (module docstring).
    """

    num_classes: int = 1000
    dtype: Any = jnp.float32
    dropout_rate: float = 0.0
    aux_logits: bool = False

    def __post_init__(self):
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        positive_ints("num_classes", (self.num_classes,))
        rate = self.dropout_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"dropout_rate must be a float in [0, 1), got {rate!r}")
        if not isinstance(self.aux_logits, bool):
            raise ValueError(f"aux_logits must be True or False, got {self.aux_logits!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        need = min_input_size(self.aux_logits)
        if x.ndim != 4 or min(x.shape[1:3]) < need:
            raise ValueError(
                f"InceptionV3{' with aux_logits' if self.aux_logits else ''} needs NHWC inputs "
                f"of at least {need}x{need}, got shape {tuple(x.shape)}")
        x = jnp.asarray(x, self.dtype)
        kw = dict(train=train, dtype=self.dtype)

        x = BasicConv2d(32, 3, 2, name="Conv2d_1a_3x3", **kw)(x)
        x = BasicConv2d(32, 3, name="Conv2d_2a_3x3", **kw)(x)
        x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3", **kw)(x)
        self.sow("intermediates", "stage0", x)
        x = _max_pool_3x3_s2(x)
        x = BasicConv2d(80, 1, name="Conv2d_3b_1x1", **kw)(x)
        x = BasicConv2d(192, 3, name="Conv2d_4a_3x3", **kw)(x)
        self.sow("intermediates", "stage1", x)
        x = _max_pool_3x3_s2(x)

        x = InceptionA(pool_features=32, name="Mixed_5b", **kw)(x)
        x = InceptionA(pool_features=64, name="Mixed_5c", **kw)(x)
        x = InceptionA(pool_features=64, name="Mixed_5d", **kw)(x)
        self.sow("intermediates", "stage2", x)
        x = InceptionB(name="Mixed_6a", **kw)(x)
        x = InceptionC(channels_7x7=128, name="Mixed_6b", **kw)(x)
        x = InceptionC(channels_7x7=160, name="Mixed_6c", **kw)(x)
        x = InceptionC(channels_7x7=160, name="Mixed_6d", **kw)(x)
        x = InceptionC(channels_7x7=192, name="Mixed_6e", **kw)(x)
        self.sow("intermediates", "stage3", x)

        aux = None
        if self.aux_logits and (train or self.is_initializing()):
            aux = InceptionAux(num_classes=self.num_classes, name="AuxLogits", **kw)(x)

        x = InceptionD(name="Mixed_7a", **kw)(x)
        x = InceptionE(name="Mixed_7b", **kw)(x)
        x = InceptionE(name="Mixed_7c", **kw)(x)
        self.sow("intermediates", "stage4", x)

        x = jnp.mean(x, axis=(1, 2))
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
        x = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                     kernel_init=nn.initializers.truncated_normal(_INIT_STD), name="fc")(x)
        logits = jnp.asarray(x, jnp.float32)
        if aux is not None and train:
            return logits, jnp.asarray(aux, jnp.float32)
        return logits


_PAPER = ("Szegedy et al. 2016, Rethinking the Inception Architecture for Computer Vision, "
          "arXiv:1512.00567")


@register_model(family="inception", paper=_PAPER, input_size=(299, 299, 3), num_classes=1000)
def inception_v3(**overrides) -> InceptionV3:
    """Inception v3 (timm/torchvision structure, no aux head by default), 23,834,568 params."""
    return InceptionV3(**overrides)
