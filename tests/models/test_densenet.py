"""DenseNet: parameter counts, timm layout, forward/backward/jit, memory-efficient equivalence.

Compile time dominates on a 2-core CPU, so parameter trees come from ``jax.eval_shape``, variables
are filled from NumPy (no jitted ``init``), XLA compiles with the fast test options of
``test_resnet`` and the runtime checks use reduced block configurations of the same code where
the full networks would only add compile time (the full ImageNet models run under ``slow``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

import jaxconv
from jaxconv.analysis import count_params, init_variables
from jaxconv.models.densenet import DenseNet
from tests.helpers import compile_fast

# timm.create_model(name).parameters() (default 1000-class head); see ENVIRONMENT.md.
TIMM_COUNTS = {
    "densenet121": 7_978_856,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
}
# Huang et al. 2017 (arXiv:1608.06993), Table 2, "DenseNet-BC (L = 100, k = 12)": 0.8M params
# (one decimal in millions); our exact count for 10 classes, BN scale/bias included:
BC_100_K12 = 769_162


def numpy_variables(model, shape, seed=0):
    """Variables of ``model`` for ``shape`` drawn with NumPy: He-normal kernels, sane BN stats."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        kind = path[-1]
        f32 = np.float32
        if kind == "kernel":
            std = math.sqrt(2.0 / math.prod(leaf.shape[:-1]))
            value = rng.standard_normal(leaf.shape, dtype=f32) * f32(std)
        elif kind == "scale":
            value = rng.uniform(0.5, 1.5, leaf.shape)
        elif kind == "var":
            value = rng.uniform(0.5, 2.0, leaf.shape)
        else:  # bias, mean
            value = rng.standard_normal(leaf.shape, dtype=f32) * f32(0.1)
        return jnp.asarray(value, leaf.dtype)

    abstract = init_variables(model, shape)
    return {col: unflatten_dict({k: draw(k, v) for k, v in flatten_dict(tree).items()})
            for col, tree in abstract.items()}


def train_and_eval(model):
    """(variables, x, key) -> eval logits, train logits, loss, grads, batch_stats updates."""

    def fn(variables, x, key):
        def loss_fn(params):
            logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                          mutable=["batch_stats"], rngs={"dropout": key})
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0]), (logits, updates)

        (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            variables["params"])
        return model.apply(variables, x, train=False), logits, loss, grads, updates

    return fn


def check_step(model, shape, num_classes, seed=0):
    """Runs train+eval once under jit and checks shapes, finiteness and live gradients."""
    variables = numpy_variables(model, shape, seed)
    x = jnp.asarray(np.random.default_rng(seed + 1).normal(size=shape), jnp.float32)
    key = jax.random.key(0)
    eval_logits, train_logits, loss, grads, updates = compile_fast(
        train_and_eval(model), variables, x, key)(variables, x, key)
    for logits in (eval_logits, train_logits):
        assert logits.shape == (shape[0], num_classes) and logits.dtype == jnp.float32
        assert np.all(np.isfinite(logits))
    assert np.isfinite(loss)
    flat = flatten_dict(grads)
    assert flat.keys() == flatten_dict(variables["params"]).keys()
    dead = [k for k, g in flat.items() if not np.any(np.asarray(g) != 0)]
    assert not dead, f"parameters with zero gradient: {dead[:5]}"
    assert all(np.all(np.isfinite(g)) for g in flat.values())
    old, new = flatten_dict(variables["batch_stats"]), flatten_dict(updates["batch_stats"])
    assert old.keys() == new.keys()
    assert all(not np.allclose(old[k], new[k]) for k in old), "batch_stats not updated"
    return eval_logits, train_logits


# ------------------------------------------------------------------------ parameter counts


def test_family_is_registered():
    assert jaxconv.list_models(family="densenet") == sorted([*TIMM_COUNTS, "densenet_bc_100_k12"])


@pytest.mark.parametrize("name", sorted(TIMM_COUNTS))
def test_param_count_matches_timm(name):
    params = init_variables(jaxconv.create_model(name), (1, 64, 64, 3))["params"]
    assert count_params(params) == TIMM_COUNTS[name]


def test_param_count_densenet_bc_matches_paper():
    params = init_variables(jaxconv.create_model("densenet_bc_100_k12"), (1, 32, 32, 3))["params"]
    assert count_params(params) == BC_100_K12
    assert f"{BC_100_K12 / 1e6:.1f}" == "0.8"
    # Depth 100 = 3 blocks x 16 layers x 2 convs + stem conv + 2 transition convs + classifier.
    convs = [k for k in flatten_dict(params) if k[-1] == "kernel"]
    assert len(convs) == 100


def test_timm_layout():
    """Parameter names are timm's state_dict keys without ``features.`` (module docstring)."""
    params = init_variables(jaxconv.create_model("densenet121"), (1, 64, 64, 3))["params"]
    assert set(params) == {"conv0", "norm0", "norm5", "classifier"} | {
        f"denseblock{b}" for b in range(1, 5)} | {f"transition{b}" for b in range(1, 4)}
    for b, n in enumerate((6, 12, 24, 16), 1):
        assert set(params[f"denseblock{b}"]) == {f"denselayer{i}" for i in range(1, n + 1)}
    layer = params["denseblock2"]["denselayer3"]
    assert set(layer) == {"norm1", "conv1", "norm2", "conv2"}
    # Input channels: 128 after transition1, + 2 layers x 32.
    assert layer["conv1"]["kernel"].shape == (1, 1, 192, 128)
    assert layer["conv2"]["kernel"].shape == (3, 3, 128, 32)
    assert params["conv0"]["kernel"].shape == (7, 7, 3, 64)
    assert params["transition1"]["conv"]["kernel"].shape == (1, 1, 256, 128)
    assert params["norm5"]["scale"].shape == (1024,)
    assert params["classifier"]["kernel"].shape == (1024, 1000)
    assert "bias" not in params["conv0"] and "bias" in params["classifier"]


# ------------------------------------------------------------------- forward / backward / jit

# Same classes and code paths as the registered models, fewer layers: compile time on CPU grows
# with the number of layers, not with anything these tests check.
SMALL = {
    "imagenet": dict(block_config=(2, 2, 2, 2), growth_rate=8, stem_width=16, num_classes=7),
    "cifar": dict(block_config=(2, 2, 2), growth_rate=6, stem_width=12, num_classes=5),
}


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_forward_backward_jit(stem):
    name = "densenet121" if stem == "imagenet" else "densenet_bc_100_k12"
    model = jaxconv.create_model(name, **SMALL[stem])
    check_step(model, (2, 32, 32, 3), SMALL[stem]["num_classes"])


@pytest.mark.slow
@pytest.mark.parametrize("name", [*sorted(TIMM_COUNTS), "densenet_bc_100_k12"])
def test_forward_backward_jit_full(name):
    info = jaxconv.model_info(name)
    shape = (2, 32, 32, 3) if info.input_size[0] == 32 else (2, 64, 64, 3)
    check_step(jaxconv.create_model(name), shape, info.num_classes)


def test_memory_efficient_is_the_same_function():
    """Remat changes neither the parameter tree nor the logits, gradients or BN statistics."""
    plain = jaxconv.create_model("densenet_bc_100_k12", block_config=(3, 2), growth_rate=6,
                                 stem_width=12, dropout_rate=0.2)
    remat = plain.clone(memory_efficient=True)
    shape = (3, 16, 16, 3)
    shapes = lambda v: jax.tree.map(lambda a: a.shape, v)  # noqa: E731
    assert shapes(init_variables(plain, shape)) == shapes(init_variables(remat, shape))
    variables = numpy_variables(plain, shape)
    x = jnp.asarray(np.random.default_rng(4).normal(size=shape), jnp.float32)
    key = jax.random.key(3)

    def grads(model):
        def loss_fn(params):
            logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                          mutable=["batch_stats"], rngs={"dropout": key})
            return jnp.mean(jax.nn.logsumexp(logits, -1) - logits[:, 0]), (logits, updates)

        return jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])

    out_plain, out_remat = compile_fast(lambda: (grads(plain), grads(remat)))()
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 out_plain, out_remat)


def test_memory_efficient_remats_the_bottleneck(monkeypatch):
    """The remat'd program carries an optimisation barrier per dense layer (the recomputation)."""
    # Count only memory_efficient's barriers: BatchNorm's own CPU recomputation off.
    monkeypatch.setattr(jaxconv.layers.norm, "recompute_module_on_cpu", lambda cls: cls)
    model = jaxconv.create_model("densenet_bc_100_k12", block_config=(2, 3), growth_rate=4,
                                 stem_width=8)
    shape = (2, 8, 8, 3)
    variables = init_variables(model, shape)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)

    def barriers(m):
        def loss(params, batch_stats, x):
            logits, _ = m.apply({"params": params, "batch_stats": batch_stats}, x, train=True,
                                mutable=["batch_stats"])
            return logits.sum()

        text = jax.jit(jax.grad(loss)).lower(
            variables["params"], variables["batch_stats"], x).as_text()
        return text.count("optimization_barrier")

    assert barriers(model) == 0
    assert barriers(model.clone(memory_efficient=True)) == 5


# ----------------------------------------------------------------------------- options


def test_dropout_only_in_train_mode():
    model = jaxconv.create_model("densenet_bc_100_k12", block_config=(2, 2), growth_rate=4,
                                 stem_width=8, dropout_rate=0.5)
    shape = (2, 16, 16, 3)
    variables = numpy_variables(model, shape)
    x = jnp.asarray(np.random.default_rng(5).normal(size=shape), jnp.float32)

    def run(variables, x, k1, k2):
        train = lambda k: model.apply(variables, x, train=True, mutable=["batch_stats"],  # noqa
                                      rngs={"dropout": k})[0]
        no_drop = model.clone(dropout_rate=0.0)
        return (train(k1), train(k2), model.apply(variables, x),
                no_drop.apply(variables, x))

    k1, k2 = jax.random.key(1), jax.random.key(2)
    a, b, eval_drop, eval_plain = compile_fast(run, variables, x, k1, k2)(variables, x, k1, k2)
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(eval_drop, eval_plain)


def test_compression_sets_transition_width():
    model = jaxconv.create_model("densenet_bc_100_k12", block_config=(2, 2), compression=0.75)
    params = init_variables(model, (1, 32, 32, 3))["params"]
    # 24 stem channels + 2 layers x 12 = 48 -> floor(0.75 * 48) = 36.
    assert params["transition1"]["conv"]["kernel"].shape == (1, 1, 48, 36)
    # compression=1 is DenseNet-B (no compression).
    params = init_variables(model.clone(compression=1.0), (1, 32, 32, 3))["params"]
    assert params["transition1"]["conv"]["kernel"].shape == (1, 1, 48, 48)


@pytest.mark.parametrize("field, value, words", [
    ("compression", 0.0, "(0, 1]"),
    ("compression", 1.5, "(0, 1]"),
    ("stem", "deep", "['imagenet', 'cifar']"),
    ("dropout_rate", 1.0, "[0, 1)"),
    ("block_config", (6, 0), "positive"),
    ("growth_rate", 0, "positive"),
    ("memory_efficient", "yes", "True or False"),
    ("dtype", "int8", "float32"),
])
def test_bad_arguments_name_the_field(field, value, words):
    with pytest.raises(ValueError) as err:
        jaxconv.create_model("densenet121", **{field: value})
    assert field in str(err.value) and words in str(err.value)


def test_module_is_a_plain_densenet():
    model = jaxconv.create_model("densenet169")
    assert isinstance(model, DenseNet) and model.block_config == (6, 12, 32, 32)


def test_timm_keys():
    """The conversion rule adds back timm's ``features.`` prefix (not to the classifier)."""
    from jaxconv.convert import timm_key_map

    keys = timm_key_map("densenet121")
    assert len(keys) == 606  # timm's state_dict without num_batches_tracked
    assert keys["features.denseblock3.denselayer24.conv2.weight"] == (
        "params/denseblock3/denselayer24/conv2/kernel", (32, 128, 3, 3))
    assert keys["features.transition2.norm.running_mean"][0] == (
        "batch_stats/transition2/norm/mean")
    assert keys["classifier.weight"] == ("params/classifier/kernel", (1000, 1024))
    assert not any(k.startswith("features.classifier") for k in keys)
