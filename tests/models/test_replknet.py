"""RepLKNet: parameter counts (paper and hand count), re-parameterization equality,
forward/backward/jit, fields.

Compile time dominates on a 2-core CPU: counts come from ``jax.eval_shape``, variables are
drawn with NumPy (random BatchNorm statistics, so folding is really tested), and runtime checks
use a reduced configuration of the same code (every block type, small and large kernels);
RepLKNet-31B itself runs under ``slow``.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv.analysis import count_params, init_variables, model_flops
from jaxconv.layers import DepthwiseConv2D
from jaxconv.layers.reparam import reparameterize
from jaxconv.models.replknet import RepLKNet
from tests.helpers import compile_fast
from tests.models.test_densenet import check_step, numpy_variables

# Ding et al. 2022 (arXiv:2203.06717), Table 5 (ImageNet, 224x224): RepLKNet-31B "79M" params,
# rounded to the million; the paper counts the inference (re-parameterized) structure.
PAPER_MILLIONS = {"replknet_31b": 79}

SMALL = dict(large_kernel_sizes=(13, 7), layers=(1, 1), channels=(8, 16), stem_stride=2,
             num_classes=5)


def hand_count(m: RepLKNet, deploy: bool) -> int:
    """Parameters counted layer by layer from the architecture (module docstring of
    jaxconv/models/replknet.py): a conv-BN has 2 BN parameters per channel in training form and
    a bias (1 per channel) in deploy form; deploy folds the pre-BNs and the final BN away."""
    bn = 1 if deploy else 2       # per output channel of a ConvBN
    pre_bn = 0 if deploy else 2   # per channel of a BatchNorm that precedes a 1x1 conv
    c0 = m.channels[0]
    total = (27 * c0 + bn * c0) + (9 * c0 + bn * c0) + (c0 * c0 + bn * c0) + (9 * c0 + bn * c0)
    for s, (n, c, k) in enumerate(zip(m.layers, m.channels, m.stage_kernel_sizes)):
        d, f = int(c * m.dw_ratio), int(c * m.ffn_ratio)
        large = k * k * d + bn * d
        if m.small_kernel is not None and m.small_kernel <= k:
            large = k * k * d + d if deploy else large + m.small_kernel ** 2 * d + bn * d
        replk = pre_bn * c + (c * d + bn * d) + large + (d * c + bn * c)
        ffn = pre_bn * c + (c * f + bn * f) + (f * c + bn * c)
        total += n * (replk + ffn)
        if s + 1 < len(m.layers):
            nxt = m.channels[s + 1]
            total += (c * nxt + bn * nxt) + (9 * nxt + bn * nxt)
    last = m.channels[-1]
    return total + pre_bn * last + last * m.num_classes + m.num_classes


def depthwise_implementations(model, shape):
    """The ``implementation`` of every DepthwiseConv2D ``model`` calls (one abstract trace)."""
    seen = []

    def record(next_fun, args, kwargs, context):
        if isinstance(context.module, DepthwiseConv2D) and context.method_name == "__call__":
            seen.append(context.module.implementation)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        init_variables(model, shape)
    return seen


@pytest.mark.parametrize("deploy", [False, True])
def test_implementation_reaches_every_depthwise_conv(deploy):
    model = RepLKNet(**SMALL, implementation="pallas", deploy=deploy)
    seen = depthwise_implementations(model, (1, 16, 16, 3))
    assert len(seen) >= 3 and set(seen) == {"pallas"}


def test_family_is_registered():
    assert jaxconv.list_models(family="replknet") == ["replknet_31b", "replknet_tiny_cifar"]
    assert jaxconv.model_info("replknet_31b").input_size == (224, 224, 3)


def test_replknet_31b_param_counts():
    model = jaxconv.create_model("replknet_31b")
    train_count = count_params(init_variables(model, (1, 32, 32, 3))["params"])
    assert train_count == hand_count(model, deploy=False)
    deploy = init_variables(model.clone(deploy=True), (1, 32, 32, 3))
    deploy_count = count_params(deploy["params"])
    assert deploy_count == hand_count(model, deploy=True)
    assert round(deploy_count / 1e6) == PAPER_MILLIONS["replknet_31b"]
    assert "batch_stats" not in deploy
    assert deploy_count < train_count


@pytest.mark.slow
def test_replknet_31b_reparameterized_tree():
    model = jaxconv.create_model("replknet_31b")
    variables = init_variables(model, (1, 32, 32, 3))
    deploy_model, deploy_vars = reparameterize(model, variables, input_shape=(1, 32, 32, 3))
    expected = init_variables(deploy_model, (1, 32, 32, 3))
    assert jax.tree.map(lambda a: a.shape, deploy_vars) == jax.tree.map(lambda a: a.shape,
                                                                       expected)


def test_hand_count_small_variants():
    """The hand count also holds for other fields (dw_ratio, no small kernel, kernel_size)."""
    for fields in (SMALL, {**SMALL, "dw_ratio": 1.5, "ffn_ratio": 2.0},
                   {**SMALL, "small_kernel": None}, {**SMALL, "kernel_size": 3},
                   {**SMALL, "kernel_size": 5}):
        model = RepLKNet(**fields)
        variables = init_variables(model, (1, 16, 16, 3))
        assert count_params(variables["params"]) == hand_count(model, deploy=False), fields
        deploy = init_variables(model.clone(deploy=True), (1, 16, 16, 3))
        assert count_params(deploy["params"]) == hand_count(model, deploy=True), fields


def test_reparameterized_small_model_equals_training_form():
    """Eval-mode training form vs deploy form, random variables with non-trivial BN statistics;
    the deploy form has fewer parameters and FLOPs."""
    model, shape = RepLKNet(**SMALL), (2, 16, 16, 3)
    variables = numpy_variables(model, shape, seed=1)
    deploy_model, deploy_vars = reparameterize(model, variables, input_shape=shape)
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    y = compile_fast(lambda v, x: model.apply(v, x, train=False), variables, x)(variables, x)
    y_deploy = compile_fast(lambda v, x: deploy_model.apply(v, x), deploy_vars, x)(deploy_vars, x)
    assert float(jnp.std(y)) > 0.1  # outputs carry signal, so the comparison means something
    np.testing.assert_allclose(y_deploy, y, rtol=1e-4, atol=2e-4 * float(jnp.max(jnp.abs(y))))
    assert count_params(deploy_vars["params"]) < count_params(variables["params"])
    assert model_flops(deploy_model, shape) < model_flops(model, shape)


def test_small_model_forward_backward_jit_and_stages():
    model, shape = RepLKNet(**SMALL, drop_path_rate=0.1), (2, 16, 16, 3)
    check_step(model, shape, 5)
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, mutable=["intermediates"]),
        init_variables(model, shape), jax.ShapeDtypeStruct(shape, jnp.float32))
    stages = state["intermediates"]
    assert sorted(stages) == ["stage0", "stage1"]
    assert stages["stage0"][0].shape == (2, 8, 8, 8)     # stem stride 2
    assert stages["stage1"][0].shape == (2, 4, 4, 16)


def test_tiny_cifar_kernel_size_override():
    model = jaxconv.create_model("replknet_tiny_cifar", kernel_size=3)
    assert model.stage_kernel_sizes == (3, 3, 3)
    params = init_variables(model, (1, 32, 32, 3))["params"]
    large = params["stages_0_blocks_0"]["large_kernel"]
    assert "small_conv" not in large  # a 3x3 large kernel has no 5x5 branch
    assert large["lkb_origin"]["conv"]["kernel"].shape == (3, 3, 32)
    params = init_variables(jaxconv.create_model("replknet_tiny_cifar", kernel_size=21),
                            (1, 32, 32, 3))["params"]
    assert params["stages_2_blocks_0"]["large_kernel"]["lkb_origin"]["conv"]["kernel"].shape == (
        21, 21, 128)


@pytest.mark.parametrize("field,value,match", [
    ("large_kernel_sizes", (31, 29, 27, 12), "odd"),
    ("layers", (2, 0, 18, 2), "layers"),
    ("channels", (128, 256), "equal length"),
    ("kernel_size", 4, "kernel_size"),
    ("small_kernel", 2, "small_kernel"),
    ("stem_stride", 3, "stem_stride"),
    ("dw_ratio", 0, "dw_ratio"),
    ("num_classes", 0, "num_classes"),
    ("drop_path_rate", 1.0, "drop_path_rate"),
    ("implementation", "cuda", "implementation"),
    ("dtype", "int8", "dtype"),
    ("deploy", "yes", "deploy"),
])
def test_bad_fields_raise(field, value, match):
    with pytest.raises(ValueError, match=match):
        jaxconv.create_model("replknet_31b", **{field: value})


@pytest.mark.slow
def test_replknet_31b_forward_backward_jit():
    check_step(jaxconv.create_model("replknet_31b", num_classes=7), (2, 32, 32, 3), 7)
