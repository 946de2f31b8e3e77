"""jaxconv.layers.DepthwiseConv2D: parameters, PyTorch padding and init, timm weight mapping,
implementations, dtypes, jit/grad inside a model, and field validation."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.layers import DepthwiseConv2D
from kernels_pallas.depthwise_conv2d import depthwise_conv2d_reference


def torch_depthwise_numpy(x_nchw, weight, bias, stride, padding):
    """PyTorch's ``F.conv2d(x, weight, bias, stride, padding, groups=C)`` written out in NumPy
    (weight [C, 1, KH, KW], symmetric zero padding), as the independent check of the mapping."""
    b, c, h, w = x_nchw.shape
    _, _, kh, kw = weight.shape
    xp = np.pad(x_nchw, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - kh) // stride + 1
    wo = (w + 2 * padding - kw) // stride + 1
    out = np.zeros((b, c, ho, wo), np.float64)
    for i in range(ho):
        for j in range(wo):
            window = xp[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw]
            out[:, :, i, j] = np.einsum("bcpq,cpq->bc", window, weight[:, 0])
    return out + bias[None, :, None, None]


@pytest.mark.parametrize("stride, size", [(1, 9), (2, 10)])
def test_timm_weights_map_to_kernel_and_give_torch_outputs(stride, size):
    """kernel = weight[:, 0].transpose(1, 2, 0) (the docstring's mapping); padding None is
    PyTorch's k//2 on both sides, also for stride 2 on an even input where 'SAME' is not."""
    rng = np.random.default_rng(0)
    c, k = 6, 5
    weight = rng.standard_normal((c, 1, k, k)).astype(np.float32)  # timm / torch layout
    bias = rng.standard_normal(c).astype(np.float32)
    x = rng.standard_normal((2, size, size + 1, c)).astype(np.float32)
    layer = DepthwiseConv2D(k, strides=stride)
    variables = {"params": {"kernel": jnp.asarray(weight[:, 0].transpose(1, 2, 0)),
                            "bias": jnp.asarray(bias)}}
    y = layer.apply(variables, jnp.asarray(x))
    expected = torch_depthwise_numpy(x.transpose(0, 3, 1, 2), weight, bias, stride, k // 2)
    np.testing.assert_allclose(np.asarray(y).transpose(0, 3, 1, 2), expected, rtol=1e-5,
                               atol=1e-4)
    if stride == 2:
        same = DepthwiseConv2D(k, strides=stride, padding="SAME").apply(variables, x)
        assert not np.allclose(same, y, atol=1e-3)  # SAME pads (1, 2), PyTorch (2, 2)


def test_parameters_and_pytorch_default_init():
    """kernel [KH, KW, C] and bias [C], float32, ~U(-1/sqrt(KH*KW), 1/sqrt(KH*KW)): PyTorch's
    kaiming_uniform(a=sqrt(5)) with a depthwise fan_in of KH*KW."""
    layer = DepthwiseConv2D((7, 3), dtype="bfloat16")
    variables = layer.init(jax.random.key(0), jnp.zeros((1, 8, 8, 512), jnp.bfloat16))
    kernel, bias = variables["params"]["kernel"], variables["params"]["bias"]
    assert kernel.shape == (7, 3, 512) and bias.shape == (512,)
    assert kernel.dtype == bias.dtype == jnp.float32
    bound = 1 / np.sqrt(21)
    for values in (np.asarray(kernel), np.asarray(bias)):
        assert np.abs(values).max() <= bound
        assert np.abs(values).max() > 0.95 * bound  # uniform over the whole interval
        np.testing.assert_allclose(values.std(), bound / np.sqrt(3), rtol=0.1)
    assert "bias" not in DepthwiseConv2D(3, use_bias=False).init(
        jax.random.key(0), jnp.zeros((1, 4, 4, 2)))["params"]


@pytest.mark.parametrize("implementation", [None, "xla", "pallas"])
def test_implementations_agree_in_both_dtypes(implementation):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((2, 7, 6, 5)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 5)), jnp.float32)
    bias = jnp.asarray(rng.standard_normal(5), jnp.float32)
    variables = {"params": {"kernel": kernel, "bias": bias}}
    for dtype in ("float32", "bfloat16"):
        layer = DepthwiseConv2D(3, dilation=2, dtype=dtype, implementation=implementation)
        y = layer.apply(variables, x)
        # The layer computes with the kernel cast to the compute dtype (Flax's convention).
        expected = depthwise_conv2d_reference(
            x.astype(dtype), kernel.astype(dtype), padding=((2, 2), (2, 2)), dilation=(2, 2),
            bias=bias)
        assert y.dtype == jnp.dtype(dtype)
        tol = 1e-5 if dtype == "float32" else 2e-2
        np.testing.assert_allclose(np.asarray(y, np.float32), np.asarray(expected, np.float32),
                                   rtol=tol, atol=tol)


class _ReferenceDepthwise(nn.Module):
    """Same parameters as DepthwiseConv2D(7), computed by lax.conv (the oracle)."""

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.zeros, (7, 7, x.shape[-1]))
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        return depthwise_conv2d_reference(x, kernel, padding=((3, 3), (3, 3)), bias=bias)


class _Block(nn.Module):
    """A ConvNeXt-like branch: depthwise 7x7, BatchNorm, pointwise, residual."""
    implementation: str | None = None
    reference: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.reference:
            y = _ReferenceDepthwise(name="dw")(x)
        else:
            y = DepthwiseConv2D(7, implementation=self.implementation, name="dw")(x)
        y = nn.BatchNorm(use_running_average=not train)(y)
        return x + nn.Dense(x.shape[-1])(nn.gelu(y))


def _loss(model, variables, x):
    def loss(params):
        y, updates = model.apply({**variables, "params": params}, x, train=True,
                                 mutable=["batch_stats"])
        return jnp.mean(y ** 2), updates
    return loss


@pytest.mark.parametrize("implementation", ["xla", "pallas"])
def test_forward_backward_jit_in_a_model(implementation):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 9, 9, 4)), jnp.float32)
    variables = _Block(implementation).init(jax.random.key(0), x)
    (value, updates), grads = jax.jit(jax.value_and_grad(
        _loss(_Block(implementation), variables, x), has_aux=True))(variables["params"])
    (ref_value, _), ref_grads = jax.jit(jax.value_and_grad(
        _loss(_Block(reference=True), variables, x), has_aux=True))(variables["params"])
    assert set(updates) == {"batch_stats"}
    np.testing.assert_allclose(value, ref_value, rtol=1e-5)
    dw = grads["dw"]["kernel"]
    assert dw.shape == (7, 7, 4) and float(jnp.abs(dw).max()) > 0
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("fields, message", [
    (dict(kernel_size=0), "kernel_size must be an int or a pair of ints"),
    (dict(kernel_size=(3, 3, 3)), "kernel_size"),
    (dict(kernel_size=3, strides=3), r"strides must be .* one of \[1, 2\]"),
    (dict(kernel_size=3, dilation=0), "dilation"),
    (dict(kernel_size=3, padding="FULL"), r"padding must be None, an int, one of \['SAME'"),
    (dict(kernel_size=3, padding=((1, 1),)), "padding"),
    (dict(kernel_size=3, dtype="float16"), r"dtype must be one of \['float32', 'bfloat16'\]"),
    (dict(kernel_size=3, dtype="int8"), "dtype must be one of"),
    (dict(kernel_size=3, implementation="triton"),
     r"implementation must be one of \[None, 'xla', 'pallas'\]"),
])
def test_bad_fields_raise(fields, message):
    with pytest.raises(ValueError, match=message):
        DepthwiseConv2D(**fields)
