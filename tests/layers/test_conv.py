"""``jaxconv.layers.conv.matmul_conv``: same values and gradients as ``lax.conv_general_dilated``,
and a matmul exactly for the calls it serves."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.layers import conv

PAD1 = ((1, 1), (1, 1))


@pytest.mark.parametrize("x_shape, kernel, kwargs, served", [
    ((2, 7, 7, 8), (7, 7, 8, 5), {}, True),                   # window = map: a reshape
    ((2, 9, 10, 8), (7, 7, 8, 5), {}, True),                  # 3x4 outputs, taps side by side
    ((2, 3, 3, 8), (1, 1, 8, 5), {}, True),                   # 1x1
    ((2, 20, 20, 8), (1, 1, 8, 5), {}, True),                 # 1x1 on a large map
    ((2, 4, 4, 8), (3, 3, 8, 5), {"padding": PAD1}, True),    # 16 output pixels: padded
    ((2, 1, 2, 8), (3, 3, 8, 5), {"padding": PAD1}, True),
    ((2, 5, 5, 8), (3, 3, 8, 5), {"padding": PAD1}, False),   # 25 pixels: lax
    ((2, 9, 9, 8), (3, 3, 8, 5), {"strides": 2}, False),
    ((2, 9, 9, 8), (3, 3, 8, 5), {"padding": "SAME"}, False),
])
def test_matmul_conv_matches_lax(x_shape, kernel, kwargs, served, monkeypatch):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=x_shape), jnp.float32)
    w = jnp.asarray(rng.normal(size=kernel), jnp.float32)
    strides = (kwargs.get("strides", 1),) * 2
    padding = kwargs.get("padding", "VALID")
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, strides, padding, dimension_numbers=dn)))

    with jax.default_matmul_precision("highest"):
        ref = jax.jit(jax.value_and_grad(loss(jax.lax.conv_general_dilated), (0, 1)))(x, w)
        calls, stock = [], jax.lax.conv_general_dilated
        monkeypatch.setattr(conv.lax, "conv_general_dilated",
                            lambda *a, **k: calls.append(1) or stock(*a, **k))
        ours = jax.jit(jax.value_and_grad(loss(conv.matmul_conv), (0, 1)))(x, w)
    assert (not calls) == served
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4), ours, ref)
