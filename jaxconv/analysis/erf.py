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

Centring: the area ratios count squares around the middle pixel (H // 2, W // 2), but the field
of a stage's central pixel sits there only for some stems: a stride-2 conv with PyTorch padding
(ResNet's 7x7/2, pad 3) centres output pixel i on input pixel 2i, so ResNet-50's stride-32 field
at 160x160 is centred near (64, 64); a 4x4/4 patchify stem (ConvNeXt) centres it at 32i + 15.5.
``centre=True`` (default) finds the field's centre on the first batch and shifts every input so
that it lands on the middle pixel (the map is returned in the original coordinates; the rows or
columns shifted out of view contribute zero).

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
           "erf_heatmap", "field_centre", "high_contribution_area_ratio"]

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
                              aggregation: str = "abs", fast_compile: bool = True,
                              centre: bool = True) -> np.ndarray:
    """The ERF map [H, W] (float64 NumPy) of ``stage`` of ``model`` at ``input_size`` (H, W, C).

    ``stage``: a sown stage name (``"stage3"``) or index (default -1, the last stage, as
    RepLKNet). The gradient of the channel sum of the stage's central pixel (h // 2, w // 2)
    w.r.t. each input, with its field moved to the middle input pixel (H // 2, W // 2) when
    ``centre`` (module docstring; ``False`` keeps the raw geometry), aggregated over input
    channels (``aggregation``), averaged over
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

    def run(batch):
        if batch.shape not in compiled:
            compiled[batch.shape] = _compile(contribution, (batch, variables), fast_compile)
        return np.asarray(compiled[batch.shape](batch, variables), np.float64)

    shift = (0, 0)
    if centre:  # where the field sits now, from the first batch: move it to the middle pixel
        probe = run(inputs[:batch_size])
        stage_h, stage_w = _select_stage(_abstract_stages(model, variables, (1, *size)),
                                         stage).shape[1:3]
        found = field_centre(probe, (max(size[0] // stage_h, 1), max(size[1] // stage_w, 1)))
        shift = (found[0] - size[0] // 2, found[1] - size[1] // 2)
    total = np.zeros(size[:2], np.float64)
    for start in range(0, inputs.shape[0], batch_size):
        # The model sees the input moved by `shift`, so the field's centre lands on the middle
        # of the original frame; the map is moved back into that frame.
        total += _shift(run(_shift(inputs[start:start + batch_size], shift, axes=(1, 2))),
                        (-shift[0], -shift[1]), axes=(0, 1))
    return total / inputs.shape[0]


def _shift(a, shift, axes):
    """``a`` with its content moved by ``shift`` along ``axes`` (out[i] = a[i - s]), zero-filled."""
    xp = np if isinstance(a, np.ndarray) else jnp
    for s, axis in zip(shift, axes):
        if s == 0:
            continue
        n = a.shape[axis]
        pad = [(0, 0)] * a.ndim
        pad[axis] = (max(s, 0), max(-s, 0))
        index = [slice(None)] * a.ndim
        index[axis] = slice(max(-s, 0), max(-s, 0) + n)
        a = xp.pad(a, pad)[tuple(index)]
    return a


def field_centre(erf, stride: Sequence[int] = (1, 1)) -> tuple[int, int]:
    """(row, col) where the field in the map ``erf`` is centred. Per axis, on the profile
    (``erf`` summed over the other axis): the middle of its support where that lies inside the
    map (touching neither border); else the point about which the profile is most nearly
    mirror-symmetric, searched within ``stride`` of the map's middle and compared only where
    both sides are inside the map, so the border truncation of a field larger than the image
    does not pull it (a centroid would)."""
    erf = np.asarray(erf, np.float64)
    centre = []
    for axis, s in ((0, stride[0]), (1, stride[1])):
        profile = erf.sum(axis=1 - axis)
        nz = np.flatnonzero(profile > 0)
        if nz.size == 0:
            raise ValueError("erf has no positive contribution (all zeros?)")
        if nz[0] > 0 and nz[-1] < profile.size - 1:
            centre.append(int(np.floor((nz[0] + nz[-1]) / 2 + 0.5)))
            continue
        n, best = profile.size, None
        for twice in range(max(n - 2 * int(s), 2), min(n + 2 * int(s), 2 * n - 3) + 1):
            # Mirror about twice / 2 (half-integers included): pairs (lo, hi), lo + hi = twice.
            lo = np.arange(max(twice - (n - 1), 0), (twice + 1) // 2)
            hi = twice - lo
            if lo.size < 2:
                continue
            a, b = profile[lo], profile[hi]
            score = np.sum((a - b) ** 2) / max(np.sum(a ** 2 + b ** 2), 1e-300)
            if best is None or score < best[0]:
                best = (score, twice)
        centre.append(int(np.floor(best[1] / 2 + 0.5)))
    return centre[0], centre[1]


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
