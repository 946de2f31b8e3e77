"""Structural re-parameterization: the kernel arithmetic against the convolutions it replaces,
and ``reparameterize`` on a user-defined block (the protocol a new block follows).

Everything runs on random variables with non-trivial BatchNorm statistics (scale U(0.5, 1.5),
var U(0.5, 2), mean and bias N(0, 0.1)), so a fold that ignored any of them would fail.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxconv.analysis import count_params, init_variables
from jaxconv.layers import DepthwiseConv2D, batch_norm
from jaxconv.layers.reparam import (
    ConvBN,
    dilate_kernel,
    find_reparameterizable,
    fold_batch_norm,
    fold_batch_norm_into_next,
    pad_kernel,
    reparameterize,
)
from tests.helpers import compile_fast
from tests.models.test_densenet import numpy_variables

RTOL, ATOL = 1e-5, 1e-5


def _rng(seed=0):
    return np.random.default_rng(seed)


def _bn(rng, c):
    params = {"scale": rng.uniform(0.5, 1.5, c).astype(np.float32),
              "bias": rng.normal(0, 0.1, c).astype(np.float32)}
    stats = {"mean": rng.normal(0, 0.1, c).astype(np.float32),
             "var": rng.uniform(0.5, 2.0, c).astype(np.float32)}
    return params, stats


def _bn_eval(y, params, stats, eps=1e-5):
    return (y - stats["mean"]) / np.sqrt(stats["var"] + eps) * params["scale"] + params["bias"]


def _dw(x, w, dilation=1):
    """Reference depthwise conv, PyTorch-style symmetric 'same' padding."""
    k = (w.shape[0] - 1) * dilation + 1
    return lax.conv_general_dilated(
        x, w[:, :, None, :], (1, 1), ((k // 2, k // 2),) * 2, rhs_dilation=(dilation,) * 2,
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1],
        precision=lax.Precision.HIGHEST)


def test_fold_batch_norm_dense_conv():
    rng = _rng(0)
    x = rng.normal(size=(2, 7, 7, 4)).astype(np.float32)
    w = rng.normal(size=(3, 3, 4, 5)).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    bn_p, bn_s = _bn(rng, 5)
    conv = lambda w: lax.conv_general_dilated(  # noqa: E731
        x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
        precision=lax.Precision.HIGHEST)
    expected = _bn_eval(conv(w) + b, bn_p, bn_s)
    k2, b2 = fold_batch_norm(w, b, bn_p, bn_s)
    np.testing.assert_allclose(conv(k2) + b2, expected, rtol=RTOL, atol=ATOL)
    # Without a bias (the usual conv before a BN).
    k3, b3 = fold_batch_norm(w, None, bn_p, bn_s)
    np.testing.assert_allclose(conv(k3) + b3, _bn_eval(conv(w), bn_p, bn_s), rtol=RTOL,
                               atol=ATOL)


def test_fold_batch_norm_into_next_dense_and_1x1():
    rng = _rng(1)
    x = rng.normal(size=(2, 5, 5, 6)).astype(np.float32)
    w = rng.normal(size=(6, 3)).astype(np.float32)
    b = rng.normal(size=3).astype(np.float32)
    bn_p, bn_s = _bn(rng, 6)
    expected = _bn_eval(x, bn_p, bn_s) @ w + b
    k, bias = fold_batch_norm_into_next(w, b, bn_p, bn_s)
    np.testing.assert_allclose(x @ k + bias, expected, rtol=RTOL, atol=ATOL)
    k4, bias4 = fold_batch_norm_into_next(w[None, None], None, bn_p, bn_s)
    assert k4.shape == (1, 1, 6, 3)
    np.testing.assert_allclose(x @ k4[0, 0] + bias4, expected - b, rtol=RTOL, atol=ATOL)
    with pytest.raises(ValueError, match="1x1"):
        fold_batch_norm_into_next(np.zeros((3, 3, 6, 3), np.float32), None, bn_p, bn_s)


@pytest.mark.parametrize("small,large,dilation", [(5, 13, 1), (3, 7, 1), (7, 13, 2), (3, 13, 5),
                                                  (3, 13, 4)])
def test_padded_and_dilated_kernel_equals_the_branch(small, large, dilation):
    """A (dilated) small depthwise kernel, dilated by inserting zeros and zero-padded to the
    large size, gives the same 'same' convolution."""
    rng = _rng(small * 100 + dilation)
    x = rng.normal(size=(2, 15, 15, 3)).astype(np.float32)
    w = rng.normal(size=(small, small, 3)).astype(np.float32)
    merged = pad_kernel(dilate_kernel(w, dilation), large)
    assert merged.shape == (large, large, 3)
    np.testing.assert_allclose(_dw(x, merged), _dw(x, w, dilation), rtol=RTOL, atol=ATOL)
    # The jax.numpy path (inside jit / eval_shape) gives the same kernel.
    np.testing.assert_array_equal(pad_kernel(dilate_kernel(jnp.asarray(w), dilation), large),
                                  merged)


def test_kernel_helpers_reject_bad_arguments():
    w = np.zeros((5, 5, 2), np.float32)
    with pytest.raises(ValueError, match="centre"):
        pad_kernel(w, 3)
    with pytest.raises(ValueError, match="centre"):
        pad_kernel(w, 8)
    with pytest.raises(ValueError, match="dilation"):
        dilate_kernel(w, 0)
    with pytest.raises(ValueError, match="dilation"):
        ConvBN(4, 3, dilation=2)


# ------------------------------------------------------- a user block and the generic walker


class RepVGGStyle(nn.Module):
    """What a new re-parameterizable block looks like: a depthwise 3x3 conv-BN, a depthwise 1x1
    conv-BN and a BN identity branch, summed; deploy: one 3x3 depthwise conv with bias."""

    deploy: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.deploy:
            return DepthwiseConv2D(3, name="reparam")(x)
        out = ConvBN(None, 3, depthwise=True, name="conv3")(x, train)
        out = out + ConvBN(None, 1, depthwise=True, name="conv1")(x, train)
        return out + batch_norm(train, name="identity")(x)

    def deploy_variables(self, variables):
        params = variables["params"]
        kernel = params["conv3"]["conv"]["kernel"] + pad_kernel(params["conv1"]["conv"]["kernel"],
                                                                3)
        bias = params["conv3"]["conv"]["bias"] + params["conv1"]["conv"]["bias"]
        c = kernel.shape[-1]
        eye = np.zeros((3, 3, c), np.float32)
        eye[1, 1] = 1.0  # the identity as a depthwise kernel
        k_id, b_id = fold_batch_norm(eye, None, params["identity"],
                                     variables["batch_stats"]["identity"])
        return {"params": {"reparam": {"kernel": kernel + k_id, "bias": bias + b_id}}}


class TwoBlockNet(nn.Module):
    """A model holding re-parameterizable blocks at two depths, plus a plain conv."""

    deploy: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(ConvBN(6, 3, deploy=self.deploy, name="stem")(x, train))
        x = nn.relu(RepVGGStyle(self.deploy, name="block")(x, train))
        x = nn.Conv(4, (1, 1), name="plain")(x)
        return jnp.mean(x, axis=(1, 2))


def test_reparameterize_user_block_equals_training_form():
    model, shape = TwoBlockNet(), (2, 9, 9, 3)
    variables = numpy_variables(model, shape, seed=3)
    found = dict(find_reparameterizable(model, variables, shape))
    assert sorted(found) == [("block",), ("block", "conv1"), ("block", "conv3"), ("stem",)]
    deploy_model, deploy_vars = reparameterize(model, variables, input_shape=shape)
    assert deploy_model.deploy and not model.deploy
    assert "batch_stats" not in deploy_vars  # every BN folded
    expected = init_variables(deploy_model, shape)
    assert jax.tree.map(lambda a: a.shape, deploy_vars) == jax.tree.map(lambda a: a.shape,
                                                                       expected)
    x = jnp.asarray(_rng(4).normal(size=shape), jnp.float32)
    y_train_form = model.apply(variables, x, train=False)
    y_deploy = deploy_model.apply(deploy_vars, x)
    np.testing.assert_allclose(y_deploy, y_train_form, rtol=1e-4, atol=1e-5)
    assert count_params(deploy_vars["params"]) < count_params(variables["params"])
    # Abstract variables in, abstract deploy variables out (no values drawn).
    abstract = reparameterize(model, init_variables(model, shape), input_shape=shape)[1]
    assert jax.tree.map(lambda a: a.shape, abstract) == jax.tree.map(lambda a: a.shape,
                                                                    deploy_vars)


def test_reparameterize_rejects_bad_models():
    class NoDeploy(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(2)(x)

    with pytest.raises(ValueError, match="deploy"):
        reparameterize(NoDeploy(), {"params": {}})
    with pytest.raises(ValueError, match="already in deploy form"):
        reparameterize(TwoBlockNet(deploy=True), {"params": {}})
    model, shape = TwoBlockNet(), (1, 9, 9, 1)
    variables = init_variables(model, shape)
    with pytest.raises(ValueError, match="input_shape"):
        reparameterize(model, variables)  # traced with 3 channels by default


# --------------------------------------------------------- every block of the model families


def _blocks():
    from jaxconv.models.replknet import ConvFFN, RepLKBlock, ReparamLargeKernelConv
    from jaxconv.models.unireplknet import DILATED_BRANCHES, DilatedReparamBlock, UniRepLKNetBlock
    blocks = {
        "ConvBN_dense_stride2": ConvBN(6, 3, 2),
        "ConvBN_depthwise_dilated": ConvBN(None, 3, depthwise=True, dilation=2),
        "ReparamLargeKernelConv_13_5": ReparamLargeKernelConv(13, 5),
        "ReparamLargeKernelConv_7_3": ReparamLargeKernelConv(7, 3),
        "ReparamLargeKernelConv_5_5": ReparamLargeKernelConv(5, 5),
        "RepLKBlock": RepLKBlock(6, 9, 5),
        "ConvFFN": ConvFFN(16),
        "UniRepLKNetBlock_3": UniRepLKNetBlock(3),
        "UniRepLKNetBlock_5": UniRepLKNetBlock(5),
        "UniRepLKNetBlock_13": UniRepLKNetBlock(13),
    }
    blocks.update({f"DilatedReparamBlock_{k}": DilatedReparamBlock(k) for k in DILATED_BRANCHES})
    return blocks


def test_every_block_type_reparameterizes_exactly():
    """Each block of RepLKNet/UniRepLKNet (and ConvBN variants), alone: training form in eval
    mode vs deploy form, random variables with non-trivial BN statistics (and GRN beta, layer
    scale), every dilated-reparam kernel size (7..17). One compile for all of them."""
    shape = (2, 19, 19, 8)
    x = jnp.asarray(_rng(7).normal(size=shape), jnp.float32)
    cases = {}
    for i, (name, block) in enumerate(_blocks().items()):
        variables = numpy_variables(block, shape, seed=10 + i)
        deploy_block, deploy_vars = reparameterize(block, variables, input_shape=shape)
        assert count_params(deploy_vars["params"]) < count_params(variables["params"]), name
        assert "batch_stats" not in deploy_vars, name
        cases[name] = (block, variables, deploy_block, deploy_vars)

    def outputs(all_vars, x):
        return {name: (block.apply(all_vars[name][0], x, train=False),
                       deploy.apply(all_vars[name][1], x))
                for name, (block, _, deploy, _) in cases.items()}

    all_vars = {n: (c[1], c[3]) for n, c in cases.items()}
    results = compile_fast(outputs, all_vars, x)(all_vars, x)
    for name, (y, y_deploy) in results.items():
        assert float(jnp.std(y)) > 0.05, name
        np.testing.assert_allclose(y_deploy, y, rtol=1e-4, atol=1e-4, err_msg=name)


def test_pallas_implementation_gives_the_same_block_and_deploy_outputs():
    """The dilated reparam block (6 depthwise convs) and its merged form on the Pallas path
    (interpreted on CPU) against the XLA path."""
    from jaxconv.models.unireplknet import DilatedReparamBlock
    shape = (1, 16, 16, 8)
    block = DilatedReparamBlock(13, implementation="xla")
    variables = numpy_variables(block, shape, seed=2)
    x = jnp.asarray(_rng(3).normal(size=shape), jnp.float32)
    y_xla = jax.jit(lambda v, x: block.apply(v, x))(variables, x)
    pallas = block.clone(implementation="pallas")
    y_pallas = jax.jit(lambda v, x: pallas.apply(v, x))(variables, x)
    deploy, deploy_vars = reparameterize(pallas, variables, input_shape=shape)
    assert deploy.implementation == "pallas"
    y_deploy = jax.jit(lambda v, x: deploy.apply(v, x))(deploy_vars, x)
    np.testing.assert_allclose(y_pallas, y_xla, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_deploy, y_xla, rtol=1e-4, atol=1e-4)
