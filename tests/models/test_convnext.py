"""ConvNeXt: exact parameter counts, train step (forward/backward/jit), layer scale, drop path,
stage features, the injectable depthwise conv, implementation xla vs pallas, bad fields.

Parity with timm's outputs is in tests/convert/test_timm_parity.py (fixture convnext_tiny.npz).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv.analysis import count_macs, count_params, init_variables
from jaxconv.layers import DepthwiseConv2D
from jaxconv.models.convnext import ConvNeXt, ConvNeXtBlock
from tests.helpers import compile_fast
from tests.models.modern_helpers import check_train_step, random_variables

# timm's counts: sum(p.numel() for p in timm.create_model(name).parameters()), 1000 classes.
PARAM_COUNTS = {
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
}
# A small ConvNeXt with every structural feature (downsampling, several blocks per stage).
TINY = dict(depths=(2, 1), dims=(8, 16), num_classes=5)


def test_every_convnext_has_an_expected_count():
    assert jaxconv.list_models(family="convnext") == sorted(PARAM_COUNTS)


@functools.lru_cache(maxsize=None)
def _abstract_params(name):
    return init_variables(jaxconv.create_model(name), (1, 32, 32, 3))["params"]


@pytest.mark.parametrize("name", sorted(PARAM_COUNTS))
def test_param_count(name):
    assert count_params(_abstract_params(name)) == PARAM_COUNTS[name]


def test_macs_match_the_paper():
    """Liu et al. 2022, Table 1 (ImageNet-1K at 224^2, 'FLOPs' = multiply-adds, 1 decimal):
    ConvNeXt-T 4.5G (small/base: 8.7G/15.4G, same code at other depths/widths)."""
    macs = count_macs(jaxconv.create_model("convnext_tiny"), (1, 224, 224, 3))
    assert f"{macs / 1e9:.1f}" == "4.5", macs


def test_timm_layout():
    """Module tree 1:1 with timm's (stem, downsample LN + 2x2 conv, block leaves, head)."""
    params = _abstract_params("convnext_tiny")
    assert set(params) == {"stem_0", "stem_1", "head"} | {f"stages_{i}" for i in range(4)}
    assert "downsample_0" not in params["stages_0"]
    assert params["stages_1"]["downsample_1"]["kernel"].shape == (2, 2, 96, 192)
    block = params["stages_2"]["blocks_8"]
    assert set(block) == {"conv_dw", "norm", "mlp", "gamma"}
    assert block["conv_dw"]["kernel"].shape == (7, 7, 384)
    assert block["mlp"]["fc1"]["kernel"].shape == (384, 1536)
    assert set(params["head"]) == {"norm", "fc"}


def test_train_step_shallow():
    """convnext_tiny's structure with one narrow block per stage (small/base differ only in
    depths and dims): jit, train mode with drop path, every parameter gets a finite gradient.
    Full depth: the slow test below; full-size eval forward: the timm parity fixtures."""
    model = jaxconv.create_model("convnext_tiny", depths=(1, 1, 1, 1), dims=(8, 16, 24, 32),
                                 drop_path_rate=0.1)
    check_train_step(model, (2, 32, 32, 3))


@pytest.mark.slow
def test_train_step_convnext_tiny():
    """Full convnext_tiny at 32x32 (stage 3 is 1x1): jit, train mode with drop path, grads."""
    model = jaxconv.create_model("convnext_tiny", drop_path_rate=0.1)
    check_train_step(model, (2, 32, 32, 3))


def test_stage_features():
    """Four stages (convnext_tiny's structure at small widths): strides 4, 8, 16, 32."""
    model = ConvNeXt(depths=(1, 1, 1, 1), dims=(4, 8, 12, 16))
    info = jaxconv.feature_info(model, (1, 64, 64, 3))
    assert [(f.name, f.channels, f.stride) for f in info] == [
        ("stage0", 4, 4), ("stage1", 8, 8), ("stage2", 12, 16), ("stage3", 16, 32)]


def test_layer_scale_init_and_disable():
    """gamma starts at ls_init_value (real init); ls_init_value=None has no gamma."""
    block = ConvNeXtBlock(dim=4, kernel_size=3)
    key, x = jax.random.key(0, impl="rbg"), jnp.zeros((1, 5, 5, 4))
    params = compile_fast(block.init, key, x)(key, x)["params"]
    np.testing.assert_array_equal(params["gamma"], np.full(4, 1e-6, np.float32))
    no_ls = init_variables(ConvNeXt(**TINY, ls_init_value=None), (1, 16, 16, 3))["params"]
    with_ls = init_variables(ConvNeXt(**TINY), (1, 16, 16, 3))["params"]
    assert "gamma" not in no_ls["stages_0"]["blocks_0"]
    assert count_params(with_ls) - count_params(no_ls) == 2 * 8 + 16


def test_drop_path_is_train_only_and_random():
    """Eager apply of one block: eval ignores the dropout key, train mode draws per sample."""
    block = ConvNeXtBlock(dim=4, kernel_size=3, ls_init_value=1.0)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, 5, 5, 4)), jnp.float32)
    abstract = jax.eval_shape(block.init, jax.random.key(0), x)
    variables = random_variables(block, x.shape, abstract=abstract)

    def run(train, key):
        return np.asarray(block.clone(train=train).apply(
            variables, x, 0.5, rngs={"dropout": jax.random.key(key)}))

    np.testing.assert_array_equal(run(False, 0), run(False, 1))
    a, b = run(True, 0), run(True, 1)
    assert not np.allclose(a, b)
    # A dropped sample is exactly its shortcut.
    dropped = [i for i in range(8) if np.array_equal(a[i], np.asarray(x[i]))]
    assert 0 < len(dropped) < 8


def test_implementation_xla_equals_pallas():
    """The depthwise op's two paths give the same logits (Pallas interpreted on CPU)."""
    model = ConvNeXt(depths=(1, 1), dims=(8, 16), num_classes=3)
    variables = random_variables(model, (1, 16, 16, 3))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 16, 16, 3)), jnp.float32)
    out = {impl: np.asarray(jax.jit(model.clone(implementation=impl).apply)(variables, x))
           for impl in ("xla", "pallas")}
    assert np.abs(out["xla"]).max() > 0.1
    np.testing.assert_allclose(out["pallas"], out["xla"], rtol=1e-5, atol=1e-5)


class _RecordingDepthwise(nn.Module):
    """A stand-in depthwise layer: the factory protocol passes ``features``."""

    features: int
    kernel_size: int
    use_bias: bool = True
    dtype: jnp.dtype = jnp.float32
    implementation: str | None = None
    scale: float = 1.0

    @nn.compact
    def __call__(self, x):
        assert x.shape[-1] == self.features
        w = self.param("taps", nn.initializers.ones, (self.kernel_size, self.features))
        return x * w.sum(0) * self.scale


def test_dw_conv_is_injectable():
    """A factory replaces the depthwise conv (the hook helper F's DCLS ConvNeXt uses); the
    default is DepthwiseConv2D with the model's kernel size and implementation."""
    custom = ConvNeXt(**TINY, kernel_size=5,
                      dw_conv=functools.partial(_RecordingDepthwise, scale=2.0))
    params = init_variables(custom, (1, 16, 16, 3))["params"]
    assert params["stages_1"]["blocks_0"]["conv_dw"]["taps"].shape == (5, 16)
    default = ConvNeXt(**TINY, kernel_size=(3, 5), implementation="xla")
    params = init_variables(default, (1, 16, 16, 3))["params"]
    assert params["stages_0"]["blocks_1"]["conv_dw"]["kernel"].shape == (3, 3, 8)
    assert params["stages_1"]["blocks_0"]["conv_dw"]["kernel"].shape == (5, 5, 16)
    seen = []

    def interceptor(next_fun, args, kwargs, context):
        if isinstance(context.module, DepthwiseConv2D):
            seen.append((context.module.kernel_size, context.module.implementation))
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        jax.eval_shape(lambda v: default.apply(v, jnp.zeros((1, 16, 16, 3))), {"params": params})
    assert seen and set(seen) == {((3, 3), "xla"), ((5, 5), "xla")}


@pytest.mark.parametrize("field, value", [
    ("depths", (3, 3, 9)),
    ("dims", (96, 0, 384, 768)),
    ("kernel_size", 6),
    ("kernel_size", (7, 7)),
    ("implementation", "cuda"),
    ("dw_conv", "sparse"),
    ("drop_path_rate", 1.0),
    ("ls_init_value", -1.0),
    ("num_classes", 0),
])
def test_bad_fields_raise(field, value):
    with pytest.raises(ValueError, match=field):
        jaxconv.create_model("convnext_tiny", **{field: value})


def test_fewer_stages_by_override():
    """create_model clones the registered ConvNeXt-T: an int kernel_size must not have been
    expanded to its 4 stages (that made depths=(1, 1) fail)."""
    model = jaxconv.create_model("convnext_tiny", depths=(1, 1), dims=(8, 16))
    assert model.kernel_size == 7 and model.stage_kernel_sizes == (7, 7)
    assert ConvNeXt(depths=(1, 1), dims=(8, 16), kernel_size=(3, 5)).stage_kernel_sizes == (3, 5)


def test_from_timm_refuses_injected_dw_conv():
    """timm's weights do not fit another depthwise layer: every mismatched key is named."""
    from jaxconv.convert import from_timm, timm_key_map

    state = {k: np.zeros(shape, np.float32) for k, (_, shape) in
             timm_key_map("convnext_tiny").items()}
    model = jaxconv.create_model("convnext_tiny", dw_conv=_RecordingDepthwise)
    with pytest.raises(ValueError, match=r"(?s)missing keys \(18\): stages\.0\.blocks\.0\.conv_dw"
                                         r"\.taps.*unexpected keys \(36\):.*conv_dw\.weight"):
        from_timm("convnext_tiny", state, model=model)


def test_bfloat16_compute():
    model = ConvNeXt(**TINY, dtype="bfloat16")
    variables = random_variables(model, (1, 16, 16, 3))
    fn = compile_fast(lambda v, x: model.apply(v, x), variables, jnp.zeros((1, 16, 16, 3)))
    logits = fn(variables, jnp.ones((1, 16, 16, 3)))
    assert logits.dtype == jnp.float32 and np.isfinite(np.asarray(logits)).all()
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))


def test_stage_and_block_classes_are_swappable():
    """Subclasses may swap the stage/block modules (ClassVar hooks; not dataclass fields)."""
    from jaxconv.models.convnext import ConvNeXtStage

    class NoGammaBlock(ConvNeXtBlock):
        def __call__(self, x, drop_path_rate=0.0):
            return x

    class Stage(ConvNeXtStage):
        block_cls = NoGammaBlock

    class Model(ConvNeXt):
        stage_cls = Stage

    params = init_variables(Model(**TINY), (1, 16, 16, 3))["params"]
    assert set(params["stages_1"]) == {"downsample_0", "downsample_1"}
    assert "stage_cls" not in {f.name for f in dataclasses.fields(ConvNeXt)}
