"""Stage features of any registered model, without forking it (timm's ``features_only`` idea).

Every model sows its stage outputs with ``self.sow("intermediates", f"stage{i}", x)`` (i from 0,
outside any ``nn.scan``): for ImageNet models timm's feature stages (strides 2, 4, 8, 16, 32),
for CIFAR models the end of each resolution stage. Two functions read them::

    import jaxconv
    model = jaxconv.create_model("densenet121")
    jaxconv.feature_info(model, (1, 224, 224, 3))
    # [FeatureInfo(name='stage0', channels=64, stride=2, shape=(1, 112, 112, 64)), ...]
    for name, feature, stride in jaxconv.stage_features(model, variables, images):
        ...

:func:`feature_info` costs two traces under ``jax.eval_shape`` (``init``, then ``apply`` at the
probe size; nothing is initialised or compiled) and caches its result per model and shape. A
stage's ``stride`` is the model's nominal reduction, measured rather than declared: the input
side is grown by :data:`STRIDE_PROBE` pixels and ``stride = probe / growth`` of the stage's side.
This is exact for any stride dividing the probe, and it is the figure timm reports as
``reduction`` even where valid (unpadded) convolutions make a map smaller than
``input / stride`` (Inception v3 at 299: 147x147 for stride 2).

:func:`stage_features` runs ``model.apply`` with the ``intermediates`` collection mutable and
returns ``[StageFeature(name, array, stride), ...]`` in stage order; it works under ``jax.jit``,
and the features can be returned from it (``StageFeature`` is a pytree with static name and
stride). With ``mutable=["batch_stats"]`` (train mode) it returns ``(features, state)`` like
``Module.apply``, so BatchNorm statistics are not lost.
Only the model's own top-level ``stage{i}`` sows count; other intermediates are ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

__all__ = ["STRIDE_PROBE", "FeatureInfo", "StageFeature", "feature_info", "stage_features"]

#: Pixels added to the input side to measure strides (a multiple of every stride up to 256).
STRIDE_PROBE = 256

_STAGE = re.compile(r"^stage(\d+)$")
_ABSTRACT_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


@dataclasses.dataclass(frozen=True)
class FeatureInfo:
    """One stage of a model at a given input shape."""

    name: str
    channels: int
    #: Nominal reduction relative to the input (an int; ``(sh, sw)`` if the axes differ).
    stride: int | tuple[int, int]
    #: Feature shape (B, H, W, C) at the input shape ``feature_info`` was called with.
    shape: tuple[int, ...]


@flax.struct.dataclass
class StageFeature:
    """One stage's output. A pytree whose only leaf is ``array`` (name and stride are static), so
    it can be returned from ``jax.jit``; unpacks as ``name, array, stride``."""

    name: str = flax.struct.field(pytree_node=False)
    array: jax.Array
    stride: int | tuple[int, int] = flax.struct.field(pytree_node=False)

    def __iter__(self):
        return iter((self.name, self.array, self.stride))


def _stages(intermediates) -> list[tuple[str, Any]]:
    """The top-level ``stage{i}`` sows, ordered by i; a stage sown twice yields its last value."""
    found = []
    for key, value in (intermediates or {}).items():
        m = _STAGE.match(key)
        if m is not None:
            found.append((int(m.group(1)), key, value[-1] if isinstance(value, tuple) else value))
    return [(key, value) for _, key, value in sorted(found)]


def _abstract_init(model: nn.Module, shape: tuple[int, ...]) -> dict:
    """All collections of ``model.init`` (intermediates included) as ShapeDtypeStructs."""
    def init(key, x):
        return model.init({"params": key}, x, train=False, mutable=True)

    return jax.eval_shape(init, _ABSTRACT_KEY, jax.ShapeDtypeStruct(shape, jnp.float32))


def _abstract_apply_stages(model: nn.Module, variables: dict, shape: tuple[int, ...]):
    """Stages of an eval-mode apply at ``shape`` with the given abstract variables.

    Tracing ``apply`` skips every initialiser, so it costs about 60% of tracing ``init``; models
    whose parameter shapes depend on the input size fall back to a fresh ``init``.
    """
    def apply(variables, x):
        return model.apply(variables, x, train=False, mutable=["intermediates"])[1]

    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    try:
        state = jax.eval_shape(apply, variables, x)
    except (TypeError, ValueError):  # e.g. a flatten-dense head: params depend on the input
        state = _abstract_init(model, shape)
    return _stages(state.get("intermediates"))


def _normalise_shape(input_shape: Sequence[int]) -> tuple[int, int, int, int]:
    shape = tuple(input_shape)
    if len(shape) == 3:
        shape = (1,) + shape
    if len(shape) != 4 or any(isinstance(d, bool) or not isinstance(d, int) or d <= 0
                              for d in shape):
        raise ValueError(f"input_shape must be (H, W, C) or (B, H, W, C) positive ints, "
                         f"got {input_shape!r}")
    return shape


@functools.lru_cache(maxsize=256)
def _feature_info_cached(model: nn.Module, shape: tuple[int, ...]) -> tuple[FeatureInfo, ...]:
    variables = _abstract_init(model, shape)
    base = _stages(variables.pop("intermediates", None))
    if not base:
        raise ValueError(f"{type(model).__name__} sows no intermediates/stage{{i}} outputs; "
                         "see jaxconv.models.features")
    b, h, w, c = shape
    grown = dict(_abstract_apply_stages(model, variables,
                                        (b, h + STRIDE_PROBE, w + STRIDE_PROBE, c)))
    infos = []
    for name, feature in base:
        big = grown[name]
        strides = []
        for axis in (1, 2):
            growth = big.shape[axis] - feature.shape[axis]
            if growth <= 0:
                raise ValueError(f"{name} of {type(model).__name__} does not grow with the input "
                                 f"({feature.shape} -> {big.shape}); it has no spatial stride")
            strides.append(round(STRIDE_PROBE / growth))
        stride = strides[0] if strides[0] == strides[1] else tuple(strides)
        infos.append(FeatureInfo(name, int(feature.shape[-1]), stride, tuple(feature.shape)))
    return tuple(infos)


def feature_info(model: nn.Module, input_shape: Sequence[int]) -> list[FeatureInfo]:
    """Name, channels, stride and shape of each stage of ``model`` for ``input_shape``.

    ``input_shape`` is (H, W, C) or (B, H, W, C). Traces ``model.init`` and ``model.apply`` under
    ``jax.eval_shape`` (abstract values only; results are cached per model and shape). Raises
    ``ValueError`` if the model sows no stages.
    """
    shape = _normalise_shape(input_shape)
    try:
        return list(_feature_info_cached(model, shape))
    except TypeError as err:  # an unhashable module: compute without the cache
        if "unhashable" not in str(err):
            raise
        return list(_feature_info_cached.__wrapped__(model, shape))


def stage_features(model: nn.Module, variables, x, *, train: bool = False, rngs=None,
                   mutable=False):
    """Stage outputs of ``model.apply(variables, x, train=train)``, in stage order.

    Returns a list of :class:`StageFeature` ``(name, array, stride)``; with ``mutable`` (e.g.
    ``["batch_stats"]`` in train mode) returns ``(features, state)`` where ``state`` holds the
    updated mutable collections (``intermediates`` removed), like ``Module.apply``.
    """
    strides = {info.name: info.stride for info in feature_info(model, tuple(x.shape))}
    if mutable is True:
        collections = True
    else:
        collections = ["intermediates"] + ([mutable] if isinstance(mutable, str) else
                                           list(mutable or []))
    _, state = model.apply(variables, x, train=train, rngs=rngs, mutable=collections)
    state = dict(state)
    features = [StageFeature(name, value, strides[name])
                for name, value in _stages(state.pop("intermediates", None))]
    return (features, state) if mutable else features
