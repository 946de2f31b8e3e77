"""InceptionNeXt: exact parameter counts, the token mixer against hand-written depthwise convs,
train step (forward/backward/jit, BatchNorm statistics), stage features, implementation xla vs
pallas, bad fields.

Parity with timm's outputs is in tests/convert/test_timm_parity.py (inception_next_tiny.npz).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxconv
from jaxconv.analysis import count_macs, count_params, init_variables
from jaxconv.models.inception_next import InceptionDWConv2d, InceptionNeXt
from tests.models.modern_helpers import check_train_step, random_variables

# timm's counts: sum(p.numel() for p in timm.create_model(name).parameters()), 1000 classes.
PARAM_COUNTS = {
    "inception_next_tiny": 28_055_680,
    "inception_next_small": 49_374_016,
    "inception_next_base": 86_672_136,
}
TINY = dict(depths=(1, 1), dims=(16, 24), num_classes=3)


def test_every_inception_next_has_an_expected_count():
    assert jaxconv.list_models(family="inception_next") == sorted(PARAM_COUNTS)


@functools.lru_cache(maxsize=None)
def _abstract(name):
    return init_variables(jaxconv.create_model(name), (1, 32, 32, 3))


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count(name):
    assert count_params(_abstract(name)["params"]) == PARAM_COUNTS[name]


def test_macs_match_the_paper():
    """Yu et al. 2024, Table 1 (ImageNet-1K at 224^2, 'MACs', 1 decimal): InceptionNeXt-T
    4.2G (small/base: 8.4G/14.9G, same code at other depths/widths)."""
    macs = count_macs(jaxconv.create_model("inception_next_tiny"), (1, 224, 224, 3))
    assert f"{macs / 1e9:.1f}" == "4.2", macs


def test_timm_layout():
    variables = _abstract("inception_next_tiny")
    params = variables["params"]
    assert set(params) == {"stem_0", "stem_1", "head"} | {f"stages_{i}" for i in range(4)}
    mixer = params["stages_1"]["blocks_2"]["token_mixer"]
    gc = 192 // 8
    assert {k: v["kernel"].shape for k, v in mixer.items()} == {
        "dwconv_hw": (3, 3, gc), "dwconv_w": (1, 11, gc), "dwconv_h": (11, 1, gc)}
    assert params["stages_3"]["blocks_0"]["mlp"]["fc1"]["kernel"].shape == (1, 1, 768, 3 * 768)
    assert params["head"]["fc1"]["kernel"].shape == (768, 3 * 768)
    assert set(variables["batch_stats"]["stages_2"]) == {"downsample_0"} | {
        f"blocks_{j}" for j in range(9)}


def test_token_mixer_equals_split_depthwise_convs():
    """Identity | 3x3 | 1x11 | 11x1 over the channel split (C - 3gc, gc, gc, gc)."""
    channels, gc = 20, 2  # int(20 * 0.125) = 2: the identity part is 14 channels
    mixer = InceptionDWConv2d(band_kernel_size=5)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 7, 9, channels)), jnp.float32)
    abstract = jax.eval_shape(mixer.init, jax.random.key(0), x)
    variables = random_variables(mixer, x.shape, abstract=abstract)
    out = np.asarray(mixer.apply(variables, x))

    def depthwise(x, p, pad):
        k = p["kernel"][:, :, None, :]  # [kh, kw, 1, C]
        y = lax.conv_general_dilated(x, k, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=x.shape[-1],
                                     precision=lax.Precision.HIGHEST)
        return y + p["bias"]

    p = variables["params"]
    ident = channels - 3 * gc
    expected = np.concatenate([
        x[..., :ident],
        depthwise(x[..., ident:ident + gc], p["dwconv_hw"], ((1, 1), (1, 1))),
        depthwise(x[..., ident + gc:ident + 2 * gc], p["dwconv_w"], ((0, 0), (2, 2))),
        depthwise(x[..., ident + 2 * gc:], p["dwconv_h"], ((2, 2), (0, 0))),
    ], axis=-1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_train_step_shallow():
    """inception_next_tiny's structure with one narrow block per stage (small/base differ only
    in depths and dims): jit, train mode (BN statistics, drop path), every parameter gets a
    finite gradient. Full depth: the slow test below; full-size eval: the parity fixtures."""
    model = jaxconv.create_model("inception_next_tiny", depths=(1, 1, 1, 1), dims=(16, 16, 24, 32),
                                 drop_path_rate=0.1)
    check_train_step(model, (2, 32, 32, 3))


@pytest.mark.slow
def test_train_step_inception_next_tiny():
    """Full inception_next_tiny at 32x32: jit, train mode (BN statistics, drop path), grads."""
    model = jaxconv.create_model("inception_next_tiny", drop_path_rate=0.1)
    check_train_step(model, (2, 32, 32, 3))


def test_stage_features():
    model = InceptionNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32))
    info = jaxconv.feature_info(model, (1, 64, 64, 3))
    assert [(f.name, f.channels, f.stride) for f in info] == [
        ("stage0", 8, 4), ("stage1", 16, 8), ("stage2", 24, 16), ("stage3", 32, 32)]


def test_implementation_xla_equals_pallas():
    """All three depthwise branches through the op's two paths (Pallas interpreted on CPU)."""
    model = InceptionNeXt(depths=(1,), dims=(8,), num_classes=3)
    variables = random_variables(model, (1, 12, 12, 3))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 12, 12, 3)), jnp.float32)
    out = {impl: np.asarray(jax.jit(model.clone(implementation=impl).apply)(variables, x))
           for impl in ("xla", "pallas")}
    assert np.abs(out["xla"]).max() > 0.1
    np.testing.assert_allclose(out["pallas"], out["xla"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("field, value", [
    ("depths", (3, 3, 9)),
    ("mlp_ratios", (4, 4)),
    ("band_kernel_size", 10),
    ("square_kernel_size", 0),
    ("branch_ratio", 0.5),
    ("implementation", "triton"),
    ("dw_conv", "dcls?"),
    ("drop_path_rate", -0.1),
])
def test_bad_fields_raise(field, value):
    with pytest.raises(ValueError, match=field):
        jaxconv.create_model("inception_next_tiny", **{field: value})


def test_too_narrow_for_the_branches_raises():
    with pytest.raises(ValueError, match="branch"):
        InceptionNeXt(depths=(1,), dims=(7,))  # int(7 * 0.125) == 0
