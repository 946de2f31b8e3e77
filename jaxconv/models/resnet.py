"""ResNets: CIFAR (He et al. 2016), pre-activation CIFAR (He et al. 2016b), ImageNet (timm names).

The ImageNet set includes timm's wide ResNets ``wide_resnet50_2``/``wide_resnet101_2``
(Zagoruyko & Komodakis 2016, Wide Residual Networks, arXiv:1605.07146, the ImageNet
WRN-50-2-bottleneck): ResNet-50/101 whose bottleneck convs are twice as wide
(``base_width=128``) while block outputs stay 256..2048.

ResNet-D and ECA-ResNets (timm's ``ecaresnet50d``, registry family ``ecaresnet``): the deep stem
(three 3x3 convs) and average-pool projection shortcuts of He et al. 2019 (Bag of Tricks,
arXiv:1812.01187), with Efficient Channel Attention (Wang et al. 2020, arXiv:1910.03151,
:class:`jaxconv.layers.ECA`) after each block's last BN (``attn_layer="eca"``).

One module, :class:`ResNet`, covers these families; the registered builders at the bottom
fix its structural fields. Fork a block class to try a new residual unit.

Parameter layout (``variables["params"]``; ``batch_stats`` mirrors it for the BatchNorms)::

    conv1, bn1                 stem (pre-activation models have no bn1); the deep stem is
                               conv1_0 (3x3/2), conv1_1 (BN), conv1_3, conv1_4 (BN), conv1_6
                               (timm's Sequential indices), then bn1
    layer{s}_{b}               block b of stage s (s from 1, b from 0), unrolled
    layer{s}_scan              with ``scan_blocks=True``: blocks 1..n-1 of stage s stacked on a
                               leading axis (index i <-> unrolled ``layer{s}_{i+1}``)
        conv1 bn1 conv2 bn2 [conv3 bn3] [downsample_conv downsample_bn] [se]
                               (``avg_down``: downsample_1 downsample_2, timm's indices after
                               the parameter-free pool; ``se``: the attention module)
    final_bn                   pre-activation models only: BN-ReLU before pooling
    fc                         classifier (kernel [C, num_classes], bias)

With ``scan_blocks=False`` the tree is 1:1 with timm/torchvision modules (``layer1.0.conv1`` ->
``layer1_0/conv1``, ``layer1.0.downsample.0/1`` -> ``layer1_0/downsample_conv``/``downsample_bn``).
:func:`stack_scanned_blocks` / :func:`unstack_scanned_blocks` convert variables between the two
layouts. Stage outputs are sown as ``intermediates/stage{i}`` (a 1-tuple, Flax's ``sow``
convention), outside any scan: with the ImageNet (or deep) stem ``stage0`` is the stem's output
at stride 2 (before the max pool, timm's first feature) and ``stage1..4`` are ``layer1..4``;
with the CIFAR stem ``stage{i}`` is the output of stage i.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv.layers import (
    ECA,
    DropPath,
    batch_norm,
    canonical_dtype,
    conv2d,
    dense,
    drop_path_rates,
)
from jaxconv.models.checks import check_choice, positive_ints
from jaxconv.registry import register_model

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PreActBasicBlock",
    "PreActBottleneck",
    "ResNet",
    "stack_scanned_blocks",
    "unstack_scanned_blocks",
]

SHORTCUTS = ("A", "B")
STEMS = ("imagenet", "cifar", "deep")
#: Channel-attention modules a post-activation block can apply after its last BN (``se``).
ATTN_LAYERS = {"eca": ECA}


# ----------------------------------------------------------------------------------- blocks


class _Block(nn.Module):
    """Fields shared by all residual blocks.

    ``features`` is the bottleneck (or basic) width; the block outputs
    ``features * expansion`` channels. ``base_width`` (bottleneck blocks only) scales the inner
    width to ``features * base_width // 64`` without changing the output (torchvision/timm's
    ``base_width``: 128 in wide_resnet50_2/101_2). ``train`` is a field rather than a call
    argument so the block can be the body of ``nn.scan`` (whose scanned inputs must be arrays).
    ``loop_safe_conv`` computes the convs with :func:`jaxconv.layers.loop_safe_conv` (set for
    blocks inside ``nn.scan``: keeps their CPU backward fast, at the cost of forward-mode AD).
    """

    features: int
    strides: int = 1
    shortcut: str = "B"
    zero_init_last: bool = False
    use_drop_path: bool = False
    train: bool = False
    dtype: Any = jnp.float32
    loop_safe_conv: bool = False
    base_width: int = 64
    avg_down: bool = False
    attn_layer: str | None = None

    expansion: ClassVar[int] = 1
    preact: ClassVar[bool] = False

    def _conv(self, features, kernel_size, strides=1, *, name, zero_init=False):
        kwargs = {"kernel_init": nn.initializers.zeros} if zero_init else {}
        return conv2d(features, kernel_size, strides, dtype=self.dtype,
                      loop_safe=self.loop_safe_conv, name=name, **kwargs)

    def _bn(self, name, zero_init=False):
        return batch_norm(self.train, dtype=self.dtype, zero_init=zero_init, name=name)

    @property
    def inner_features(self) -> int:
        """Width of a bottleneck's 1x1-3x3 convs (``features`` unless ``base_width != 64``)."""
        return self.features * self.base_width // 64

    def _needs_projection(self, x) -> bool:
        return self.strides != 1 or x.shape[-1] != self.features * self.expansion

    def _option_a(self, x):
        """Parameter-free shortcut: stride subsampling, channels zero-padded on both sides."""
        if self.strides != 1:
            x = x[:, :: self.strides, :: self.strides, :]
        extra = self.features * self.expansion - x.shape[-1]
        if extra < 0:
            raise ValueError("option-A shortcut cannot reduce channels; use shortcut='B'")
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))

    def _attn(self, h):
        """The block's channel attention (timm's ``se`` slot), if any."""
        if self.attn_layer is None:
            return h
        return ATTN_LAYERS[self.attn_layer](name="se")(h)

    def _drop_path(self, h, rate):
        if not self.use_drop_path:
            return h
        return DropPath(name="drop_path")(h, deterministic=not self.train, rate=rate)

    def _postact_shortcut(self, x):
        if not self._needs_projection(x):
            return x
        if self.shortcut == "A":
            return self._option_a(x)
        out = self.features * self.expansion
        if self.avg_down:
            # ResNet-D: average-pool (2x2, ceil mode, padding not counted), then a stride-1 1x1
            # conv, so the shortcut sees every input pixel. timm's Sequential(pool, conv, bn):
            # the pool (no parameters) is index 0 even where it is the identity.
            if self.strides != 1:
                x = _avg_pool_ceil(x, self.strides)
            x = self._conv(out, 1, name="downsample_1")(x)
            return self._bn("downsample_2")(x)
        x = self._conv(out, 1, self.strides, name="downsample_conv")(x)
        return self._bn("downsample_bn")(x)

    def _preact_shortcut(self, x, x_act):
        """Identity on the raw input; a projection (1x1 conv) sees the pre-activated input."""
        if not self._needs_projection(x):
            return x
        if self.shortcut == "A":
            return self._option_a(x)
        return self._conv(self.features * self.expansion, 1, self.strides,
                          name="downsample_conv")(x_act)


class BasicBlock(_Block):
    """conv3x3(stride)-BN-ReLU-conv3x3-BN, + shortcut, ReLU (He et al. 2016; timm BasicBlock).

    ``zero_init_last``: bn2's scale starts at 0, so the block starts as ReLU(shortcut).
    """

    @nn.compact
    def __call__(self, x, drop_path_rate=0.0):
        h = self._conv(self.features, 3, self.strides, name="conv1")(x)
        h = nn.relu(self._bn("bn1")(h))
        h = self._conv(self.features, 3, name="conv2")(h)
        h = self._attn(self._bn("bn2", zero_init=self.zero_init_last)(h))
        h = self._drop_path(h, drop_path_rate)
        return nn.relu(self._postact_shortcut(x) + h)


class Bottleneck(_Block):
    """conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1-BN, + shortcut, ReLU (ResNet v1.5).

    ``zero_init_last``: bn3's scale starts at 0, so the block starts as ReLU(shortcut).
    """

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x, drop_path_rate=0.0):
        h = self._conv(self.inner_features, 1, name="conv1")(x)
        h = nn.relu(self._bn("bn1")(h))
        h = self._conv(self.inner_features, 3, self.strides, name="conv2")(h)
        h = nn.relu(self._bn("bn2")(h))
        h = self._conv(self.features * self.expansion, 1, name="conv3")(h)
        h = self._attn(self._bn("bn3", zero_init=self.zero_init_last)(h))
        h = self._drop_path(h, drop_path_rate)
        return nn.relu(self._postact_shortcut(x) + h)


class PreActBasicBlock(_Block):
    """BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, + shortcut (He et al. 2016b, full pre-activation).

    ``zero_init_last``: the branch ends in a conv, not a BN, so the equivalent of zero-initialising
    the last BN is zero-initialising conv2's kernel; the block starts as its shortcut.
    """

    preact: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x, drop_path_rate=0.0):
        x_act = nn.relu(self._bn("bn1")(x))
        shortcut = self._preact_shortcut(x, x_act)
        h = self._conv(self.features, 3, self.strides, name="conv1")(x_act)
        h = nn.relu(self._bn("bn2")(h))
        h = self._conv(self.features, 3, name="conv2", zero_init=self.zero_init_last)(h)
        return shortcut + self._drop_path(h, drop_path_rate)


class PreActBottleneck(_Block):
    """BN-ReLU-conv1x1-BN-ReLU-conv3x3(stride)-BN-ReLU-conv1x1, + shortcut (He et al. 2016b).

    Stride sits on the 3x3 conv (as in ResNet v1.5). ``zero_init_last`` zero-initialises conv3's
    kernel (see :class:`PreActBasicBlock`).
    """

    expansion: ClassVar[int] = 4
    preact: ClassVar[bool] = True

    @nn.compact
    def __call__(self, x, drop_path_rate=0.0):
        x_act = nn.relu(self._bn("bn1")(x))
        shortcut = self._preact_shortcut(x, x_act)
        h = self._conv(self.inner_features, 1, name="conv1")(x_act)
        h = nn.relu(self._bn("bn2")(h))
        h = self._conv(self.inner_features, 3, self.strides, name="conv2")(h)
        h = nn.relu(self._bn("bn3")(h))
        h = self._conv(self.features * self.expansion, 1, name="conv3",
                       zero_init=self.zero_init_last)(h)
        return shortcut + self._drop_path(h, drop_path_rate)


BLOCKS: dict[str, type[_Block]] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
    "preact_basic": PreActBasicBlock,
    "preact_bottleneck": PreActBottleneck,
}


def block_class(block) -> type:
    """The block class ``block`` names (a :data:`BLOCKS` key) or is (a module class that has the
    ``expansion`` and ``preact`` class attributes of :class:`_Block`)."""
    if isinstance(block, type):
        if not (issubclass(block, nn.Module) and hasattr(block, "expansion")
                and hasattr(block, "preact")):
            raise ValueError(f"block class {block.__qualname__} must be a flax.linen.Module with "
                             "the 'expansion' and 'preact' class attributes (subclass one of "
                             f"{[c.__name__ for c in BLOCKS.values()]})")
        return block
    check_choice("block", block, BLOCKS)
    return BLOCKS[block]


def _avg_pool_ceil(x, stride: int):
    """``stride`` x ``stride`` average pool, ceil mode, padding excluded from the mean
    (PyTorch ``AvgPool2d(s, s, ceil_mode=True, count_include_pad=False)``)."""
    pads = [(0, (-size) % stride) for size in x.shape[1:3]]
    return nn.avg_pool(x, (stride, stride), strides=(stride, stride), padding=pads,
                       count_include_pad=False)


def _scan_body(block, x, drop_path_rate):
    return block(x, drop_path_rate), None


# ------------------------------------------------------------------------------------ model


class ResNet(nn.Module):
    """Residual network over NHWC inputs; returns float32 logits ``[B, num_classes]``.

    Fields:
      stage_sizes: blocks per stage. Stage 0 has stride 1, later stages stride 2.
      block: one of :data:`BLOCKS` (``basic``, ``bottleneck``, ``preact_basic``,
        ``preact_bottleneck``) or a block class (a subclass of one of them, or any module
        with their fields, call signature and ``expansion``/``preact`` class attributes).
      widths: base width per stage (block output = width * expansion).
      base_width: bottleneck blocks' inner width is ``width * base_width // 64`` (64: plain
        ResNet; 128: the wide ResNets ``wide_resnet50_2``/``wide_resnet101_2``, whose blocks
        still output ``width * 4``). Basic blocks need 64.
      stem: ``imagenet`` (7x7/2 conv, [BN-ReLU], 3x3/2 max pool, padding 1), ``cifar``
        (3x3 conv, [BN-ReLU]) or ``deep`` (ResNet-C/D, Bag of Tricks, He et al. 2019,
        arXiv:1812.01187: three 3x3 convs, the first stride 2, widths stem_width, stem_width,
        2 * stem_width, with BN-ReLU between; then BN-ReLU and the max pool; timm's
        ``stem_type='deep'``); pre-activation models have no BN-ReLU in the stem.
      stem_width: stem conv channels (``deep``: the first two convs; the stem outputs twice it).
      shortcut: ``A`` (parameter-free: subsample + zero-pad channels) or ``B`` (1x1 conv [+ BN]
        where the shape changes, identity otherwise).
      avg_down: ResNet-D projection shortcuts (``B`` only, post-activation blocks): 2x2 average
        pool (where strided), then a stride-1 1x1 conv + BN, named ``downsample_1/2`` as timm.
      attn_layer: channel attention after each block's last BN (post-activation blocks), one
        of :data:`ATTN_LAYERS` (``eca``) or None; its module is named ``se`` as in timm.
      num_classes, dtype (compute dtype; parameters are float32), drop_path_rate (stochastic
        depth, linear over all blocks from 0 to this value).
      zero_init_last_bn: zero-init the last BN scale of each residual branch (for pre-activation
        blocks, the last conv's kernel), so every block starts as (ReLU of) its shortcut.
        Registered defaults: True for the ImageNet models (timm's default), False for the CIFAR
        and pre-activation models (as in the papers).
      scan_blocks: compile the identical blocks 1..n-1 of each stage once with ``nn.scan``
        (compile time independent of depth). The scanned blocks' convs use
        :func:`jaxconv.layers.loop_safe_conv` (XLA:CPU runs JAX's backward convs inside a loop
        ~10x slower otherwise), so forward-mode AD (``jax.jvp``/``jacfwd``) needs
        ``scan_blocks=False``. The parameter tree differs (see the module docstring).
    """

    stage_sizes: Sequence[int]
    block: Any = "basic"
    widths: Sequence[int] = (64, 128, 256, 512)
    stem: str = "imagenet"
    stem_width: int = 64
    shortcut: str = "B"
    num_classes: int = 1000
    dtype: Any = jnp.float32
    drop_path_rate: float = 0.0
    zero_init_last_bn: bool = True
    scan_blocks: bool = False
    base_width: int = 64
    avg_down: bool = False
    attn_layer: str | None = None

    def __post_init__(self):
        # Normalise before Flax freezes the instance: tuples keep the module hashable and
        # dtype strings ('bfloat16') become dtypes.
        object.__setattr__(self, "stage_sizes", positive_ints("stage_sizes", self.stage_sizes))
        object.__setattr__(self, "widths", positive_ints("widths", self.widths))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if len(self.stage_sizes) != len(self.widths):
            raise ValueError(
                f"stage_sizes {self.stage_sizes} and widths {self.widths} must have equal length"
            )
        block_cls = block_class(self.block)
        check_choice("stem", self.stem, STEMS)
        check_choice("shortcut", self.shortcut, SHORTCUTS)
        positive_ints("stem_width", (self.stem_width,))
        positive_ints("base_width", (self.base_width,))
        if self.base_width != 64 and block_cls.expansion == 1:
            raise ValueError(f"base_width must be 64 for block={self.block!r} (only the bottleneck "
                             f"blocks {[b for b, c in BLOCKS.items() if c.expansion > 1]} have an "
                             f"inner width), got {self.base_width!r}")
        preact = block_cls.preact
        if not isinstance(self.avg_down, bool):
            raise ValueError(f"avg_down must be a bool, got {self.avg_down!r}")
        if self.avg_down and (preact or self.shortcut != "B"):
            raise ValueError(f"avg_down needs shortcut='B' and a post-activation block "
                             f"{[b for b, c in BLOCKS.items() if not c.preact]}, got "
                             f"block={self.block!r}, shortcut={self.shortcut!r}")
        if self.attn_layer is not None:
            check_choice("attn_layer", self.attn_layer, (None, *ATTN_LAYERS))
            if preact:
                raise ValueError(f"attn_layer needs a post-activation block "
                                 f"{[b for b, c in BLOCKS.items() if not c.preact]}, got "
                                 f"block={self.block!r}")
        if self.stem == "deep" and preact:
            raise ValueError(f"stem='deep' needs a post-activation block, got "
                             f"block={self.block!r}")
        positive_ints("num_classes", (self.num_classes,))
        rate = self.drop_path_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"drop_path_rate must be a float in [0, 1), got {rate!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        block_cls = block_class(self.block)
        x = jnp.asarray(x, self.dtype)

        # Stem.
        if self.stem == "deep":
            # timm's conv1 = Sequential(conv, bn, act, conv, bn, act, conv): indices 0, 1, 3, 4, 6.
            w = self.stem_width
            x = conv2d(w, 3, 2, dtype=self.dtype, name="conv1_0")(x)
            x = nn.relu(batch_norm(train, dtype=self.dtype, name="conv1_1")(x))
            x = conv2d(w, 3, dtype=self.dtype, name="conv1_3")(x)
            x = nn.relu(batch_norm(train, dtype=self.dtype, name="conv1_4")(x))
            x = conv2d(2 * w, 3, dtype=self.dtype, name="conv1_6")(x)
        else:
            k, s = (7, 2) if self.stem == "imagenet" else (3, 1)
            x = conv2d(self.stem_width, k, s, dtype=self.dtype, name="conv1")(x)
        if not block_cls.preact:
            x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        if self.stem in ("imagenet", "deep"):
            self.sow("intermediates", "stage0", x)  # timm's first feature (act1, stride 2)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        first_stage = 0 if self.stem == "cifar" else 1

        # Stages.
        rates = drop_path_rates(self.drop_path_rate, sum(self.stage_sizes))
        first = 0
        for stage, (n, width) in enumerate(zip(self.stage_sizes, self.widths)):

            def make(name, strides=1, width=width, in_scan=False):
                return block_cls(
                    features=width,
                    strides=strides,
                    shortcut=self.shortcut,
                    zero_init_last=self.zero_init_last_bn,
                    use_drop_path=self.drop_path_rate > 0,
                    train=train,
                    dtype=self.dtype,
                    loop_safe_conv=in_scan,
                    base_width=self.base_width,
                    avg_down=self.avg_down,
                    attn_layer=self.attn_layer,
                    name=name,
                )

            x = make(f"layer{stage + 1}_0", strides=1 if stage == 0 else 2)(x, rates[first])
            if n > 1 and self.scan_blocks:
                scan = nn.scan(
                    _scan_body,
                    variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
                    split_rngs={"params": True, "dropout": True},
                    length=n - 1,
                )
                stage_rates = jnp.asarray(rates[first + 1 : first + n], jnp.float32)
                x, _ = scan(make(f"layer{stage + 1}_scan", in_scan=True), x, stage_rates)
            else:
                for b in range(1, n):
                    x = make(f"layer{stage + 1}_{b}")(x, rates[first + b])
            first += n
            self.sow("intermediates", f"stage{first_stage + stage}", x)

        # Head.
        if block_cls.preact:
            x = nn.relu(batch_norm(train, dtype=self.dtype, name="final_bn")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = dense(self.num_classes, dtype=self.dtype, name="fc")(x)
        return jnp.asarray(x, jnp.float32)


# --------------------------------------------------------------- scanned <-> unrolled layout

_UNROLLED = re.compile(r"^layer(\d+)_(\d+)$")
_SCANNED = re.compile(r"^layer(\d+)_scan$")


def unstack_scanned_blocks(variables: dict) -> dict:
    """Variables of a ``scan_blocks=True`` ResNet -> the layout of ``scan_blocks=False``.

    Works on a full variables dict (``{"params": ..., "batch_stats": ...}``) or a single
    collection; ``layer{s}_scan`` entries (leading axis = block) become ``layer{s}_{1..n-1}``.
    """
    if _is_variables(variables):
        return {col: unstack_scanned_blocks(tree) for col, tree in variables.items()}
    out = {}
    for key, sub in variables.items():
        m = _SCANNED.match(key)
        if m is None:
            out[key] = sub
            continue
        n = _leading_dim(sub)
        for i in range(n):
            out[f"layer{m.group(1)}_{i + 1}"] = jax.tree.map(lambda a, i=i: a[i], sub)
    return out


def stack_scanned_blocks(variables: dict) -> dict:
    """Inverse of :func:`unstack_scanned_blocks`: stack ``layer{s}_{1..}`` into ``layer{s}_scan``."""
    if _is_variables(variables):
        return {col: stack_scanned_blocks(tree) for col, tree in variables.items()}
    out, stacks = {}, {}
    for key, sub in variables.items():
        m = _UNROLLED.match(key)
        if m is None or m.group(2) == "0":
            out[key] = sub
        else:
            stacks.setdefault(m.group(1), {})[int(m.group(2))] = sub
    for stage, blocks in stacks.items():
        if sorted(blocks) != list(range(1, len(blocks) + 1)):
            raise ValueError(f"stage {stage}: blocks {sorted(blocks)} are not 1..n-1")
        ordered = [blocks[i] for i in range(1, len(blocks) + 1)]
        out[f"layer{stage}_scan"] = jax.tree.map(lambda *xs: jnp.stack(xs), *ordered)
    return out


def _is_variables(tree: dict) -> bool:
    return any(k in tree for k in ("params", "batch_stats"))


def _leading_dim(tree) -> int:
    return int(jax.tree.leaves(tree)[0].shape[0])


# --------------------------------------------------------------------------------- registry

_RESNET_PAPER = "He et al. 2016, Deep Residual Learning for Image Recognition, arXiv:1512.03385"
_PREACT_PAPER = "He et al. 2016, Identity Mappings in Deep Residual Networks, arXiv:1603.05027"


def _cifar(depth: int, block: str, overrides: dict) -> ResNet:
    preact_bottleneck = block == "preact_bottleneck"
    per_stage = (depth - 2) // (9 if preact_bottleneck else 6)
    defaults = dict(
        stage_sizes=(per_stage,) * 3,
        block=block,
        widths=(16, 32, 64),
        stem="cifar",
        stem_width=16,
        shortcut="B" if block.startswith("preact") else "A",
        num_classes=10,
        zero_init_last_bn=False,
        scan_blocks=True,
    )
    return ResNet(**{**defaults, **overrides})


def _imagenet(stage_sizes, block: str, overrides: dict) -> ResNet:
    defaults = dict(stage_sizes=stage_sizes, block=block, scan_blocks=False)
    return ResNet(**{**defaults, **overrides})


def _register_cifar(paper):
    return register_model(family="resnet", paper=paper, input_size=(32, 32, 3), num_classes=10)


def _register_imagenet(paper=_RESNET_PAPER):
    return register_model(
        family="resnet", paper=paper, input_size=(224, 224, 3), num_classes=1000
    )


@_register_cifar(_RESNET_PAPER)
def resnet20(**overrides) -> ResNet:
    """ResNet-20 for CIFAR (He et al. 2016 §4.2, n=3, option-A shortcuts), 0.27M params."""
    return _cifar(20, "basic", overrides)


@_register_cifar(_RESNET_PAPER)
def resnet32(**overrides) -> ResNet:
    """ResNet-32 for CIFAR (He et al. 2016 §4.2, n=5, option-A shortcuts), 0.46M params."""
    return _cifar(32, "basic", overrides)


@_register_cifar(_RESNET_PAPER)
def resnet44(**overrides) -> ResNet:
    """ResNet-44 for CIFAR (He et al. 2016 §4.2, n=7, option-A shortcuts), 0.66M params."""
    return _cifar(44, "basic", overrides)


@_register_cifar(_RESNET_PAPER)
def resnet56(**overrides) -> ResNet:
    """ResNet-56 for CIFAR (He et al. 2016 §4.2, n=9, option-A shortcuts), 0.85M params."""
    return _cifar(56, "basic", overrides)


@_register_cifar(_RESNET_PAPER)
def resnet110(**overrides) -> ResNet:
    """ResNet-110 for CIFAR (He et al. 2016 §4.2, n=18, option-A shortcuts), 1.7M params."""
    return _cifar(110, "basic", overrides)


@_register_cifar(_RESNET_PAPER)
def resnet1202(**overrides) -> ResNet:
    """ResNet-1202 for CIFAR (He et al. 2016 §4.2, n=200, option-A shortcuts), 19.4M params."""
    return _cifar(1202, "basic", overrides)


@_register_cifar(_PREACT_PAPER)
def preact_resnet110(**overrides) -> ResNet:
    """Pre-activation ResNet-110 for CIFAR (He et al. 2016b, basic blocks), 1.7M params."""
    return _cifar(110, "preact_basic", overrides)


@_register_cifar(_PREACT_PAPER)
def preact_resnet164(**overrides) -> ResNet:
    """Pre-activation ResNet-164 for CIFAR (He et al. 2016b, bottleneck blocks), 1.7M params."""
    return _cifar(164, "preact_bottleneck", overrides)


@_register_cifar(_PREACT_PAPER)
def preact_resnet1001(**overrides) -> ResNet:
    """Pre-activation ResNet-1001 for CIFAR (He et al. 2016b, bottleneck blocks), 10.2M params."""
    return _cifar(1001, "preact_bottleneck", overrides)


@_register_imagenet()
def resnet18(**overrides) -> ResNet:
    """ResNet-18 (timm/torchvision structure), 11,689,512 params."""
    return _imagenet((2, 2, 2, 2), "basic", overrides)


@_register_imagenet()
def resnet34(**overrides) -> ResNet:
    """ResNet-34 (timm/torchvision structure), 21,797,672 params."""
    return _imagenet((3, 4, 6, 3), "basic", overrides)


@_register_imagenet()
def resnet50(**overrides) -> ResNet:
    """ResNet-50 v1.5 (timm/torchvision structure, stride on the 3x3), 25,557,032 params."""
    return _imagenet((3, 4, 6, 3), "bottleneck", overrides)


@_register_imagenet()
def resnet101(**overrides) -> ResNet:
    """ResNet-101 v1.5 (timm/torchvision structure, stride on the 3x3), 44,549,160 params."""
    return _imagenet((3, 4, 23, 3), "bottleneck", overrides)


@_register_imagenet()
def resnet152(**overrides) -> ResNet:
    """ResNet-152 v1.5 (timm/torchvision structure, stride on the 3x3), 60,192,808 params."""
    return _imagenet((3, 8, 36, 3), "bottleneck", overrides)


_WRN_PAPER = "Zagoruyko & Komodakis 2016, Wide Residual Networks, arXiv:1605.07146"


@_register_imagenet(_WRN_PAPER)
def wide_resnet50_2(**overrides) -> ResNet:
    """Wide ResNet-50-2 (timm: ResNet-50, bottlenecks 2x wide), 68,883,240 params."""
    return _imagenet((3, 4, 6, 3), "bottleneck", {"base_width": 128, **overrides})


@_register_imagenet(_WRN_PAPER)
def wide_resnet101_2(**overrides) -> ResNet:
    """Wide ResNet-101-2 (timm: ResNet-101, bottlenecks 2x wide), 126,886,696 params."""
    return _imagenet((3, 4, 23, 3), "bottleneck", {"base_width": 128, **overrides})


# ------------------------------------------------------------------- ECA-ResNets (ResNet-D)

_ECA_PAPER = ("Wang et al. 2020, ECA-Net: Efficient Channel Attention for Deep Convolutional "
              "Neural Networks, arXiv:1910.03151")


@register_model(family="ecaresnet", paper=_ECA_PAPER, input_size=(224, 224, 3), num_classes=1000)
def ecaresnet50d(**overrides) -> ResNet:
    """ECA-ResNet-50-D (timm: deep stem, avg-pool shortcuts, ECA per block), 25,576,350 params."""
    defaults = dict(stage_sizes=(3, 4, 6, 3), block="bottleneck", stem="deep", stem_width=32,
                    avg_down=True, attn_layer="eca", scan_blocks=False)
    return ResNet(**{**defaults, **overrides})
