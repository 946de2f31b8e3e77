"""Stage features: every registered model sows usable stages; exact timm feature_info for
resnet50, densenet121 and inception_v3; stage_features under jit and in train mode."""

from __future__ import annotations

import math

import flax.linen as nn
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv.models import features
from tests.helpers import compile_fast
from tests.models.test_densenet import numpy_variables

# Models whose stages legitimately share a resolution (so strides are not strictly increasing):
# residual_stack (a single-resolution study model: stem and residual stack at one stride) and the
# 2-D CCNNs (continuous kernels as large as the image, no downsampling).
SINGLE_RESOLUTION = {"residual_stack", "ccnn_4_140_2d", "ccnn_6_380_2d", "ccnn_tiny_2d"}

# Image models (NHWC input); sequence models ((L, C) or (L,) inputs) have no 2-D stages.
IMAGE_MODELS = [n for n in jaxconv.list_models() if len(jaxconv.model_info(n).input_size) == 3]


# Known deviations in models this file does not own, as strict xfails: fixing the model turns the
# xfail into a failure that asks for the entry to be removed.
KNOWN_ISSUES = {
    name: "VGG sows after each max pool and the CIFAR variants have no last pool: stage3 and "
          "stage4 share stride 16 (vgg.py)"
    for name in ("vgg16_bn_cifar", "vgg19_bn_cifar")
}


# Deeper variants of code the default run already covers (their shallower siblings), whose
# ``init`` traces take 1-6 s each on a 2-core CPU: run with ``-m slow``.
DEEP_VARIANTS = {"densenet169", "densenet201", "resnet101", "resnet152", "resnet1202",
                 "preact_resnet1001", "wide_resnet101_2", "convnext_small", "convnext_base",
                 "inception_next_small", "inception_next_base", "nat_small", "nat_base",
                 "cvt_21", "unireplknet_f", "unireplknet_p", "unireplknet_n", "unireplknet_t"}


def _marks(name):
    if name in KNOWN_ISSUES:
        return [pytest.mark.xfail(strict=True, reason=KNOWN_ISSUES[name])]
    return [pytest.mark.slow] if name in DEEP_VARIANTS else []


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in IMAGE_MODELS])
def test_every_model_sows_consistent_stages(name):
    """>= 2 stages named stage0.., increasing strides that agree with the feature shapes.

    Runs at the model's default input size: the cost is two ``eval_shape`` traces, independent of
    the input size. "Agree" allows a few pixels less than ``ceil(H / stride)`` for valid-padded
    convolutions (Inception, All-CNN-C's conv7).
    """
    h, w, c = jaxconv.model_info(name).input_size
    infos = jaxconv.feature_info(jaxconv.create_model(name), (1, h, w, c))
    assert len(infos) >= 2
    assert [i.name for i in infos] == [f"stage{k}" for k in range(len(infos))]
    strides = [i.stride for i in infos]
    assert all(isinstance(s, int) and s >= 1 for s in strides), strides
    if name in SINGLE_RESOLUTION:
        assert strides == sorted(strides)
    else:
        assert all(a < b for a, b in zip(strides, strides[1:])), strides
    for info in infos:
        assert info.shape[0] == 1 and info.channels == info.shape[-1]
        for side, size in zip(info.shape[1:3], (h, w)):
            assert math.ceil(size / info.stride) - 4 <= side <= math.ceil(size / info.stride), info


# timm's feature_info (channels, reduction) with the map side at the default input size.
TIMM_FEATURES = {
    "densenet121": ((224, 224, 3), [(64, 2, 112), (256, 4, 56), (512, 8, 28), (1024, 16, 14),
                                    (1024, 32, 7)]),
    "inception_v3": ((299, 299, 3), [(64, 2, 147), (192, 4, 71), (288, 8, 35), (768, 16, 17),
                                     (2048, 32, 8)]),
    "resnet50": ((224, 224, 3), [(64, 2, 112), (256, 4, 56), (512, 8, 28), (1024, 16, 14),
                                 (2048, 32, 7)]),
}


def _summary(name):
    shape, _ = TIMM_FEATURES[name]
    return [(i.channels, i.stride, i.shape[1]) for i in
            jaxconv.feature_info(jaxconv.create_model(name), shape)]


@pytest.mark.parametrize("name", sorted(TIMM_FEATURES))
def test_timm_feature_info(name):
    assert _summary(name) == TIMM_FEATURES[name][1]


def test_stage_features_under_jit_and_in_train_mode():
    model = jaxconv.create_model("resnet20", stage_sizes=(1, 1, 1))
    shape = (2, 16, 16, 3)
    variables = numpy_variables(model, shape)
    x = jnp.asarray(np.random.default_rng(0).normal(size=shape), jnp.float32)

    def run(variables, x):
        evaluated = jaxconv.stage_features(model, variables, x)
        trained, state = jaxconv.stage_features(model, variables, x, train=True,
                                                mutable=["batch_stats"])
        _, direct = model.apply(variables, x, mutable=["intermediates"])
        return evaluated, trained, state, direct["intermediates"]

    evaluated, trained, state, direct = compile_fast(run, variables, x)(variables, x)
    assert [(f.name, f.stride, f.array.shape) for f in evaluated] == [
        ("stage0", 1, (2, 16, 16, 16)), ("stage1", 2, (2, 8, 8, 32)), ("stage2", 4, (2, 4, 4, 64))]
    for name, array, _ in evaluated:
        np.testing.assert_array_equal(array, direct[name][0])
    # Train mode: batch statistics, so other values; updated running stats come back.
    assert not np.allclose(trained[-1].array, evaluated[-1].array)
    assert set(state) == {"batch_stats"}
    assert not np.allclose(state["batch_stats"]["bn1"]["mean"],
                           variables["batch_stats"]["bn1"]["mean"])


def test_feature_info_reports_non_power_of_two_and_anisotropic_strides():
    class Strided(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(4, (3, 3), strides=(3, 1), padding=1)(x)
            self.sow("intermediates", "stage0", x)
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
            self.sow("intermediates", "stage1", x)
            return x.mean((1, 2))

    infos = jaxconv.feature_info(Strided(), (30, 32, 3))
    assert [(i.stride, i.shape) for i in infos] == [((3, 1), (1, 10, 32, 4)),
                                                    ((6, 2), (1, 5, 16, 4))]


def test_feature_info_errors():
    class NoStages(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3)(x.mean((1, 2)))

    with pytest.raises(ValueError, match="sows no intermediates/stage"):
        jaxconv.feature_info(NoStages(), (8, 8, 3))
    with pytest.raises(ValueError, match="input_shape"):
        jaxconv.feature_info(jaxconv.create_model("resnet20"), (8, 8))


def test_exported_from_the_package():
    assert jaxconv.feature_info is features.feature_info
    assert jaxconv.stage_features is features.stage_features
