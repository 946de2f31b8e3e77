"""Inception v3: timm's parameter count and layout, BN eps, input limits, aux head convention,
forward/backward/jit at the smallest valid input (75x75)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

import jaxconv
from jaxconv.analysis import count_params, init_variables
from jaxconv.models.inception import BasicConv2d, min_input_size
from tests.helpers import compile_fast
from tests.models.test_densenet import check_step, numpy_variables

# timm.create_model("inception_v3").parameters(): timm's default has no AuxLogits head
# (aux_logits=False); see ENVIRONMENT.md.
TIMM_COUNT = 23_834_568
# With the head: torchvision's inception_v3 (aux_logits=True) count, 27,161,264 (its model
# table); the head alone is conv0 768*128 + bn 2*128, conv1 5*5*128*768 + bn 2*768,
# fc 768*1000 + 1000 = 3,326,696.
AUX_HEAD = 98_304 + 256 + 2_457_600 + 1_536 + 769_000


def test_param_count_matches_timm():
    params = init_variables(jaxconv.create_model("inception_v3"), (1, 299, 299, 3))["params"]
    assert count_params(params) == TIMM_COUNT
    assert "AuxLogits" not in params


def test_param_count_with_aux_head():
    model = jaxconv.create_model("inception_v3", aux_logits=True)
    params = init_variables(model, (1, 299, 299, 3))["params"]
    assert count_params(params["AuxLogits"]) == AUX_HEAD == 3_326_696
    assert count_params(params) == TIMM_COUNT + AUX_HEAD == 27_161_264


def test_timm_layout():
    params = init_variables(jaxconv.create_model("inception_v3"), (1, 299, 299, 3))["params"]
    stem = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    mixed = [f"Mixed_{m}" for m in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b",
                                    "7c")]
    assert set(params) == {*stem, *mixed, "fc"}
    assert set(params["Mixed_5b"]) == {"branch1x1", "branch5x5_1", "branch5x5_2",
                                       "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3",
                                       "branch_pool"}
    assert set(params["Mixed_7b"]["branch3x3_2a"]) == {"conv", "bn"}
    assert params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"].shape == (1, 7, 128, 128)
    assert params["Mixed_6b"]["branch7x7_3"]["conv"]["kernel"].shape == (7, 1, 128, 192)
    assert params["Mixed_7b"]["branch3x3_2b"]["conv"]["kernel"].shape == (3, 1, 384, 384)
    assert params["Conv2d_1a_3x3"]["conv"]["kernel"].shape == (3, 3, 3, 32)
    assert params["fc"]["kernel"].shape == (2048, 1000)
    kernels = [k for k in flatten_dict(params) if k[-1] == "kernel"]
    assert all("bias" not in params[k[0]].get("conv", {}) for k in kernels if k[0] != "fc")


def test_basic_conv_uses_timm_batchnorm_eps():
    """eval-mode BasicConv2d == relu((conv - mean) / sqrt(var + 1e-3) * scale + bias)."""
    layer = BasicConv2d(4, 1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 3, 3, 2)), jnp.float32)
    rng = np.random.default_rng(1)
    variables = {
        "params": {"conv": {"kernel": jnp.asarray(rng.normal(size=(1, 1, 2, 4)), jnp.float32)},
                   "bn": {"scale": jnp.ones(4), "bias": jnp.zeros(4)}},
        "batch_stats": {"bn": {"mean": jnp.zeros(4), "var": jnp.full(4, 1e-3)}},
    }
    y = layer.apply(variables, x)
    conv = x @ variables["params"]["conv"]["kernel"][0, 0]
    np.testing.assert_allclose(y, np.maximum(conv / np.sqrt(2e-3), 0), rtol=1e-5)


def test_input_size_limits():
    assert min_input_size() == 75 and min_input_size(aux_logits=True) == 299
    model = jaxconv.create_model("inception_v3")
    init_variables(model, (1, 75, 75, 3))
    with pytest.raises(ValueError, match="at least 75x75"):
        init_variables(model, (1, 74, 80, 3))
    with pytest.raises(ValueError, match="aux_logits.*at least 299x299"):
        init_variables(model.clone(aux_logits=True), (1, 298, 298, 3))


def test_aux_logits_convention():
    """aux head on: train mode returns (logits, aux), eval mode logits only; off: logits only."""
    model = jaxconv.create_model("inception_v3", aux_logits=True, num_classes=7)
    shape = (2, 299, 299, 3)
    variables = init_variables(model, shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    train_out, _ = jax.eval_shape(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
    assert [o.shape for o in train_out] == [(2, 7), (2, 7)]
    assert jax.eval_shape(lambda v, x: model.apply(v, x), variables, x).shape == (2, 7)
    plain = model.clone(aux_logits=False)
    plain_vars = {col: {k: v for k, v in tree.items() if k != "AuxLogits"}
                  for col, tree in variables.items()}
    train_out, _ = jax.eval_shape(
        lambda v, x: plain.apply(v, x, train=True, mutable=["batch_stats"]), plain_vars, x)
    assert train_out.shape == (2, 7)


def test_forward_backward_jit():
    model = jaxconv.create_model("inception_v3", num_classes=5, dropout_rate=0.2)
    check_step(model, (2, 75, 75, 3), 5)


@pytest.mark.slow
def test_aux_head_forward_backward_at_299():
    model = jaxconv.create_model("inception_v3", aux_logits=True, num_classes=5)
    shape = (2, 299, 299, 3)
    variables = numpy_variables(model, shape)
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)

    def loss(params):
        (logits, aux), _ = model.apply({**variables, "params": params}, x, train=True,
                                       mutable=["batch_stats"])
        return jnp.mean(logits) + 0.4 * jnp.mean(aux)

    grads = compile_fast(jax.grad(loss), variables["params"])(variables["params"])
    assert np.any(np.asarray(grads["AuxLogits"]["fc"]["kernel"]) != 0)


@pytest.mark.parametrize("field, value, words", [
    ("dropout_rate", -0.1, "[0, 1)"),
    ("aux_logits", 1, "True or False"),
    ("num_classes", 0, "positive"),
])
def test_bad_arguments_name_the_field(field, value, words):
    with pytest.raises(ValueError) as err:
        jaxconv.create_model("inception_v3", **{field: value})
    assert field in str(err.value) and words in str(err.value)


def test_timm_keys():
    """The conversion rule keeps timm's ``_1`` suffixes (they are names, not Sequential indices)."""
    from jaxconv.convert import timm_key_map

    keys = timm_key_map("inception_v3")
    assert len(keys) == 472  # timm's state_dict without num_batches_tracked
    assert keys["Mixed_7a.branch3x3_1.conv.weight"] == (
        "params/Mixed_7a/branch3x3_1/conv/kernel", (192, 768, 1, 1))
    assert keys["Mixed_6b.branch7x7dbl_2.bn.running_var"] == (
        "batch_stats/Mixed_6b/branch7x7dbl_2/bn/var", (128,))
    aux = timm_key_map("inception_v3", model=jaxconv.create_model("inception_v3", aux_logits=True))
    assert aux["AuxLogits.conv1.conv.weight"][1] == (768, 128, 5, 5)
    assert aux["AuxLogits.fc.weight"][1] == (1000, 768)
