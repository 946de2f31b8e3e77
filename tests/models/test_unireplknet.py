"""UniRepLKNet: parameter counts (paper and hand count), re-parameterization equality (dilated
reparam block, BN/GRN/layer-scale folding), forward/backward/jit, fields.

Counts come from ``jax.eval_shape``; variables are drawn with NumPy (random BatchNorm
statistics, GRN and layer-scale values); runtime checks use a reduced configuration with every
block kind (plain 3x3/5x5, dilated 13; tests/layers/test_reparam.py has every dilated size);
the A..T networks themselves run under ``slow`` where compile time would dominate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv.analysis import count_params, init_variables, model_flops
from jaxconv.layers.reparam import reparameterize
from jaxconv.models.unireplknet import DILATED_BRANCHES, UniRepLKNet, UniRepLKNetBlock
from tests.helpers import compile_fast
from tests.models.test_densenet import check_step, numpy_variables
from tests.models.test_replknet import depthwise_implementations

# Ding et al. 2024 (arXiv:2311.15599), Table 2 (ImageNet-1K, 224x224), "Params (M)":
# A 4.4, F 6.2, P 10.7, N 18.3, T 31 (one decimal, T to the million). The paper counts the
# inference structure (our deploy form): the training form is 4.6M/6.5M/11.1M/18.8M/31.7M.
PAPER_MILLIONS = {"unireplknet_a": "4.4", "unireplknet_f": "6.2", "unireplknet_p": "10.7",
                  "unireplknet_n": "18.3", "unireplknet_t": "31"}
ALL = sorted(PAPER_MILLIONS)

SMALL = dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1),
             kernel_sizes=((3,), (13,), (5,), (3,)), num_classes=5)


def _rounds_to(count: int, paper: str) -> bool:
    decimals = len(paper.split(".")[1]) if "." in paper else 0
    return f"{count / 1e6:.{decimals}f}" == paper


def hand_count(m: UniRepLKNet, deploy: bool) -> int:
    """Parameters counted layer by layer (module docstring of jaxconv/models/unireplknet.py)."""
    d = m.dims
    half = d[0] // 2
    total = (27 * half + half + 2 * half) + (9 * half * d[0] + d[0] + 2 * d[0])  # stem + LNs
    total += sum(9 * d[i - 1] * d[i] + d[i] + 2 * d[i] for i in (1, 2, 3))  # downsampling
    for c, kernels in zip(d, m.kernel_sizes):
        for k in kernels:
            se = c * (c // 4) + c // 4 + (c // 4) * c + c
            ffn = (c * 4 * c + 4 * c) + 4 * c * c
            if deploy:  # dw conv + bias, GRN gamma, pwconv2 bias
                total += k * k * c + c + se + ffn + 4 * c + c
                continue
            dw = k * k * c
            if k in DILATED_BRANCHES:  # origin BN + every dilated branch with its BN
                dw += 2 * c + sum(kk * kk * c + 2 * c for kk, _ in DILATED_BRANCHES[k])
            # + norm BN, GRN gamma/beta, pwconv2's BN, layer scale
            total += dw + 2 * c + se + ffn + 8 * c + 2 * c + c
    return total + 2 * d[3] + d[3] * m.num_classes + m.num_classes


@pytest.mark.parametrize("deploy", [False, True])
def test_implementation_reaches_every_depthwise_conv(deploy):
    model = UniRepLKNet(**SMALL, implementation="pallas", deploy=deploy)
    seen = depthwise_implementations(model, (1, 32, 32, 3))
    assert len(seen) >= 3 and set(seen) == {"pallas"}


def test_family_is_registered():
    assert jaxconv.list_models(family="unireplknet") == ALL


@pytest.mark.parametrize("name", ALL)
def test_deploy_param_count_matches_paper(name):
    model = jaxconv.create_model(name)
    deploy = init_variables(model.clone(deploy=True), (1, 32, 32, 3))
    count = count_params(deploy["params"])
    assert count == hand_count(model, deploy=True)
    assert _rounds_to(count, PAPER_MILLIONS[name]), (count, PAPER_MILLIONS[name])


def _check_reparameterized_counts(name):
    model = jaxconv.create_model(name)
    variables = init_variables(model, (1, 32, 32, 3))
    assert count_params(variables["params"]) == hand_count(model, deploy=False)
    deploy_model, deploy_vars = reparameterize(model, variables, input_shape=(1, 32, 32, 3))
    expected = init_variables(deploy_model, (1, 32, 32, 3))
    assert jax.tree.map(lambda a: a.shape, deploy_vars) == jax.tree.map(lambda a: a.shape,
                                                                       expected)
    assert "batch_stats" not in deploy_vars


def test_training_count_and_reparameterized_tree_atto():
    _check_reparameterized_counts("unireplknet_a")


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL[1:])
def test_training_count_and_reparameterized_tree(name):
    _check_reparameterized_counts(name)


def test_default_kernel_sizes():
    t = jaxconv.create_model("unireplknet_t")
    assert t.kernel_sizes[0] == (3, 3, 3) and t.kernel_sizes[2][:4] == (13, 3, 13, 3)
    assert jaxconv.create_model("unireplknet_n").kernel_sizes[2] == (13,) * 8


def test_reparameterized_small_model_equals_training_form():
    """Training form in eval mode vs deploy form on random variables (BN statistics, GRN
    gamma/beta and layer scale all non-trivial); fewer parameters and FLOPs when deployed."""
    model, shape = UniRepLKNet(**SMALL), (2, 32, 32, 3)
    variables = numpy_variables(model, shape, seed=5)
    deploy_model, deploy_vars = reparameterize(model, variables, input_shape=shape)
    x = jnp.asarray(np.random.default_rng(6).normal(size=shape), jnp.float32)
    y = compile_fast(lambda v, x: model.apply(v, x, train=False), variables, x)(variables, x)
    y_deploy = compile_fast(lambda v, x: deploy_model.apply(v, x), deploy_vars, x)(deploy_vars, x)
    assert float(jnp.std(y)) > 0.1
    np.testing.assert_allclose(y_deploy, y, rtol=1e-4, atol=2e-4 * float(jnp.max(jnp.abs(y))))
    assert count_params(deploy_vars["params"]) < count_params(variables["params"])
    assert model_flops(deploy_model, shape) < model_flops(model, shape)


def test_small_model_forward_backward_jit_and_stages():
    model, shape = UniRepLKNet(**SMALL, drop_path_rate=0.1), (2, 32, 32, 3)
    check_step(model, shape, 5)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, mutable=["intermediates"]),
        init_variables(model, shape), jax.ShapeDtypeStruct(shape, jnp.float32))
    stages = state["intermediates"]
    assert [stages[f"stage{i}"][0].shape for i in range(4)] == [
        (2, 8, 8, 8), (2, 4, 4, 16), (2, 2, 2, 32), (2, 1, 1, 64)]


@pytest.mark.parametrize("field,value,match", [
    ("depths", (2, 2, 6), "depths"),
    ("dims", (40, 80, 160, 322), "dims"),
    ("kernel_sizes", ((3, 3), (13, 13), (13,) * 6, (13, 12)), "kernel_sizes"),
    ("kernel_sizes", ((3,), (13,), (13,), (13,)), "kernel_sizes"),
    ("layer_scale_init_value", -1.0, "layer_scale_init_value"),
    ("num_classes", 0, "num_classes"),
    ("drop_path_rate", -0.1, "drop_path_rate"),
    ("implementation", "triton", "implementation"),
    ("dtype", "float64", "dtype"),
    ("deploy", 1, "deploy"),
])
def test_bad_fields_raise(field, value, match):
    with pytest.raises(ValueError, match=match):
        jaxconv.create_model("unireplknet_a", **{field: value})


def test_unknown_depths_need_kernel_sizes():
    with pytest.raises(ValueError, match="kernel_sizes"):
        UniRepLKNet(depths=(1, 1, 1, 1))
    with pytest.raises(ValueError, match="kernel_size must be one of"):
        UniRepLKNetBlock(kernel_size=19)


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_forward_backward_jit(name):
    check_step(jaxconv.create_model(name, num_classes=7), (2, 32, 32, 3), 7)
