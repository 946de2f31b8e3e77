"""VGG family: parameter counts, timm naming, forward/backward, head paths, options.

Counts and shapes use ``jax.eval_shape``; variables for running models are filled from NumPy
(jitted ``init`` is slow on this CPU). Numerical parity with timm (all 8 ImageNet models, the
pre-logits paths at final maps < 7, == 7 and > 7) is in tests/convert/test_timm_parity.py.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

import jaxconv
from jaxconv.analysis import count_macs, count_params, init_variables
from jaxconv.models import vgg
from tests.helpers import compile_fast

# timm 1.0.31 (timm.create_model(name), default 1000-class head, sum of parameters().numel());
# vgg11/vgg16/vgg16_bn/vgg19 are also in /work/shared/ENVIRONMENT.md. CIFAR models: our count,
# checked against the paper below.
PARAM_COUNTS = {
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "vgg16_bn_cifar": 14_987_722,
    "vgg19_bn_cifar": 20_035_018,
}
# Simonyan & Zisserman 2015 (arXiv:1409.1556), Table 2 "Number of parameters (in millions)":
# A 133, B 133, D 138, E 144 (integers: rounded to the nearest million).
PAPER_MILLIONS_IMAGENET = {"vgg11": 133, "vgg13": 133, "vgg16": 138, "vgg19": 144}
# Li et al. 2017 (arXiv:1608.08710), Table 1: VGG-16 "1.5 x 10^7" parameters (2 significant
# digits); Liu et al. 2017 (arXiv:1708.06519), Table 1: VGGNet "20.04M" (2 decimals), also in
# the official code's README (Eric-mingjie/network-slimming: CIFAR10-Vgg baseline 20.04M).
PAPER_CIFAR = {"vgg16_bn_cifar": (1.5e7, 1e6), "vgg19_bn_cifar": (20.04e6, 1e4)}

ALL = sorted(PARAM_COUNTS)
IMAGENET = [n for n in ALL if not n.endswith("_cifar")]
CIFAR = [n for n in ALL if n.endswith("_cifar")]

# timm's cfg lists (vgg.py 'cfgs'; 'M' = max pool), used to derive its Sequential indices.
TIMM_CFGS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
         512, 512, 512, 512, "M"],
}


def random_variables(model, input_shape, seed=0):
    """Variables with the model's tree, drawn with NumPy (He-normal kernels, sane BN stats)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        kind, shape = path[-1], leaf.shape
        if kind == "kernel":
            value = rng.normal(0.0, math.sqrt(2.0 / math.prod(shape[:-1])), shape)
        elif kind in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, shape)
        else:
            value = rng.normal(0.0, 0.1, shape)
        return jnp.asarray(value, leaf.dtype)

    abstract = init_variables(model, input_shape)
    return {col: unflatten_dict({k: draw(k, v) for k, v in flatten_dict(tree).items()})
            for col, tree in abstract.items()}


def _small(name):
    """The model with a narrow head for running tests (the conv body is the registered one),
    and its test input: 32x32 for the ImageNet models (final map 1x1, pooled up to 7x7), 16x16
    for the CIFAR ones (their last stage has no max pool)."""
    if name in IMAGENET:
        return jaxconv.create_model(name, head_width=32), (2, 32, 32, 3)
    return jaxconv.create_model(name), (2, 16, 16, 3)


# ------------------------------------------------------------------------ parameter counts


def test_every_vgg_has_an_expected_count():
    assert jaxconv.list_models(family="vgg") == ALL


@pytest.mark.parametrize("name", ALL)
def test_param_count(name):
    model = jaxconv.create_model(name)
    params = init_variables(model, (1, 32, 32, 3))["params"]
    count = count_params(params)
    assert count == PARAM_COUNTS[name]
    if name in PAPER_MILLIONS_IMAGENET:
        assert round(count / 1e6) == PAPER_MILLIONS_IMAGENET[name]
    if name in PAPER_CIFAR:
        paper, unit = PAPER_CIFAR[name]
        assert round(count / unit) * unit == pytest.approx(paper), (count, paper)


def test_cifar_mult_adds_match_li_et_al():
    """Li et al. 2017 Table 1: VGG-16 on CIFAR-10 takes 3.13 x 10^8 FLOP (multiply-adds)."""
    macs = count_macs(jaxconv.create_model("vgg16_bn_cifar"), (1, 32, 32, 3))
    assert round(macs / 1e6) / 100 == 3.13, macs


# ------------------------------------------------------------------------------ structure


def _timm_indices(cfg, bn):
    """Indices of convs and BNs in timm's features nn.Sequential, from its cfg list."""
    convs, bns, index = [], [], 0
    for v in cfg:
        if v == "M":
            index += 1
            continue
        convs.append(index)
        if bn:
            bns.append(index + 1)
        index += 3 if bn else 2
    return convs, bns


@pytest.mark.parametrize("name", IMAGENET)
def test_timm_names(name):
    depth, bn = int(name[3:5]), name.endswith("_bn")
    params = init_variables(jaxconv.create_model(name), (1, 32, 32, 3))["params"]
    convs, bns = _timm_indices(TIMM_CFGS[depth], bn)
    widths = [v for v in TIMM_CFGS[depth] if v != "M"]
    assert set(params) == {f"features_{i}" for i in convs + bns} | {"pre_logits", "head"}
    for i, width in zip(convs, widths):
        assert params[f"features_{i}"]["kernel"].shape[-1] == width
        assert params[f"features_{i}"]["bias"].shape == (width,)  # timm convs keep a bias
    for i in bns:
        assert set(params[f"features_{i}"]) == {"scale", "bias"}
    assert params["pre_logits"]["fc1"]["kernel"].shape == (7, 7, 512, 4096)
    assert params["pre_logits"]["fc2"]["kernel"].shape == (1, 1, 4096, 4096)
    assert params["head"]["fc"]["kernel"].shape == (4096, 1000)


def test_cifar_structures():
    li = init_variables(jaxconv.create_model("vgg16_bn_cifar"), (1, 32, 32, 3))["params"]
    assert li["head"]["fc1"]["kernel"].shape == (512, 512) and "bn" in li["head"]
    assert li["head"]["fc"]["kernel"].shape == (512, 10)
    liu = init_variables(jaxconv.create_model("vgg19_bn_cifar"), (1, 32, 32, 3))["params"]
    assert set(liu["head"]) == {"fc"} and liu["head"]["fc"]["kernel"].shape == (512, 10)
    assert all("bias" not in p for k, p in liu.items() if k.startswith("features_")
               and "kernel" in p)


@pytest.mark.parametrize("name, size, strides", [
    ("vgg16", 64, (2, 4, 8, 16, 32)),
    ("vgg11_bn", 64, (2, 4, 8, 16, 32)),
    ("vgg19_bn_cifar", 32, (2, 4, 8, 16, 16)),  # no last max pool
    ("vgg16_bn_cifar", 32, (2, 4, 8, 16, 16)),
])
def test_stage_features(name, size, strides):
    model = jaxconv.create_model(name)
    shape = (1, size, size, 3)
    _, state = jax.eval_shape(lambda v, x: model.apply(v, x, mutable=["intermediates"]),
                              init_variables(model, shape),
                              jax.ShapeDtypeStruct(shape, jnp.float32))
    stages = state["intermediates"]
    assert sorted(stages) == [f"stage{i}" for i in range(5)]
    for i, stride in enumerate(strides):
        (feature,) = stages[f"stage{i}"]
        assert feature.shape == (1, size // stride, size // stride, model.stages[i][-1])


# ----------------------------------------------------------------------- forward/backward

# Every model runs a jitted train step (forward, backward, batch_stats update) and an eval
# forward at a small input. The ImageNet models run with head_width=32 (a 6 MB narrow head
# instead of 470 MB): the conv body and the code path are the registered ones. Compile + run
# takes 3-9 s per model on a loaded 2-core CPU, so the default run keeps one model per head and
# norm: vgg11_bn (imagenet head, BN), vgg16_bn_cifar (bn_mlp), vgg19_bn_cifar (linear, no last
# pool, no conv bias); test_dropout runs the no-BN path (forward and backward) on a tiny body.
_SLOW_SMOKE = {"vgg11", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_SMOKE else n for n in ALL])
def test_forward_backward(name):
    model, shape = _small(name)
    variables = random_variables(model, shape)
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)

    def step(variables, x):
        def loss_fn(params):
            logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                          mutable=["batch_stats"])
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0]), (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            variables["params"])
        return model.apply(variables, x, train=False), logits, loss, grads, updates

    eval_logits, train_logits, loss, grads, updates = compile_fast(step, variables, x)(variables, x)
    num_classes = jaxconv.model_info(name).num_classes
    for logits in (eval_logits, train_logits):
        assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32
        assert np.all(np.isfinite(logits))
    assert np.isfinite(loss)
    flat = flatten_dict(grads)
    assert flat.keys() == flatten_dict(variables["params"]).keys()
    zero = [k for k, g in flat.items() if not np.any(np.asarray(g) != 0)]
    assert not zero, f"parameters with zero gradient: {zero[:5]}"
    if "batch_stats" in variables:
        old, new = flatten_dict(variables["batch_stats"]), flatten_dict(updates["batch_stats"])
        assert all(not np.allclose(old[k], new[k]) for k in old)
    else:
        assert model.use_batch_norm is False and not updates


def test_dropout_and_no_bn_backward():
    model = jaxconv.create_model("vgg11", stages=((8,), (8,)), head_width=16, drop_rate=0.5,
                                 num_classes=5)
    shape = (4, 8, 8, 3)
    variables = random_variables(model, shape)
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)

    def run(v, x, k1, k2):
        train = lambda p, k: model.apply({"params": p}, x, train=True,  # noqa: E731
                                         rngs={"dropout": k})
        plain = model.clone(drop_rate=0.0)
        grads = jax.grad(lambda p: jnp.sum(train(p, k1) ** 2))(v["params"])
        return train(v["params"], k1), train(v["params"], k2), model.apply(v, x), \
            plain.apply(v, x), grads

    keys = jax.random.key(0), jax.random.key(1)
    drop1, drop2, eval_out, no_dropout, grads = compile_fast(run, variables, x, *keys)(
        variables, x, *keys)
    assert not np.allclose(drop1, drop2)
    np.testing.assert_array_equal(eval_out, no_dropout)
    assert set(variables) == {"params"}  # no BatchNorm: no batch_stats
    assert all(np.all(np.isfinite(g)) and np.any(np.asarray(g) != 0)
               for g in jax.tree.leaves(grads))


# ----------------------------------------------------------------- head building blocks


def test_adaptive_avg_pool_matches_pytorch_windows():
    """Windows floor(i*n/m) .. ceil((i+1)*n/m) (PyTorch's adaptive_avg_pool), hand-derived."""
    x = jnp.arange(2.0 * 9).reshape(1, 2, 9, 1)  # rows [0..8], [9..17]
    y = vgg.adaptive_avg_pool(x, (7, 7))[0, :, :, 0]
    # Rows 2 -> 7: outputs 0-2 see row 0, 3 sees both, 4-6 see row 1.
    row0, row1 = np.arange(9.0), np.arange(9.0, 18.0)
    # Columns 9 -> 7: window i covers floor(9i/7) .. ceil(9(i+1)/7) - 1.
    cols = [(0, 2), (1, 3), (2, 4), (3, 6), (5, 7), (6, 8), (7, 9)]
    pooled = lambda r: np.array([r[a:b].mean() for a, b in cols])  # noqa: E731
    expected = np.stack([pooled(row0)] * 3 + [pooled((row0 + row1) / 2)] + [pooled(row1)] * 3)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    same = jnp.ones((1, 7, 7, 2))
    assert vgg.adaptive_avg_pool(same, (7, 7)) is same


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("overrides, match", [
    ({"head": "mlp"}, r"head must be one of \['imagenet', 'linear', 'bn_mlp'\]"),
    ({"drop_path_rate": 0.1}, "drop_path_rate must be 0.0 for VGG"),
    ({"drop_rate": 1.0}, r"drop_rate must be a float in \[0, 1\)"),
    ({"stages": ()}, "stages must be non-empty"),
    ({"stages": ((64,), (0,))}, "stages must be non-empty sequences of positive"),
    ({"head_width": 0}, "head_width must be a positive int"),
    ({"dtype": "int8"}, "dtype must be one of"),
])
def test_invalid_fields(overrides, match):
    with pytest.raises(ValueError, match=match):
        jaxconv.create_model("vgg16", **overrides)


def test_bfloat16_compute():
    model = jaxconv.create_model("vgg11_bn", dtype="bfloat16", stages=((8,), (8, 8)),
                                 head_width=16, num_classes=3)
    shape = (2, 8, 8, 3)
    variables = random_variables(model, shape)
    x = jnp.ones(shape)
    logits = compile_fast(lambda v, x: model.apply(v, x), variables, x)(variables, x)
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
