"""``recompute_module_on_cpu`` / ``recompute_on_cpu``: on CPU the norm layers and the exact GELU
are recomputed in the backward pass (``jax.checkpoint``), with the same parameter paths, values,
gradients, batch statistics and forward-mode autodiff; elsewhere they are left alone."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.layers import batch_norm, conv
from jaxconv.models.convnext import Mlp, layer_norm


class _PlainMlp(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.gelu(nn.Dense(8, name="fc1")(x), approximate=False)
        return nn.Dense(5, name="fc2")(h)


class _Net(nn.Module):
    """Auto-named norms (no name=) between Dense layers, as in a zoo block."""

    recompute: bool

    @nn.compact
    def __call__(self, x, train: bool = True):
        norm = batch_norm(train) if self.recompute else nn.BatchNorm(
            use_running_average=not train, momentum=0.9, epsilon=1e-5)
        x = norm(nn.Dense(6)(x))
        ln = layer_norm() if self.recompute else nn.LayerNorm(epsilon=1e-6,
                                                              use_fast_variance=False)
        x = ln(x)
        return (Mlp(8, 5, name="mlp") if self.recompute else _PlainMlp(name="mlp"))(x)


def _run(recompute, x):
    model = _Net(recompute)
    variables = _Net(False).init(jax.random.key(0), x)

    def loss(params, x):
        out, updates = model.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(out)), updates

    (value, updates), grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(
        variables["params"], x)
    tangent = jax.jvp(lambda x: loss(variables["params"], x)[0], (x,), (jnp.ones_like(x),))[1]
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda p: loss(p, x)[0]))(variables["params"]))
    return variables, (value, updates, grads, tangent), jaxpr


def test_recomputed_norms_and_gelu_match_plain_flax():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 3, 4, 7)), jnp.float32)
    plain_vars, plain, plain_jaxpr = _run(False, x)
    ours_vars = _Net(True).init(jax.random.key(0), x)
    # Same parameter paths: BatchNorm_0 / LayerNorm_0 / mlp Dense names, not Checkpoint*.
    assert (jax.tree_util.tree_structure(ours_vars)
            == jax.tree_util.tree_structure(plain_vars)), jax.tree.map(jnp.shape, ours_vars)
    _, ours, ours_jaxpr = _run(True, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 ours, plain)
    # On CPU the backward recomputes (a remat/checkpoint in the gradient's program).
    assert "remat" in ours_jaxpr and "remat" not in plain_jaxpr


def test_recompute_is_cpu_only(monkeypatch):
    assert conv.recompute_module_on_cpu(nn.BatchNorm).__name__ == "BatchNorm"
    assert conv.recompute_module_on_cpu(nn.BatchNorm) is not nn.BatchNorm
    gelu = functools.partial(nn.gelu, approximate=False)
    x = jnp.linspace(-3.0, 3.0, 7)
    assert "remat" in str(jax.make_jaxpr(conv.recompute_on_cpu(gelu))(x))
    monkeypatch.setattr(conv.jax, "default_backend", lambda: "tpu")
    assert conv.recompute_module_on_cpu(nn.LayerNorm) is nn.LayerNorm
    assert conv.recompute_on_cpu(gelu) is gelu


@pytest.mark.parametrize("train", [False, True])
def test_batch_norm_inference_is_plain_flax(train):
    cls = type(batch_norm(train))
    assert (cls is nn.BatchNorm) == (not train)
