"""Parameter counts, FLOPs and compile time of a model's forward (and backward) pass.

Everything here works on abstract values: variables come from ``jax.eval_shape(model.init)``
(no initialiser runs, nothing compiles), so counting the parameters of ResNet-1202 takes a
fraction of a second where jitting its ``init`` takes many.

The functions assume the project's model convention: ``model.init(rng, x, train=False)``,
``model.apply(variables, x, train=...)``, BatchNorm statistics in the ``batch_stats``
collection (mutable in train mode) and drop path on the ``dropout`` rng stream.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import statistics
import time
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from jaxconv.layers import DclsDepthwiseConv2D, DepthwiseConv2D

__all__ = ["ACTIVATION_LAYERS", "DEPTHWISE_LAYERS", "compile_time", "count_macs", "count_params",
           "device_name", "init_variables", "median_seconds", "model_activations", "model_flops"]

_ABSTRACT_KEY = jax.ShapeDtypeStruct((2,), jnp.uint32)


def device_name() -> str:
    """What benchmarks and results rows name the machine by, e.g. ``gpu:NVIDIA H100 80GB HBM3
    x1 (16 host cores)`` or ``cpu:x86_64 x1 (2 host cores)``."""
    d = jax.devices()[0]
    kind = d.device_kind if d.platform != "cpu" else (platform.processor() or "cpu")
    return f"{d.platform}:{kind} x{jax.device_count()} ({os.cpu_count()} host cores)"


def median_seconds(fn, *args, repeats: int, warmup: int = 1) -> float:
    """Median seconds of ``fn(*args)`` after ``warmup`` calls (compilation), waiting for the
    device each time (``block_until_ready``): the timing every benchmark here uses."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_params(tree: Any) -> int:
    """Total number of elements in the leaves of ``tree``.

    Pass ``variables["params"]`` to count parameters; works on concrete arrays and on the
    ``jax.ShapeDtypeStruct`` leaves :func:`init_variables` returns.
    """
    return sum(math.prod(jnp.shape(leaf)) for leaf in jax.tree.leaves(tree))


def _check_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(input_shape)
    if not 2 <= len(shape) <= 5 or any(
        isinstance(d, bool) or not isinstance(d, int) or d <= 0 for d in shape
    ):
        raise ValueError("input_shape must be 2-5 positive ints: (B, H, W, C) images, (B, L, C) "
                         f"sequences, (B, L) token ids, (B, D, H, W, C) volumes; got {input_shape!r}")
    return shape


def _input(input_shape: Sequence[int], input_dtype) -> jax.ShapeDtypeStruct:
    """The abstract input: float32 unless ``input_dtype`` says otherwise (int32 token ids)."""
    return jax.ShapeDtypeStruct(_check_shape(input_shape), jnp.dtype(input_dtype))


def init_variables(model: nn.Module, input_shape: Sequence[int], rng=None, *,
                   input_dtype="float32") -> dict:
    """Abstract variables of ``model`` for an input of ``input_shape`` (B, H, W, C) (or (B, L, C),
    (B, L) with ``input_dtype="int32"`` for token ids, (B, D, H, W, C)).

    Runs ``model.init(rng, x, train=False)`` under ``jax.eval_shape``: the result has
    ``jax.ShapeDtypeStruct`` leaves and costs a trace, no compilation or initialiser.
    ``rng`` defaults to an abstract key.
    """
    x = _input(input_shape, input_dtype)
    return jax.eval_shape(
        lambda key, inputs: model.init(key, inputs, train=False),
        _ABSTRACT_KEY if rng is None else rng,
        x,
    )


def _forward(model: nn.Module, train: bool):
    """(variables, x, key) -> logits; train mode updates batch_stats and uses dropout rngs."""

    def fwd(variables, x, key):
        if not train:
            return model.apply(variables, x, train=False)
        logits, _ = model.apply(
            variables, x, train=True, mutable=["batch_stats"], rngs={"dropout": key}
        )
        return logits

    return fwd


def _train_step(model: nn.Module):
    """(variables, x, key) -> (loss, grads wrt params, new batch_stats): forward + backward."""

    def step(variables, x, key):
        def loss_fn(params):
            logits, updates = model.apply(
                {**variables, "params": params}, x, train=True,
                mutable=["batch_stats"], rngs={"dropout": key},
            )
            # Cross-entropy against class 0: any scalar loss gives the same backward graph.
            return -jnp.mean(jax.nn.log_softmax(logits)[:, 0]), updates

        (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])
        return loss, grads, updates

    return step


def _abstract_args(model, input_shape, input_dtype="float32"):
    variables = init_variables(model, input_shape, input_dtype=input_dtype)
    return variables, _input(input_shape, input_dtype), _ABSTRACT_KEY


def _unrolled(model: nn.Module) -> nn.Module:
    """The same model with scanned blocks unrolled (analyses that walk the program need every
    block to appear; the parameters are the same numbers in another layout)."""
    if "scan_blocks" in {f.name for f in dataclasses.fields(model)} and model.scan_blocks:
        return model.clone(scan_blocks=False)
    return model


#: Depthwise conv layers (one multiply-add per output element and tap in :func:`count_macs`).
DEPTHWISE_LAYERS = (DepthwiseConv2D, DclsDepthwiseConv2D)

#: Layers whose outputs count as activations: Dollar et al. 2021 ("Fast and Accurate Model
#: Scaling", arXiv:2103.06877) define a network's activations as the number of elements in the
#: output tensors of its convolutional (and dense) layers. A custom conv-like module is counted
#: when its class sets ``counts_as_activation = True``.
ACTIVATION_LAYERS = (nn.Conv, nn.ConvTranspose, nn.ConvLocal, nn.Dense, nn.DenseGeneral,
                     *DEPTHWISE_LAYERS)


def model_activations(model: nn.Module, input_shape: Sequence[int], *,
                      input_dtype="float32") -> int:
    """Activations of one eval-mode forward pass over ``input_shape`` (B, H, W, C): the element
    count of every conv/dense layer output (:data:`ACTIVATION_LAYERS`).

    Dollar et al. show that activations, more than FLOPs, predict the runtime of a ConvNet on
    memory-bound accelerators; multiply by the dtype size for bytes. Computed on abstract values
    (a trace, no compilation); scanned blocks are counted unrolled.
    """
    model = _unrolled(model)
    variables, x, _ = _abstract_args(model, input_shape, input_dtype)
    total = 0

    def count(next_fun, args, kwargs, context):
        nonlocal total
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and (
                isinstance(module, ACTIVATION_LAYERS)
                or getattr(type(module), "counts_as_activation", False)):
            total += sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(out))
        return out

    def fwd(variables, x):
        with nn.intercept_methods(count):
            return model.apply(variables, x, train=False)

    jax.eval_shape(fwd, variables, x)
    return int(total)


def count_macs(model: nn.Module, input_shape: Sequence[int], *,
               input_dtype="float32") -> int:
    """Multiply-adds of the ``nn.Conv``, ``nn.Dense`` and depthwise-conv layers
    (:class:`~jaxconv.layers.DepthwiseConv2D`, DCLS at its dense window) of one eval-mode forward
    pass over ``input_shape`` (B, H, W, C): the convention of papers' "FLOPs" tables (VGG,
    MobileNet, ConvNeXt, ...), every tap counted, padding included, elementwise work, attention
    matmuls and other layers not. For XLA's count of
    all the work (padding taps excluded, 2 FLOPs per multiply-add) see :func:`model_flops`.
    Computed on abstract values; scanned blocks are counted unrolled."""
    model = _unrolled(model)
    variables, x, _ = _abstract_args(model, input_shape, input_dtype)
    total = 0

    def count(next_fun, args, kwargs, context):
        nonlocal total
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name != "__call__":
            return out
        if isinstance(module, nn.Conv):
            taps = math.prod(module.kernel_size) * args[0].shape[-1]
            total += math.prod(out.shape) * taps // module.feature_group_count
        elif isinstance(module, nn.Dense):
            total += math.prod(out.shape) * args[0].shape[-1]
        elif isinstance(module, DEPTHWISE_LAYERS):
            total += math.prod(out.shape) * math.prod(module.kernel_size)
        return out

    def fwd(variables, x):
        with nn.intercept_methods(count):
            return model.apply(variables, x, train=False)

    jax.eval_shape(fwd, variables, x)
    return int(total)


def model_flops(model: nn.Module, input_shape: Sequence[int], *, train: bool = False,
                input_dtype="float32") -> float:
    """FLOPs of one forward pass over a batch of ``input_shape`` (B, H, W, C).

    The number is XLA's ``HloCostAnalysis`` of the *lowered* (pre-optimisation) apply, so no
    compilation happens: 2 FLOPs per multiply-add, plus elementwise/reduction ops. Two XLA
    conventions to know when comparing with paper figures: convolution taps that fall in the
    zero padding are not counted (so a 3x3 'same' conv on a 7x7 map counts ~18% fewer than
    ``2*H*W*k*k*Cin*Cout``), and a loop body is counted once whatever its trip count. Because of
    the latter, a module with a ``scan_blocks`` field is measured with ``scan_blocks=False``
    (same computation, unrolled; tracing ResNet-1202 unrolled takes ~20 s on a 2-core CPU); any
    other loop left in the program triggers a warning.
    ``train=True`` measures the train-mode forward (BatchNorm with batch statistics).
    """
    model = _unrolled(model)
    args = _abstract_args(model, input_shape, input_dtype)
    lowered = jax.jit(_forward(model, train)).lower(*args)
    if "stablehlo.while" in lowered.as_text():
        warnings.warn(
            f"{type(model).__name__} lowers to a loop; XLA counts a loop body once, so "
            "model_flops under-counts it", stacklevel=2
        )
    cost = lowered.cost_analysis()
    if not cost:  # Not every backend analyses lowered HLO; the compiled one always can.
        cost = lowered.compile().cost_analysis()
    if isinstance(cost, (list, tuple)):  # older JAX: one dict per device program
        cost = cost[0]
    return float(cost["flops"])


def compile_time(model: nn.Module, input_shape: Sequence[int], *, train: bool,
                 input_dtype="float32") -> float:
    """Seconds to lower and compile the forward (``train=False``, eval mode) or the
    forward+backward step (``train=True``: train-mode apply, cross-entropy, gradients with respect
    to the params) of ``model`` on ``input_shape``, for the default backend.

    Uses abstract inputs (nothing is initialised or run) and a fresh ``jax.jit`` each call, so the
    in-memory cache is not hit; a persistent compilation cache, if configured, would be.
    """
    fn = _train_step(model) if train else _forward(model, False)
    args = _abstract_args(model, input_shape, input_dtype)
    start = time.perf_counter()
    jax.jit(fn).lower(*args).compile()
    return time.perf_counter() - start
