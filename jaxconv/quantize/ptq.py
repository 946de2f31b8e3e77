"""Post-training quantization of any registered model on google's qwix.

    qm = quantize(model, variables, calib_batches, get_scheme("int8_per_channel"))
    logits = qm.apply(x)            # integer weights, int8 activations, static scales

Steps: BatchNorm folded (:mod:`jaxconv.quantize.fold`); activation ranges calibrated on the
float (folded) model over N batches (:func:`calibrate`); then qwix's ``PtqProvider`` quantizes
every conv and dense layer: int8 x int8 operands, int32 accumulation, weight scales per output
channel or per tensor, one static scale per layer input. The variables of the quantized model
hold qwix ``QArray``s: real int8 arrays (``qvalue``) with float32 scales.

What qwix cannot see, and what this module does about it (:func:`xla_routing`):
  * ``jaxconv.layers.DepthwiseConv2D`` computes with ``kernels_pallas.depthwise_conv2d`` (Pallas,
    FFT or shifted multiply-adds): inside quantization it is routed through a quantized *XLA*
    path instead, ``lax.conv_general_dilated`` with ``feature_group_count=C`` on the same
    parameters, which qwix intercepts like any conv (per-channel scales per depthwise filter).
  * convs computed by ``jaxconv.layers.matmul_conv`` (a ``jnp.matmul``, not intercepted) run
    as the plain ``lax.conv_general_dilated`` they stand for.
Outside quantization both are left alone.

qwix gives per-channel conv weights only and absmax/minmax activation ranges; per-tensor weights,
4-bit weights in an int8 container and percentile/MSE ranges are supplied here through qwix's
own extension points (the ``_qarray_module`` of ``PtqProvider``/``quantize_params`` and the
activation-scale parameters it creates).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterable, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import qwix
from jax import lax
from qwix._src import qconfig
from qwix._src.core import qarray
from qwix._src.providers import ptq as qwix_ptq
from qwix._src.utils import flax_util

from jaxconv.layers.depthwise import DepthwiseConv2D, torch_depthwise_uniform
from jaxconv.quantize.fold import prepare_for_quantization
from jaxconv.quantize.schemes import QuantConfig

__all__ = ["QuantizedModel", "calibrate", "clip_range", "quantize", "quantize_rules",
           "weight_ops", "xla_routing"]

_LAYERS = (nn.Conv, nn.Dense, DepthwiseConv2D)


# ------------------------------------------------------------ routing ops qwix cannot see


def _depthwise_xla(module: DepthwiseConv2D, x):
    """DepthwiseConv2D as one grouped ``lax.conv_general_dilated`` (same params, same result)."""
    channels = x.shape[-1]
    kh, kw = module.kernel_size
    kernel = module.param("kernel", torch_depthwise_uniform(lambda s: s[0] * s[1]),
                          (kh, kw, channels), jnp.float32)
    y = lax.conv_general_dilated(
        jnp.asarray(x, module.dtype), kernel.reshape(kh, kw, 1, channels),
        window_strides=module.strides, padding=module.padding, rhs_dilation=module.dilation,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels)
    if module.use_bias:
        bias = module.param("bias", torch_depthwise_uniform(lambda s: kh * kw), (channels,),
                            jnp.float32)
        y = y + bias
    return y.astype(module.dtype)


def _route(next_fun, args, kwargs, context):
    module = context.module
    if context.method_name != "__call__":
        return next_fun(*args, **kwargs)
    if isinstance(module, DepthwiseConv2D):
        return _depthwise_xla(module, args[0])
    if isinstance(module, nn.Conv) and module.conv_general_dilated is not None:
        # e.g. matmul_conv: compute the conv it stands for, which qwix can intercept.
        custom = module.conv_general_dilated
        object.__setattr__(module, "conv_general_dilated", None)
        try:
            return next_fun(*args, **kwargs)
        finally:
            object.__setattr__(module, "conv_general_dilated", custom)
    return next_fun(*args, **kwargs)


def xla_routing():
    """Context in which every conv of a model is a ``lax.conv_general_dilated`` (module doc)."""
    return nn.intercept_methods(_route)


# ------------------------------------------------------------------------------ calibration


def clip_range(x, config: QuantConfig, bits: int = 8):
    """The activation clip (a scalar >= 0) of one batch ``x`` for ``config.calibration``."""
    a = jnp.abs(x.astype(jnp.float32)).ravel()
    absmax = jnp.max(a)
    if config.calibration == "absmax":
        return absmax
    if config.calibration == "percentile":
        return jnp.percentile(a, config.percentile)
    # mse: the clip among 0.05..1.0 x absmax whose symmetric quantization error is least.
    qmax = 2 ** (bits - 1) - 1
    clips = absmax * jnp.linspace(0.05, 1.0, 40)

    def error(clip):
        scale = jnp.maximum(clip, 1e-12) / qmax
        q = jnp.clip(jnp.round(a / scale), -qmax, qmax) * scale
        return jnp.mean((q - a) ** 2)

    return clips[jnp.argmin(jax.vmap(error)(clips))]


class _Recorder(qconfig.QuantizationProvider):
    """Runs the float ops, recording each quantized op's input clip into ``calibration``
    under the name qwix's PtqProvider gives the op's activation scale."""

    def __init__(self, rules, config: QuantConfig):
        super().__init__(rules)
        self._config = config

    def _record(self, name, x):
        module = flax_util.get_current_module()
        module.put_variable("calibration", name, clip_range(x, self._config))

    def conv_general_dilated(self, lhs, rhs, *args, **kwargs):
        rule, op_id = self._get_current_rule_and_op_id("conv_general_dilated")
        if rule is not None and rule.weight_qtype is not None:
            self._record(op_id + "_lhs", lhs)
        return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)

    def dot_general(self, lhs, rhs, *args, **kwargs):
        rule, op_id = self._get_current_rule_and_op_id("dot_general")
        if rule is not None and rule.weight_qtype is not None:
            self._record(op_id + "_lhs", lhs)
            if not flax_util.find_param(rhs):
                self._record(op_id + "_rhs", rhs)
        return lax.dot_general(lhs, rhs, *args, **kwargs)

    def get_intercept_map(self):
        return super().get_intercept_map() | {
            "jax.lax.conv_general_dilated": self.conv_general_dilated,
            "jax.lax.dot_general": self.dot_general,
        }


def quantize_rules(config: QuantConfig) -> list:
    """qwix rules: every conv/dense, int8 weights and activations, static activation scales."""
    del config  # bits and granularity are applied by _WeightQuantizer
    return [qwix.QuantizationRule(module_path=".*", weight_qtype=jnp.int8,
                                  act_qtype=jnp.int8, act_static_scale=True)]


def calibrate(model: nn.Module, variables: Mapping, batches: Iterable, config: QuantConfig
              ) -> dict:
    """Mean over ``batches`` of each quantized op's per-batch input clip: a flat dict
    ``{(*module_path, op_input_name): float}`` (an eval-mode float forward pass per batch)."""
    recorder = qwix.quantize_model(model, _Recorder(quantize_rules(config), config))

    @jax.jit
    def one(variables, x):
        with xla_routing():
            _, out = recorder.apply(variables, x, train=False, mutable=["calibration"])
        return out["calibration"]

    total, count = None, 0
    for x in batches:
        clips = flax.traverse_util.flatten_dict(one(variables, jnp.asarray(x)))
        total = clips if total is None else {k: total[k] + clips[k] for k in total}
        count += 1
    if not count:
        raise ValueError("calibrate needs at least one batch (got none)")
    return {k: float(v) / count for k, v in total.items()}


# --------------------------------------------------------------------- weight quantization


class _WeightQuantizer:
    """qwix's qarray module with weights quantized to ``bits`` and ``granularity``.

    In static-scale PTQ ``quantize`` is called for weights only (activations use
    ``quantize_with_scale_zero_point``). Per-tensor: no channelwise axes. 4-bit: symmetric
    range [-7, 7], stored in int8 (qwix's conv needs equal operand types; saved as int4).
    """

    def __init__(self, config: QuantConfig):
        self._config = config

    def __getattr__(self, name):
        return getattr(qarray, name)

    def quantize(self, array, how):
        if self._config.granularity == "per_tensor":
            how = dataclasses.replace(how, channelwise_axes=())
        if self._config.bits == 8:
            return qarray.quantize(array, how)
        q = qarray.quantize(array, dataclasses.replace(how, qtype=jnp.int4))
        # qwix rounds x / (absmax / 7) into int4's [-8, 7]; keep the range symmetric.
        qvalue = jnp.clip(q.qvalue.astype(jnp.int8), -7, 7)
        return qarray.QArray(qvalue, q.scale, None, jnp.int8)


# ------------------------------------------------------------------------- the entry point


@dataclasses.dataclass
class QuantizedModel:
    """A qwix-quantized deploy-form model and its variables (``QArray`` leaves hold int8)."""

    model: nn.Module          # the qwix-wrapped deploy-form model
    variables: dict
    config: QuantConfig
    float_model: nn.Module    # the deploy-form float model (BN folded into its variables)
    float_variables: dict

    def apply(self, x):
        with xla_routing():
            return self.model.apply(self.variables, x, train=False)


def weight_ops(config: QuantConfig) -> _WeightQuantizer:
    return _WeightQuantizer(config)


def _provider(config):
    return qwix.PtqProvider(quantize_rules(config), _qarray_module=_WeightQuantizer(config))


def abstract_quantized_variables(model, config, input_shape):
    """The quantized variables' structure (``jax.ShapeDtypeStruct`` / ``WithAux`` leaves)."""
    qmodel = qwix.quantize_model(model, _provider(config))
    x = jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32)

    def init(x):
        with xla_routing():
            return qmodel.init(jax.random.key(0), x, train=False)

    return qmodel, jax.eval_shape(init, x)


def quantize(model: nn.Module, variables: Mapping, calib_batches: Iterable,
             config: QuantConfig, input_shape: Sequence[int] | None = None,
             act_clips: Mapping | None = None) -> QuantizedModel:
    """PTQ of ``model`` (training form, eval-mode variables) with ``config``.

    ``calib_batches``: NHWC arrays for activation calibration (ignored when ``act_clips``,
    from :func:`calibrate` on the folded model, is given). ``input_shape``: (B, H, W, C) to
    trace with (default: the first calibration batch's shape).
    """
    if not isinstance(config, QuantConfig):
        raise ValueError(f"config must be a jaxconv.quantize.QuantConfig, got "
                         f"{type(config).__name__}")
    batches = list(calib_batches or ())
    if input_shape is None:
        if not batches:
            raise ValueError("pass input_shape=(B, H, W, C) or at least one calibration batch")
        input_shape = (1, *np.shape(batches[0])[1:])
    input_shape = (1, *tuple(input_shape)[1:])
    float_model, folded, _ = prepare_for_quantization(model, variables, input_shape)
    if act_clips is None:
        act_clips = calibrate(float_model, folded, batches, config)
    qmodel, abstract = abstract_quantized_variables(float_model, config, input_shape)
    params = qwix.quantize_params(folded["params"], abstract["params"],
                                  _qarray_module=_WeightQuantizer(config))
    flat = flax.traverse_util.flatten_dict(params)
    abs_flat = flax.traverse_util.flatten_dict(abstract["params"])
    for key, leaf in abs_flat.items():
        if key[-1].endswith("_scale") and isinstance(leaf, qwix_ptq.WithAux):
            clip_key = key[:-1] + (key[-1][:-len("_scale")],)
            if clip_key not in act_clips:
                raise ValueError(f"no calibrated range for activation {'/'.join(clip_key)}")
            scale, _ = qarray.compute_scale_zero_point(
                {"absmax": jnp.full(leaf.shape, act_clips[clip_key], jnp.float32)}, jnp.int8)
            flat[key] = leaf.replace(array=scale)
    qvars = {**{c: t for c, t in folded.items() if c != "params"},
             "params": flax.traverse_util.unflatten_dict(flat)}
    return QuantizedModel(qmodel, qvars, config, float_model, folded)
