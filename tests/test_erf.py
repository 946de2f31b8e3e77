"""jaxconv.analysis.erf: the ERF support of known conv stacks, stage selection, averaging over
inputs, the high-contribution area ratio on synthetic maps, and argument checks."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.analysis.erf import (
    area_ratios,
    effective_receptive_field,
    erf_heatmap,
    field_centre,
    high_contribution_area_ratio,
)


class ConvStack(nn.Module):
    """Stride-1 'SAME' convs, each sown as a stage; an optional ReLU between them."""

    kernels: tuple = (3,)
    relu: bool = False

    @nn.compact
    def __call__(self, x, train: bool = False):
        for i, k in enumerate(self.kernels):
            if i and self.relu:
                x = nn.relu(x)
            x = nn.Conv(3, (k, k), padding="SAME")(x)
            self.sow("intermediates", f"stage{i}", x)
        return x.mean(axis=(1, 2))


def random_variables(model, shape, seed=0):
    """Variables filled from NumPy (no jitted init)."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))
    return jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape), s.dtype), shapes)


def support(erf):
    """(rows, cols) extent of the non-zero part of a map."""
    nz = np.argwhere(erf > 0)
    return tuple(int(v) for v in nz.max(0) - nz.min(0) + 1), tuple(nz.min(0))


@pytest.mark.parametrize("kernels, side", [((5,), 5), ((3, 3), 5)])
def test_support_of_conv_stacks(kernels, side):
    """One kxk conv sees exactly kxk input pixels; two stacked 3x3 convs see 5x5, centred."""
    model = ConvStack(kernels)
    variables = random_variables(model, (1, 13, 13, 2))
    erf = effective_receptive_field(model, variables, (13, 13, 2), num_inputs=1)
    assert erf.shape == (13, 13)
    extent, corner = support(erf)
    assert extent == (side, side)
    assert corner == (6 - side // 2, 6 - side // 2)
    assert np.count_nonzero(erf) == side * side  # no holes either


class StridedStack(nn.Module):
    """Two 3x3/2 convs with PyTorch's symmetric padding (ResNet's stem geometry): output pixel
    i is centred on input pixel 4i, not on the middle of its 4x4 cell."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        for _ in range(2):
            x = nn.Conv(2, (3, 3), strides=2, padding=((1, 1), (1, 1)))(x)
        self.sow("intermediates", "stage0", x)
        return x.mean(axis=(1, 2))


def test_even_stride_field_is_moved_to_the_middle_pixel():
    """At 20x20 the stage map is 5x5; its central pixel (2, 2) sees input rows/cols 5..11
    (centre 8). Centring moves that 7x7 field to rows/cols 7..13 (centre 10 = 20 // 2)."""
    model = StridedStack()
    variables = random_variables(model, (1, 20, 20, 2))
    raw = effective_receptive_field(model, variables, (20, 20, 2), num_inputs=1, centre=False)
    assert support(raw) == ((7, 7), (5, 5)) and field_centre(raw) == (8, 8)
    erf = effective_receptive_field(model, variables, (20, 20, 2), num_inputs=1)
    assert support(erf) == ((7, 7), (7, 7)) and field_centre(erf) == (10, 10)
    np.testing.assert_allclose(erf[7:14, 7:14], raw[5:12, 5:12], rtol=1e-6)  # moved, not changed


def test_field_centre_of_fields_larger_than_the_map():
    """Truncated by the borders, a field is still found at its centre (a centroid is not)."""
    x = np.arange(96.0)
    rows, cols = np.exp(-((x - 32) / 40) ** 2), np.exp(-((x - 47.5) / 40) ** 2)
    erf = np.outer(rows, cols)
    assert field_centre(erf, (32, 32)) == (32, 48)
    assert abs((rows * x).sum() / rows.sum() - 32) > 5  # the centroid is pulled inwards


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet50", "convnext_tiny"])
def test_erf_of_imagenet_models_centred(name):
    """ResNet-50's stride-32 field at 96x96 is centred on pixel 32 (its 7x7/2 stem centres
    output i on input 2i); ConvNeXt-T's 4x4/4 patchify stem centres it at 47.5. Both end up at
    the middle pixel 48."""
    import jaxconv
    from flax.traverse_util import flatten_dict, unflatten_dict
    from jaxconv.analysis import init_variables

    model = jaxconv.create_model(name)
    rng = np.random.default_rng(0)
    flat = flatten_dict(init_variables(model, (1, 96, 96, 3)))
    variables = unflatten_dict({  # fan-in scaled normal weights, unit BN/LN scales, no biases
        k: jnp.asarray(np.ones(v.shape) if k[-1] in ("var", "scale") else
                       rng.standard_normal(v.shape) / np.sqrt(np.prod(v.shape[:-1]))
                       if len(v.shape) > 1 else np.zeros(v.shape), v.dtype)
        for k, v in flat.items()})
    raw = effective_receptive_field(model, variables, (96, 96, 3), num_inputs=2, centre=False)
    erf = effective_receptive_field(model, variables, (96, 96, 3), num_inputs=2)
    assert field_centre(raw, (32, 32)) == {"resnet50": (32, 32), "convnext_tiny": (48, 48)}[name]
    assert field_centre(erf, (32, 32)) == (48, 48)


def test_stage_by_name_or_index():
    model = ConvStack((3, 3))
    variables = random_variables(model, (1, 13, 13, 2))
    first = effective_receptive_field(model, variables, (13, 13, 2), stage="stage0",
                                      num_inputs=1)
    assert support(first)[0] == (3, 3)
    # (Also: the fully optimised compile gives the same map as the default fast CPU compile.)
    by_index = effective_receptive_field(model, variables, (13, 13, 2), stage=0, num_inputs=1,
                                         fast_compile=False)
    np.testing.assert_allclose(first, by_index, rtol=1e-5)
    with pytest.raises(ValueError, match="stage='stage5'"):
        effective_receptive_field(model, variables, (13, 13, 2), stage="stage5")
    with pytest.raises(ValueError, match="stage must be"):
        effective_receptive_field(model, variables, (13, 13, 2), stage=2)


def test_average_over_inputs_and_batching():
    """With a ReLU the gradient depends on the input: the ERF of two inputs is the mean of their
    ERFs, whatever the batch size."""
    model = ConvStack((3, 3), relu=True)
    variables = random_variables(model, (1, 11, 11, 2), seed=1)
    inputs = np.random.default_rng(2).standard_normal((2, 11, 11, 2)).astype(np.float32)
    both = effective_receptive_field(model, variables, (11, 11, 2), inputs=inputs, batch_size=2)
    singles = [effective_receptive_field(model, variables, (11, 11, 2), inputs=inputs[i:i + 1])
               for i in range(2)]
    assert not np.allclose(singles[0], singles[1])
    np.testing.assert_allclose(both, (singles[0] + singles[1]) / 2, rtol=1e-6)
    # "relu" aggregation (RepLKNet's script) keeps only positive parts: never above "abs".
    relu = effective_receptive_field(model, variables, (11, 11, 2), inputs=inputs,
                                     aggregation="relu")
    assert np.all(relu <= both + 1e-7) and relu.sum() > 0


def test_area_ratio_on_synthetic_maps():
    delta = np.zeros((9, 9))
    delta[4, 4] = 3.0
    assert area_ratios(delta) == {t: 1 / 81 for t in (0.2, 0.3, 0.5, 0.99)}
    uniform = np.ones((9, 9))
    # Squares of 1, 9, 25, 49, 81 cells: the first holding t * 81 cells.
    assert area_ratios(uniform, (0.1, 0.2, 0.5, 0.99, 1.0)) == {
        0.1: 9 / 81, 0.2: 25 / 81, 0.5: 49 / 81, 0.99: 1.0, 1.0: 1.0}
    ring = np.zeros((8, 10))  # even sides: centre (4, 5), squares clipped at the border
    ring[4, 5] = 1.0
    ring[0, 5] = 1.0  # 4 rows up: the 9x9 square clipped to rows 0..7 holds it
    assert high_contribution_area_ratio(ring, 0.5) == 1 / 80
    assert high_contribution_area_ratio(ring, 1.0) == (8 * 9) / 80
    with pytest.raises(ValueError, match="threshold"):
        high_contribution_area_ratio(uniform, 0.0)
    with pytest.raises(ValueError, match="no positive"):
        high_contribution_area_ratio(np.zeros((3, 3)), 0.5)
    with pytest.raises(ValueError, match="2-D"):
        high_contribution_area_ratio(np.ones((1, 3, 3)), 0.5)


def test_heatmap_is_log_scaled_to_one():
    erf = np.array([[0.0, 1e-8], [1e-6, 2e-6]])
    shown = erf_heatmap(erf)
    assert shown.max() == 1.0 and shown.min() == 0.0
    assert np.all(np.diff(shown.ravel()) > 0)  # order kept
    np.testing.assert_allclose(erf_heatmap(erf * 1e9), shown)  # scale-free
    assert not erf_heatmap(np.zeros((2, 2))).any()


@pytest.mark.parametrize("kwargs, match", [
    ({"input_size": (13, 13)}, "input_size"),
    ({"aggregation": "sum"}, "aggregation"),
    ({"num_inputs": 0}, "num_inputs"),
    ({"inputs": np.zeros((2, 5, 5, 2))}, "inputs must be"),
])
def test_bad_arguments_raise(kwargs, match):
    model = ConvStack((3,))
    variables = random_variables(model, (1, 13, 13, 2))
    args = {"input_size": (13, 13, 2), **kwargs}
    with pytest.raises(ValueError, match=match):
        effective_receptive_field(model, variables, **args)
