"""Weights from elsewhere: a jaxconv training workdir or a timm state dict file.

Used for the distillation teacher (``config.distill.weights``) and for fine-tuning
(``config.init_from``, with ``config.init_reinit`` naming the parameters to train from scratch,
e.g. a new classifier head). Paths may be local or any etils.epath (gs://).
"""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
from etils import epath

STATE_DICT_SUFFIXES = (".npz", ".safetensors")


def check_weights_path(field: str, path: str) -> None:
    """ValueError naming ``field`` unless ``path`` is a workdir with checkpoints/ or an existing
    timm state dict file."""
    if not path:
        raise ValueError(f"{field} is empty: give a jaxconv workdir with checkpoints or a timm "
                         f"state dict file ({' or '.join(STATE_DICT_SUFFIXES)})")
    p = epath.Path(path)
    if p.is_dir():
        if not (p / "checkpoints").is_dir():
            raise ValueError(f"{field}={path!r} is a directory without checkpoints/ (not a "
                             "jaxconv workdir)")
    elif not p.is_file():
        raise ValueError(f"{field}={path!r} does not exist")
    elif not str(path).lower().endswith(STATE_DICT_SUFFIXES):
        raise ValueError(f"{field}={path!r}: valid are a jaxconv workdir or a timm state dict "
                         f"file ({list(STATE_DICT_SUFFIXES)})")


def load_variables(path: str, model_name: str, model) -> dict:
    """``{"params": ..., **model_state}`` from a workdir's latest checkpoint, or from a timm state
    dict converted for ``model_name`` (``jaxconv.convert.from_timm``)."""
    from jaxconv.convert import from_timm, load_state_dict
    from jaxconv.train.checkpoint import load_checkpoint
    if epath.Path(path).is_dir():
        _, state = load_checkpoint(path)
        variables = {"params": state["params"], **state.get("model_state", {})}
    else:
        variables = from_timm(model_name, load_state_dict(path), model=model)
    return jax.tree.map(jnp.asarray, variables)


def check_init_config(config) -> None:
    """``config.init_from`` (empty: train from scratch) and ``config.init_reinit`` (regexes)."""
    reinit = config.init_reinit
    if isinstance(reinit, str) or not all(isinstance(r, str) for r in reinit):
        raise ValueError(f"config.init_reinit={reinit!r} must be a tuple of regexes of parameter "
                         "paths, e.g. ('^head/fc/',)")
    for r in reinit:
        try:
            re.compile(r)
        except re.error as e:
            raise ValueError(f"config.init_reinit: {r!r} is not a valid regex ({e})") from None
    if config.init_from:  # init_reinit alone is allowed: a fine-tuning config names its head
        check_weights_path("config.init_from", config.init_from)


def init_from_pretrained(state, config, model, tx):
    """``state`` with params and model state (batch statistics) taken from ``config.init_from``
    except the leaves matched by ``config.init_reinit``, and a fresh optimizer state. A leaf that
    is missing or shaped differently and not re-initialised is an error (a wrong checkpoint would
    otherwise train mostly from scratch)."""
    from jaxconv.train.ema import init_ema
    from jaxconv.train.param_groups import merge_pretrained
    variables = load_variables(config.init_from, config.model, model)
    params, _ = merge_pretrained(state.params, variables.pop("params"), config.init_reinit)
    model_state, _ = merge_pretrained(state.model_state, variables, config.init_reinit)
    ema = None if state.ema is None else init_ema(params, model_state)
    return state.replace(params=params, model_state=model_state, opt_state=tx.init(params),
                         ema=ema)
