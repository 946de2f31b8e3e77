"""CvT: parameter counts against the paper, the 224x224 geometry, the convolutional-projection
attention against a NumPy computation, forward/backward/jit and train mode on a small override,
xla vs pallas attention, and parity with Hugging Face transformers' CvT-13 on seeded weights.

Counts and the 224 geometry use ``jax.eval_shape`` only; runs use a narrow override with
variables drawn by NumPy (no jitted ``init``), compiled with XLA's fast-compile options.
"""
from __future__ import annotations

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

import jaxconv
from jaxconv.analysis import count_params, init_variables
from jaxconv.convert.seeded import read_fixture
from jaxconv.layers import BN_EPSILON
from jaxconv.models.cvt import CvTAttention, variables_from_hf
from tests.helpers import run_jitted

# Wu et al. 2021 (arXiv:2103.15808), Table 2 ("#Param."): CvT-13 20M, CvT-21 32M (whole
# millions). Our exact counts (19,997,480 and 31,622,696) also equal the authors' released
# models' counts as other ports report them.
PAPER_MILLIONS = {"cvt_13": 20, "cvt_21": 32}
DEPTHS = {"cvt_13": (1, 2, 10), "cvt_21": (1, 4, 16)}


def expected_count(depths, dims=(64, 192, 384), patches=(7, 3, 3), mlp_ratio=4, classes=1000):
    """CvT's parameter count, derived layer by layer (BatchNorm scale/bias included)."""
    total, c_in = 0, 3
    for i, (depth, d, k) in enumerate(zip(depths, dims, patches)):
        total += k * k * c_in * d + d + 2 * d                     # token-embedding conv + LN
        total += d if i == len(depths) - 1 else 0                # class token
        hidden = mlp_ratio * d
        block = (2 * d                                           # norm1
                 + 3 * (9 * d + 2 * d)                           # depthwise conv + BN, q/k/v
                 + 3 * (d * d + d)                               # proj_q/k/v
                 + d * d + d                                     # proj
                 + 2 * d                                         # norm2
                 + d * hidden + hidden + hidden * d + d)         # mlp
        total += depth * block
        c_in = d
    return total + 2 * dims[-1] + dims[-1] * classes + classes


def numpy_variables(model, shape, seed=0, *args):
    """Variables drawn with NumPy: fan-in-normal kernels, sane BN statistics, LN scales ~1."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        kind = path[-1]
        if kind == "kernel":
            fan_in = leaf.shape[0] * leaf.shape[1] if leaf.ndim == 3 else math.prod(
                leaf.shape[:-1])  # depthwise kernels [kh, kw, C]: fan-in kh*kw
            value = rng.normal(0.0, math.sqrt(1.0 / fan_in), leaf.shape)
        elif kind == "scale":
            value = rng.uniform(0.5, 1.5, leaf.shape)
        elif kind == "var":
            value = rng.uniform(0.5, 2.0, leaf.shape)
        else:  # bias, mean, cls_token
            value = rng.normal(0.0, 0.1, leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    abstract = (init_variables(model, shape) if not args else jax.eval_shape(
        lambda *a: model.init(jax.random.key(0), *a), *args))
    return {col: unflatten_dict({k: draw(k, v) for k, v in flatten_dict(tree).items()})
            for col, tree in abstract.items()}


def small(**overrides):
    """cvt_13's structure, narrow and shallow: maps 8/4/2 at 32x32, drop path on stage 3."""
    return jaxconv.create_model("cvt_13", **{**dict(
        depths=(1, 1, 2), embed_dims=(16, 32, 32), num_heads=(1, 2, 2), num_classes=10),
        **overrides})


def two_stage(**overrides):
    """Two stages (7x7/4 then 3x3/2 embedding; the class token and drop path in stage 2): the
    smallest model with every kind of layer, for the compiled train step."""
    return small(**{**dict(depths=(1, 2), embed_dims=(16, 32), num_heads=(1, 2),
                           patch_sizes=(7, 3), patch_strides=(4, 2), patch_paddings=(2, 1)),
                    **overrides})


SMALL_SHAPE = (2, 32, 32, 3)


@functools.lru_cache(maxsize=None)
def abstract_variables(name: str):
    return init_variables(jaxconv.create_model(name), (1, 224, 224, 3))


# ------------------------------------------------------------------------ parameter counts


def test_family_is_registered():
    assert jaxconv.list_models(family="cvt") == sorted(PAPER_MILLIONS)
    info = jaxconv.model_info("cvt_13")
    assert info.input_size == (224, 224, 3) and "2103.15808" in info.paper


# CvT-21 (not asked for by the issue) is counted in the slow set: tracing it costs ~5 s here.
@pytest.mark.parametrize("name", ["cvt_13", pytest.param("cvt_21", marks=pytest.mark.slow)])
def test_param_count(name):
    count = count_params(abstract_variables(name)["params"])
    assert count == expected_count(DEPTHS[name])
    assert round(count / 1e6) == PAPER_MILLIONS[name], count


def test_authors_layout():
    variables = abstract_variables("cvt_13")
    params = variables["params"]
    assert set(params) == {"stages_0", "stages_1", "stages_2", "norm", "head"}
    assert "cls_token" in params["stages_2"] and "cls_token" not in params["stages_1"]
    assert params["stages_0"]["patch_embed"]["proj"]["kernel"].shape == (7, 7, 3, 64)
    attn = params["stages_2"]["blocks_9"]["attn"]
    assert set(attn) == {"conv_proj_q", "conv_proj_k", "conv_proj_v", "proj_q", "proj_k",
                         "proj_v", "proj"}
    assert attn["conv_proj_k"]["conv"]["kernel"].shape == (3, 3, 384)
    assert set(attn["conv_proj_k"]["conv"]) == {"kernel"}  # no bias, BN follows
    assert set(variables["batch_stats"]["stages_1"]["blocks_0"]["attn"]["conv_proj_v"]["bn"]) \
        == {"mean", "var"}


def test_geometry_at_224():
    model = jaxconv.create_model("cvt_13")
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    logits, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]),
                                   abstract_variables("cvt_13"), x)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    stages = {k: v[0].shape for k, v in state["intermediates"].items()}
    assert stages == {"stage0": (2, 56, 56, 64), "stage1": (2, 28, 28, 192),
                      "stage2": (2, 14, 14, 384)}


# ----------------------------------------------------------------- attention by hand


def _depthwise(x, kernel, stride):
    """[B, H, W, C] depthwise 3x3 conv, padding 1, float64."""
    batch, height, width, channels = x.shape
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    out = np.zeros((batch, out_h, out_w, channels))
    for i in range(out_h):
        for j in range(out_w):
            patch = xp[:, i * stride:i * stride + 3, j * stride:j * stride + 3]
            out[:, i, j] = np.einsum("bxyc,xyc->bc", patch, kernel)
    return out


def hand_attention(image, cls, p, bs, heads):
    """CvT's attention from the paper/authors' code: conv projection (depthwise + BN, k/v at
    stride 2), class token prepended, linear q/k/v, softmax(q k^T * dim**-0.5) v, output proj."""
    batch, _, _, dim = image.shape
    d = dim // heads

    def project(which, stride):
        t = _depthwise(image, p[f"conv_proj_{which}"]["conv"]["kernel"], stride)
        bn, stats = p[f"conv_proj_{which}"]["bn"], bs[f"conv_proj_{which}"]["bn"]
        t = (t - stats["mean"]) / np.sqrt(stats["var"] + BN_EPSILON) * bn["scale"] + bn["bias"]
        t = np.concatenate([cls, t.reshape(batch, -1, dim)], axis=1)
        t = t @ p[f"proj_{which}"]["kernel"] + p[f"proj_{which}"]["bias"]
        return t.reshape(batch, -1, heads, d)

    q, k, v = project("q", 1), project("k", 2), project("v", 2)
    logits = np.einsum("bqhd,bkhd->bhqk", q, k) * dim ** -0.5
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    out = np.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, -1, dim)
    return out @ p["proj"]["kernel"] + p["proj"]["bias"]


def test_attention_matches_hand_computation():
    heads, dim = 2, 8
    rng = np.random.default_rng(0)
    image, cls = rng.normal(size=(2, 5, 6, dim)), rng.normal(size=(2, 1, dim))
    layer = CvTAttention(num_heads=heads, implementation="xla")
    variables = numpy_variables(layer, None, 0, jnp.float32(image), jnp.float32(cls))
    got = run_jitted(layer.apply, variables, jnp.float32(image), jnp.float32(cls))
    assert got.shape == (2, 1 + 5 * 6, dim)
    as64 = lambda t: jax.tree.map(lambda a: np.asarray(a, np.float64), t)  # noqa: E731
    want = hand_attention(image, cls, as64(variables["params"]), as64(variables["batch_stats"]),
                          heads)
    np.testing.assert_allclose(got, want, rtol=5e-5, atol=5e-5)


# -------------------------------------------------------------------------------- running


def test_forward_backward_jit_and_train_mode():
    """Train (BatchNorm statistics, drop path) and eval under jit: finite, every parameter gets
    a gradient, statistics update, drop path acts only in train mode and follows the key."""
    model = two_stage(drop_path_rate=0.5)
    variables = numpy_variables(model, SMALL_SHAPE)
    x = jnp.asarray(np.random.default_rng(1).normal(size=SMALL_SHAPE), jnp.float32)

    def fn(variables, x, keys):
        def loss_fn(params):
            def train(key):
                return model.apply({**variables, "params": params}, x, train=True,
                                   mutable=["batch_stats"], rngs={"dropout": key})

            logits, updates = jax.vmap(train)(keys)  # two dropout keys, one traced copy
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0]), (logits, updates)

        (loss, (train, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            variables["params"])
        return loss, grads, train, updates, model.apply(variables, x, train=False)

    args = (variables, x, jax.random.split(jax.random.key(0)))
    loss, grads, train, updates, evals = run_jitted(fn, *args)
    assert evals.shape == (2, 10) and evals.dtype == jnp.float32
    assert np.isfinite(loss) and np.all(np.isfinite(evals)) and np.all(np.isfinite(train))
    flat = flatten_dict(grads)
    dead = {k for k, g in flat.items() if not np.any(np.asarray(g) != 0)}
    # The head reads only the class token, and in the last block the class token's query
    # skips the convolutional projection: that block's q conv + BN cannot affect the logits
    # (true of CvT itself; the spatial queries there feed only the stage feature map).
    last_q = ("stages_1", "blocks_1", "attn", "conv_proj_q")
    assert dead == {(*last_q, "conv", "kernel"), (*last_q, "bn", "scale"),
                    (*last_q, "bn", "bias")}, f"parameters with zero gradient: {sorted(dead)}"
    assert all(np.all(np.isfinite(g)) for g in flat.values())
    old, new = flatten_dict(variables["batch_stats"]), flatten_dict(updates["batch_stats"])
    assert old.keys() == new.keys()
    assert all(not np.allclose(old[k], new[k][0]) for k in old), "batch_stats not updated"
    assert not np.allclose(train[0], train[1]), "drop path did not depend on the dropout key"


def test_mean_pooled_head_without_class_token():
    model = small(cls_token=False)
    variables = init_variables(model, SMALL_SHAPE)
    assert "cls_token" not in variables["params"]["stages_2"]
    assert count_params(variables["params"]) == count_params(
        init_variables(small(), SMALL_SHAPE)["params"]) - 32
    logits = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(SMALL_SHAPE, jnp.float32))
    assert logits.shape == (2, 10)


@pytest.mark.slow  # ~30 s: the flash kernel interpreted on CPU
def test_pallas_matches_xla():
    shape = (1, 32, 32, 3)
    xla = small(depths=(1, 1, 1), implementation="xla")
    variables = numpy_variables(xla, shape)
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    want = jax.jit(lambda v, x: xla.apply(v, x))(variables, x)
    try:
        got = jax.jit(lambda v, x: xla.clone(implementation="pallas").apply(v, x))(variables, x)
    except NotImplementedError as err:  # the op's fused kernel has not landed
        pytest.skip(f"flash_attention pallas path: {err}")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("overrides, field", [
    (dict(depths=(1, 2)), "equal lengths"),
    (dict(num_heads=(1, 3, 5)), "num_heads"),
    (dict(patch_paddings=(-1, 1, 1)), "patch_paddings"),
    (dict(kernel_qkv=4), "kernel_qkv"),
    (dict(stride_kv=3), "stride_kv"),
    (dict(mlp_act="relu"), "mlp_act"),
    (dict(drop_path_rate=-0.1), "drop_path_rate"),
    (dict(implementation="cudnn"), "implementation"),
    (dict(dtype="float16"), "dtype"),
])
def test_bad_fields_raise(overrides, field):
    with pytest.raises(ValueError, match=field):
        jaxconv.create_model("cvt_13", **overrides)


def test_bfloat16_traces():
    """bfloat16 compute: parameters stay float32, logits come back float32."""
    model = small(dtype="bfloat16")
    variables = init_variables(model, SMALL_SHAPE)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    logits = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(SMALL_SHAPE, jnp.float32))
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32


# --------------------------------------------------------------------- reference parity

FIXTURE = pathlib.Path(__file__).parent / "hf_fixtures" / "cvt_13.npz"


def test_parity_with_transformers_cvt_13():
    """cvt_13 equals Hugging Face transformers' CvT-13 (a port of the authors' code) on seeded
    full-size weights (fixture: tests/models/hf_fixtures/make_cvt_fixture.py). transformers'
    MLP activation is exact GELU, hence ``mlp_act="gelu"``."""
    fixture = read_fixture(FIXTURE)
    state_dict = fixture.state_dict()
    fixture.check_fingerprint(state_dict)
    variables = variables_from_hf(state_dict)
    model = jaxconv.create_model("cvt_13", mlp_act="gelu")
    shapes = lambda t: jax.tree.map(lambda a: tuple(a.shape), t)  # noqa: E731
    assert shapes(variables) == shapes(abstract_variables("cvt_13"))
    x = jnp.asarray(fixture.input_nchw().transpose(0, 2, 3, 1))
    logits = run_jitted(lambda v, x: model.apply(v, x), variables, x)
    np.testing.assert_allclose(logits, fixture.logits, rtol=0, atol=5e-5)
