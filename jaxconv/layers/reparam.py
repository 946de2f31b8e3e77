"""Structural re-parameterization: train with parallel branches and BatchNorms, deploy one conv.

RepVGG/RepLKNet/UniRepLKNet (Ding et al. 2021-2024) train a block as a sum of parallel convs,
each followed by BatchNorm (a large depthwise kernel plus small and dilated small kernels), which
optimises better than the large kernel alone; at inference every branch is linear, so the block
equals one conv with a bias. This module has the arithmetic and one public entry point:

    deploy_model, deploy_variables = reparameterize(model, variables)

``model`` is the training form (a Linen module with a ``deploy: bool`` field, ``False``);
``deploy_model`` is ``model.clone(deploy=True)``, and ``deploy_model.apply(deploy_variables, x)``
equals ``model.apply(variables, x, train=False)`` up to float32 rounding, with fewer parameters
and FLOPs.

How to make a block re-parameterizable (the :class:`Reparameterizable` protocol):

1. Give it a ``deploy: bool`` field and build the merged form when it is true (a conv with a
   bias, no BatchNorm); the model passes its own ``deploy`` field down to the block.
2. Give it a method ``deploy_variables(self, variables) -> variables``: ``variables`` maps each
   collection (``params``, ``batch_stats``, ...) to the block's own subtree in the training form;
   return the subtree of the deploy form, with collections the deploy form lacks left out (the
   BatchNorm statistics). Use :func:`fold_batch_norm`, :func:`pad_kernel`,
   :func:`dilate_kernel` and :func:`fold_batch_norm_into_next`; build branches from
   :class:`ConvBN` (conv + BN, deploy: conv with bias). The model itself may declare
   ``deploy_variables`` too (RepLKNet folds its final BN into the head); it runs last.
   Example: ``RepVGGStyle`` in tests/layers/test_reparam.py (3x3, 1x1 and identity branches).

:func:`reparameterize` finds every such block by tracing one eval-mode forward pass on abstract
values (``jax.eval_shape``, nothing runs) and converts them innermost first, so a block's
``deploy_variables`` sees its re-parameterizable children already in deploy form (a block that
contains a :class:`ConvBN` receives the ConvBN's subtree as ``{"conv": {"kernel", "bias"}}``).
Blocks inside ``nn.scan`` (stacked variables) are not supported.

Kernels follow Flax layouts, output channels last: dense convs HWIO, depthwise convs
``[KH, KW, C]`` (:class:`jaxconv.layers.DepthwiseConv2D`), dense layers ``[in, out]``; so BN
folding scales the last axis of every kind.
"""

from __future__ import annotations

import functools
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.layers.conv import conv2d
from jaxconv.layers.depthwise import DepthwiseConv2D
from jaxconv.layers.dtypes import canonical_dtype
from jaxconv.layers.norm import BN_EPSILON, batch_norm

__all__ = [
    "ConvBN",
    "Reparameterizable",
    "dilate_kernel",
    "find_reparameterizable",
    "fold_batch_norm",
    "fold_batch_norm_into_next",
    "is_reparameterizable",
    "pad_kernel",
    "reparameterize",
]

#: Input the model is traced on when ``reparameterize`` is given no ``input_shape``.
DEFAULT_TRACE_SHAPE = (1, 64, 64, 3)


@runtime_checkable
class Reparameterizable(Protocol):
    """A block with a training form and a merged deploy form (module docstring)."""

    deploy: bool

    def deploy_variables(self, variables: Mapping[str, Any]) -> dict:
        ...


def is_reparameterizable(module: Any) -> bool:
    """Whether ``module`` follows :class:`Reparameterizable` (a ``deploy`` field and a
    ``deploy_variables`` method)."""
    return isinstance(module, nn.Module) and callable(getattr(type(module), "deploy_variables",
                                                              None)) and hasattr(module, "deploy")


# ---------------------------------------------------------------------------- the arithmetic


def _xp(*arrays):
    """NumPy for host arrays (no per-op dispatch: converting RepLKNet-31B takes a moment),
    jax.numpy for jax arrays and tracers (under ``jax.eval_shape``/``jit``)."""
    return jnp if any(isinstance(a, jax.Array) or isinstance(a, jax.core.Tracer)
                      for a in arrays) else np


def _bn_factor_shift(bn_params, bn_stats, epsilon):
    xp = _xp(bn_params["scale"], bn_stats["var"])
    factor = bn_params["scale"] / xp.sqrt(bn_stats["var"] + epsilon)
    return factor, bn_params["bias"] - bn_stats["mean"] * factor


def fold_batch_norm(kernel, bias, bn_params: Mapping, bn_stats: Mapping,
                    epsilon: float = BN_EPSILON):
    """(kernel, bias) of ``BN(conv(x) + bias)`` in eval mode as one conv: ``conv(x) + bias'``.

    ``kernel``'s last axis is the output channel (HWIO, depthwise [KH, KW, C] or dense [I, O]);
    ``bias`` may be None (a conv without bias). ``bn_params`` holds Flax's ``scale``/``bias``,
    ``bn_stats`` its ``mean``/``var``.
    """
    factor, shift = _bn_factor_shift(bn_params, bn_stats, epsilon)
    bias = 0.0 if bias is None else bias
    return kernel * factor, shift + bias * factor


def fold_batch_norm_into_next(kernel, bias, bn_params: Mapping, bn_stats: Mapping,
                              epsilon: float = BN_EPSILON):
    """(kernel, bias) of ``layer(BN(x))`` as one layer, for a BN *before* a 1x1 conv (HWIO with
    H = W = 1, no padding) or a dense layer ([I, O]); exact because such a layer mixes channels
    at one position only. ``bias`` may be None."""
    if kernel.ndim == 4 and kernel.shape[:2] != (1, 1):
        raise ValueError(f"fold_batch_norm_into_next needs a 1x1 conv or a dense kernel: a BN "
                         f"before a padded KxK conv cannot be folded exactly; got kernel shape "
                         f"{kernel.shape}")
    factor, shift = _bn_factor_shift(bn_params, bn_stats, epsilon)
    matrix = kernel.reshape(kernel.shape[-2:])
    new_bias = shift @ matrix + (0.0 if bias is None else bias)
    return kernel * factor[:, None], new_bias


def pad_kernel(kernel, size: int | Sequence[int]):
    """Zero-pads a kernel's two leading (spatial) axes to ``size``, centred: a KxK conv with
    padding K//2 equals the padded conv with padding size//2."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    pads = []
    for k, n in zip(kernel.shape[:2], size):
        if n < k or (n - k) % 2:
            raise ValueError(f"cannot centre a kernel of spatial shape {kernel.shape[:2]} in "
                             f"{size}: the target must be at least as large, with an even "
                             f"difference")
        pads.append(((n - k) // 2, (n - k) // 2))
    return _xp(kernel).pad(kernel, pads + [(0, 0)] * (kernel.ndim - 2))


def dilate_kernel(kernel, dilation: int):
    """The dense kernel of a dilated conv: ``dilation - 1`` zeros between taps, so a k-tap kernel
    at dilation r becomes ``(k - 1) * r + 1`` taps (UniRepLKNet's merge of dilated branches)."""
    if isinstance(dilation, bool) or not isinstance(dilation, int) or dilation < 1:
        raise ValueError(f"dilation must be a positive int, got {dilation!r}")
    if dilation == 1:
        return kernel
    kh, kw = kernel.shape[:2]
    shape = ((kh - 1) * dilation + 1, (kw - 1) * dilation + 1) + kernel.shape[2:]
    xp = _xp(kernel)
    if xp is jnp:
        return jnp.zeros(shape, kernel.dtype).at[::dilation, ::dilation].set(kernel)
    out = np.zeros(shape, kernel.dtype)
    out[::dilation, ::dilation] = kernel
    return out


# ----------------------------------------------------------------------------- a basic block


class ConvBN(nn.Module):
    """Conv without bias + BatchNorm (``conv``, ``bn``); deploy: one conv with bias (``conv``).

    ``depthwise=True`` uses :class:`jaxconv.layers.DepthwiseConv2D` (channels unchanged,
    ``features`` ignored, ``implementation`` passed on); otherwise a dense conv with PyTorch's
    symmetric padding. ``dilation`` applies to depthwise convs only.
    """

    features: int | None
    kernel_size: int
    strides: int = 1
    depthwise: bool = False
    dilation: int = 1
    deploy: bool = False
    dtype: Any = jnp.float32
    implementation: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if not self.depthwise and self.dilation != 1:
            raise ValueError(f"dilation must be 1 for a dense ConvBN (depthwise=False), got "
                             f"{self.dilation!r}")
        super().__post_init__()

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.depthwise:
            conv = DepthwiseConv2D(self.kernel_size, self.strides, dilation=self.dilation,
                                   use_bias=self.deploy, dtype=self.dtype,
                                   implementation=self.implementation, name="conv")
        else:
            conv = conv2d(self.features, self.kernel_size, self.strides, use_bias=self.deploy,
                          dtype=self.dtype, name="conv")
        x = conv(x)
        if self.deploy:
            return x
        return batch_norm(train, dtype=self.dtype, name="bn")(x)

    def deploy_variables(self, variables):
        params, stats = variables["params"], variables["batch_stats"]
        kernel, bias = fold_batch_norm(params["conv"]["kernel"], params["conv"].get("bias"),
                                       params["bn"], stats["bn"])
        return {"params": {"conv": {"kernel": kernel, "bias": bias}}}


# ------------------------------------------------------------------------------- the walker


def _module_path(module: nn.Module) -> tuple[str, ...]:
    return tuple(module.scope.path)


def find_reparameterizable(model: nn.Module, variables: Mapping,
                           input_shape: Sequence[int] | None = None):
    """``[(path, module)]`` of every re-parameterizable block ``model`` calls in eval mode, found
    by tracing ``model.apply(variables, x, train=False)`` on abstract values."""
    shape = tuple(input_shape or DEFAULT_TRACE_SHAPE)
    found: dict[tuple[str, ...], nn.Module] = {}

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and is_reparameterizable(module):
            # An unbound copy: deploy_variables runs after the trace, on plain arrays.
            found.setdefault(_module_path(module), module.clone(parent=None))
        return next_fun(*args, **kwargs)

    def forward(variables, x):
        with nn.intercept_methods(record):
            return model.apply(variables, x, train=False)

    try:
        jax.eval_shape(forward, variables, jax.ShapeDtypeStruct(shape, jnp.float32))
    except flax.errors.ScopeParamShapeError as err:
        raise ValueError(f"tracing {type(model).__name__} on an input of shape {shape} does not "
                         f"match its variables; pass input_shape=(B, H, W, C) with the model's "
                         f"input channels ({err})") from err
    return list(found.items())


def _copy_tree(tree):
    if isinstance(tree, Mapping):
        return {k: _copy_tree(v) for k, v in tree.items()}
    return tree


def _get(tree, path):
    for key in path:
        if not isinstance(tree, Mapping) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _set(tree, path, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def _delete(tree, path):
    parent = _get(tree, path[:-1])
    if isinstance(parent, dict):
        parent.pop(path[-1], None)


def _prune(tree):
    """Drops dicts left empty by the conversion (a BN-only subtree of batch_stats)."""
    if not isinstance(tree, dict):
        return tree
    out = {}
    for k, v in tree.items():
        v = _prune(v)
        if not (isinstance(v, dict) and not v):
            out[k] = v
    return out


def reparameterize(model: nn.Module, variables: Mapping,
                   input_shape: Sequence[int] | None = None) -> tuple[nn.Module, dict]:
    """``(deploy_model, deploy_variables)`` of a training-form model (module docstring).

    ``input_shape``: what the model is traced on to find its blocks (shapes only); default
    :data:`DEFAULT_TRACE_SHAPE` (3 input channels): pass it for other input channel counts.
    Raises ``ValueError`` if the model has no ``deploy`` field or is already in deploy form.
    """
    if not isinstance(model, nn.Module) or not hasattr(model, "deploy"):
        raise ValueError(f"reparameterize needs a Linen module with a 'deploy' field; "
                         f"{type(model).__name__} has none")
    if model.deploy:
        raise ValueError(f"{type(model).__name__} is already in deploy form (deploy=True); "
                         f"pass the training form (deploy=False)")
    if hasattr(variables, "unfreeze"):
        variables = variables.unfreeze()
    blocks = find_reparameterizable(model, variables, input_shape)
    abstract = any(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in jax.tree.leaves(variables))
    convert = functools.partial(_convert, blocks)
    # Abstract variables (from init_variables) give abstract deploy variables, e.g. to count
    # the deploy form's parameters without drawing any.
    if abstract:
        out = jax.eval_shape(convert, variables)
    else:  # on the host in NumPy, float32 as the variables are
        out = jax.tree.map(jnp.asarray, convert(jax.tree.map(np.asarray, variables)))
    return model.clone(deploy=True), out


def _convert(blocks, variables):
    out = {col: _copy_tree(tree) for col, tree in variables.items()}
    # Innermost first: a parent's deploy_variables sees its children already converted.
    for path, block in sorted(blocks, key=lambda item: -len(item[0])):
        subtree = {col: _get(tree, path) for col, tree in out.items()}
        subtree = {col: sub for col, sub in subtree.items() if sub is not None}
        converted = block.deploy_variables(subtree)
        if not path:  # the model itself declares its branches
            out = {**{c: t for c, t in out.items() if c not in subtree}, **converted}
            continue
        for col in list(out):
            _delete(out[col], path)
            if col in converted:
                _set(out[col], path, converted[col])
    out = {col: _prune(tree) for col, tree in out.items()}
    return {col: tree for col, tree in out.items() if tree or col == "params"}
