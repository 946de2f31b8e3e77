"""convnext_dcls_tiny: parameter count (derived from convnext_tiny's), layout, stage-shared
positions, forward/backward/jit, stage features and field validation."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict, unflatten_dict

import jaxconv
from jaxconv.analysis import count_params, init_variables
from jaxconv.models.convnext_dcls import ConvNeXtDcls
from tests.helpers import compile_fast
from tests.models.modern_helpers import check_train_step, random_variables

# convnext_tiny has 28,589,128 parameters (timm). Its 7x7 depthwise kernels hold
# 49 * sum(depth_i * dim_i) = 49 * (3*96 + 3*192 + 9*384 + 3*768) = 49 * 6,624 = 324,576.
# DCLS (17x17 window, 34 elements): weights 34 * 6,624 = 225,216; positions shared per stage
# (official ConvNeXt-dcls) 2 * 34 * (96 + 192 + 384 + 768) = 97,920, or per block 2 * 225,216.
CONVNEXT_TINY = 28_589_128
DCLS_TINY_SHARED = CONVNEXT_TINY - 324_576 + 225_216 + 97_920  # 28,587,688
DCLS_TINY_PER_BLOCK = CONVNEXT_TINY - 324_576 + 3 * 225_216  # 28,940,200

# Small: several blocks in a stage (so sharing is visible), downsampling, 17x17 windows.
SMALL = dict(depths=(2, 1), dims=(8, 16), kernel_count=5, num_classes=4)


@pytest.mark.parametrize("share, expected", [(True, DCLS_TINY_SHARED),
                                             (False, DCLS_TINY_PER_BLOCK)])
def test_param_count_derived_from_convnext_tiny(share, expected):
    params = init_variables(jaxconv.create_model("convnext_dcls_tiny", share_positions=share),
                            (1, 32, 32, 3))["params"]
    assert count_params(params) == expected
    assert DCLS_TINY_SHARED == 28_587_688  # the DCLS paper's "iso-parameters" ConvNeXt-T-dcls


def test_layout_and_registry():
    info = jaxconv.model_info("convnext_dcls_tiny")
    assert info.family == "convnext_dcls" and "arXiv:2112.03740" in info.paper
    model = jaxconv.create_model("convnext_dcls_tiny")
    assert (model.stage_kernel_sizes, model.kernel_count, model.share_positions) == (
        (17,) * 4, 34, True)
    params = init_variables(model, (1, 32, 32, 3))["params"]
    assert params["stages_2"]["positions"].shape == (2, 34, 384)
    conv = params["stages_2"]["blocks_8"]["conv_dw"]
    assert {k: v.shape for k, v in conv.items()} == {"weight": (34, 384), "bias": (384,)}


def test_positions_are_shared_by_the_blocks_of_a_stage():
    """The shared model equals the per-block model whose blocks all hold their stage's
    positions, and differs once one block's copy is moved."""
    shared = ConvNeXtDcls(**SMALL)
    per_block = ConvNeXtDcls(**SMALL, share_positions=False)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 32, 3)), jnp.float32)
    variables = random_variables(shared, x.shape)
    flat = flatten_dict(variables["params"])
    copied = {}
    for key, value in flat.items():
        if key[-1] == "positions":
            continue
        copied[key] = value
        if key[-2:] == ("conv_dw", "weight"):
            copied[key[:-1] + ("positions",)] = flat[key[:-3] + ("positions",)]
    params = unflatten_dict(copied)
    # Stage 0 has 2 blocks: one extra copy of its [2, 5, 8] positions.
    assert count_params(params) == count_params(variables["params"]) + 2 * 5 * 8
    run_shared = compile_fast(lambda v, x: shared.apply(v, x), variables, x)
    run_per_block = compile_fast(lambda v, x: per_block.apply(v, x), {"params": params}, x)
    np.testing.assert_allclose(run_shared(variables, x), run_per_block({"params": params}, x),
                               rtol=1e-5, atol=1e-6)
    moved = dict(flatten_dict(params))
    key = ("stages_0", "blocks_1", "conv_dw", "positions")
    moved[key] = moved[key] + 1.5
    assert not np.allclose(run_shared(variables, x),
                           run_per_block({"params": unflatten_dict(moved)}, x), atol=1e-4)


def test_train_step_jit_and_gradients_reach_positions():
    """Train mode with drop path, jitted; every parameter (positions included) gets a gradient."""
    model = ConvNeXtDcls(**SMALL, drop_path_rate=0.1)
    _, grads, _ = check_train_step(model, (2, 32, 32, 3))
    assert np.abs(np.asarray(grads["stages_0"]["positions"])).min() > 0


def test_stage_features():
    info = jaxconv.feature_info(ConvNeXtDcls(depths=(1, 1, 1, 1), dims=(4, 8, 12, 16),
                                             kernel_count=3), (1, 64, 64, 3))
    assert [(f.name, f.channels, f.stride) for f in info] == [
        ("stage0", 4, 4), ("stage1", 8, 8), ("stage2", 12, 16), ("stage3", 16, 32)]


@pytest.mark.parametrize("field, value", [("kernel_count", 0), ("kernel_count", 3.0),
                                          ("share_positions", "yes"), ("dw_conv", "dense"),
                                          ("kernel_size", 16)])
def test_bad_fields_raise(field, value):
    with pytest.raises(ValueError, match=field):
        jaxconv.create_model("convnext_dcls_tiny", **{field: value})


@pytest.mark.parametrize("share", [True, False])
def test_overrides_and_clone_rebuild_the_dcls_factory(share):
    # create_model clones the default (34-element) module with the overrides.
    model = jaxconv.create_model("convnext_dcls_tiny", kernel_count=20, num_classes=10,
                                 share_positions=share)
    small = model.clone(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
    assert small.kernel_count == 20 and small.dw_conv.keywords["kernel_count"] == 20
    params = init_variables(small, (1, 32, 32, 3))["params"]
    conv = params["stages_0"]["blocks_0"]["conv_dw"]
    assert conv["weight"].shape == (20, 8)
    positions = params["stages_0"] if share else conv
    assert positions["positions"].shape == (2, 20, 8)
    assert params["head"]["fc"]["kernel"].shape == (64, 10)
