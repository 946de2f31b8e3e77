"""CondConv2D: identical experts give a plain conv (scaled by the routing weights' sum), the
routing is per example, and gradients flow to experts and router."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.layers import CondConv2D


def _conv(x, w, stride, groups=1):
    k = w.shape[0]
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((k // 2, k // 2),) * 2,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=groups)


def _routing(variables, x):
    r = variables["params"]["routing"]
    return jax.nn.sigmoid(jnp.mean(x, axis=(1, 2)) @ r["kernel"] + r["bias"])


@pytest.mark.parametrize("shape,features,k,stride,experts,groups", [
    ((3, 7, 5, 4), 6, 3, 1, 4, 1),
    ((2, 8, 8, 6), 6, 3, 2, 2, 6),    # depthwise CondConv, two experts
])
def test_identical_experts_equal_a_plain_conv(shape, features, k, stride, experts, groups):
    layer = CondConv2D(features, k, stride, num_experts=experts, groups=groups)
    x = jax.random.normal(jax.random.key(0), shape)
    variables = layer.init(jax.random.key(1), x)
    w = jax.random.normal(jax.random.key(2), (k, k, shape[-1] // groups, features))
    variables["params"]["kernel"] = jnp.broadcast_to(w, (experts, *w.shape))
    routing = _routing(variables, x)                                       # [B, E]
    want = _conv(x, w, stride, groups) * routing.sum(-1)[:, None, None, None]
    np.testing.assert_allclose(layer.apply(variables, x), want, rtol=1e-5, atol=1e-5)
    # Routing set to 1/E per expert (bias logit(1/E), router kernel 0): exactly the plain conv.
    variables["params"]["routing"] = {"kernel": jnp.zeros_like(variables["params"]["routing"]
                                                               ["kernel"]),
                                      "bias": jnp.full((experts,), -np.log(experts - 1.0))
                                      if experts > 1 else jnp.full((1,), 30.0)}
    np.testing.assert_allclose(layer.apply(variables, x), _conv(x, w, stride, groups),
                               rtol=1e-5, atol=1e-5)


def test_routing_is_per_example():
    """Each example's output equals the mixture of its own routing weights (a per-example
    loop in the test), and does not change when the other examples change."""
    layer = CondConv2D(5, 3, 1, num_experts=4)
    x = jax.random.normal(jax.random.key(3), (4, 6, 6, 3)) * jnp.arange(1, 5)[:, None, None, None]
    variables = layer.init(jax.random.key(4), x)
    out, sown = layer.apply(variables, x, mutable=["intermediates"])
    routing = _routing(variables, x)
    # The sown routing weights (stage-feature tooling applies with mutable intermediates).
    np.testing.assert_allclose(sown["intermediates"]["routing_weights"][0], routing, rtol=1e-6)
    experts = variables["params"]["kernel"]
    assert float(jnp.std(routing, axis=0).max()) > 1e-3    # the examples really route apart
    for b in range(x.shape[0]):
        kernel = jnp.einsum("e,ehwio->hwio", routing[b], experts)
        np.testing.assert_allclose(out[b:b + 1], _conv(x[b:b + 1], kernel, 1), rtol=1e-5,
                                   atol=1e-5)
    other = x.at[1:].set(jax.random.normal(jax.random.key(5), x[1:].shape))
    np.testing.assert_allclose(layer.apply(variables, other)[0], out[0], rtol=1e-6, atol=1e-6)


def test_gradients_reach_experts_and_router():
    layer = CondConv2D(4, 3, 1, num_experts=3)
    x = jax.random.normal(jax.random.key(6), (2, 5, 5, 3))
    params = layer.init(jax.random.key(7), x)["params"]
    g = jax.grad(lambda p: jnp.sum(layer.apply({"params": p}, x) ** 2))(params)
    assert all(float(jnp.abs(leaf).sum()) > 0 for leaf in jax.tree.leaves(g))


def test_bad_fields_fail_fast():
    with pytest.raises(ValueError, match="num_experts"):
        CondConv2D(4, num_experts=0)
    with pytest.raises(ValueError, match="groups"):
        CondConv2D(5, groups=2)
