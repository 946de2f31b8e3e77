"""timm / PyTorch state_dict -> jaxconv variables (see the package docstring for the design).

The expected keys come from the model itself: the abstract variables
(:func:`jaxconv.analysis.init_variables`, no initialiser runs) are walked leaf by leaf, each
Flax path is turned into a timm key by the family's :class:`TimmFamily` rule, and the state_dict
must provide exactly those keys with the matching PyTorch shapes; anything else is refused with
one ``ValueError`` that lists every missing, unexpected and wrongly shaped key.

The rules of jaxconv's families live here, keyed by registry family (end of this file), so a
model file needs nothing from this package and a copy of it can neither break nor replace them.
Depthwise kernels are found by module type: every :class:`jaxconv.layers.DepthwiseConv2D` met
while tracing ``init`` holds ``[kh, kw, C]``, which is timm's ``[C, 1, kh, kw]``.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxconv.analysis import init_variables
from jaxconv.layers.depthwise import DepthwiseConv2D
from jaxconv.registry import create_model, model_info

__all__ = ["TimmFamily", "from_timm", "register_timm_family", "timm_key_map"]

#: (collection, Flax leaf name) -> timm leaf name; other leaves keep their name.
LEAF_NAMES: dict[tuple[str, str], str] = {
    ("params", "kernel"): "weight",   # conv / linear
    ("params", "scale"): "weight",    # BatchNorm / LayerNorm gamma
    ("params", "bias"): "bias",
    ("batch_stats", "mean"): "running_mean",
    ("batch_stats", "var"): "running_var",  # used alike in eval mode: copied as is
}
#: timm keys that never have a jaxconv counterpart.
ALWAYS_IGNORED = (r"(^|\.)num_batches_tracked$",)

_TRAILING_INDEX = re.compile(r"_(\d+)(?=(?:_\d+)*$)")


@dataclasses.dataclass(frozen=True)
class TimmFamily:
    """How one model family's Flax variables map onto timm's state_dict keys.

    The default rule needs no configuration: a Flax module path ``a/b_1_0/c`` is the timm
    module ``a.b.1.0.c`` ('/' is '.', and trailing ``_<int>`` groups of a path component are
    ``nn.Sequential`` indices), and leaves are renamed by :data:`LEAF_NAMES`.

    Fields:
      renames: ``(pattern, replacement)`` regex substitutions applied, in order, to the
        '/'-joined Flax module path before the default rule, for modules whose Flax name is not
        the timm name (e.g. ResNet's ``downsample_conv`` is timm's ``downsample.0``).
      ignore: regexes of further timm keys to drop (buffers with no jaxconv counterpart).
      index_suffixes: read trailing ``_<int>`` groups as ``nn.Sequential`` indices (default).
        False for families whose names end in numbers (Inception's ``branch3x3_1``): then the
        timm name is the Flax path with '/' read as '.'.
      unrolled: module -> the module whose parameter tree is 1:1 with timm (for models with a
        ``scan_blocks`` layout); default: the module itself.
      to_model_layout: (variables of ``unrolled(model)``, model) -> variables of ``model``.
    """

    renames: tuple[tuple[str, str], ...] = ()
    ignore: tuple[str, ...] = ()
    index_suffixes: bool = True
    unrolled: Callable[[nn.Module], nn.Module] | None = None
    to_model_layout: Callable[[dict, nn.Module], dict] | None = None

    def __post_init__(self):
        for pattern, _ in self.renames:
            re.compile(pattern)
        for pattern in self.ignore:
            re.compile(pattern)

    def module_key(self, flax_path: tuple[str, ...]) -> str:
        """timm module name of the Flax module at ``flax_path``."""
        path = "/".join(flax_path)
        for pattern, replacement in self.renames:
            path = re.sub(pattern, replacement, path)
        parts = path.split("/")
        if self.index_suffixes:
            parts = [_TRAILING_INDEX.sub(r".\1", part) for part in parts]
        return ".".join(parts)

    def is_ignored(self, key: str) -> bool:
        return any(re.search(p, key) for p in ALWAYS_IGNORED + self.ignore)


_FAMILIES: dict[str, TimmFamily] = {}


def register_timm_family(family: str, rule: TimmFamily | None = None, *,
                         replace: bool = False) -> TimmFamily:
    """Declare that models of registry ``family`` convert from timm with ``rule``.

    jaxconv's own families are registered at the end of this module. Registering a family that
    already has a different rule raises ``ValueError`` unless ``replace=True`` (a forked model
    file must not silently change how jaxconv's models convert); the same rule again is a no-op.
    """
    rule = TimmFamily() if rule is None else rule
    if not isinstance(rule, TimmFamily):
        raise ValueError(f"rule must be a TimmFamily, got {type(rule).__name__}")
    old = _FAMILIES.get(family)
    if old is not None and old != rule and not replace:
        raise ValueError(f"register_timm_family({family!r}): the family already has a timm "
                         f"rule ({old}); pass replace=True to replace it, or register the fork "
                         "under its own family name")
    _FAMILIES[family] = rule
    return rule


def _family_rule(name: str) -> TimmFamily:
    family = model_info(name).family
    if family not in _FAMILIES:
        raise ValueError(
            f"from_timm({name!r}): no timm conversion rule for family {family!r}; families "
            f"with rules: {sorted(_FAMILIES)} (see jaxconv.convert: 'How to add a family')"
        )
    return _FAMILIES[family]


# ------------------------------------------------------------------------------ the key plan


@dataclasses.dataclass(frozen=True)
class _Entry:
    collection: str
    path: tuple[str, ...]   # Flax path inside the collection, leaf last
    shape: tuple[int, ...]  # Flax shape
    dtype: np.dtype
    #: A DepthwiseConv2D kernel: [kh, kw, C] here, [C, 1, kh, kw] in PyTorch.
    depthwise: bool = False

    @property
    def is_kernel(self) -> bool:
        return self.collection == "params" and self.path[-1] == "kernel" and len(self.shape) >= 2

    @property
    def torch_shape(self) -> tuple[int, ...]:
        """PyTorch's shape: kernels (*spatial, I, O) are (O, I, *spatial), depthwise kernels
        (kh, kw, C) are (C, 1, kh, kw)."""
        if not self.is_kernel:
            return self.shape
        if self.depthwise:
            return (self.shape[-1], 1, *self.shape[:-1])
        return (self.shape[-1], self.shape[-2], *self.shape[:-2])


def _trace_variables(model: nn.Module, input_shape) -> tuple[dict, frozenset]:
    """Abstract variables of ``model`` and the module paths of its DepthwiseConv2D layers
    (recorded while ``init`` is traced, so any model that uses the layer is covered)."""
    depthwise = set()

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, DepthwiseConv2D) and context.method_name == "__call__":
            depthwise.add(tuple(context.module.scope.path))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        abstract = init_variables(model, input_shape)
    return abstract, frozenset(depthwise)


def _abstract_unrolled(name: str, model: nn.Module, rule: TimmFamily):
    unrolled = rule.unrolled(model) if rule.unrolled else model
    info = model_info(name)
    return (unrolled, *_trace_variables(unrolled, (1, *info.input_size)))


def _plan(abstract: dict, rule: TimmFamily, depthwise: frozenset = frozenset()
          ) -> dict[str, _Entry]:
    plan: dict[str, _Entry] = {}
    for collection, tree in abstract.items():
        for path, leaf in flatten_dict(tree).items():
            timm_leaf = LEAF_NAMES.get((collection, path[-1]), path[-1])
            key = f"{rule.module_key(path[:-1])}.{timm_leaf}" if len(path) > 1 else timm_leaf
            is_dw = collection == "params" and path[-1] == "kernel" and path[:-1] in depthwise
            entry = _Entry(collection, path, tuple(leaf.shape), np.dtype(leaf.dtype), is_dw)
            if key in plan:
                other = plan[key]
                raise RuntimeError(
                    f"conversion rule maps both {other.collection}/{'/'.join(other.path)} and "
                    f"{collection}/{'/'.join(path)} to the timm key {key!r}"
                )
            plan[key] = entry
    return plan


def timm_key_map(name: str, *, model: nn.Module | None = None) -> dict[str, tuple[str, tuple]]:
    """``{timm key: (Flax 'collection/path', PyTorch shape)}`` that :func:`from_timm` expects."""
    rule = _family_rule(name)
    model = create_model(name) if model is None else model
    _, abstract, depthwise = _abstract_unrolled(name, model, rule)
    return {
        key: (f"{e.collection}/{'/'.join(e.path)}", e.torch_shape)
        for key, e in _plan(abstract, rule, depthwise).items()
    }


# ------------------------------------------------------------------------------ conversion


def _to_flax(entry: _Entry, value: np.ndarray) -> np.ndarray | None:
    """``value`` (PyTorch layout) in Flax layout, or None if its shape cannot be ``entry``'s.

    Kernels: (O, I, *spatial) -> (*spatial, I, O) (conv OIHW -> HWIO, grouped depthwise
    [C, 1, kh, kw] -> [kh, kw, 1, C], linear [out, in] -> [in, out]); DepthwiseConv2D kernels
    [C, 1, kh, kw] -> [kh, kw, C]; also accepted: a linear weight for a conv kernel
    ([O, I*kh*kw], torchvision's VGG classifier) and a 1x1 conv weight for a linear kernel
    ([O, I, 1, 1]).
    """
    if not entry.is_kernel:
        return value if value.shape == entry.shape else None
    torch_shape = entry.torch_shape
    if entry.depthwise:
        return np.transpose(value[:, 0], (1, 2, 0)) if value.shape == torch_shape else None
    if value.shape != torch_shape:
        same_size = value.size == int(np.prod(torch_shape))
        linear_for_conv = (value.ndim == 2 and len(torch_shape) > 2
                           and value.shape[0] == torch_shape[0])
        conv_for_linear = (len(torch_shape) == 2 and value.ndim > 2
                           and value.shape[:2] == torch_shape and set(value.shape[2:]) == {1})
        if not (same_size and (linear_for_conv or conv_for_linear)):
            return None
        value = value.reshape(torch_shape)
    axes = (*range(2, value.ndim), 1, 0)
    return np.transpose(value, axes)


def _prefix_hint(missing: list[str], unexpected: list[str]) -> str:
    """A hint when every unexpected key is a missing key behind a common prefix."""
    if not missing or len(unexpected) < len(missing):
        return ""
    for candidate in ("module.", "model.", "state_dict.", "backbone."):
        if all(k.startswith(candidate) for k in unexpected) and all(
            candidate + k in unexpected for k in missing
        ):
            return f"\n  hint: the keys carry the prefix {candidate!r}; strip it first"
    return ""


def _mismatch_error(name, n_expected, n_given, missing, unexpected, wrong) -> ValueError:
    lines = [
        f"from_timm({name!r}): the state_dict does not match jaxconv's {name} "
        f"({n_expected} keys expected, {n_given} given, num_batches_tracked ignored):"
    ]
    if missing:
        lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
        lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if wrong:
        lines.append(f"  wrongly shaped keys ({len(wrong)}, PyTorch layout):")
        lines += [f"    {k}: expected {exp}, got {got}" for k, exp, got in wrong]
    return ValueError("\n".join(lines) + _prefix_hint(missing, unexpected))


def from_timm(
    name: str, state_dict: Mapping[str, np.ndarray], *, model: nn.Module | None = None
) -> dict:
    """Variables for ``jaxconv.create_model(name)`` from a timm ``state_dict``.

    ``state_dict`` maps timm keys to arrays (NumPy, or anything ``np.asarray`` accepts: e.g.
    :func:`jaxconv.convert.load_state_dict` of a ``.safetensors``/``.npz`` file). ``model``:
    a module built with overrides (``create_model(name, num_classes=10)`` for a 10-class head,
    ``scan_blocks=True`` for the scanned ResNet layout, ``dtype``); default: the registered one.

    Returns ``{"params": ..., "batch_stats": ...}`` (the collections ``model.init`` makes),
    float32 ``jax.Array`` leaves, ready for ``model.apply(variables, x)``. Raises ``ValueError``
    listing every missing, unexpected and wrongly shaped key if the state_dict does not match.
    """
    rule = _family_rule(name)
    model = create_model(name) if model is None else model
    unrolled, abstract, depthwise = _abstract_unrolled(name, model, rule)
    plan = _plan(abstract, rule, depthwise)

    given = {k: v for k, v in state_dict.items() if not rule.is_ignored(k)}
    missing = [k for k in plan if k not in given]
    unexpected = [k for k in given if k not in plan]
    wrong, converted = [], {}
    for key, entry in plan.items():
        if key not in given:
            continue
        value = np.asarray(given[key])
        flax_value = _to_flax(entry, value)
        if flax_value is None:
            wrong.append((key, entry.torch_shape, tuple(value.shape)))
        else:
            converted[(entry.collection, *entry.path)] = (flax_value, entry.dtype)
    if missing or unexpected or wrong:
        raise _mismatch_error(name, len(plan), len(given), missing, unexpected, wrong)

    by_collection: dict[str, dict] = {}
    for (collection, *path), (value, dtype) in converted.items():
        leaf = jnp.array(value, dtype=dtype)  # a copy (never aliases the caller's buffers)
        by_collection.setdefault(collection, {})[tuple(path)] = leaf
    variables = {c: unflatten_dict(flat) for c, flat in by_collection.items()}
    if unrolled is not model:
        variables = rule.to_model_layout(variables, model) if rule.to_model_layout else variables
        _check_layout(name, model, variables)
    return variables


def _check_layout(name: str, model: nn.Module, variables: dict) -> None:
    expected = init_variables(model, (1, *model_info(name).input_size))
    shapes = lambda tree: jax.tree.map(lambda a: tuple(a.shape), tree)  # noqa: E731
    if shapes(expected) != shapes(variables):
        raise RuntimeError(f"from_timm({name!r}): the family's to_model_layout produced a tree "
                           "that differs from the model's variables")


# ---------------------------------------------------------------------- families in jaxconv
# Keyed by the registry family. The default rule (no arguments) covers every family whose Flax
# module names follow timm's; the others say how they differ.


def _resnet_unrolled(model):
    return model.clone(scan_blocks=False) if getattr(model, "scan_blocks", False) else model


def _resnet_layout(variables, model):
    # Lazy: the converter imports model code only when converting a scanned ResNet.
    from jaxconv.models.resnet import stack_scanned_blocks

    return stack_scanned_blocks(variables) if model.scan_blocks else variables


#: ResNet's projection shortcut is ``downsample_conv``/``_bn`` (timm ``downsample.0``/``.1``);
#: ResNet-D shortcuts are named ``downsample_1/2`` already. Scanned blocks convert unrolled.
_RESNET_RULE = TimmFamily(
    renames=((r"downsample_conv$", "downsample.0"), (r"downsample_bn$", "downsample.1")),
    unrolled=_resnet_unrolled,
    to_model_layout=_resnet_layout,
)

for _family, _rule in {
    "resnet": _RESNET_RULE,
    "ecaresnet": _RESNET_RULE,
    "vgg": TimmFamily(),
    "mobilenet": TimmFamily(),
    "coatnet": TimmFamily(),
    "convnext": TimmFamily(),
    "inception_next": TimmFamily(),
    # timm keeps everything but the classifier in an nn.Sequential called ``features``.
    "densenet": TimmFamily(
        renames=((r"^(conv0|norm0|denseblock\d+|transition\d+|norm5)\b", r"features/\1"),)),
    # Names like ``branch3x3_1`` keep their ``_1`` (no nn.Sequential indices in Inception v3).
    "inception": TimmFamily(index_suffixes=False),
}.items():
    register_timm_family(_family, _rule)
