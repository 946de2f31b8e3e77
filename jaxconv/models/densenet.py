"""DenseNets: ImageNet DenseNet-121/169/201 (timm names) and DenseNet-BC for CIFAR.

Paper: Gao Huang, Zhuang Liu, Laurens van der Maaten, Kilian Q. Weinberger, 2017, "Densely
Connected Convolutional Networks", arXiv:1608.06993. Memory-efficient option: Geoff Pleiss,
Danlu Chen, Gao Huang, Tongcheng Li, Laurens van der Maaten, Kilian Q. Weinberger, 2017,
"Memory-Efficient Implementation of DenseNets", arXiv:1707.06990.

Every dense layer is BN-ReLU-conv1x1(``bn_size * growth_rate``)-BN-ReLU-conv3x3(``growth_rate``)
on the concatenation of all earlier feature maps of its block (the "-B" bottleneck); transitions
are BN-ReLU-conv1x1(``floor(compression * C)``)-avgpool2x2 (the "-C" compression).

Parameter layout (``variables["params"]``; ``batch_stats`` mirrors it for the BatchNorms) is
timm's ``state_dict`` with the ``features.`` prefix dropped and ``.`` read as ``/``::

    conv0, norm0                       stem (``stem="imagenet"``: 7x7/2 conv, BN-ReLU, 3x3/2 max
                                       pool; ``stem="cifar"``: a 3x3 conv only, no norm0)
    denseblock{b}/denselayer{l}        b, l from 1: norm1 conv1 norm2 conv2
    transition{b}                      after every block but the last: norm conv
    norm5                              final BN-ReLU (named norm5 whatever the block count, as timm)
    classifier                         Dense (kernel [C, num_classes], bias)

so timm's ``features.denseblock1.denselayer1.norm1.weight`` is
``params/denseblock1/denselayer1/norm1/scale`` (the ``densenet`` rule of
:mod:`jaxconv.convert` adds the prefix back). Stage outputs are sown as
``intermediates/stage{i}``: for ImageNet models timm's five feature stages (strides 2, 4, 8, 16,
32: norm0's output before the pool, the outputs of dense blocks 1-3 before their transition, and
norm5's output); for CIFAR models the end of each resolution (dense blocks 1..n-1, then norm5).

``memory_efficient=True`` wraps each dense layer's concat-BN-ReLU-conv1x1 in ``nn.remat``
(Pleiss et al.'s recomputation): the backward pass recomputes the concatenation (and its BN-ReLU)
instead of keeping one per layer, so activation memory grows linearly with depth instead of
quadratically. Same parameter tree and same numbers either way. Measured with :func:`main`
(compiled ``temp_size_in_bytes`` of a densenet121 train-mode gradient, batch 8 at 128x128,
jax 0.10.2): 487 MiB concatenating, 256 MiB recomputing (0.53x); preallocating one buffer per
block (``dynamic_update_slice``, Pleiss et al.'s shared storage) does not help under XLA:
537 MiB, 292 MiB with recomputation. Caveat: XLA:CPU runs ``cse_barrier_expander`` early, which
strips the optimisation barriers of ``jax.checkpoint`` so that CSE merges the recomputation back
into the forward pass: on CPU the option saves nothing (487 MiB) unless that pass is disabled
(``compiler_options={"xla_disable_hlo_passes": "cse_barrier_expander"}``); GPU and TPU keep the
barriers.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxconv.layers import batch_norm, canonical_dtype, conv2d, dense
from jaxconv.models.checks import check_choice, positive_ints
from jaxconv.registry import register_model

__all__ = ["DenseBlock", "DenseLayer", "DenseNet", "Transition"]

STEMS = ("imagenet", "cifar")

#: torch.nn.init.kaiming_normal_ defaults (fan_in, gain sqrt(2), untruncated): timm's conv init.
_kaiming_normal_fan_in = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(features, kernel_size, strides=1, *, dtype, name):
    return conv2d(features, kernel_size, strides, dtype=dtype,
                  kernel_init=_kaiming_normal_fan_in, name=name)


def _bottleneck(layer: "DenseLayer", features: tuple):
    """concat -> BN -> ReLU -> conv1x1: the part whose activations grow with the layer index."""
    x = jnp.concatenate(features, axis=-1)
    x = nn.relu(batch_norm(layer.train, dtype=layer.dtype, name="norm1")(x))
    return _conv(layer.bn_size * layer.growth_rate, 1, dtype=layer.dtype, name="conv1")(x)


class DenseLayer(nn.Module):
    """One bottleneck layer: ``growth_rate`` new channels from all earlier ones (a tuple).

    ``train`` is a field so the layer can be rematerialised without static arguments.
    """

    growth_rate: int
    bn_size: int = 4
    dropout_rate: float = 0.0
    memory_efficient: bool = False
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, features: tuple):
        bottleneck = nn.remat(_bottleneck) if self.memory_efficient else _bottleneck
        x = bottleneck(self, tuple(features))
        x = nn.relu(batch_norm(self.train, dtype=self.dtype, name="norm2")(x))
        x = _conv(self.growth_rate, 3, dtype=self.dtype, name="conv2")(x)
        if self.dropout_rate > 0:
            x = nn.Dropout(self.dropout_rate)(x, deterministic=not self.train)
        return x


class DenseBlock(nn.Module):
    """``num_layers`` dense layers; returns the input and every layer's output, concatenated."""

    num_layers: int
    growth_rate: int
    bn_size: int = 4
    dropout_rate: float = 0.0
    memory_efficient: bool = False
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        features = [x]
        for i in range(self.num_layers):
            layer = DenseLayer(
                growth_rate=self.growth_rate, bn_size=self.bn_size,
                dropout_rate=self.dropout_rate, memory_efficient=self.memory_efficient,
                train=self.train, dtype=self.dtype, name=f"denselayer{i + 1}",
            )
            features.append(layer(tuple(features)))
        return jnp.concatenate(features, axis=-1)


class Transition(nn.Module):
    """BN-ReLU-conv1x1 to ``features`` channels, then 2x2 average pooling (stride 2)."""

    features: int
    train: bool = False
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        x = nn.relu(batch_norm(self.train, dtype=self.dtype, name="norm")(x))
        x = _conv(self.features, 1, dtype=self.dtype, name="conv")(x)
        return nn.avg_pool(x, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
    """DenseNet(-BC) over NHWC inputs; returns float32 logits ``[B, num_classes]``.

    Fields:
      block_config: dense layers per block (one resolution per block).
      growth_rate: channels each dense layer adds (``k``).
      bn_size: bottleneck width as a multiple of ``growth_rate`` (4 in the paper).
      stem_width: stem conv channels (``2k`` in the paper's BC models).
      compression: transition output = ``floor(compression * C)`` channels (``theta``, in (0, 1]).
      stem: ``imagenet`` (7x7/2 conv, BN-ReLU, 3x3/2 max pool) or ``cifar`` (one 3x3 conv).
      num_classes, dtype (compute dtype; parameters are float32).
      dropout_rate: dropout on each dense layer's output in train mode (timm's
        ``proj_drop_rate``; Huang et al. use 0.2 on CIFAR without augmentation), on the
        ``dropout`` rng stream. There is no ``drop_path_rate``: no residual branch to drop.
      memory_efficient: recompute each layer's concat-BN-ReLU-conv1x1 in the backward pass
        (module docstring); numerically identical, about half the activation memory of
        densenet121, a little more compute. No effect on XLA:CPU's default pipeline.
    """

    block_config: Sequence[int]
    growth_rate: int = 32
    bn_size: int = 4
    stem_width: int = 64
    compression: float = 0.5
    stem: str = "imagenet"
    num_classes: int = 1000
    dtype: Any = jnp.float32
    dropout_rate: float = 0.0
    memory_efficient: bool = False

    #: The dense block implementation (a subclass may swap it; not a field).
    block_cls: ClassVar[type] = DenseBlock

    def __post_init__(self):
        object.__setattr__(self, "block_config",
                           positive_ints("block_config", self.block_config))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        for field in ("growth_rate", "bn_size", "stem_width", "num_classes"):
            positive_ints(field, (getattr(self, field),))
        check_choice("stem", self.stem, STEMS)
        c = self.compression
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c <= 1:
            raise ValueError(f"compression must be a float in (0, 1], got {c!r}")
        rate = self.dropout_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 <= rate < 1:
            raise ValueError(f"dropout_rate must be a float in [0, 1), got {rate!r}")
        if not isinstance(self.memory_efficient, bool):
            raise ValueError(f"memory_efficient must be True or False, got "
                             f"{self.memory_efficient!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = jnp.asarray(x, self.dtype)
        stage = 0

        def sow(x):
            nonlocal stage
            self.sow("intermediates", f"stage{stage}", x)
            stage += 1

        if self.stem == "imagenet":
            x = _conv(self.stem_width, 7, 2, dtype=self.dtype, name="conv0")(x)
            x = nn.relu(batch_norm(train, dtype=self.dtype, name="norm0")(x))
            sow(x)
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = _conv(self.stem_width, 3, dtype=self.dtype, name="conv0")(x)

        last = len(self.block_config) - 1
        for i, num_layers in enumerate(self.block_config):
            x = self.block_cls(
                num_layers=num_layers, growth_rate=self.growth_rate, bn_size=self.bn_size,
                dropout_rate=self.dropout_rate, memory_efficient=self.memory_efficient,
                train=train, dtype=self.dtype, name=f"denseblock{i + 1}",
            )(x)
            if i != last:
                sow(x)
                x = Transition(math.floor(self.compression * x.shape[-1]), train=train,
                               dtype=self.dtype, name=f"transition{i + 1}")(x)

        x = nn.relu(batch_norm(train, dtype=self.dtype, name="norm5")(x))
        sow(x)
        x = jnp.mean(x, axis=(1, 2))
        x = dense(self.num_classes, dtype=self.dtype, name="classifier")(x)
        return jnp.asarray(x, jnp.float32)


# --------------------------------------------------------------------------------- registry

_PAPER = ("Huang et al. 2017, Densely Connected Convolutional Networks, arXiv:1608.06993")


def _register(input_size=(224, 224, 3), num_classes=1000):
    return register_model(family="densenet", paper=_PAPER, input_size=input_size,
                          num_classes=num_classes)


@_register()
def densenet121(**overrides) -> DenseNet:
    """DenseNet-121 (k=32, blocks 6-12-24-16; timm/torchvision structure), 7,978,856 params."""
    return DenseNet(**{"block_config": (6, 12, 24, 16), **overrides})


@_register()
def densenet169(**overrides) -> DenseNet:
    """DenseNet-169 (k=32, blocks 6-12-32-32; timm/torchvision structure), 14,149,480 params."""
    return DenseNet(**{"block_config": (6, 12, 32, 32), **overrides})


@_register()
def densenet201(**overrides) -> DenseNet:
    """DenseNet-201 (k=32, blocks 6-12-48-32; timm/torchvision structure), 20,013,928 params."""
    return DenseNet(**{"block_config": (6, 12, 48, 32), **overrides})


@_register(input_size=(32, 32, 3), num_classes=10)
def densenet_bc_100_k12(**overrides) -> DenseNet:
    """DenseNet-BC for CIFAR (depth 100, k=12, theta=0.5; Huang et al. Table 2), 0.8M params."""
    defaults = dict(block_config=(16, 16, 16), growth_rate=12, stem_width=24, stem="cifar",
                    num_classes=10)
    return DenseNet(**{**defaults, **overrides})


# ------------------------------------------------------------------- memory measurement


def main(argv=None) -> None:
    """Compiled activation memory of a DenseNet train step: concat vs remat vs preallocated.

    ``python -c "from jaxconv.models.densenet import main; main()" [--batch B] [--size S]``
    (a function, not ``-m``: running the module as ``__main__`` would register its models twice)
    compiles, never runs, the gradient of a train-mode cross-entropy loss on the default
    backend and prints XLA's ``temp_size_in_bytes`` (buffers live during the step besides
    arguments and outputs) for: concatenation per layer (the default), ``memory_efficient=True``
    (recomputation), a preallocated buffer filled with ``dynamic_update_slice`` (Pleiss et al.'s
    shared storage) alone and with recomputation.

    XLA:CPU (jax 0.10) runs ``cse_barrier_expander`` early in its pipeline: it strips the
    optimisation barriers ``jax.checkpoint`` relies on, and CSE then merges the recomputation
    back into the forward pass, so on CPU remat saves nothing. The rows marked "barriers kept"
    compile with that pass disabled (``compiler_options={"xla_disable_hlo_passes":
    "cse_barrier_expander"}``), which is what GPU/TPU pipelines do by default.
    """
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__.splitlines()[0])
    parser.add_argument("--model", default="densenet121")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)

    from jaxconv.analysis import init_variables
    from jaxconv.registry import create_model

    shape = (args.batch, args.size, args.size, 3)
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({jax.default_backend()}), jax {jax.__version__}")
    print(f"{args.model}, gradient of a train-mode loss, input {shape} float32")
    keep_barriers = {"xla_disable_hlo_passes": "cse_barrier_expander"}

    def temp_bytes(model, options):
        variables = init_variables(model, shape)

        def loss(params, batch_stats, x):
            logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, x,
                                    train=True, mutable=["batch_stats"])
            return -jnp.mean(jax.nn.log_softmax(logits)[:, 0])

        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        lowered = jax.jit(jax.grad(loss)).lower(variables["params"], variables["batch_stats"], x)
        return lowered.compile(compiler_options=options).memory_analysis().temp_size_in_bytes

    base = create_model(args.model)
    remat = base.clone(memory_efficient=True)
    prealloc = _PreallocatedDenseNet(**_fields(base))
    rows = [
        ("concatenate (default)", base, None),
        ("memory_efficient=True", remat, None),
        ("  the same, barriers kept", remat, keep_barriers),
        ("preallocated buffer", prealloc, None),
        ("  + remat, barriers kept", prealloc.clone(memory_efficient=True), keep_barriers),
    ]
    reference = None
    for label, model, options in rows:
        size = temp_bytes(model, options)
        reference = reference or size
        print(f"  {label:26s} temp {size / 2**20:9.1f} MiB  ({size / reference:.2f}x)", flush=True)


def _fields(module: nn.Module) -> dict:
    import dataclasses

    return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.init and f.name not in ("parent", "name")}


class _PreallocatedBlock(DenseBlock):
    """A dense block writing each layer's output into one preallocated buffer (measurement only)."""

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1] + self.num_layers * self.growth_rate
        buffer = jnp.zeros(x.shape[:-1] + (width,), x.dtype)
        buffer = jax.lax.dynamic_update_slice_in_dim(buffer, x, 0, axis=-1)
        used = x.shape[-1]
        for i in range(self.num_layers):
            layer = DenseLayer(
                growth_rate=self.growth_rate, bn_size=self.bn_size,
                dropout_rate=self.dropout_rate, memory_efficient=self.memory_efficient,
                train=self.train, dtype=self.dtype, name=f"denselayer{i + 1}",
            )
            new = layer((buffer[..., :used],))
            buffer = jax.lax.dynamic_update_slice_in_dim(buffer, new, used, axis=-1)
            used += self.growth_rate
        return buffer


class _PreallocatedDenseNet(DenseNet):
    """DenseNet whose blocks are :class:`_PreallocatedBlock` (same parameters; measurement only)."""

    block_cls: ClassVar[type] = _PreallocatedBlock

