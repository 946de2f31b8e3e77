"""ResNet family: parameter counts, forward/backward of every model, scan equivalence, options.

Compile cost drives this file's design (2-core CPU): parameter counts and stage shapes use
``jax.eval_shape`` only; most tests fill variables from NumPy instead of jitting ``init``
(jitted ``init`` of a small ResNet takes ~5-15 s here); real ``init`` runs where the init itself
is under test (zero-init), with an ``rbg`` key, whose random bits compile much faster than
threefry's.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

import jaxconv
from jaxconv.analysis import count_params, init_variables
from jaxconv.layers import DropPath, batch_norm, conv2d, drop_path_rates, loop_safe_conv
from jaxconv.models import resnet
from jaxconv.models.resnet import stack_scanned_blocks, unstack_scanned_blocks
from tests.helpers import compile_fast

# Exact counts of float32 parameters (BN scale/bias included, batch_stats excluded).
# ImageNet models: timm's counts (timm.create_model(name).parameters(), default 1000-class head).
# CIFAR models: our own count, with the figure the paper prints beside it.
PARAM_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
    "preact_resnet110": 1_730_522,
    "preact_resnet164": 1_703_258,
    "preact_resnet1001": 10_327_706,
}
# He et al. 2016 (arXiv:1512.03385), Table 6 (CIFAR-10, "# params" column), and
# He et al. 2016b (arXiv:1603.05027), the CIFAR comparison with the state of the art ("#params":
# ResNet-110 1.7M, ResNet-164 1.7M, ResNet-1001 10.2M).
PAPER_MILLIONS = {
    "resnet20": "0.27",
    "resnet32": "0.46",
    "resnet44": "0.66",
    "resnet56": "0.85",
    "resnet110": "1.7",
    "resnet1202": "19.4",
    "preact_resnet110": "1.7",
    "preact_resnet164": "1.7",
    # 10.2M in the paper is the count without BatchNorm parameters (10,178,490); with them it
    # is 10.33M. ResNet-1202's 19.4M, by contrast, includes them (19.33M without).
    "preact_resnet1001": "10.2",
}
NO_BN_COUNTS = {"preact_resnet1001"}

ALL = sorted(PARAM_COUNTS)
CIFAR = [n for n in ALL if jaxconv.model_info(n).input_size == (32, 32, 3)]


def _rounds_to(count: int, paper: str) -> bool:
    decimals = len(paper.split(".")[1])
    return f"{count / 1e6:.{decimals}f}" == paper


def _small_shape(name: str) -> tuple[int, int, int, int]:
    # ImageNet models at 32x32: stage 4 is 1x1 (smaller makes train-mode BN degenerate).
    return (2, 16, 16, 3) if name in CIFAR else (2, 32, 32, 3)


# The layer that ends each residual branch, per block type.
_LAST_IN_BRANCH = {
    "basic": ("bn2", "scale"),
    "bottleneck": ("bn3", "scale"),
    "preact_basic": ("conv2", "kernel"),
    "preact_bottleneck": ("conv3", "kernel"),
}


def random_variables(model: resnet.ResNet, input_shape, seed: int = 0) -> dict:
    """Variables with the model's tree and shapes, drawn with NumPy (no init compile).

    Kernels are He-normal, BN scales/biases/statistics random but sane, so every parameter
    influences the output (no zero-init) and eval-mode BN is not the identity. The layer ending
    each residual branch is scaled by 1/num_blocks so that eval mode stays finite at depth 1202.
    """
    rng = np.random.default_rng(seed)
    last = _LAST_IN_BRANCH[model.block]
    branch_scale = 1.0 / sum(model.stage_sizes)

    def draw(path, leaf):
        kind, shape = path[-1], leaf.shape
        if kind == "kernel":
            fan_in = math.prod(shape[-4:-1]) if leaf.ndim >= 4 else shape[-2]
            value = rng.normal(0.0, math.sqrt(2.0 / fan_in), shape)
        elif kind == "scale":
            value = rng.uniform(0.5, 1.5, shape)
        elif kind == "var":
            value = rng.uniform(0.5, 2.0, shape)
        else:  # bias, mean
            value = rng.normal(0.0, 0.1, shape)
        if path[0].startswith("layer") and path[-2:] == last:
            value = value * branch_scale
        return jnp.asarray(value, leaf.dtype)

    abstract = init_variables(model, input_shape)
    return {
        col: unflatten_dict({k: draw(k, v) for k, v in flatten_dict(tree).items()})
        for col, tree in abstract.items()
    }


def _run(fn, *args):
    return compile_fast(fn, *args)(*args)


# ------------------------------------------------------------------------ parameter counts


def test_every_resnet_has_an_expected_count():
    assert sorted(jaxconv.list_models(family="resnet")) == ALL


@pytest.mark.parametrize("name", ALL)
def test_param_count(name):
    model = jaxconv.create_model(name)
    params = init_variables(model, (1, 32, 32, 3))["params"]
    assert count_params(params) == PARAM_COUNTS[name]
    if name in PAPER_MILLIONS:
        flat = flatten_dict(params)
        if name in NO_BN_COUNTS:
            counted = sum(math.prod(v.shape) for k, v in flat.items() if "bn" not in "/".join(k))
        else:
            counted = count_params(params)
        assert _rounds_to(counted, PAPER_MILLIONS[name]), (counted, PAPER_MILLIONS[name])


# Tracing an unrolled 1000+-layer model takes ~8 s (Flax overhead per block): marked slow.
_DEEP = {"resnet1202", "preact_resnet1001"}


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in _DEEP else n for n in CIFAR + ["resnet50"]],
)
def test_scan_layout_matches_unrolled(name):
    """Same parameter count with scan on and off, and stacking maps one tree onto the other."""
    scanned = jaxconv.create_model(name, scan_blocks=True)
    unrolled = jaxconv.create_model(name, scan_blocks=False)
    v_scan = init_variables(scanned, (1, 32, 32, 3))
    v_unrolled = init_variables(unrolled, (1, 32, 32, 3))
    assert count_params(v_scan["params"]) == count_params(v_unrolled["params"]) == PARAM_COUNTS[name]
    shapes = lambda t: jax.tree.map(lambda a: a.shape, t)  # noqa: E731
    stacked = jax.eval_shape(stack_scanned_blocks, v_unrolled)
    assert shapes(stacked) == shapes(v_scan)
    assert shapes(jax.eval_shape(unstack_scanned_blocks, v_scan)) == shapes(v_unrolled)


def test_timm_module_names():
    """scan_blocks=False ImageNet models mirror timm's module tree (for weight conversion)."""
    params = init_variables(jaxconv.create_model("resnet50"), (1, 32, 32, 3))["params"]
    assert set(params) == {"conv1", "bn1", "fc"} | {
        f"layer{s}_{b}" for s, n in enumerate((3, 4, 6, 3), 1) for b in range(n)
    }
    assert set(params["layer2_0"]) == {
        "conv1", "bn1", "conv2", "bn2", "conv3", "bn3", "downsample_conv", "downsample_bn"
    }
    assert set(params["layer2_1"]) == {"conv1", "bn1", "conv2", "bn2", "conv3", "bn3"}
    assert params["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 128, 128)  # stride on the 3x3
    assert params["fc"]["kernel"].shape == (2048, 1000)
    assert "bias" not in params["conv1"] and "bias" in params["fc"]


def test_wide_resnet_widths():
    """Bottlenecks twice as wide as resnet50's, block outputs unchanged (timm's layout)."""
    wide = init_variables(jaxconv.create_model("wide_resnet50_2"), (1, 32, 32, 3))["params"]
    plain = init_variables(jaxconv.create_model("resnet50"), (1, 32, 32, 3))["params"]
    assert wide["layer1_0"]["conv1"]["kernel"].shape == (1, 1, 64, 128)
    assert wide["layer2_1"]["conv2"]["kernel"].shape == (3, 3, 256, 256)
    assert wide["layer4_0"]["conv3"]["kernel"].shape == (1, 1, 1024, 2048)
    assert wide["layer4_0"]["downsample_conv"]["kernel"].shape == (1, 1, 1024, 2048)
    shapes = lambda t: jax.tree.map(lambda a: a.shape, t)  # noqa: E731
    assert jax.tree.structure(shapes(wide)) == jax.tree.structure(shapes(plain))
    for path, leaf in flatten_dict(plain).items():
        if path[-2] in ("conv3", "bn3", "downsample_conv", "downsample_bn", "fc"):
            assert flatten_dict(wide)[path].shape[-1] == leaf.shape[-1], path


def test_base_width_needs_a_bottleneck():
    with pytest.raises(ValueError, match=r"base_width must be 64 for block='basic'"):
        jaxconv.create_model("resnet18", base_width=128)
    with pytest.raises(ValueError, match="base_width must be positive"):
        jaxconv.create_model("resnet50", base_width=0)
    # The pre-activation bottleneck honours it too.
    model = jaxconv.create_model("preact_resnet164", base_width=128)
    params = init_variables(model, (1, 16, 16, 3))["params"]
    assert params["layer1_0"]["conv1"]["kernel"].shape == (1, 1, 16, 32)
    assert params["layer1_0"]["conv3"]["kernel"].shape == (1, 1, 32, 64)


# ----------------------------------------------------------------- forward/backward, all models

# The deepest unrolled ImageNet models compile slowly on CPU; they run scanned here (same blocks,
# same code path as resnet50 for the unrolled case; scan/unrolled equality is tested below).
SMOKE_OVERRIDES = {"resnet101": {"scan_blocks": True}, "resnet152": {"scan_blocks": True},
                   "wide_resnet101_2": {"scan_blocks": True}}


def _train_and_eval(model):
    def fn(variables, x, key):
        def loss_fn(params):
            logits, updates = model.apply(
                {**variables, "params": params}, x, train=True,
                mutable=["batch_stats"], rngs={"dropout": key},
            )
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0]), (logits, updates)

        (loss, (train_logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            variables["params"]
        )
        return model.apply(variables, x, train=False), train_logits, loss, grads, updates

    return fn


def _per_block_nonzero(path, leaf):
    """Every (stacked) block's slice of the leaf has a nonzero entry."""
    leaf = np.asarray(leaf)
    if any("_scan" in str(p) for p in path):
        return bool(np.all(np.any(leaf.reshape(leaf.shape[0], -1) != 0, axis=1)))
    return bool(np.any(leaf != 0))


# wide_resnet101_2 runs the code of wide_resnet50_2 (base_width) scanned like resnet101; at
# 127M parameters its step takes ~30 s on a loaded 2-core CPU: slow.
_SLOW_SMOKE = {"wide_resnet101_2"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW_SMOKE else n for n in ALL]
)
def test_forward_backward(name):
    model = jaxconv.create_model(name, **SMOKE_OVERRIDES.get(name, {}))
    shape = _small_shape(name)
    variables = random_variables(model, shape)
    x = jnp.asarray(np.random.default_rng(1).normal(size=shape), jnp.float32)
    key = jax.random.key(0)
    step = compile_fast(_train_and_eval(model), variables, x, key)
    eval_logits, train_logits, loss, grads, updates = step(variables, x, key)

    num_classes = jaxconv.model_info(name).num_classes
    for logits in (eval_logits, train_logits):
        assert logits.shape == (2, num_classes) and logits.dtype == jnp.float32
        assert np.all(np.isfinite(logits))
    assert np.isfinite(loss)
    flat_grads = flatten_dict(grads)
    assert flat_grads.keys() == flatten_dict(variables["params"]).keys()
    assert all(np.all(np.isfinite(g)) for g in flat_grads.values())
    zero = [k for k, g in flat_grads.items() if not _per_block_nonzero(k, g)]
    assert not zero, f"parameters with zero gradient: {zero[:5]}"
    old, new = flatten_dict(variables["batch_stats"]), flatten_dict(updates["batch_stats"])
    assert old.keys() == new.keys()
    unchanged = [k for k in old if not _per_block_nonzero(k, new[k] - old[k])]
    assert not unchanged, f"batch_stats not updated in train mode: {unchanged[:5]}"


# ------------------------------------------------------------------- scan == unrolled

def test_scan_equals_unrolled_forward_and_gradients():
    """Same weights (stacked) give the same logits, batch_stats and gradients scanned or not.

    This also checks ``loop_safe_conv``'s custom backward inside the scanned blocks.
    """
    unrolled = jaxconv.create_model("resnet20", scan_blocks=False)
    scanned = jaxconv.create_model("resnet20", scan_blocks=True)
    shape = (4, 16, 16, 3)
    v_unrolled = random_variables(unrolled, shape)
    v_scanned = stack_scanned_blocks(v_unrolled)
    x = jnp.asarray(np.random.default_rng(2).normal(size=shape), jnp.float32)
    key = jax.random.key(0)
    out_u = compile_fast(_train_and_eval(unrolled), v_unrolled, x, key)(v_unrolled, x, key)
    out_s = compile_fast(_train_and_eval(scanned), v_scanned, x, key)(v_scanned, x, key)
    eval_u, train_u, loss_u, grads_u, upd_u = out_u
    eval_s, train_s, loss_s, grads_s, upd_s = out_s
    np.testing.assert_allclose(eval_s, eval_u, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(train_s, train_u, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(loss_s, loss_u, rtol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5),
        unstack_scanned_blocks(grads_s), grads_u,
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
        unstack_scanned_blocks(upd_s), upd_u,
    )


# ------------------------------------------------------------------- zero_init_last_bn


def _record_blocks(model, variables, x):
    """Inputs/outputs of every module call (unrolled models), keyed by module path."""
    records = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__":
            records["/".join(context.module.path)] = (args[0] if args else None, out)
        return out

    with nn.intercept_methods(interceptor):
        model.apply(variables, x, train=False)
    return records


@pytest.mark.parametrize(
    "name, overrides",
    [
        # Small stages keep compile cheap; each has identity and projection shortcuts.
        # (BasicBlock is covered by the resnet20 test below.)
        ("resnet50", dict(stage_sizes=(2, 2), widths=(8, 16), stem_width=8, num_classes=5)),
        ("preact_resnet110", dict(stage_sizes=(2, 2), widths=(8, 16), num_classes=5)),
        ("preact_resnet164", dict(stage_sizes=(2, 2), widths=(4, 8), num_classes=5)),
    ],
)
def test_zero_init_makes_blocks_their_shortcut(name, overrides):
    model = jaxconv.create_model(name, zero_init_last_bn=True, scan_blocks=False, **overrides)
    plain = model.clone(zero_init_last_bn=False)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 32, 32, 3)), jnp.float32)

    def run(key, x):
        return (_record_blocks(model, model.init(key, x), x),
                _record_blocks(plain, plain.init(key, x), x))

    records, plain_records = _run(run, jax.random.key(0, impl="rbg"), x)
    blocks = [p for p in records if p.count("/") == 0 and p.startswith("layer")]
    assert len(blocks) == sum(overrides["stage_sizes"])
    preact = model.block.startswith("preact")

    def expected(records, path):
        block_in, _ = records[path]
        projection = records.get(f"{path}/downsample_conv" if preact else f"{path}/downsample_bn")
        shortcut = block_in if projection is None else projection[1]
        return shortcut if preact else jax.nn.relu(shortcut)

    for path in blocks:
        block_out = records[path][1]
        np.testing.assert_allclose(block_out, expected(records, path), atol=1e-6, err_msg=path)
        assert np.any(np.asarray(block_out) != 0)
    # Without the option the branches are live.
    for path in blocks:
        assert not np.allclose(plain_records[path][1], expected(plain_records, path), atol=1e-3)


def test_zero_init_cifar_resnet_is_its_identity_network():
    """resnet20 (scanned, option A) with zero-init equals stem -> subsample/zero-pad -> head."""
    model = jaxconv.create_model("resnet20", zero_init_last_bn=True)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 32, 32, 3)), jnp.float32)

    def identity_network(v, x):
        p, s = v["params"], v["batch_stats"]
        h = jax.lax.conv_general_dilated(
            x, p["conv1"]["kernel"], (1, 1), ((1, 1), (1, 1)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        h = (h - s["bn1"]["mean"]) / jnp.sqrt(s["bn1"]["var"] + 1e-5)
        h = jax.nn.relu(h * p["bn1"]["scale"] + p["bn1"]["bias"])
        h = h[:, ::4, ::4, :]  # two stride-2 subsamplings
        h = jnp.pad(h, ((0, 0), (0, 0), (0, 0), (8, 8)))  # 16 -> 32, zeros on both sides
        h = jnp.pad(h, ((0, 0), (0, 0), (0, 0), (16, 16)))  # 32 -> 64
        return h.mean(axis=(1, 2)) @ p["fc"]["kernel"] + p["fc"]["bias"]

    def run(key, x):
        variables = model.init(key, x)
        return variables, model.apply(variables, x), identity_network(variables, x)

    variables, got, expected = _run(run, jax.random.key(0, impl="rbg"), x)
    assert np.all(np.asarray(variables["params"]["layer3_scan"]["bn2"]["scale"]) == 0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------ drop path


@pytest.mark.parametrize("scan_blocks", [True, False])
def test_drop_path(scan_blocks):
    shape = (4, 16, 16, 3)
    model = jaxconv.create_model("resnet20", drop_path_rate=0.5, scan_blocks=scan_blocks)
    no_drop = model.clone(drop_path_rate=0.0)
    variables = random_variables(model, shape)
    x = jnp.asarray(np.random.default_rng(5).normal(size=shape), jnp.float32)

    def train(m, v, x, key=None):
        rngs = {} if key is None else {"dropout": key}
        return m.apply(v, x, train=True, mutable=["batch_stats"], rngs=rngs)[0]

    key = jax.random.key(1)
    dropped = compile_fast(lambda v, x, k: train(model, v, x, k), variables, x, key)
    drop1 = dropped(variables, x, key)
    drop2 = dropped(variables, x, jax.random.key(2))
    assert not np.allclose(drop1, drop2)  # another key drops other blocks
    # Eval mode ignores drop_path_rate.
    eval_drop, eval_ref = _run(
        lambda v, x: (model.apply(v, x), no_drop.apply(v, x)), variables, x
    )
    np.testing.assert_array_equal(eval_drop, eval_ref)
    if scan_blocks:
        # Rate 0: nothing dropped, and train mode needs no dropout rng.
        reference, with_key = _run(
            lambda v, x, k: (train(no_drop, v, x), train(no_drop, v, x, k)), variables, x, key
        )
        assert not np.allclose(drop1, reference)
        np.testing.assert_array_equal(with_key, reference)


def test_drop_path_layer():
    x = jnp.ones((4000, 2, 2, 3))
    layer = DropPath(rate=0.25)
    assert layer.apply({}, x, deterministic=True) is x
    assert DropPath(rate=0.0).apply({}, x, deterministic=False) is x  # no rng needed
    y = np.asarray(layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)}))
    per_sample = y.reshape(len(y), -1)
    assert np.all((per_sample == 0) | np.isclose(per_sample, 1 / 0.75))
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))  # whole samples dropped
    assert abs(np.mean(per_sample[:, 0] == 0) - 0.25) < 0.03
    # A traced rate (scanned blocks) works too.
    y = jax.jit(lambda r: layer.apply({}, x, deterministic=False, rate=r,
                                      rngs={"dropout": jax.random.key(0)}))(0.5)
    assert abs(np.mean(np.asarray(y)[:, 0, 0, 0] == 0) - 0.5) < 0.03


def test_drop_path_schedule():
    assert drop_path_rates(0.2, 5) == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert drop_path_rates(0.2, 1) == [0.0]


# ------------------------------------------------------------------- stage features, dtype


@pytest.mark.parametrize("name", ALL)
def test_stage_features(name):
    model = jaxconv.create_model(name)
    shape = (1, 64, 64, 3)
    abstract = init_variables(model, shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    logits, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, mutable=["intermediates"]), abstract, x
    )
    stages = state["intermediates"]
    expansion = resnet.BLOCKS[model.block].expansion
    channels = [w * expansion for w in model.widths]
    if name in CIFAR:
        strides = (1, 2, 4)
    else:  # the stem (stride 2, before the max pool) first, as timm's feature_info
        strides, channels = (2, 4, 8, 16, 32), [model.stem_width, *channels]
    assert sorted(stages) == [f"stage{i}" for i in range(len(strides))]
    for i, (stride, width) in enumerate(zip(strides, channels)):
        (feature,) = stages[f"stage{i}"]
        assert feature.shape == (1, 64 // stride, 64 // stride, width)


def test_bfloat16_compute():
    model = jaxconv.create_model("resnet20", dtype="bfloat16", stage_sizes=(2, 2, 2))
    assert model.dtype == jnp.bfloat16
    shape = (2, 8, 8, 3)
    variables = random_variables(model, shape)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    x = jnp.asarray(np.random.default_rng(6).normal(size=shape), jnp.float32)
    eval_logits, train_logits, loss, grads, _ = compile_fast(
        _train_and_eval(model), variables, x, jax.random.key(0)
    )(variables, x, jax.random.key(0))
    assert eval_logits.dtype == train_logits.dtype == jnp.float32
    assert all(g.dtype == jnp.float32 and np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


# --------------------------------------------------------------------------- loop_safe_conv


@pytest.mark.parametrize(
    "size, kernel, stride, pad",
    [(8, 3, 1, 1), (8, 3, 2, 1), (7, 3, 2, 1), (9, 7, 2, 3), (8, 1, 2, 0), (9, 3, 2, 0),
     (10, 3, 3, 1)],
)
def test_loop_safe_conv_matches_lax(size, kernel, stride, pad):
    rng = np.random.default_rng(7)
    x = jnp.asarray(rng.normal(size=(2, size, size + 1, 3)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(kernel, kernel, 3, 5)), jnp.float32)
    padding = ((pad, pad), (pad, pad))
    dn = ("NHWC", "HWIO", "NHWC")

    def loss(conv):
        return lambda x, w: jnp.sum(jnp.sin(
            conv(x, w, (stride, stride), padding, dimension_numbers=dn)))

    ours = jax.value_and_grad(loss(loop_safe_conv), (0, 1))(x, w)
    ref = jax.value_and_grad(loss(jax.lax.conv_general_dilated), (0, 1))(x, w)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), ours, ref)


def test_loop_safe_conv_falls_back_for_unserved_shapes():
    x = jnp.ones((1, 8, 8, 4))
    w = jnp.ones((3, 3, 2, 4))
    dn = ("NHWC", "HWIO", "NHWC")
    grouped = loop_safe_conv(x, w, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2)
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn,
                                       feature_group_count=2)
    np.testing.assert_array_equal(grouped, ref)


# ------------------------------------------------------------------------- conv, batch norm


def test_conv2d_pads_like_pytorch():
    """Stride-2 3x3 pads (1, 1) like PyTorch, where XLA's 'SAME' would pad (0, 1)."""
    conv = conv2d(1, 3, 2, kernel_init=nn.initializers.ones)
    x = jnp.arange(64, dtype=jnp.float32).reshape(1, 8, 8, 1)
    y = conv.apply(conv.init(jax.random.key(0), x), x)
    assert y.shape == (1, 4, 4, 1)
    assert y[0, 0, 0, 0] == x[0, :2, :2, 0].sum()  # rows/cols -1..1, -1 in the padding
    assert y[0, 3, 3, 0] == x[0, 5:8, 5:8, 0].sum()


def test_batch_norm_matches_pytorch_defaults():
    x = jnp.asarray(np.random.default_rng(8).normal(2.0, 3.0, size=(4, 5, 5, 6)), jnp.float32)
    bn = batch_norm(train=True)
    variables = bn.init(jax.random.key(0), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * var, rtol=1e-5)
    assert batch_norm(train=False).use_running_average is True
