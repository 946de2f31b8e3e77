"""jaxconv.analysis: parameter counts, FLOPs, compile time."""

from __future__ import annotations

import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv.analysis import (
    compile_time, count_macs, count_params, init_variables, model_activations, model_flops,
)


class TinyDense(nn.Module):
    """Convention-following model: flatten -> Dense(4) -> Dense(num_classes)."""

    num_classes: int = 3

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes)(nn.relu(nn.Dense(4)(x)))


class SingleConv(nn.Module):
    features: int = 8
    kernel: int = 3
    stride: int = 1
    padding: str = "VALID"

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Conv(self.features, (self.kernel,) * 2, strides=self.stride,
                       padding=self.padding, use_bias=False)(x)


class SingleDense(nn.Module):
    features: int = 10

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(self.features)(x)


class LoopModel(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        w = self.param("w", nn.initializers.ones, (x.shape[-1], x.shape[-1]))
        return jax.lax.fori_loop(0, 10, lambda i, h: h @ w, x)


def test_count_params_by_hand():
    # 2x2x1 input -> 4 features: Dense(4): 4*4 + 4 = 20; Dense(3): 4*3 + 3 = 15.
    variables = init_variables(TinyDense(), (1, 2, 2, 1))
    assert count_params(variables["params"]) == 35
    concrete = TinyDense().init(jax.random.key(0), jnp.ones((1, 2, 2, 1)))
    assert count_params(concrete["params"]) == 35
    assert count_params({"a": np.zeros((2, 3)), "b": [jnp.ones(5), 1.0]}) == 12
    assert count_params({}) == 0


def test_init_variables_is_abstract():
    variables = init_variables(jaxconv.create_model("resnet20"), (8, 32, 32, 3))
    leaves = jax.tree.leaves(variables)
    assert leaves and all(isinstance(leaf, jax.ShapeDtypeStruct) for leaf in leaves)
    assert set(variables) == {"params", "batch_stats"}
    for bad in ((2,), (1, 2, 3, 4, 5, 6), (2, 0, 1)):
        with pytest.raises(ValueError, match="B, H, W, C"):
            init_variables(TinyDense(), bad)


def test_costs_of_sequence_and_token_models():
    """Sequence models are measured at (B, L, C); token models at (B, L) int32 ids (a float
    input would fail in their embedding). A per-token Dense over L positions counts L times."""
    dense = nn.Dense(3)
    assert model_flops(_Apply(dense), (1, 5, 2)) == 5 * (2 * 2 * 3 + 3)
    lm = jaxconv.create_model("hyena_lm_tiny")
    length = jaxconv.model_info("hyena_lm_tiny").input_size[0]
    variables = init_variables(lm, (1, length), input_dtype="int32")
    embed = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])
             if "embedding" in jax.tree_util.keystr(path)]
    assert embed and count_params(variables["params"]) > 0
    assert model_flops(lm, (1, length), input_dtype="int32") > 0
    assert model_activations(lm, (1, length), input_dtype="int32") > 0


@pytest.mark.parametrize(
    "module, shape, expected",
    [
        # 2 * B * Ho * Wo * k*k * Cin * Cout, VALID so no tap falls in padding.
        (SingleConv(), (2, 16, 16, 4), 2 * 2 * 14 * 14 * 9 * 4 * 8),
        (SingleConv(kernel=1, stride=2), (2, 16, 16, 4), 2 * 2 * 8 * 8 * 1 * 4 * 8),
        # 2 * B * in * out multiply-adds + B * out bias adds.
        (SingleDense(), (4, 1, 1, 32), 2 * 4 * 32 * 10 + 4 * 10),
    ],
)
def test_model_flops_by_hand(module, shape, expected):
    assert model_flops(module, shape) == pytest.approx(expected, rel=0.03)


def test_model_flops_excludes_padding_taps():
    """Documented XLA convention: 'SAME' padding taps are not counted."""
    same = model_flops(SingleConv(padding="SAME"), (1, 8, 8, 4))
    all_taps = 2 * 8 * 8 * 9 * 4 * 8
    valid_taps = 2 * (3 * 8 - 2) ** 2 * 4 * 8  # per axis: 3 taps x 8 outputs minus 2 in padding
    assert same == pytest.approx(valid_taps, rel=0.03) and same < all_taps


def test_count_macs_counts_every_tap_of_conv_and_dense():
    """Papers' convention, unlike model_flops: padding taps count, one per multiply-add."""
    assert count_macs(SingleConv(padding="SAME"), (2, 8, 8, 4)) == 2 * 8 * 8 * 9 * 4 * 8
    assert count_macs(SingleConv(stride=2), (1, 9, 9, 4)) == 4 * 4 * 9 * 4 * 8
    assert count_macs(TinyDense(), (3, 2, 2, 1)) == 3 * (4 * 4 + 4 * 3)


@pytest.mark.parametrize("name, published", [
    ("resnet50", 4.1),             # He et al. 2016, Table 1: 3.8 x 10^9 "FLOPs" (timm: 4.1 GMACs)
    ("convnext_tiny", 4.5),        # Liu et al. 2022, Table 1: 4.5G
    ("inception_next_tiny", 4.2),  # Yu et al. 2024, Table 1: 4.2G
    ("convnext_dcls_tiny", 5.0),   # Khalfaoui-Hassani et al. 2023, Table 1: 5.0G
])
def test_count_macs_matches_papers_for_depthwise_models(name, published):
    """Depthwise layers (DepthwiseConv2D, DCLS) are counted: the papers' GMACs at 224."""
    macs = count_macs(jaxconv.create_model(name), (1, 224, 224, 3))
    assert round(macs / 1e9, 1) == published, macs


def _valid_taps(n_in: int, stride: int, k: int = 3, pad: int = 1) -> int:
    """(output position, kernel tap) pairs along one axis that read real input, not padding."""
    n_out = (n_in + 2 * pad - k) // stride + 1
    return sum(0 <= o * stride - pad + t < n_in for o in range(n_out) for t in range(k))


def test_model_flops_resnet20_by_hand_and_scanned_counts_every_block():
    scanned = model_flops(jaxconv.create_model("resnet20"), (1, 32, 32, 3))
    unrolled = model_flops(jaxconv.create_model("resnet20", scan_blocks=False), (1, 32, 32, 3))
    assert scanned == unrolled
    # (input size, stride, Cin, Cout) of resnet20's 3x3 convs; fc is 64 -> 10.
    convs = ([(32, 1, 3, 16)] + [(32, 1, 16, 16)] * 6 + [(32, 2, 16, 32)] + [(16, 1, 32, 32)] * 5
             + [(16, 2, 32, 64)] + [(8, 1, 64, 64)] * 5)
    all_taps = sum(((n - 1) // s + 1) ** 2 * 9 * ci * co for n, s, ci, co in convs) + 640
    assert all_taps == 40_551_040  # the usual "41M multiply-adds" of ResNet-20
    valid = sum(_valid_taps(n, s) ** 2 * ci * co for n, s, ci, co in convs) + 640
    # 2 FLOPs per multiply-add of real taps, plus ~1% for BN/ReLU/add/pool.
    assert 1.0 <= scanned / (2 * valid + 10) < 1.03
    assert model_flops(jaxconv.create_model("resnet20"), (4, 32, 32, 3)) == pytest.approx(
        4 * scanned, rel=0.01
    )


def test_model_flops_warns_on_loops():
    with pytest.warns(UserWarning, match="loop"):
        model_flops(LoopModel(), (1, 1, 1, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model_flops(SingleDense(), (1, 1, 1, 8))


def test_model_flops_train_mode():
    model = jaxconv.create_model("resnet20", stage_sizes=(1, 1, 1))
    eval_flops = model_flops(model, (2, 16, 16, 3))
    train_flops = model_flops(model, (2, 16, 16, 3), train=True)
    assert train_flops > eval_flops > 0  # batch statistics cost extra reductions


def test_compile_time_positive():
    assert compile_time(TinyDense(), (2, 2, 2, 1), train=False) > 0
    assert compile_time(TinyDense(), (2, 2, 2, 1), train=True) > 0


# ------------------------------------------------------------------------------- activations


def test_activations_count_conv_and_dense_outputs():
    # VALID 3x3 conv on 10x12 -> 8x10x8 outputs per image; batch 2.
    assert model_activations(SingleConv(), (2, 10, 12, 3)) == 2 * 8 * 10 * 8
    assert model_activations(SingleConv(stride=2, padding="SAME"), (1, 10, 12, 3)) == 5 * 6 * 8
    # Two dense layers: 4 + 3 outputs per image; the flatten/relu in between are not layers.
    assert model_activations(TinyDense(), (5, 2, 2, 1)) == 5 * (4 + 3)


def test_activations_and_macs_count_depthwise_layers():
    from jaxconv.layers import DepthwiseConv2D

    class DepthwiseThenConv(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            x = DepthwiseConv2D(kernel_size=5, strides=2)(x)     # 9x9 -> 5x5, 4 channels
            return nn.Conv(8, (1, 1))(x)

    model = DepthwiseThenConv()
    assert model_activations(model, (2, 9, 9, 4)) == 2 * (5 * 5 * 4 + 5 * 5 * 8)
    assert count_macs(model, (2, 9, 9, 4)) == 2 * (5 * 5 * 4 * 25 + 5 * 5 * 8 * 4)


def test_activations_custom_layer_opt_in():
    class Doubler(nn.Module):
        counts_as_activation = True

        def __call__(self, x):
            return x * 2

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train: bool = False):
            return Doubler()(nn.Dense(3)(x))

    assert model_activations(Net(), (1, 1, 1, 4)) == 3 + 3


def test_activations_resnet_matches_published_and_scan_layout():
    # Radosavovic et al. 2020 (Designing Network Design Spaces, arXiv:2003.13678) and Dollar et al.
    # 2021 list ResNet-50 at 224x224 with 11.1M activations.
    acts = model_activations(jaxconv.create_model("resnet50"), (1, 224, 224, 3))
    assert round(acts / 1e6, 1) == 11.1
    # Scanned blocks are counted as if unrolled.
    scanned = model_activations(jaxconv.create_model("resnet20"), (1, 32, 32, 3))
    unrolled = model_activations(jaxconv.create_model("resnet20", scan_blocks=False), (1, 32, 32, 3))
    assert scanned == unrolled > 0


class _Apply(nn.Module):
    """Wraps a layer in the zoo's ``__call__(x, train)`` signature."""
    layer: nn.Module

    @nn.compact
    def __call__(self, x, train: bool = False):
        return self.layer(x)

