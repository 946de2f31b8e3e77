"""Shared helpers of the modern-ConvNet tests (ConvNeXt, InceptionNeXt, ECA-ResNet).

Compile cost drives the design (2-core CPU, see tests/models/test_resnet.py): variables are
drawn with NumPy from the abstract tree (no jitted ``init``), and jitted functions compile with
test-only XLA:CPU options that cut compile time 2-5x.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxconv.analysis import init_variables
from tests.helpers import compile_fast


def random_variables(model, input_shape, seed: int = 0, *, abstract=None) -> dict:
    """Variables with ``model``'s tree and shapes, drawn with NumPy by leaf role.

    Kernels N(0, 1/fan_in) (fan_in: every axis but the last, or a depthwise kernel's taps),
    norm scales U(0.5, 1.5), layer-scale ``gamma`` N(0, 0.1^2) (so every block matters),
    BatchNorm variances U(0.5, 2), biases and means N(0, 0.1^2). ``abstract``: the tree to
    fill (default: ``init_variables(model, input_shape)``, for models taking ``train=``).
    """
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        kind, shape = path[-1], leaf.shape
        if kind == "kernel":
            depthwise = path[-2].startswith(("conv_dw", "dwconv")) and leaf.ndim == 3
            fan_in = math.prod(shape[:2]) if depthwise else math.prod(shape[:-1])
            value = rng.normal(0.0, 1.0 / math.sqrt(fan_in), shape)
        elif kind == "scale":
            value = rng.uniform(0.5, 1.5, shape)
        elif kind == "var":
            value = rng.uniform(0.5, 2.0, shape)
        else:  # bias, mean, gamma
            value = rng.normal(0.0, 0.1, shape)
        return jnp.asarray(value, leaf.dtype)

    if abstract is None:
        abstract = init_variables(model, input_shape)
    return {
        col: unflatten_dict({k: draw(k, v) for k, v in flatten_dict(tree).items()})
        for col, tree in abstract.items()
    }


def check_train_step(model, input_shape, *, drop_path: bool = True):
    """Jitted loss and gradients in train mode: finite, every parameter gets a gradient.

    Returns (loss, grads, new batch_stats or None).
    """
    variables = random_variables(model, input_shape)
    x = jnp.asarray(np.random.default_rng(1).normal(size=input_shape), jnp.float32)
    has_bn = "batch_stats" in variables

    def loss_fn(params, x):
        out = model.apply({**variables, "params": params}, x, train=True,
                          mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
        logits, state = out
        return jnp.mean(logits ** 2), state.get("batch_stats")

    step = compile_fast(jax.value_and_grad(loss_fn, has_aux=True), variables["params"], x)
    (loss, stats), grads = step(variables["params"], x)
    assert np.isfinite(float(loss)) and float(loss) > 0
    flat = flatten_dict(grads)
    assert all(np.isfinite(np.asarray(g)).all() for g in flat.values())
    # Every parameter influences the loss (no dead branch, no detached layer).
    dead = ["/".join(k) for k, g in flat.items() if not np.any(np.asarray(g))]
    assert not dead, dead
    if has_bn:
        old = flatten_dict(variables["batch_stats"])
        new = flatten_dict(stats)
        assert old.keys() == new.keys()
        assert any(not np.allclose(old[k], new[k]) for k in old)
    return loss, grads, stats
