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
