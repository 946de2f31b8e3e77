"""MultiHeadAttention and RelativePositionBias (jaxconv.layers.attention).

The layer is checked against a NumPy float64 computation written out here (projections, head
split for both qkv layouts, softmax with the additive bias, output projection); the relative
position index against offsets worked out by hand and its gather gradient against the number
of token pairs that share an offset. Variables are drawn with NumPy (no init compile) except
where init is under test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

from jaxconv.analysis import count_params
from jaxconv.layers.attention import (
    MultiHeadAttention,
    RelativePositionBias,
    _explicit_attention,
    relative_position_index,
)
from kernels_pallas import flash_attention


def numpy_variables(module, *args, seed=0, **kwargs):
    """``module``'s params with init's shapes (traced under eval_shape), drawn from NumPy."""
    abstract = jax.eval_shape(lambda: module.init(jax.random.key(0), *args, **kwargs))
    rng = np.random.default_rng(seed)
    flat = {path: jnp.asarray(rng.normal(0.0, 0.5, leaf.shape), leaf.dtype)
            for path, leaf in flatten_dict(abstract["params"]).items()}
    return {"params": unflatten_dict(flat)}


def run(module, variables, *args, **kwargs):
    """``module.apply(variables, *args, **kwargs)`` compiled as one program (op-by-op dispatch
    of a Flax apply costs several times more CPU than one small compile)."""
    return jax.jit(lambda v, *a: module.apply(v, *a, **kwargs))(variables, *args)


def numpy_attention(x, params, heads, head_dim, layout, bias=None, scale=None):
    """The layer written out in float64 NumPy."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    b, n, _ = x.shape
    qkv = np.asarray(x, np.float64) @ p["qkv"]["kernel"] + p["qkv"]["bias"]
    if layout == "qkv_first":   # channel = (j * heads + h) * head_dim + d
        qkv = qkv.reshape(b, n, 3, heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:                       # channel = (h * 3 + j) * head_dim + d
        qkv = qkv.reshape(b, n, heads, 3, head_dim)
        q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    scale = head_dim ** -0.5 if scale is None else scale
    scores = np.einsum("bqhd,bkhd->bhqk", q, k) * scale
    if bias is not None:
        scores = scores + np.asarray(bias, np.float64)
    scores = np.exp(scores - scores.max(-1, keepdims=True))
    probs = scores / scores.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", probs, v).reshape(b, n, heads * head_dim)
    return out @ p["proj"]["kernel"] + p["proj"]["bias"]


@pytest.mark.parametrize("layout", ["qkv_first", "heads_first"])
def test_matches_numpy_computation(layout):
    # head_dim * heads (12) differs from the input (10) and output (6) widths on purpose.
    x = np.random.default_rng(1).normal(size=(2, 7, 10)).astype(np.float32)
    attn = MultiHeadAttention(num_heads=3, head_dim=4, out_features=6, qkv_layout=layout)
    variables = numpy_variables(attn, x)
    assert variables["params"]["qkv"]["kernel"].shape == (10, 36)
    assert variables["params"]["proj"]["kernel"].shape == (12, 6)
    out = run(attn, variables, x)
    want = numpy_attention(x, variables["params"], 3, 4, layout)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    # The two layouts really differ: the other one's computation does not match.
    other = "heads_first" if layout == "qkv_first" else "qkv_first"
    assert np.abs(out - numpy_attention(x, variables["params"], 3, 4, other)).max() > 1e-2


@pytest.mark.parametrize("bias_shape", [(1, 1, 5, 5), (2, 1, 5, 5), (1, 2, 5, 5), (2, 2, 5, 5)])
def test_bias_broadcasts_and_gets_gradients(bias_shape):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 8)).astype(np.float32)
    bias = rng.normal(0.0, 2.0, bias_shape).astype(np.float32)
    attn = MultiHeadAttention(num_heads=2)
    variables = numpy_variables(attn, x)
    out = run(attn, variables, x, bias)
    want = numpy_attention(x, variables["params"], 2, 4, "qkv_first", bias=bias)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    assert np.abs(out - run(attn, variables, x)).max() > 1e-2  # the bias matters

    # Gradient to the bias equals the gradient of the same computation written in jnp.
    def hand(b):
        p = variables["params"]
        qkv = (x @ p["qkv"]["kernel"] + p["qkv"]["bias"]).reshape(2, 5, 3, 2, 4)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        s = jnp.einsum("bqhd,bkhd->bhqk", q, k) / 2.0 + b
        o = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(s, -1), v).reshape(2, 5, 8)
        return jnp.sum(jnp.sin(o @ p["proj"]["kernel"] + p["proj"]["bias"]))

    layer = lambda b: jnp.sum(jnp.sin(attn.apply(variables, x, b)))  # noqa: E731
    g_layer, g_hand = jax.grad(layer)(bias), jax.grad(hand)(bias)
    assert g_layer.shape == bias_shape
    np.testing.assert_allclose(g_layer, g_hand, rtol=1e-4, atol=1e-5)


def test_spatial_input_and_default_head_dim():
    x = np.random.default_rng(3).normal(size=(1, 3, 4, 8)).astype(np.float32)
    attn = MultiHeadAttention(num_heads=4, qkv_bias=False, proj_bias=False)
    variables = numpy_variables(attn, x)
    assert "bias" not in variables["params"]["qkv"] and "bias" not in variables["params"]["proj"]
    assert count_params(variables["params"]) == 8 * 24 + 8 * 8
    out = run(attn, variables, x)
    assert out.shape == (1, 3, 4, 8)
    params = {k: {"kernel": v["kernel"], "bias": np.zeros(v["kernel"].shape[1])}
              for k, v in variables["params"].items()}
    want = numpy_attention(x.reshape(1, 12, 8), params, 4, 2, "qkv_first")
    np.testing.assert_allclose(out.reshape(1, 12, 8), want, rtol=1e-5, atol=1e-5)


def test_relative_position_index_by_hand():
    index = relative_position_index(2, 3)  # tokens row-major: t = 3 * y + x
    assert index.shape == (6, 6) and index.dtype == np.int32
    # query (1, 2) = token 5, key (0, 0) = token 0: offset (1, 2) -> (1+1)*5 + (2+2) = 14.
    assert index[5, 0] == 14
    # The reverse pair, offset (-1, -2) -> 0; any token with itself -> (0+1)*5 + (0+2) = 7.
    assert index[0, 5] == 0 and set(np.diag(index)) == {7}
    # query (0, 1) = token 1, key (1, 0) = token 3: offset (-1, 1) -> 0*5 + 3 = 3.
    assert index[1, 3] == 3
    # Equal offsets <-> equal rows, over all pairs.
    ys, xs = np.divmod(np.arange(6), 3)
    offsets = {(ys[i] - ys[j], xs[i] - xs[j]): index[i, j] for i in range(6) for j in range(6)}
    assert len(offsets) == len(set(offsets.values())) == 3 * 5


def test_relative_position_bias_gathers_the_table():
    module = RelativePositionBias((3, 4), num_heads=2)
    table = np.random.default_rng(4).normal(size=(5 * 7, 2)).astype(np.float32)
    variables = {"params": {"relative_position_bias_table": table}}
    assert jax.eval_shape(module.init, jax.random.key(0))["params"][
        "relative_position_bias_table"].shape == table.shape
    bias = run(module, variables)
    assert bias.shape == (1, 2, 12, 12)
    index = relative_position_index(3, 4)
    np.testing.assert_array_equal(bias[0], table[index].transpose(2, 0, 1))
    # d(sum of the bias)/d(table row of offset (dy, dx)) = number of pairs with that offset.
    total = lambda t: module.apply({"params": {"relative_position_bias_table": t}}).sum()  # noqa
    grad = jax.jit(jax.grad(total))(table)
    dy, dx = np.meshgrid(np.arange(-2, 3), np.arange(-3, 4), indexing="ij")
    pairs = ((3 - np.abs(dy)) * (4 - np.abs(dx))).reshape(-1)
    np.testing.assert_array_equal(grad, np.stack([pairs, pairs], axis=1))


def test_builtin_relative_bias_and_its_errors():
    x = np.random.default_rng(5).normal(size=(2, 2, 3, 8)).astype(np.float32)
    attn = MultiHeadAttention(num_heads=2, rel_pos_window=(2, 3))
    variables = numpy_variables(attn, x)
    table = variables["params"]["rel_pos"]["relative_position_bias_table"]
    assert table.shape == (3 * 5, 2)
    bias = np.asarray(table)[relative_position_index(2, 3)].transpose(2, 0, 1)[None]
    out = run(attn, variables, x)
    want = numpy_attention(x.reshape(2, 6, 8), variables["params"], 2, 4, "qkv_first", bias=bias)
    np.testing.assert_allclose(out.reshape(2, 6, 8), want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs 6 tokens"):
        run(attn, variables, x[:, :, :2])
    # Variables made for a 2x3 window (15 offsets) do not fit a 1x6 window (11): a clear error.
    with pytest.raises(ValueError, match="another input size"):
        run(attn.clone(rel_pos_window=(1, 6)), variables, x.reshape(2, 1, 6, 8))


def test_train_mode_dropout():
    x = np.random.default_rng(6).normal(size=(2, 6, 8)).astype(np.float32)
    attn = MultiHeadAttention(num_heads=2, attn_drop=0.5, proj_drop=0.25)
    variables = numpy_variables(attn, x)
    eval_out = run(attn, variables, x)
    np.testing.assert_allclose(eval_out, numpy_attention(x, variables["params"], 2, 4,
                                                         "qkv_first"), rtol=1e-5, atol=1e-5)
    # rbg keys: their random bits compile much faster than threefry's on CPU.
    a = run(attn, variables, x, train=True, rngs={"dropout": jax.random.key(1, impl="rbg")})
    b = run(attn, variables, x, train=True, rngs={"dropout": jax.random.key(2, impl="rbg")})
    assert np.isfinite(a).all() and np.abs(a - b).max() > 1e-3 and np.abs(a - eval_out).max() > 1e-3
    # The explicit (dropout) path with nothing dropped equals the op.
    q, k, v = (jnp.asarray(np.random.default_rng(i).normal(size=(2, 6, 2, 4)), jnp.float32)
               for i in range(3))
    bias = jnp.asarray(np.random.default_rng(9).normal(size=(1, 2, 6, 6)), jnp.float32)
    explicit = jax.jit(lambda *a: _explicit_attention(*a, 0.3, 0.0, jax.random.key(0, impl="rbg")))
    np.testing.assert_allclose(explicit(q, k, v, bias),
                               flash_attention(q, k, v, bias=bias, scale=0.3), rtol=1e-5,
                               atol=1e-6)


def test_bfloat16_compute():
    x = np.random.default_rng(7).normal(size=(2, 6, 8)).astype(np.float32)
    attn = MultiHeadAttention(num_heads=2, rel_pos_window=(2, 3))
    variables = numpy_variables(attn, x)
    out32 = run(attn, variables, x)
    out16 = run(attn.clone(dtype="bfloat16"), variables, x)
    assert out16.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out16, np.float32), out32, rtol=0.05, atol=0.05)


def test_init_and_jit_grad():
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 4, 8)), jnp.float32)
    attn = MultiHeadAttention(num_heads=2, rel_pos_window=(2, 2))
    variables = jax.jit(attn.init)(jax.random.key(0, impl="rbg"), x)
    p = variables["params"]
    assert np.all(p["qkv"]["bias"] == 0) and np.all(p["proj"]["bias"] == 0)
    assert 0.005 < np.std(p["rel_pos"]["relative_position_bias_table"]) < 0.05
    grads = jax.jit(jax.grad(lambda v: jnp.sum(attn.apply(v, x) ** 2)))(variables)
    for path, g in flatten_dict(grads["params"]).items():
        assert np.isfinite(g).all() and np.abs(g).max() > 0, path


def test_xla_and_pallas_agree_on_a_tiny_input():
    x = np.random.default_rng(10).normal(size=(1, 2, 3, 8)).astype(np.float32)
    attn = MultiHeadAttention(num_heads=2, rel_pos_window=(2, 3), implementation="xla")
    variables = numpy_variables(attn, x)
    want = run(attn, variables, x)
    try:
        got = run(attn.clone(implementation="pallas"), variables, x)
    except NotImplementedError as err:  # helper D's kernel not landed yet
        pytest.skip(f"flash_attention pallas path not available: {err}")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_heads=0), "num_heads"),
    (dict(num_heads=2, head_dim=-1), "head_dim"),
    (dict(num_heads=2, qkv_layout="hqd"), "qkv_layout"),
    (dict(num_heads=2, attn_drop=1.0), "attn_drop"),
    (dict(num_heads=2, proj_drop=-0.1), "proj_drop"),
    (dict(num_heads=2, scale=0.0), "scale"),
    (dict(num_heads=2, rel_pos_window=(2, 0)), "rel_pos_window"),
    (dict(num_heads=2, implementation="triton"), "implementation"),
    (dict(num_heads=2, dtype="int8"), "dtype"),
])
def test_bad_fields_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        MultiHeadAttention(**kwargs)


def test_width_not_divisible_by_heads():
    attn = MultiHeadAttention(num_heads=3)
    with pytest.raises(ValueError, match="num_heads=3"):
        jax.eval_shape(attn.init, jax.random.key(0), jnp.zeros((1, 4, 8)))
    with pytest.raises(ValueError, match="window_size"):
        RelativePositionBias((0, 2), 2)
