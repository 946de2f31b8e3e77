"""Neighborhood Attention Transformer: parameter counts against the paper, the 224x224 geometry,
forward/backward/jit and train mode on a small override, xla vs pallas attention.

Compile cost drives the design (2-core CPU): counts and the 224 geometry use ``jax.eval_shape``
only; runs use a narrow, shallow override (``kernel_size=3`` so 64x64 inputs give level maps
16/8/4/2, the last one padded as NAT pads it) with variables drawn by NumPy instead of a jitted
``init``, compiled with XLA's fast-compile options.
"""
from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

import jaxconv
from jaxconv.analysis import count_params, init_variables
from jaxconv.models.nat import NAT, variables_from_official
from tests.helpers import compile_fast

# Hassani et al. 2023 (arXiv:2204.07143), Table 1 (and the authors' classification/README.md):
# NAT-Mini 20M, Tiny 28M, Small 51M, Base 90M, i.e. counts rounded to whole millions.
PAPER_MILLIONS = {"nat_mini": 20, "nat_tiny": 28, "nat_small": 51, "nat_base": 90}
CONFIGS = {  # depths, heads, embed_dim, mlp_ratio, layer_scale (the paper's Table 1)
    "nat_mini": ((3, 4, 6, 5), (2, 4, 8, 16), 64, 3, False),
    "nat_tiny": ((3, 4, 18, 5), (2, 4, 8, 16), 64, 3, False),
    "nat_small": ((3, 4, 18, 5), (3, 6, 12, 24), 96, 2, True),
    "nat_base": ((3, 4, 18, 5), (4, 8, 16, 32), 128, 2, True),
}


def expected_count(depths, heads, dim, mlp_ratio, layer_scale, kernel=7, classes=1000):
    """NAT's parameter count, derived layer by layer from the architecture."""
    half = dim // 2
    total = (3 * 9 * half + half) + (half * 9 * dim + dim) + 2 * dim  # tokenizer convs + LN
    for i, (depth, h) in enumerate(zip(depths, heads)):
        d = dim * 2 ** i
        hidden = int(d * mlp_ratio)
        layer = (2 * d                          # norm1
                 + d * 3 * d + 3 * d            # qkv
                 + h * (2 * kernel - 1) ** 2    # rpb
                 + d * d + d                    # proj
                 + 2 * d                        # norm2
                 + d * hidden + hidden + hidden * d + d  # mlp
                 + (2 * d if layer_scale else 0))
        total += depth * layer
        if i < len(depths) - 1:
            total += d * 9 * 2 * d + 2 * 2 * d  # downsampler conv (no bias) + LN
    final = dim * 2 ** (len(depths) - 1)
    return total + 2 * final + final * classes + classes


def numpy_variables(model, shape, seed=0):
    """Variables of ``model`` drawn with NumPy: He-normal kernels, LN scales near 1."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        kind = path[-1]
        if kind == "kernel":
            value = rng.normal(0.0, math.sqrt(1.0 / math.prod(leaf.shape[:-1])), leaf.shape)
        elif kind == "scale":
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:  # bias, rpb, gamma
            value = rng.normal(0.0, 0.1, leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    abstract = init_variables(model, shape)
    return {col: unflatten_dict({k: draw(k, v) for k, v in flatten_dict(tree).items()})
            for col, tree in abstract.items()}


def small(**overrides) -> NAT:
    """nat_mini's structure, narrow and shallow, 3x3 windows: runs at 64x64 in seconds."""
    return jaxconv.create_model("nat_mini", **{**dict(
        depths=(1, 1, 1, 1), num_heads=(1, 2, 2, 4), embed_dim=16, kernel_size=3,
        num_classes=10), **overrides})


SMALL_SHAPE = (2, 64, 64, 3)


# ------------------------------------------------------------------------ parameter counts


def test_family_is_registered():
    assert jaxconv.list_models(family="nat") == sorted(PAPER_MILLIONS)
    info = jaxconv.model_info("nat_mini")
    assert info.input_size == (224, 224, 3) and info.num_classes == 1000
    assert "2204.07143" in info.paper


@functools.lru_cache(maxsize=None)
def abstract_variables(name: str):
    """eval_shape of ``init`` at 224x224, traced once per model."""
    return init_variables(jaxconv.create_model(name), (1, 224, 224, 3))


# Tracing the 18-layer-level models costs ~5 s each on a busy 2-core CPU: the two extra sizes
# (not asked for by the issue) are counted in the slow set.
@pytest.mark.parametrize("name", [n if n in ("nat_mini", "nat_tiny") else
                                  pytest.param(n, marks=pytest.mark.slow)
                                  for n in sorted(PAPER_MILLIONS)])
def test_param_count(name):
    count = count_params(abstract_variables(name)["params"])
    assert count == expected_count(*CONFIGS[name])
    assert round(count / 1e6) == PAPER_MILLIONS[name], count


def test_authors_layout():
    """Parameter tree mirrors the authors' state dict (module docstring's mapping rule)."""
    params = abstract_variables("nat_mini")["params"]
    assert set(params) == {"patch_embed", "levels_0", "levels_1", "levels_2", "levels_3",
                           "norm", "head"}
    assert set(params["patch_embed"]) == {"proj_0", "proj_1", "norm"}
    assert set(params["levels_0"]) == {"blocks_0", "blocks_1", "blocks_2", "downsample"}
    assert "downsample" not in params["levels_3"]
    block = params["levels_2"]["blocks_5"]
    assert set(block) == {"norm1", "attn", "norm2", "mlp"}
    assert set(block["attn"]) == {"qkv", "rpb", "proj"}
    assert block["attn"]["qkv"]["kernel"].shape == (256, 768)
    assert block["attn"]["rpb"].shape == (8, 13, 13)
    assert block["mlp"]["fc1"]["kernel"].shape == (256, 768)
    assert set(params["levels_1"]["downsample"]["reduction"]) == {"kernel"}  # no bias
    assert params["levels_1"]["downsample"]["reduction"]["kernel"].shape == (3, 3, 128, 256)
    scaled = init_variables(jaxconv.create_model("nat_small", depths=(1, 1, 1, 1)),
                            (1, 32, 32, 3))["params"]["levels_0"]["blocks_0"]
    assert scaled["gamma1"].shape == scaled["gamma2"].shape == (96,)  # layer scale


def test_geometry_at_224():
    """At 224x224 the levels are 56/28/14/7 (the last exactly NAT's 7x7 window)."""
    model = jaxconv.create_model("nat_mini")
    x = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    logits, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]),
                                   abstract_variables("nat_mini"), x)
    assert logits.shape == (2, 1000) and logits.dtype == jnp.float32
    stages = {k: v[0].shape for k, v in state["intermediates"].items()}
    assert stages == {"stage0": (2, 56, 56, 64), "stage1": (2, 28, 28, 128),
                      "stage2": (2, 14, 14, 256), "stage3": (2, 7, 7, 512)}


# -------------------------------------------------------------------------------- running


def test_forward_backward_jit_and_train_mode():
    """Eval and train (drop path) under jit: finite, every parameter gets a gradient, drop path
    acts only in train mode and depends on the dropout key."""
    model = small(drop_path_rate=0.5)
    variables = numpy_variables(model, SMALL_SHAPE)
    assert set(variables) == {"params"}  # no BatchNorm
    x = jnp.asarray(np.random.default_rng(1).normal(size=SMALL_SHAPE), jnp.float32)

    def fn(params, x, keys):
        def loss_fn(params):
            # Two dropout keys in one traced copy of the model (vmap): half the compile time.
            logits = jax.vmap(lambda key: model.apply({"params": params}, x, train=True,
                                                      rngs={"dropout": key}))(keys)
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[..., 0]), logits

        (loss, train), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, grads, train[0], train[1], model.apply({"params": params}, x, train=False)

    args = (variables["params"], x, jax.random.split(jax.random.key(0)))
    loss, grads, train1, train2, evals = compile_fast(fn, *args)(*args)
    assert evals.shape == (2, 10) and evals.dtype == jnp.float32
    assert np.isfinite(loss) and np.all(np.isfinite(evals))
    flat = flatten_dict(grads)
    dead = [k for k, g in flat.items() if not np.any(np.asarray(g) != 0)]
    assert not dead, f"parameters with zero gradient: {dead[:5]}"
    assert all(np.all(np.isfinite(g)) for g in flat.values())
    assert not np.allclose(train1, train2), "drop path did not depend on the dropout key"
    assert not np.allclose(train1, evals)


@pytest.mark.slow  # ~50 s: the interpreted kernel; the layer test compares the paths quickly
def test_pallas_matches_xla():
    """The model gives the same logits with the fused (interpreted) kernel and the XLA path."""
    shape = (1, 32, 32, 3)  # level maps 8/4/2/1: two levels padded up to the 3x3 window
    xla = small(depths=(1, 1, 1, 1), implementation="xla")
    variables = numpy_variables(xla, shape)
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    want = jax.jit(lambda v, x: xla.apply(v, x))(variables, x)
    try:
        got = jax.jit(lambda v, x: xla.clone(implementation="pallas").apply(v, x))(variables, x)
    except NotImplementedError as err:  # the op's fused kernel has not landed
        pytest.skip(f"neighborhood_attention pallas path: {err}")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------- errors


@pytest.mark.parametrize("overrides, field", [
    (dict(kernel_size=4), "kernel_size"),
    (dict(kernel_size=1), "kernel_size"),
    (dict(num_heads=(2, 4, 8)), "num_heads"),
    (dict(num_heads=(3, 4, 8, 16)), "num_heads"),
    (dict(embed_dim=0), "embed_dim"),
    (dict(drop_path_rate=1.0), "drop_path_rate"),
    (dict(implementation="cuda"), "implementation"),
    (dict(layer_scale=-1.0), "layer_scale"),
    (dict(dtype="int8"), "dtype"),
])
def test_bad_fields_raise(overrides, field):
    with pytest.raises(ValueError, match=field):
        jaxconv.create_model("nat_mini", **overrides)


def test_bfloat16_traces():
    """bfloat16 compute: parameters stay float32, logits come back float32."""
    model = small(dtype="bfloat16")
    variables = init_variables(model, SMALL_SHAPE)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    logits = jax.eval_shape(model.apply, variables, jax.ShapeDtypeStruct(SMALL_SHAPE, jnp.float32))
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32


# ------------------------------------------------------------------------ authors' weights


def authors_state_dict(params) -> dict:
    """Our params in the authors' state-dict layout (inverse of ``variables_from_official``)."""
    out = {}
    for path, value in flatten_dict(params).items():
        module = ".".join(path[:-1])
        module = re.sub(r"_(\d+)(?=\.|$)", r".\1", module)
        leaf, value = path[-1], np.asarray(value)
        if leaf == "kernel":
            value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
        name = {"kernel": "weight", "scale": "weight"}.get(leaf, leaf)
        out[f"{module}.{name}" if module else name] = value
    return out


def test_variables_from_official_round_trip():
    """The converter for the authors' checkpoints inverts their layout key by key (checked
    against their code on seeded weights off-repo: see the family's README notes)."""
    model = jaxconv.create_model("nat_small", depths=(1, 1, 1, 1))  # layer scale included
    params = numpy_variables(model, (1, 32, 32, 3))["params"]
    state_dict = authors_state_dict(params)
    assert {"patch_embed.proj.0.weight", "patch_embed.norm.weight", "levels.0.blocks.0.attn.rpb",
            "levels.0.blocks.0.gamma1", "levels.2.downsample.reduction.weight", "norm.bias",
            "head.weight"} <= set(state_dict)
    assert state_dict["levels.0.blocks.0.attn.qkv.weight"].shape == (288, 96)  # [out, in]
    assert state_dict["patch_embed.proj.1.weight"].shape == (96, 48, 3, 3)  # [O, I, kh, kw]
    back = variables_from_official(state_dict)["params"]
    flat, flat_back = flatten_dict(params), flatten_dict(back)
    assert flat.keys() == flat_back.keys()
    assert all(np.array_equal(flat[k], flat_back[k]) for k in flat)
    with pytest.raises(ValueError, match="unexpected"):
        variables_from_official({"levels.0.blocks.0.attn.qkv.weight_g": np.zeros((2, 2))})
