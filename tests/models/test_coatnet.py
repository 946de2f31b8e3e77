"""CoAtNet: exact parameter counts (timm; the paper's 25M), stage shapes, input-size rules,
forward/backward/jit in train mode at a small input, and that timm parity notices a wrong
relative-position layout. Parity itself runs in tests/convert/test_timm_parity.py.

Compile cost drives the design (2-core CPU): counts and shapes use eval_shape; the train-mode
tests use a tiny CoAtNet with every code path of the big ones (stride-2 and stride-1 MBConv and
transformer blocks, both styles) at 32x32; only the parity-sensitivity test (marked slow)
compiles the full coatnet_0_rw_224 at 224 (its relative tables fix that size).
"""

from __future__ import annotations

import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

import jaxconv
from jaxconv.analysis import count_params, init_variables
from jaxconv.convert import from_timm
from jaxconv.convert.seeded import read_fixture
from jaxconv.models.coatnet import STYLES, CoAtNet, make_divisible
from tests.helpers import compile_fast

# timm.create_model(name).parameters(), default 1000-class head (timm 1.0.31).
PARAM_COUNTS = {"coatnet_0_rw_224": 27_435_562, "coatnet_0_224": 25_036_820}
# Dai et al. 2021 (arXiv:2106.04803): CoAtNet-0 has "25M" params (Table 4, ImageNet-1K at
# 224^2, 4.2B FLOPs); the count rounds to it at the paper's precision (whole millions).
PAPER_MILLIONS = {"coatnet_0_224": "25"}

# Every code path of the full models, small: a C stage and a T stage, each with a stride-2 and a
# stride-1 block (4 blocks compile 2x faster than the 4-stage layout; stride 8 overall).
TINY = dict(depths=(2, 2), embed_dims=(16, 32), block_types=("C", "T"), stem_widths=(8, 16),
            head_dim=8, num_classes=5)
TINY_SHAPE = (4, 32, 32, 3)
FIXTURE = pathlib.Path(__file__).resolve().parent / "timm_fixtures" / "coatnet_0_rw_224.npz"


def numpy_variables(model, input_shape, seed=0):
    """Variables with the model's tree, drawn with NumPy (no init compile), sane scales."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        kind, shape = path[-1], leaf.shape
        if kind == "kernel":
            value = rng.normal(0.0, math.sqrt(1.0 / math.prod(shape[:-1])), shape)
        elif kind == "scale":
            value = rng.uniform(0.5, 1.5, shape)
        elif kind == "var":
            value = rng.uniform(0.5, 2.0, shape)
        else:  # bias, mean, relative_position_bias_table
            value = rng.normal(0.0, 0.1, shape)
        return jnp.asarray(value, leaf.dtype)

    return {col: unflatten_dict({k: draw(k, v) for k, v in flatten_dict(tree).items()})
            for col, tree in init_variables(model, input_shape).items()}


# ------------------------------------------------------------------------------- counts


def test_every_coatnet_has_an_expected_count():
    assert jaxconv.list_models(family="coatnet") == sorted(PARAM_COUNTS)


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count_equals_timm(name):
    info = jaxconv.model_info(name)
    assert info.input_size == (224, 224, 3) and "arXiv:2106.04803" in info.paper
    params = init_variables(jaxconv.create_model(name), (1, 224, 224, 3))["params"]
    assert count_params(params) == PARAM_COUNTS[name]


def test_paper_count():
    for name, millions in PAPER_MILLIONS.items():
        assert f"{PARAM_COUNTS[name] / 1e6:.0f}" == millions


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_stages_match_timm_feature_info(name):
    # timm: feature_info of both models is (64, 2), (96, 4), (192, 8), (384, 16), (768, 32).
    infos = jaxconv.feature_info(jaxconv.create_model(name), (1, 224, 224, 3))
    assert [(i.channels, i.stride, i.shape[1]) for i in infos] == [
        (64, 2, 112), (96, 4, 56), (192, 8, 28), (384, 16, 14), (768, 32, 7)]


def test_make_divisible():
    assert [make_divisible(v) for v in (256, 100, 36, 3)] == [256, 104, 40, 8]


# --------------------------------------------------------------------- input-size rules


def test_relative_tables_cover_the_whole_map():
    model = jaxconv.create_model("coatnet_0_rw_224")
    for side, (rows3, rows4) in {224: (27 ** 2, 13 ** 2), 64: (7 ** 2, 3 ** 2)}.items():
        params = init_variables(model, (1, side, side, 3))["params"]
        table = lambda s, b: params[f"stages_{s}"][f"blocks_{b}"]["attn"]["rel_pos"][  # noqa
            "relative_position_bias_table"].shape
        # rw style: heads from the block's input width / 32 (stage 3's first block: 192 -> 6).
        assert table(2, 0) == (rows3, 6) and table(2, 1) == (rows3, 12)
        assert table(3, 0) == (rows4, 12) and table(3, 1) == (rows4, 24)


def test_other_input_sizes_are_refused_clearly():
    model = CoAtNet(**TINY)
    variables = init_variables(model, (1, 64, 64, 3))
    with pytest.raises(ValueError, match="another input size"):
        jax.eval_shape(lambda v, x: model.apply(v, x), variables,
                       jax.ShapeDtypeStruct((1, 96, 96, 3), jnp.float32))
    with pytest.raises(ValueError, match="multiples of 8"):  # two stages: stride 8
        init_variables(model, (1, 44, 64, 3))
    with pytest.raises(ValueError, match="multiples of 32"):
        init_variables(jaxconv.create_model("coatnet_0_224"), (1, 240, 240, 3))


@pytest.mark.parametrize("overrides, field", [
    (dict(style="tf"), "style"),
    (dict(block_types=("C", "C", "T", "X")), "block_types"),
    (dict(depths=(2, 2, 2)), "one entry per stage"),
    (dict(embed_dims=(96, 192, 0, 768)), "embed_dims"),
    (dict(stem_widths=(32,)), "stem_widths"),
    (dict(implementation="triton"), "implementation"),
    (dict(drop_path_rate=1.5), "drop_path_rate"),
    (dict(dtype="int32"), "dtype"),
    (dict(num_classes=0), "num_classes"),
])
def test_bad_fields_raise(overrides, field):
    with pytest.raises(ValueError, match=field):
        jaxconv.create_model("coatnet_0_rw_224", **overrides)


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cudnn is a valid choice on GPU")
def test_implementation_reaches_the_attention_op():
    """The model field is what the op gets: 'cudnn' is refused by flash_attention off GPU."""
    model = CoAtNet(**TINY, implementation="cudnn")
    with pytest.raises(ValueError, match="cudnn"):
        init_variables(model, TINY_SHAPE)
    init_variables(model.clone(implementation="xla"), TINY_SHAPE)


def test_attention_width_must_split_into_heads():
    with pytest.raises(ValueError, match="head_dim"):
        init_variables(CoAtNet(**{**TINY, "head_dim": 12}), TINY_SHAPE)


# --------------------------------------------------------- train mode, backward, jit


@pytest.mark.parametrize("style", sorted(STYLES))
def test_train_step_backward_and_jit(style):
    """Train mode with drop path under jit: finite loss, BN statistics move, every parameter
    gets a gradient; then eval mode is deterministic and differs from train mode."""
    model = CoAtNet(**TINY, style=style, drop_path_rate=0.2)
    x = jnp.asarray(np.random.default_rng(1).normal(size=TINY_SHAPE), jnp.float32)
    labels = jnp.arange(4) % 5
    if style == "rw":  # real init, once (the other style runs on NumPy variables)
        variables = compile_fast(lambda k, x: model.init(k, x, train=False),
                             jax.random.key(0, impl="rbg"), x)(jax.random.key(0, impl="rbg"), x)
    else:
        variables = numpy_variables(model, x.shape)
    params, stats = variables["params"], variables["batch_stats"]

    def loss_fn(params, stats, x, key):
        logits, new = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                  mutable=["batch_stats"], rngs={"dropout": key})
        onehot = jax.nn.one_hot(labels, 5)
        return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * onehot, -1)), (logits, new)

    def train_and_eval(params, stats, x, key):  # one compile for both modes
        train = jax.value_and_grad(loss_fn, has_aux=True)(params, stats, x, key)
        return train, model.apply({"params": params, "batch_stats": stats}, x, train=False)

    key = jax.random.key(3, impl="rbg")
    run = compile_fast(train_and_eval, params, stats, x, key)
    ((loss, (logits, new)), grads), out = run(params, stats, x, key)
    assert logits.shape == (4, 5) and logits.dtype == jnp.float32 and np.isfinite(loss)
    moved = [not np.allclose(a, b) for a, b in zip(jax.tree.leaves(stats),
                                                   jax.tree.leaves(new["batch_stats"]))]
    assert all(moved)
    flat = flatten_dict(grads)
    assert all(np.isfinite(g).all() for g in flat.values())
    zero = [k for k, g in flat.items() if not np.abs(g).max() > 0]
    assert not zero, zero
    # Eval mode: deterministic, and not train mode (batch statistics, drop path).
    np.testing.assert_array_equal(out, run(params, stats, x, key)[1])
    assert np.isfinite(out).all() and np.abs(out - logits).max() > 1e-4


@pytest.mark.slow  # the Pallas kernels run interpreted on CPU: ~15 s of CPU for this
def test_pallas_attention_path_matches_xla():
    """The whole model, forward and gradients, with the Pallas flash-attention kernels."""
    x = jnp.asarray(np.random.default_rng(2).normal(size=TINY_SHAPE), jnp.float32)
    variables = numpy_variables(CoAtNet(**TINY), TINY_SHAPE)
    results = {}
    for implementation in ("xla", "pallas"):
        model = CoAtNet(**TINY, implementation=implementation)
        loss = lambda p: jnp.sum(model.apply({**variables, "params": p}, x) ** 2)  # noqa: E731
        results[implementation] = jax.jit(jax.value_and_grad(loss))(variables["params"])
    (loss_x, grads_x), (loss_p, grads_p) = results["xla"], results["pallas"]
    np.testing.assert_allclose(loss_p, loss_x, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(grads_p), jax.tree.leaves(grads_x)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4)


def test_bfloat16_forward_shape_and_dtype():
    model = CoAtNet(**TINY, dtype="bfloat16")
    variables = init_variables(model, TINY_SHAPE)
    out = jax.eval_shape(lambda v, x: model.apply(v, x), variables,
                         jax.ShapeDtypeStruct(TINY_SHAPE, jnp.float32))
    assert out.shape == (4, 5) and out.dtype == jnp.float32
    params = variables["params"]
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype("float32")}


# ------------------------------------------------------- parity notices wrong layouts


@pytest.mark.slow  # compiles the full model at 224 (~10 s of CPU); the parity test runs by default
def test_parity_notices_a_wrong_relative_position_layout():
    """Relative tables read with the offsets negated (rows reversed) or with dy and dx swapped
    move the logits beyond the parity tolerance (2e-5 of the logit scale).

    Measured: 1.8e-3 of the scale for negated offsets and 1.3e-3 for swapped axes, ~65-90x the
    tolerance, because seeded.py gives bias tables N(0, 1) values (with the N(0, 0.1^2) of other
    tensors the margin was only ~7x). The exact index layout is also checked by hand in
    tests/layers/test_attention.py.
    """
    fixture = read_fixture(FIXTURE)
    model = jaxconv.create_model(fixture.name)
    variables = from_timm(fixture.name, fixture.state_dict(), model=model)
    x = jnp.asarray(fixture.input_nchw().transpose(0, 2, 3, 1))
    with jax.default_matmul_precision("highest"):
        forward = compile_fast(lambda v, x: model.apply(v, x), variables, x)
    scale = float(np.abs(fixture.logits).max())
    assert np.abs(forward(variables, x) - fixture.logits).max() <= 2e-5 * scale

    def with_tables(fn):
        flat = flatten_dict(variables)
        for path in flat:
            if path[-1] == "relative_position_bias_table":
                flat[path] = fn(flat[path])
        return unflatten_dict(flat)

    def swap_axes(table):  # rows (dy, dx) of a square (2n-1)^2 table read as (dx, dy)
        side = math.isqrt(table.shape[0])
        return table.reshape(side, side, -1).swapaxes(0, 1).reshape(table.shape)

    for what, fn in {"negated offsets": lambda t: t[::-1], "dy/dx swapped": swap_axes}.items():
        error = np.abs(forward(with_tables(fn), x) - fixture.logits).max()
        print(f"{what}: max |error| {error:.2e} = {error / scale:.1e} of the logit scale")
        assert error > 20 * 2e-5 * scale, (what, error, scale)
