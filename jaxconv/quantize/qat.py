"""Quantization-aware training on qwix (fake quantization, straight-through gradients).

``qat_model(model, config)`` returns the same model (same parameters, same call signature) whose
convs and dense layers compute on fake-quantized operands: weights to ``config.bits`` (scales per
output channel, or per tensor), activations to int8 with per-batch absmax ranges; qwix's
quantize-dequantize has straight-through gradients (round's gradient is 1 inside the range).
Ops qwix cannot see are routed through XLA as in PTQ (:func:`jaxconv.quantize.xla_routing`).
Train it with the ordinary training command (``config.quantization``, see
:func:`qat_config_from`), then quantize the trained variables with
:func:`jaxconv.quantize.quantize` (per-channel scales absorb the BN fold exactly, so QAT on the
unfolded weights matches the folded integer model).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax
import qwix

from jaxconv.quantize.ptq import xla_routing
from jaxconv.quantize.schemes import QuantConfig, get_scheme

__all__ = ["QAT_FIELDS", "QATSchedule", "fake_quant", "qat_config_from", "qat_model",
           "qat_rules", "routed_model", "qat_training_model"]

#: ``config.quantization`` fields the training command reads (scheme "" = float training;
#: start_step: float training before it; freeze_bn_step: BatchNorm uses and keeps its running
#: statistics from that step on, as Krishnamoorthi 2018 recommends; None = never).
QAT_FIELDS = {"scheme": "", "start_step": 0, "freeze_bn_step": None}


def qat_rules(config: QuantConfig) -> list:
    # int4 dense weights with int8 inputs are fine in qwix's dot_general (convs: see below).
    qtype = jnp.int8 if config.bits == 8 else jnp.int4
    return [qwix.QtRule(module_path=".*", weight_qtype=qtype, act_qtype=jnp.int8,
                        disable_channelwise_axes=config.granularity == "per_tensor")]


def fake_quant(x, bits: int, axes_kept=()):
    """Symmetric quantize-dequantize with straight-through gradient; one absmax scale per index
    of ``axes_kept`` (per channel), or per tensor."""
    qmax = 2 ** (bits - 1) - 1
    reduce = tuple(a for a in range(x.ndim) if a not in axes_kept)
    scale = lax.stop_gradient(jnp.max(jnp.abs(x), axis=reduce, keepdims=True)) / qmax
    scale = jnp.where(scale > 0, scale, 1.0)
    q = jnp.clip(jnp.round(x / scale), -qmax, qmax) * scale
    return x + lax.stop_gradient(q - x)


class _QtProvider(qwix.QtProvider):
    """qwix's QtProvider; grouped convs (depthwise) and 4-bit convs are quantized around the op.

    qwix's quantized-training conv has no backward for ``feature_group_count > 1`` and needs
    equal operand types (no int4 weights with int8 inputs), so for those the weights (per output channel or per tensor, ``bits``) and the input (int8, per
    tensor, per-batch absmax) are fake-quantized here with straight-through gradients and the
    conv runs in float; every other conv and dense layer is qwix's.
    """

    def __init__(self, config: QuantConfig):
        super().__init__(qat_rules(config))
        self._config = config

    def conv_general_dilated(self, lhs, rhs, *args, **kwargs):
        if kwargs.get("feature_group_count", 1) == 1 and self._config.bits == 8:
            return super().conv_general_dilated(lhs, rhs, *args, **kwargs)
        rule, _ = self._get_current_rule_and_op_id("conv_general_dilated")
        if rule is not None and rule.weight_qtype is not None:
            per_channel = self._config.granularity == "per_channel"
            out_axis = lax.conv_dimension_numbers(
                lhs.shape, rhs.shape, kwargs.get("dimension_numbers")).rhs_spec[0]
            rhs = fake_quant(rhs, self._config.bits, (out_axis,) if per_channel else ())
            lhs = fake_quant(lhs, 8)
        return lax.conv_general_dilated(lhs, rhs, *args, **kwargs)


def routed_model(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose ``__call__`` runs inside :func:`xla_routing` (so qwix sees the
    depthwise and matmul convs); parameters and outputs are unchanged."""
    cls = type(model)
    if getattr(cls, "_jaxconv_routed", False):
        return model

    def __call__(self, *args, **kwargs):
        with xla_routing():
            return cls.__call__(self, *args, **kwargs)

    routed = model.copy()
    routed.__class__ = type(cls.__name__, (cls,), {"__call__": __call__,
                                                   "_jaxconv_routed": True})
    return routed


def qat_model(model: nn.Module, config: QuantConfig) -> nn.Module:
    """``model`` with fake quantization (module docstring)."""
    if not isinstance(config, QuantConfig):
        raise ValueError(f"config must be a jaxconv.quantize.QuantConfig, got "
                         f"{type(config).__name__}")
    return qwix.quantize_model(routed_model(model), _QtProvider(config))


@dataclasses.dataclass(frozen=True)
class QATSchedule:
    """QAT that changes with the training step: the float model before ``start_step``, the
    fake-quantized one from it on; from ``freeze_bn_step`` on (if set) BatchNorm normalises
    with its running statistics and stops updating them (the forward runs in eval mode, so
    dropout / drop-path are off from then on too).

    Both models have the same parameters. The training step calls :meth:`apply_train` with the
    step (a traced value: the choice is a ``lax.switch``, one compile, resumable bitwise because
    it is a pure function of the step); ``init`` is the float model's and ``apply`` the
    fake-quantized model's (evaluation sees the quantized network).
    """
    float_model: nn.Module
    qat_model: nn.Module
    start_step: int = 0
    freeze_bn_step: int | None = None

    def init(self, *args, **kwargs):
        return self.float_model.init(*args, **kwargs)

    def apply(self, *args, **kwargs):
        return self.qat_model.apply(*args, **kwargs)

    def apply_train(self, variables, x, *, mutable, rngs, step):
        """Train-mode forward for ``step``: ``(outputs, updated mutable collections)`` when
        ``mutable`` is a non-empty list, else the outputs."""
        def run(model, frozen):
            def branch(variables, x):
                if frozen:   # running statistics, unchanged
                    out = model.apply(variables, x, train=False)
                    return (out, {k: variables[k] for k in mutable}) if mutable else out
                return model.apply(variables, x, train=True, mutable=mutable or False,
                                   rngs=rngs)
            return branch

        branches = [run(self.float_model, False), run(self.qat_model, False),
                    run(self.float_model, True), run(self.qat_model, True)]
        index = (step >= self.start_step).astype(jnp.int32)
        if self.freeze_bn_step is not None:
            index = index + 2 * (step >= self.freeze_bn_step).astype(jnp.int32)
        return lax.switch(index, branches, variables, x)


def qat_training_model(model: nn.Module, quantization: Any):
    """What the training loop trains for ``config.quantization``: ``model`` itself (float), its
    fake-quantized form, or a :class:`QATSchedule` when a start or BN-freeze step is set."""
    qat = qat_config_from(quantization)
    if qat is None:
        return model
    fields = {**QAT_FIELDS, **dict(quantization)}
    if not fields["start_step"] and fields["freeze_bn_step"] is None:
        return qat_model(model, qat)
    return QATSchedule(model, qat_model(model, qat), int(fields["start_step"]),
                       fields["freeze_bn_step"])


def qat_config_from(quantization: Any) -> QuantConfig | None:
    """The QuantConfig of a training config's ``quantization`` block (None: float training).
    Unknown fields or a bad scheme raise ValueError naming the valid ones."""
    if quantization is None:
        return None
    fields = dict(quantization)
    unknown = sorted(set(fields) - set(QAT_FIELDS))
    if unknown:
        raise ValueError(f"config.quantization has unknown fields {unknown}; valid: "
                         f"{sorted(QAT_FIELDS)}")
    start, freeze = fields.get("start_step", 0), fields.get("freeze_bn_step")
    if isinstance(start, bool) or not isinstance(start, int) or start < 0:
        raise ValueError(f"config.quantization.start_step={start!r} must be an int >= 0 (the "
                         "step fake quantization starts at)")
    if freeze is not None and (isinstance(freeze, bool) or not isinstance(freeze, int)
                               or freeze < 1):
        raise ValueError(f"config.quantization.freeze_bn_step={freeze!r} must be None (never) "
                         "or an int >= 1 (the step BatchNorm statistics freeze at)")
    scheme = fields.get("scheme", "")
    if not scheme and (start or freeze is not None):
        raise ValueError("config.quantization.start_step / freeze_bn_step need a "
                         "config.quantization.scheme")
    return get_scheme(scheme) if scheme else None
