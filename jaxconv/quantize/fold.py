"""BatchNorm folding for quantization, for any model whose convs feed their BatchNorm directly.

The quantization whitepaper (Krishnamoorthi 2018, section 3.2) quantizes the *folded* weights
``W * gamma / sigma``: that is what an integer inference engine runs, and it is why per-layer
(per-tensor) weight scales fail on depthwise-heavy models (the fold spreads the channels'
ranges apart). Models with a ``deploy`` field are first merged by
:func:`jaxconv.layers.reparameterize`; then :func:`fold_batch_norms` finds every conv or dense
layer whose output goes straight into a BatchNorm (traced on abstract values: the BN's input is
the very array the layer returned) and rewrites the variables so that

    kernel' = kernel * f,  bias' = bias * f,  f = scale / sqrt(var + eps)
    BN' = identity plus a bias: mean 0, var 1 - eps, scale 1, bias = beta - mean * f

The model is unchanged (the BN stays as an add-bias), so this works for every registered model
without a deploy form, and eval-mode outputs are equal up to float32 rounding.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.layers.depthwise import DepthwiseConv2D
from jaxconv.layers.reparam import reparameterize

__all__ = ["find_conv_bn_pairs", "fold_batch_norms", "prepare_for_quantization", "unrolled"]

_LAYERS = (nn.Conv, nn.Dense, DepthwiseConv2D)


def find_conv_bn_pairs(model: nn.Module, variables: Mapping,
                       input_shape: Sequence[int]) -> list[tuple[tuple, tuple, float]]:
    """``[(layer_path, bn_path, bn_epsilon)]`` of every conv/dense layer whose output is the input of a
    BatchNorm, found by tracing one eval-mode forward pass on abstract values."""
    last: dict[str, Any] = {}
    pairs: list[tuple[tuple, tuple, float]] = []

    def record(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(module, nn.BatchNorm) and args and last.get("out") is args[0]:
            pairs.append((last["path"], tuple(module.scope.path), module.epsilon))
        out = next_fun(*args, **kwargs)
        if isinstance(module, _LAYERS):
            last.update(out=out, path=tuple(module.scope.path))
        return out

    def forward(variables, x):
        with nn.intercept_methods(record):
            return model.apply(variables, x, train=False)

    jax.eval_shape(forward, variables, jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
    return pairs


def fold_batch_norms(model: nn.Module, variables: Mapping,
                     input_shape: Sequence[int]) -> tuple[dict, list]:
    """``(folded_variables, pairs)``: every conv->BN pair folded as in the module docstring."""
    if hasattr(variables, "unfreeze"):
        variables = variables.unfreeze()
    pairs = find_conv_bn_pairs(model, variables, input_shape)
    flat = {col: flax.traverse_util.flatten_dict(tree) for col, tree in variables.items()}
    params, stats = flat["params"], flat.get("batch_stats", {})
    for layer, bn, epsilon in pairs:
        mean, var = np.asarray(stats[bn + ("mean",)]), np.asarray(stats[bn + ("var",)])
        factor = np.asarray(params[bn + ("scale",)]) / np.sqrt(var + epsilon)
        kernel = np.asarray(params[layer + ("kernel",)])
        # Blocks stacked by nn.scan carry leading axes ([L, C] stats, [L, kh, kw, I, O] kernels).
        lead = factor.shape[:-1]
        params[layer + ("kernel",)] = kernel * factor.reshape(
            lead + (1,) * (kernel.ndim - factor.ndim) + factor.shape[-1:])
        if layer + ("bias",) in params:
            params[layer + ("bias",)] = np.asarray(params[layer + ("bias",)]) * factor
        params[bn + ("bias",)] = np.asarray(params[bn + ("bias",)]) - mean * factor
        params[bn + ("scale",)] = np.ones_like(factor)
        stats[bn + ("mean",)] = np.zeros_like(mean)
        stats[bn + ("var",)] = np.full_like(var, 1.0 - epsilon)
    out = {col: flax.traverse_util.unflatten_dict(tree) for col, tree in flat.items()}
    return jax.tree.map(jnp.asarray, out), pairs


def unrolled(model: nn.Module, variables: Mapping) -> tuple[nn.Module, Mapping]:
    """A ResNet with ``scan_blocks=True`` as its unrolled form (same variables, unstacked):
    qwix's per-layer params, the calibration collection and ZeroQ's per-BN statistics cannot
    live inside ``nn.scan``. Other models are returned unchanged."""
    if not getattr(model, "scan_blocks", False):
        return model, variables
    from jaxconv.models.resnet import unstack_scanned_blocks
    return model.clone(scan_blocks=False), unstack_scanned_blocks(dict(variables))


def prepare_for_quantization(model: nn.Module, variables: Mapping,
                             input_shape: Sequence[int]) -> tuple[nn.Module, dict, list]:
    """Deploy form (re-parameterized where the model has one, ResNet blocks unrolled from
    ``nn.scan``) with BatchNorms folded: ``(model, variables, folded_pairs)``."""
    model, variables = unrolled(model, variables)
    if hasattr(model, "deploy") and not model.deploy:
        model, variables = reparameterize(model, variables, input_shape)
    folded, pairs = fold_batch_norms(model, variables, input_shape)
    return model, folded, pairs
