"""CIFAR Wide ResNets: paper parameter counts, equivalence with the pre-activation ResNet,
dropout between the convs, forward/backward/jit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv.analysis import count_params, init_variables
from jaxconv.models.resnet import ResNet
from jaxconv.models.wrn import WideResNet, wide_resnet_cifar
from tests.helpers import compile_fast
from tests.models.test_densenet import check_step, numpy_variables

# Paper: Zagoruyko & Komodakis 2016 (arXiv:1605.07146), Table 4, "# params" column: WRN-40-4
# 8.9M, WRN-16-8 11.0M, WRN-28-10 36.5M (one decimal in millions, BN parameters included).
# WRN-16-4 is not in the paper's parameter tables; all four are also checked against the count
# derived from the architecture (``_derived_count``).
PAPER_MILLIONS = {"wrn16_8": "11.0", "wrn28_10": "36.5", "wrn40_4": "8.9"}
DEPTH_WIDTH = {"wrn16_4": (16, 4), "wrn16_8": (16, 8), "wrn28_10": (28, 10), "wrn40_4": (40, 4)}


def _derived_count(depth: int, k: int, num_classes: int = 10) -> int:
    """Parameters of WRN-depth-k from its definition (conv kernels without bias, BN scale+bias)."""
    n = (depth - 4) // 6
    total, c_in = 3 * 3 * 3 * 16, 16
    for width in (16 * k, 32 * k, 64 * k):
        for b in range(n):
            total += 2 * c_in + 9 * c_in * width + 2 * width + 9 * width * width
            if b == 0:
                total += c_in * width  # 1x1 projection: the channel count (or stride) changes
            c_in = width
    return total + 2 * c_in + c_in * num_classes + num_classes


def test_family_is_registered():
    assert jaxconv.list_models(family="wrn") == sorted(DEPTH_WIDTH)


@pytest.mark.parametrize("name", sorted(DEPTH_WIDTH))
def test_param_count(name):
    params = init_variables(jaxconv.create_model(name), (1, 32, 32, 3))["params"]
    count = count_params(params)
    assert count == _derived_count(*DEPTH_WIDTH[name])
    if name in PAPER_MILLIONS:
        assert f"{count / 1e6:.1f}" == PAPER_MILLIONS[name], count


def test_builder_takes_any_depth_and_width():
    model = wide_resnet_cifar(22, 3, num_classes=100)
    params = init_variables(model, (1, 32, 32, 3))["params"]
    assert {k for k in params if k.startswith("layer")} == {
        f"layer{g}_{b}" for g in (1, 2, 3) for b in range(3)}
    assert params["layer3_0"]["conv2"]["kernel"].shape == (3, 3, 192, 192)
    assert params["fc"]["kernel"].shape == (192, 100)
    # The first block of every group projects (16 -> 48 channels in group 1).
    assert params["layer1_0"]["downsample_conv"]["kernel"].shape == (1, 1, 16, 48)
    assert "downsample_conv" not in params["layer1_1"]


def test_equals_preact_resnet_without_dropout():
    """WRN-d-k is the pre-activation ResNet with widths (16k, 32k, 64k): same tree, same logits."""
    wrn = wide_resnet_cifar(10, 2, num_classes=4)
    resnet = ResNet(stage_sizes=(1, 1, 1), block="preact_basic", widths=(32, 64, 128),
                    stem="cifar", stem_width=16, shortcut="B", num_classes=4,
                    zero_init_last_bn=False)
    shape = (2, 16, 16, 3)
    shapes = lambda v: jax.tree.map(lambda a: a.shape, v)  # noqa: E731
    assert shapes(init_variables(wrn, shape)) == shapes(init_variables(resnet, shape))
    variables = numpy_variables(wrn, shape)
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)

    def both(v, x):
        return [(m.apply(v, x), m.apply(v, x, train=True, mutable=["batch_stats"]))
                for m in (wrn, resnet)]

    out_wrn, out_resnet = compile_fast(both, variables, x)(variables, x)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 out_wrn, out_resnet)


def test_dropout_between_convs_only_in_train_mode():
    model = wide_resnet_cifar(10, 1, dropout_rate=0.3)
    shape = (2, 8, 8, 3)
    variables = numpy_variables(model, shape)
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)

    def run(v, x, k1, k2):
        def train(m, key):
            return m.apply(v, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})[0]

        no_drop = model.clone(dropout_rate=0.0)
        return (train(model, k1), train(model, k2), train(no_drop, k1), model.apply(v, x),
                no_drop.apply(v, x))

    k1, k2 = jax.random.key(1), jax.random.key(2)
    a, b, plain, eval_drop, eval_plain = compile_fast(run, variables, x, k1, k2)(variables, x, k1, k2)
    assert not np.allclose(a, b) and not np.allclose(a, plain)
    np.testing.assert_array_equal(eval_drop, eval_plain)


# One registered model in the default run; the others differ only in depth and width (same
# code) and add ~5-15 s of CPU compile each, so they run under ``-m slow``.
@pytest.mark.parametrize("name", [n if n == "wrn16_8" else pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(DEPTH_WIDTH)])
def test_forward_backward_jit(name):
    check_step(jaxconv.create_model(name, dropout_rate=0.3), (2, 8, 8, 3), 10)


@pytest.mark.parametrize("field, value, words", [
    ("depth", 20, "6n + 4"),
    ("depth", 4, "6n + 4"),
    ("widen_factor", 0, "positive"),
    ("dropout_rate", 1.0, "[0, 1)"),
    ("drop_path_rate", -0.5, "[0, 1)"),
])
def test_bad_arguments_name_the_field(field, value, words):
    with pytest.raises(ValueError) as err:
        WideResNet(**{field: value})
    assert field in str(err.value) and words in str(err.value)
