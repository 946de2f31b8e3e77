"""ResidualStack: deep (sequential) and shallow (parallel) layouts of the same residual layers."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

import jaxconv
from jaxconv.analysis import count_params, init_variables


def random_variables(model, shape, seed=0):
    """Concrete variables with random values (BN statistics included) without jitting init."""
    rng = np.random.default_rng(seed)
    flat = flatten_dict(init_variables(model, shape))
    out = {}
    for path, leaf in flat.items():
        if path[-1] == "var":
            out[path] = rng.uniform(0.5, 2.0, leaf.shape).astype(np.float32)
        else:
            out[path] = (0.3 * rng.standard_normal(leaf.shape)).astype(np.float32)
    return unflatten_dict(out)


def by_hand_params(num_layers, features, k, in_ch, classes):
    stem = k * k * in_ch * features + 2 * features
    layer = 2 * features + k * k * features * features
    return stem + num_layers * layer + 2 * features + features * classes + classes


@pytest.mark.parametrize("layout", ["sequential", "parallel"])
def test_parameter_count_is_the_same_in_both_layouts(layout):
    model = jaxconv.create_model("residual_stack", num_layers=3, features=8, kernel_size=5,
                                 layout=layout)
    params = init_variables(model, (1, 8, 8, 1))["params"]
    assert count_params(params) == by_hand_params(3, 8, 5, 1, 10)


def test_layouts_compute_what_they_claim():
    shape = (2, 6, 6, 1)
    deep = jaxconv.create_model("residual_stack", num_layers=3, features=4)
    shallow = deep.clone(layout="parallel")
    variables = random_variables(deep, shape)
    x = jnp.asarray(np.random.default_rng(1).standard_normal(shape), jnp.float32)
    _, deep_state = deep.apply(variables, x, mutable=["intermediates"])
    _, shallow_state = shallow.apply(variables, x, mutable=["intermediates"])
    stem = deep_state["intermediates"]["stage0"][0]

    # Rebuild both from single-layer pieces: f_i(h) = conv_i(relu(bn_i(h))).
    def f(i, h):
        bn = variables["batch_stats"][f"layer{i}_bn"]
        p = variables["params"]
        h = (h - bn["mean"]) / jnp.sqrt(bn["var"] + 1e-5) * p[f"layer{i}_bn"]["scale"] \
            + p[f"layer{i}_bn"]["bias"]
        return jax.lax.conv_general_dilated(
            jax.nn.relu(h), p[f"layer{i}_conv"]["kernel"], (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    h = stem
    for i in range(3):
        h = h + f(i, h)
    np.testing.assert_allclose(deep_state["intermediates"]["stage1"][0], h, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(shallow_state["intermediates"]["stage1"][0],
                               stem + f(0, stem) + f(1, stem) + f(2, stem), rtol=1e-4, atol=1e-4)
    # With more than one layer the two layouts are different functions.
    assert not np.allclose(deep_state["intermediates"]["stage1"][0],
                           shallow_state["intermediates"]["stage1"][0], atol=1e-3)


def test_single_layer_layouts_are_identical():
    shape = (2, 5, 7, 3)
    deep = jaxconv.create_model("residual_stack", num_layers=1, features=4, kernel_size=3)
    variables = random_variables(deep, shape)
    x = jnp.ones(shape)
    np.testing.assert_array_equal(deep.apply(variables, x),
                                  deep.clone(layout="parallel").apply(variables, x))


@pytest.mark.parametrize("layout", ["sequential", "parallel"])
def test_train_step_backward_jit(layout):
    shape = (4, 8, 8, 1)
    model = jaxconv.create_model("residual_stack", num_layers=2, features=4, layout=layout,
                                 stem_stride=2)
    variables = random_variables(model, shape)
    x = jnp.asarray(np.random.default_rng(2).standard_normal(shape), jnp.float32)

    @jax.jit
    def loss_and_grads(params):
        def loss(params):
            logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                          mutable=["batch_stats"])
            return jnp.mean(logits ** 2), updates
        return jax.value_and_grad(loss, has_aux=True)(params)

    (loss, updates), grads = loss_and_grads(variables["params"])
    assert np.isfinite(float(loss))
    assert set(updates["batch_stats"]) == set(variables["batch_stats"])
    norms = jax.tree.map(lambda g: float(jnp.abs(g).sum()), grads)
    assert all(v > 0 for v in jax.tree.leaves(norms))


@pytest.mark.parametrize("field, value, match", [
    ("layout", "diagonal", "sequential"), ("kernel_size", 4, "odd"), ("num_layers", 0, "positive"),
])
def test_bad_fields(field, value, match):
    with pytest.raises(ValueError, match=match):
        jaxconv.create_model("residual_stack", **{field: value})
