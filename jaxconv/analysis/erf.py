"""Effective receptive field (ERF) of a model's stage: how much each input pixel moves the
central output pixel.

Following RepLKNet (Ding et al. 2022, "Scaling Up Your Kernels to 31x31: Revisiting Large Kernel
Design in CNNs", arXiv:2203.06717, section "Large-Kernel CNNs have Larger ERF than Deep
Small-Kernel Models" and its appendix; after Luo et al. 2016, arXiv:1701.04128): take a stage's feature map (RepLKNet uses the last stage), sum its central
pixel over channels, differentiate w.r.t. the input, aggregate the input gradient over input
channels and average the map over many inputs (RepLKNet: 50 validation images at 1024x1024).
The heatmap is shown log-scaled (``log10(erf + 1)``, then divided by its maximum), and summarised
by the *high-contribution area ratio*: the area of the smallest centred square holding a
fraction t of the total contribution, over the input area (RepLKNet reports t = 20%, 30%, 50%,
99%; a larger ratio means contributions spread farther from the centre).

Gradient aggregation: ``"abs"`` (default) sums |d out / d x| over input channels, so cancelling
positive and negative paths do not hide the support; ``"relu"`` is what RepLKNet's script does
(ReLU on the central output before summing, ReLU on the gradient). Inputs are standard-normal
random images unless given; an ERF measured on random-init weights shows the architecture's
geometry, not what training makes of it (trained weights change the picture a lot).

    from jaxconv import analysis
    erf = analysis.effective_receptive_field(model, variables, (64, 64, 3), num_inputs=8)
    analysis.area_ratios(erf)          # {0.2: ..., 0.3: ..., 0.5: ..., 0.99: ...}
    plt.imshow(analysis.erf_heatmap(erf))
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxconv.models.features import stage_features

__all__ = ["AREA_THRESHOLDS", "ERF_AGGREGATIONS", "area_ratios", "effective_receptive_field",
           "erf_heatmap", "high_contribution_area_ratio"]

#: RepLKNet's thresholds for the high-contribution area ratio.
AREA_THRESHOLDS = (0.2, 0.3, 0.5, 0.99)
#: How the input gradient is aggregated over channels (see the module docstring).
ERF_AGGREGATIONS = ("abs", "relu")


def _select_stage(features, stage):
    names = [f.name for f in features]
    if isinstance(stage, str):
        if stage not in names:
            raise ValueError(f"stage={stage!r} is not one of the model's stages {names}")
        return features[names.index(stage)].array
    if isinstance(stage, bool) or not isinstance(stage, int) or not -len(names) <= stage < len(
            names):
        raise ValueError(f"stage must be a stage name in {names} or an index in "
                         f"[{-len(names)}, {len(names)}), got {stage!r}")
    return features[stage].array


def effective_receptive_field(model: nn.Module, variables, input_size: Sequence[int], *,
                              stage: str | int = -1, num_inputs: int = 8, inputs=None,
                              key: jax.Array | None = None, batch_size: int = 8,
                              aggregation: str = "abs", fast_compile: bool = True) -> np.ndarray:
    """The ERF map [H, W] (float64 NumPy) of ``stage`` of ``model`` at ``input_size`` (H, W, C).

    ``stage``: a sown stage name (``"stage3"``) or index (default -1, the last stage, as
    RepLKNet). The gradient of the channel sum of the stage's central pixel (h // 2, w // 2;
    it sits at the image centre only if the stage map has odd sides, e.g. a 160x160 input for
    a stride-32 stage) w.r.t. each input, aggregated over input channels (``aggregation``), averaged over
    ``num_inputs`` standard-normal inputs drawn from ``key`` (default ``jax.random.key(0)``),
    or over ``inputs`` [N, H, W, C] if given. Runs eval mode, ``batch_size`` inputs per jitted
    gradient call (inputs are independent in eval mode, so one backward pass of the batch sum
    gives every per-input gradient). ``fast_compile``: on CPU, compile with XLA's backend
    optimisation off (:data:`FAST_CPU_COMPILE`; compiling dominates here), elsewhere ignored.
    """
    size = tuple(input_size)
    if len(size) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                             for d in size):
        raise ValueError(f"input_size must be (H, W, C) positive ints, got {input_size!r}")
    if aggregation not in ERF_AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {list(ERF_AGGREGATIONS)}, got "
                         f"{aggregation!r}")
    for field, value in (("num_inputs", num_inputs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{field} must be a positive int, got {value!r}")
    if inputs is None:
        key = jax.random.key(0) if key is None else key
        inputs = jax.random.normal(key, (num_inputs, *size), jnp.float32)
    else:
        inputs = jnp.asarray(inputs, jnp.float32)
        if inputs.ndim != 4 or tuple(inputs.shape[1:]) != size:
            raise ValueError(f"inputs must be [N, {size[0]}, {size[1]}, {size[2]}] to match "
                             f"input_size, got shape {tuple(inputs.shape)}")
    # Checks the stage before anything is compiled (abstract trace only).
    _select_stage(_abstract_stages(model, variables, (1, *size)), stage)

    def central(x, variables):
        feature = _select_stage(stage_features(model, variables, x), stage)
        h, w = feature.shape[1:3]
        value = feature[:, h // 2, w // 2, :].astype(jnp.float32)
        if aggregation == "relu":
            value = jax.nn.relu(value)
        return value.sum()

    # The variables are an argument, not a closure: closed-over arrays would be baked into the
    # program as constants (slow compiles, constant folding of every weight).
    def contribution(x, variables):
        grad = jax.grad(central)(x, variables)
        grad = jnp.abs(grad) if aggregation == "abs" else jax.nn.relu(grad)
        return grad.sum(axis=(0, 3))

    compiled = {}
    total = np.zeros(size[:2], np.float64)
    for start in range(0, inputs.shape[0], batch_size):
        batch = inputs[start:start + batch_size]
        if batch.shape not in compiled:
            compiled[batch.shape] = _compile(contribution, (batch, variables), fast_compile)
        total += np.asarray(compiled[batch.shape](batch, variables), np.float64)
    return total / inputs.shape[0]


#: XLA:CPU options that cut compile time several-fold (backend optimisation off); a gradient
#: evaluated a few times does not repay a fully optimised compile (toy ConvNeXt: 15 s -> 2 s).
FAST_CPU_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def _compile(fn, args, fast_compile: bool):
    lowered = jax.jit(fn).lower(*args)
    if not fast_compile or jax.default_backend() != "cpu":
        return lowered.compile()
    try:
        return lowered.compile(compiler_options=FAST_CPU_COMPILE)
    except Exception as err:  # an XLA build without one of these options
        if "option" not in str(err).lower():
            raise
        return lowered.compile()


def _abstract_stages(model: nn.Module, variables, shape):
    """Stage features of ``model`` at ``shape`` as abstract values (nothing is computed)."""
    return jax.eval_shape(lambda v, x: stage_features(model, v, x), variables,
                          jax.ShapeDtypeStruct(shape, jnp.float32))


def erf_heatmap(erf) -> np.ndarray:
    """RepLKNet's display form: ``log10(erf + 1)`` divided by its maximum (values in [0, 1]).

    The log is taken of ``erf`` scaled to a maximum of 100 first, so the picture does not
    depend on the overall gradient scale (random-init gradients can be tiny or huge).
    """
    erf = np.asarray(erf, np.float64)
    peak = erf.max()
    if peak <= 0:
        return np.zeros_like(erf)
    shown = np.log10(erf * (100.0 / peak) + 1.0)
    return shown / shown.max()


def high_contribution_area_ratio(erf, threshold: float) -> float:
    """Area of the smallest centred square of ``erf`` holding ``threshold`` of its total, over
    the map's area.

    Squares have odd sides 1, 3, 5, ... around (H // 2, W // 2), clipped at the borders; a map
    whose total is zero raises ``ValueError``.
    """
    erf = np.asarray(erf, np.float64)
    if erf.ndim != 2:
        raise ValueError(f"erf must be a 2-D map [H, W], got shape {erf.shape}")
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    total = erf.sum()
    if total <= 0:
        raise ValueError("erf has no positive contribution (all zeros?)")
    h, w = erf.shape
    ch, cw = h // 2, w // 2
    for radius in range(max(h, w)):
        top, bottom = max(ch - radius, 0), min(ch + radius + 1, h)
        left, right = max(cw - radius, 0), min(cw + radius + 1, w)
        # Relative tolerance: a square that holds everything must count as 100%.
        if erf[top:bottom, left:right].sum() >= threshold * total * (1 - 1e-12):
            return (bottom - top) * (right - left) / (h * w)
    return 1.0


def area_ratios(erf, thresholds: Sequence[float] = AREA_THRESHOLDS) -> dict[float, float]:
    """:func:`high_contribution_area_ratio` for each threshold (RepLKNet's table row)."""
    return {t: high_contribution_area_ratio(erf, t) for t in thresholds}
