"""ECA (layer and kernel-size rule) and ecaresnet50d (ResNet-D: deep stem, avg-pool shortcuts):
exact parameter count, timm layout, train step, stage features, pooling, bad fields.

Parity with timm's outputs is in tests/convert/test_timm_parity.py (ecaresnet50d.npz).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv.analysis import count_params, init_variables
from jaxconv.layers import ECA, eca_kernel_size
from jaxconv.models.resnet import ResNet, _avg_pool_ceil
from tests.models.modern_helpers import check_train_step

# timm: sum(p.numel() for p in timm.create_model("ecaresnet50d").parameters()).
ECARESNET50D = 25_576_350


@pytest.mark.parametrize("channels, expected", [
    # t = int((log2 C + 1) / 2); odd t stays, even t -> t + 1; at least 3.
    (8, 3),      # t = int(2.0) = 2 -> 3
    (64, 3),     # t = int(3.5) = 3
    (128, 5),    # t = int(4.0) = 4 -> 5
    (256, 5),    # t = int(4.5) = 4 -> 5
    (1024, 5),   # t = int(5.5) = 5
    (2048, 7),   # t = int(6.0) = 6 -> 7
    (4, 3),      # t = int(1.5) = 1, raised to the floor 3
])
def test_kernel_size_rule(channels, expected):
    assert eca_kernel_size(channels) == expected


def test_kernel_size_follows_gamma_and_beta():
    # gamma=1, beta=0: t = int(log2 C) -> C=256: 8 -> 9; C=128: 7.
    assert eca_kernel_size(256, gamma=1, beta=0) == 9
    assert eca_kernel_size(128, gamma=1, beta=0) == 7


def test_eca_equals_hand_computation():
    """mean over H, W -> 1-D cross-correlation over channels (zero padding) -> sigmoid gate."""
    channels = 32  # k = 3
    x = np.random.default_rng(0).normal(size=(2, 5, 4, channels)).astype(np.float32)
    module = ECA()
    params = module.init(jax.random.key(0), jnp.asarray(x))
    w = np.asarray(params["params"]["conv"]["kernel"])
    assert w.shape == (3, 1, 1)
    w = np.random.default_rng(1).normal(size=w.shape).astype(np.float32)
    out = module.apply({"params": {"conv": {"kernel": jnp.asarray(w)}}}, jnp.asarray(x))
    y = np.pad(x.mean(axis=(1, 2)), ((0, 0), (1, 1)))
    conv = sum(w[j, 0, 0] * y[:, j:j + channels] for j in range(3))
    expected = x / (1.0 + np.exp(-conv))[:, None, None, :]
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-6)


def test_eca_fixed_kernel_size():
    params = jax.eval_shape(ECA(kernel_size=7).init, jax.random.key(0), jnp.zeros((1, 2, 2, 8)))
    assert params["params"]["conv"]["kernel"].shape == (7, 1, 1)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=4), dict(kernel_size=0), dict(gamma=0)])
def test_eca_bad_fields_raise(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        ECA(**kwargs)


def _abstract(model):
    return init_variables(model, (1, 32, 32, 3))


def test_param_count_and_eca_cost():
    """timm's count; ECA adds sum of k over the 16 bottlenecks: 3x5 + 4x5 + 6x5 + 3x7 = 86."""
    params = _abstract(jaxconv.create_model("ecaresnet50d"))["params"]
    assert count_params(params) == ECARESNET50D
    without = _abstract(jaxconv.create_model("ecaresnet50d", attn_layer=None))["params"]
    assert count_params(params) - count_params(without) == 3 * 5 + 4 * 5 + 6 * 5 + 3 * 7
    # The timm layout: deep stem Sequential indices, ResNet-D shortcut indices, the se slot.
    assert {k for k in params if k.startswith("conv1")} == {
        "conv1_0", "conv1_1", "conv1_3", "conv1_4", "conv1_6"}
    assert params["conv1_6"]["kernel"].shape == (3, 3, 32, 64)
    assert set(params["layer1_0"]) >= {"downsample_1", "downsample_2", "se"}
    assert params["layer2_0"]["downsample_1"]["kernel"].shape == (1, 1, 256, 512)
    assert params["layer4_2"]["se"]["conv"]["kernel"].shape == (7, 1, 1)


def test_train_step_shallow():
    """ecaresnet50d's builder with one narrow block per stage: jit, train mode (BN statistics,
    drop path), every parameter (ECA convs included) gets a finite gradient."""
    model = jaxconv.create_model("ecaresnet50d", stage_sizes=(1, 1, 1, 1), widths=(4, 8, 12, 16),
                                 stem_width=8, drop_path_rate=0.1, zero_init_last_bn=False)
    check_train_step(model, (2, 32, 32, 3))


@pytest.mark.slow
def test_train_step_ecaresnet50d():
    """Full ecaresnet50d at 32x32: jit, train mode (BN statistics, drop path), gradients."""
    model = jaxconv.create_model("ecaresnet50d", drop_path_rate=0.1, zero_init_last_bn=False)
    check_train_step(model, (2, 32, 32, 3))


def test_stage_features():
    model = ResNet(stage_sizes=(1, 1, 1, 1), block="bottleneck", widths=(4, 8, 12, 16),
                   stem="deep", stem_width=8, avg_down=True, attn_layer="eca")
    info = jaxconv.feature_info(model, (1, 64, 64, 3))
    assert [(f.name, f.channels, f.stride) for f in info] == [
        ("stage0", 16, 2), ("stage1", 16, 4), ("stage2", 32, 8), ("stage3", 48, 16),
        ("stage4", 64, 32)]


def test_avg_pool_ceil_mode():
    """2x2/2 average, ceil mode, the padded cells not counted (PyTorch count_include_pad=False)."""
    x = np.arange(1 * 5 * 3 * 1, dtype=np.float32).reshape(1, 5, 3, 1)
    out = np.asarray(_avg_pool_ceil(jnp.asarray(x), 2))[0, :, :, 0]
    a = x[0, :, :, 0]
    expected = np.array([[a[i:i + 2, j:j + 2].mean() for j in (0, 2)] for i in (0, 2, 4)])
    np.testing.assert_allclose(out, expected)


@pytest.mark.parametrize("kwargs, field", [
    (dict(attn_layer="se"), "attn_layer"),
    (dict(block="preact_bottleneck"), "block"),
    (dict(stem="dense"), "stem"),
    (dict(avg_down=1), "avg_down"),
])
def test_bad_fields_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        jaxconv.create_model("ecaresnet50d", **kwargs)
