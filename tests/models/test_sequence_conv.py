"""Sequence conv models (TCN, ByteNet, UCR FCN/ResNet, CCNN): parameter counts against the
papers / authors' configs, the ``pool`` output contract, causality, clear errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv.analysis import count_params
from jaxconv.models.bytenet import ByteNet
from jaxconv.models.ccnn import CCNN
from jaxconv.models.tcn import TCN
from jaxconv.models.ucr import UCRFCN, UCRResNet
from tests.helpers import assert_causal, run_jitted

KEY = jax.random.key(0)


def abstract_variables(model, shape, dtype=jnp.float32, train=False):
    return jax.eval_shape(lambda k: model.init(k, jnp.zeros(shape, dtype), train=train), KEY)


def registered_params(name: str) -> int:
    info = jaxconv.model_info(name)
    dtype = jnp.int32 if info.input_dtype == "int32" else jnp.float32
    variables = abstract_variables(jaxconv.create_model(name), (1,) + info.input_size, dtype)
    return count_params(variables["params"])


def tcn_params(cin, width, levels, k, classes):
    """locuslab/TCN: weight-normed convs (v: k*in*out, g: out, bias: out), a 1x1 downsample
    where the width changes, a linear head."""
    first = (k * cin * width + 2 * width) + (k * width * width + 2 * width)
    first += cin * width + width if cin != width else 0
    rest = (levels - 1) * 2 * (k * width * width + 2 * width)
    return first + rest + width * classes + classes


def test_tcn_parameter_counts_follow_the_authors_configs():
    # locuslab/TCN script defaults; Bai et al. Table 1 lists ~70K for sequential MNIST.
    assert registered_params("tcn_smnist") == tcn_params(1, 25, 8, 7, 10) == 66_910
    assert registered_params("tcn_adding") == tcn_params(2, 30, 8, 7, 1) == 96_001
    assert registered_params("tcn_copy_memory") == tcn_params(1, 10, 8, 8, 10) == 12_530


def test_ucr_parameter_counts():
    def conv_bn(k, cin, cout):
        return k * cin * cout + cout + 2 * cout

    fcn = conv_bn(8, 1, 128) + conv_bn(5, 128, 256) + conv_bn(3, 256, 128) + 128 * 2 + 2
    assert registered_params("ucr_fcn") == fcn == 264_962
    resnet, cin = 0, 1
    for width in (64, 128, 128):
        resnet += conv_bn(8, cin, width) + conv_bn(5, width, width) + conv_bn(3, width, width)
        resnet += (cin * width + width if cin != width else 0) + 2 * width  # shortcut (+BN)
        cin = width
    assert registered_params("ucr_resnet") == resnet + 128 * 2 + 2 == 504_258


def ccnn_params(cin, hidden, blocks, kernel_hidden, classes, dim):
    """The authors' CCNN (david-knigge/ccnn models/resnet.py, S4Block, SeparableFlexConv with a
    3-layer MAGNet, bias, a learned mask width per dim), counted module by module."""
    def sep_flexconv(cin, cout):
        magnet = 4 * (3 * kernel_hidden * dim + kernel_hidden) + 3 * (kernel_hidden ** 2
                                                                      + kernel_hidden)
        magnet += kernel_hidden * cin + cin  # output linear: one kernel per input channel
        return magnet + cin + dim + cin * cout + cout  # conv bias, mask sigma, channel mixer

    block = 2 * hidden + sep_flexconv(hidden, hidden) + hidden * hidden + hidden
    return (sep_flexconv(cin, hidden) + 2 * hidden + blocks * block + 2 * hidden
            + hidden * classes + classes)


def test_ccnn_parameter_counts_follow_the_authors_code():
    # The CCNN paper's table rounds these to 200K and 2M.
    assert registered_params("ccnn_4_140") == ccnn_params(1, 140, 4, 32, 10, 1) == 198_769
    assert registered_params("ccnn_6_380") == ccnn_params(1, 380, 6, 64, 10, 1) == 1_993_091
    assert registered_params("ccnn_4_140_2d") == ccnn_params(3, 140, 4, 32, 10, 2) == 201_042
    assert registered_params("ccnn_6_380_2d") == ccnn_params(3, 380, 6, 64, 10, 2)


def test_ccnn_2d_is_an_image_model():
    model = jaxconv.create_model("ccnn_tiny_2d")
    assert jaxconv.model_info("ccnn_tiny_2d").input_size == (32, 32, 3)
    x = jnp.zeros((2, 12, 10, 3))
    assert jax.eval_shape(lambda: model.init_with_output(KEY, x)[0]).shape == (2, 10)
    none = jax.eval_shape(lambda: model.clone(pool="none").init_with_output(KEY, x)[0])
    assert none.shape == (2, 12, 10, 10)
    stages = jaxconv.feature_info(model, (1, 12, 10, 3))
    assert [(s.name, s.stride, s.channels) for s in stages] == [("stage0", 1, 16),
                                                               ("stage1", 1, 16)]


@pytest.mark.slow
def test_ccnn_2d_train_step():
    model = jaxconv.create_model("ccnn_tiny_2d", dropout_rate=0.1)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 12, 10, 3)), jnp.float32)
    variables = run_jitted(lambda x: model.init(KEY, x), x)
    out, updates = run_jitted(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                                       rngs={"dropout": KEY}), variables, x)
    assert out.shape == (2, 10) and np.isfinite(out).all() and "batch_stats" in updates


@pytest.mark.parametrize("pool,shape", [("last", (2, 10)), ("mean", (2, 10)),
                                        ("none", (2, 12, 10))])
def test_pool_contract_shapes(pool, shape):
    for model, x in ((TCN(channels=(4, 4), kernel_size=3, pool=pool), jnp.zeros((2, 12, 3))),
                     (ByteNet(features=8, dilations=(1, 2), repeats=1, num_classes=10,
                              vocab_size=5, pool=pool), jnp.zeros((2, 12), jnp.int32)),
                     (UCRFCN(filters=(4, 4, 4), num_classes=10, pool=pool),
                      jnp.zeros((2, 12, 3))),
                     (CCNN(num_blocks=1, hidden=4, kernel_hidden=4, pool=pool),
                      jnp.zeros((2, 12, 3)))):
        out = jax.eval_shape(lambda x: model.init_with_output(KEY, x)[0], x)
        assert out.shape == shape and out.dtype == jnp.float32, type(model).__name__


def test_registered_sequence_models_metadata():
    assert jaxconv.model_info("bytenet_char").input_dtype == "int32"
    assert jaxconv.model_info("tcn_smnist").input_size == (784, 1)
    for name in ("tcn_tiny", "bytenet_tiny", "ucr_fcn_tiny", "tcn_copy_memory", "ucr_resnet",
                 "bytenet_char", "tcn_adding", "ucr_fcn", "tcn_smnist", "ccnn_tiny",
                 "ccnn_tiny_2d", "ccnn_4_140", "ccnn_6_380", "ccnn_4_140_2d", "ccnn_6_380_2d"):
        assert name in jaxconv.list_models()


def test_tcn_and_bytenet_are_causal_per_position():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 10, 2)), jnp.float32)
    for model in (TCN(channels=(3, 3), kernel_size=2, pool="none", num_classes=2),
                  ByteNet(features=4, dilations=(1, 2), repeats=1, vocab_size=None,
                          num_classes=2)):
        variables = run_jitted(lambda x: model.init(KEY, x), x)
        assert_causal(jax.jit(lambda x: model.apply(variables, x)), x)


def test_ucr_resnet_trains_with_batch_stats():
    model = UCRResNet(filters=(4, 6), kernel_sizes=(3, 2), num_classes=3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 9, 2)), jnp.float32)
    variables = run_jitted(lambda x: model.init(KEY, x, train=False), x)
    out, updates = run_jitted(
        lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]), variables, x)
    assert out.shape == (4, 3) and np.isfinite(out).all()
    assert set(updates) == {"batch_stats"}


@pytest.mark.parametrize("make,match", [
    (lambda: TCN(pool="max"), "pool must be one of"),
    (lambda: TCN(channels=(4, 0)), "channels"),
    (lambda: TCN(dropout_rate=1.0), "dropout_rate"),
    (lambda: ByteNet(features=7), "features"),
    (lambda: ByteNet(causal=False, decode=True), "causal=True"),
    (lambda: UCRFCN(filters=(4, 4), kernel_sizes=(3,)), "equal length"),
    (lambda: CCNN(data_dim=2), "causal=True is for 1-D"),
    (lambda: CCNN(data_dim=2, causal=False, pool="last"), "pool must be one of"),
    (lambda: CCNN(decode=True), "int kernel_size"),
    (lambda: CCNN(data_dim=3), "data_dim must be one of"),
])
def test_bad_fields_raise(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="needs vocab_size"):
        TCN().init(KEY, jnp.zeros((1, 5), jnp.int32))
    with pytest.raises(ValueError, match=r"must be \[B, L, C\]"):
        TCN().init(KEY, jnp.zeros((1, 5)))
    with pytest.raises(ValueError, match=r"takes \[B, H, W, C\]"):
        jax.eval_shape(CCNN(data_dim=2, causal=False).init, KEY, jnp.zeros((1, 5, 3)))
