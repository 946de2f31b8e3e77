"""The registered XNOR and CondConv variants: built by name, binary/CondConv layers where the
docstrings say, parameter counts by formula, and (slow) a train step with gradients."""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv


def _abstract(model, shape):
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False),
                          jax.ShapeDtypeStruct(shape, jnp.float32))


def _count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


def test_condconv_mobilenet_adds_experts_and_routers_to_the_last_blocks():
    experts = 4
    base = _abstract(jaxconv.create_model("mobilenetv1_025", num_classes=10), (1, 32, 32, 3))
    cond = _abstract(jaxconv.create_model("condconv_mobilenetv1_025", num_classes=10,
                                          num_experts=experts), (1, 32, 32, 3))
    flat_base = flax.traverse_util.flatten_dict(base["params"])
    flat = flax.traverse_util.flatten_dict(cond["params"])
    extra = 0
    for key, leaf in flat.items():
        if key[-2:] == ("conv_pw", "kernel") and leaf.ndim == 5:     # a CondConv layer
            assert int(key[0].split("_")[1]) >= 3 and leaf.shape[0] == experts
            plain = flat_base[key]
            assert leaf.shape[1:] == plain.shape
            extra += (experts - 1) * int(np.prod(plain.shape))
            extra += (plain.shape[2] + 1) * experts                    # router kernel + bias
    assert sum(1 for k, v in flat.items() if k[-1] == "kernel" and v.ndim == 5) == 8
    assert _count(cond["params"]) == _count(base["params"]) + extra


def test_xnor_resnet20_uses_binary_convs_in_blocks_only():
    model = jaxconv.create_model("xnor_resnet20", num_classes=10)
    found = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__":
            found.append((type(context.module).__name__, "/".join(context.module.scope.path)))
        return next_fun(*args, **kwargs)

    with flax.linen.intercept_methods(record):
        _abstract(model, (1, 32, 32, 3))
    binary = [p for t, p in found if t == "BinaryConv2D"]
    assert len(binary) == 18 and all(p.startswith("layer") for p in binary)
    assert ("Conv", "conv_stem") in found and ("Dense", "fc") in found
    with pytest.raises(ValueError, match="depth must be 6n"):
        jaxconv.create_model("xnor_resnet20", depth=21)
    with pytest.raises(ValueError, match="condconv_from_stage"):
        jaxconv.create_model("condconv_mobilenetv1_025", condconv_from_stage=5)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["xnor_resnet20", "condconv_mobilenetv1_025"])
def test_train_step_has_gradients(name):
    import optax
    from jaxconv.train.state import create_train_state
    from jaxconv.train.steps import make_train_step
    model = jaxconv.create_model(name, num_classes=10)
    tx = optax.sgd(0.01)
    state = create_train_state(model, tx, (1, 32, 32, 1), seed=0)
    step = jax.jit(make_train_step(model, tx, optax.constant_schedule(0.01), num_classes=10))
    batch = {"image": jax.random.normal(jax.random.key(1), (4, 32, 32, 1)),
             "label": jnp.arange(4)}
    new, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"]))
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).sum()) > 0, new.params, state.params)
    assert all(jax.tree.leaves(moved))
