"""Layer-wise lr decay: jaxconv's layer ids and lr scales equal timm's for every parameter
(fixture from timm's ``group_matcher`` / ``param_groups_layer_decay``, made by
layer_decay_fixtures/make_fixtures.py), and the scale applies to the whole update."""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv.analysis import init_variables
from jaxconv.convert.timm import timm_key_map
from jaxconv.train import validate_config
from jaxconv.train.config import default_config
from jaxconv.train.optim import make_optimizer
from jaxconv.train.param_groups import (LAYER_DECAY_FAMILIES, layer_decay_scales, layer_ids,
                                        path_name)

FIXTURE = os.path.join(os.path.dirname(__file__), "layer_decay_fixtures", "layer_ids.json")
with open(FIXTURE) as f:
    TIMM = json.load(f)


def _params(name, **overrides):
    model = jaxconv.create_model(name, **overrides)
    return init_variables(model, (1, *jaxconv.model_info(name).input_size))["params"]


@pytest.mark.parametrize("name", sorted(TIMM["models"]))
def test_layer_ids_and_scales_equal_timms_for_every_parameter(name):
    want = TIMM["models"][name]
    params = _params(name)
    to_timm = {flax: key for key, (flax, _) in timm_key_map(name).items()}
    ids, num_layers = layer_ids(name, params)
    scales = layer_decay_scales(name, params, TIMM["layer_decay"])
    assert num_layers == want["num_layers"]
    assert len(ids) == len(want["layer_id"])  # every timm parameter, once
    for path, i in ids.items():
        key = to_timm[f"params/{path}"]
        assert i == want["layer_id"][key], path
        assert scales[path] == pytest.approx(want["lr_scale"][key], rel=1e-12), path


def test_scanned_resnet_blocks_get_the_ids_of_their_unrolled_blocks():
    unrolled, _ = layer_ids("resnet50", _params("resnet50"))
    params = _params("resnet50", scan_blocks=True)
    shapes = {path_name(p): leaf.shape for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]}
    scanned, n = layer_ids("resnet50", params)
    assert n == TIMM["models"]["resnet50"]["num_layers"]
    assert any(path.split("/")[0].endswith("_scan") for path in scanned)
    for path, i in scanned.items():
        stage, *rest = path.split("/")
        if stage.endswith("_scan"):
            shape = shapes[path]
            assert i.shape == (shape[0],) + (1,) * (len(shape) - 1), path  # broadcasts
            for row, value in enumerate(np.asarray(i).ravel()):
                assert value == unrolled["/".join([f"{stage[:-5]}_{row + 1}", *rest])], path
        else:
            assert i == unrolled[path], path


def _tiny_convnext_config(**fields):
    c = default_config()
    c.model, c.dataset = "convnext_tiny", "digits32"
    c.model_overrides.depths, c.model_overrides.dims = (1, 1, 1, 1), (8, 8, 8, 8)
    c.optimizer, c.learning_rate, c.weight_decay, c.schedule = "adamw", 0.1, 0.05, "constant"
    for k, v in fields.items():
        c[k] = v
    return c


def test_layer_decay_scales_the_whole_adamw_update_including_weight_decay():
    c = _tiny_convnext_config(layer_decay=0.5)
    validate_config(c, check_fits_machine=False)
    model = jaxconv.create_model(c.model, num_classes=10, **c.model_overrides)
    shapes = init_variables(model, (1, 32, 32, 1))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape), jnp.float32), shapes)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    tx, _ = make_optimizer(c, 10)
    updates, _ = jax.jit(tx.update)(grads, tx.init(params), params)
    # Depths 1: stem 0, stage s -> 1 + s, head 5; scale 0.5 ** (5 - id). First AdamW step:
    # m_hat = g, v_hat = g^2, so u = -lr * scale * (g / (|g| + eps) + wd * p [kernels]).
    expect = {"stem_0/kernel": 5, "stages_0/blocks_0/conv_dw/kernel": 4,
              "stages_2/downsample_1/bias": 2, "stages_3/blocks_0/mlp/fc2/kernel": 1,
              "head/fc/kernel": 0, "head/norm/scale": 0}
    flat = {path_name(p): (u, x) for (p, u), x in
            zip(jax.tree_util.tree_flatten_with_path(updates)[0], jax.tree.leaves(params))}
    for path, depth in expect.items():
        u, p = flat[path]
        decayed = 0.05 * p if p.ndim > 1 else 0.0
        ref = -0.1 * 0.5 ** depth * (0.3 / (0.3 + 1e-8) + decayed)
        np.testing.assert_allclose(u, ref, rtol=2e-5, atol=1e-9, err_msg=path)


def test_unsupported_family_is_rejected_naming_the_field_and_the_families():
    c = default_config()
    c.model, c.dataset, c.layer_decay = "vgg11", "digits32", 0.75
    with pytest.raises(ValueError, match="config.layer_decay") as e:
        validate_config(c, check_fits_machine=False)
    assert all(f in str(e.value) for f in LAYER_DECAY_FAMILIES)


@pytest.mark.parametrize("value", [0.0, -0.5, 1.5])
def test_layer_decay_out_of_range_is_rejected(value):
    with pytest.raises(ValueError, match=r"config.layer_decay.*\(0, 1\]"):
        validate_config(_tiny_convnext_config(layer_decay=value), check_fits_machine=False)
