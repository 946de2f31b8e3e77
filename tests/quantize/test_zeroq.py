"""ZeroQ: the distilled batch matches the BN statistics it was fitted to, and calibrating on it
gives a usable int8 model without data."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.quantize import get_scheme, quantize
from jaxconv.quantize.zeroq import bn_statistics_loss, distill_batch
from tests.quantize.quant_models import TinyNet, random_variables, with_data_statistics

SHAPE = (16, 12, 12, 3)


def test_distilled_batch_matches_bn_statistics():
    """The stored statistics are those of a "training" batch unlike N(0, 1) noise (shifted,
    per-channel scales), as a trained network's are: the fit must recover them."""
    model = TinyNet()
    data = 0.5 + 2.0 * jax.random.normal(jax.random.key(5), SHAPE) * jnp.array([1.0, 0.5, 2.0])
    variables = with_data_statistics(model, random_variables(model, SHAPE), data)
    assert float(bn_statistics_loss(model, variables, data)) < 1e-3   # the target is reachable
    noise = jax.random.normal(jax.random.key(0), SHAPE)
    start = bn_statistics_loss(model, variables, noise)
    x = distill_batch(model, variables, SHAPE, jax.random.key(0), steps=150, learning_rate=0.1)
    end, per_layer = bn_statistics_loss(model, variables, x, per_layer=True)
    assert float(end) < 0.02 * float(start), (float(start), float(end))   # measured 17.9 -> 0.12
    # Every BN layer's input statistics, checked directly against the stored ones.
    assert set(per_layer) == {"bn0", "bn1", "bn2", "bn3"}
    for path, (mean_err, std_err) in per_layer.items():
        stats = variables["batch_stats"][path]
        scale = float(jnp.linalg.norm(jnp.sqrt(stats["var"])))
        assert float(mean_err) < 0.02 * scale and float(std_err) < 0.02 * scale, path
    # Data-free int8 stays close to float on that batch.
    qm = quantize(model, variables, [x], get_scheme("int8_per_channel"))
    ref = model.apply(variables, x)
    assert float(jnp.max(jnp.abs(qm.apply(x) - ref)) / jnp.max(jnp.abs(ref))) < 0.1


def test_bad_arguments_fail_fast():
    model = TinyNet()
    with pytest.raises(ValueError, match="steps"):
        distill_batch(model, {}, SHAPE, jax.random.key(0), steps=-1)
    with pytest.raises(ValueError, match="shape"):
        distill_batch(model, {}, (4, 12, 12), jax.random.key(0))


def test_scanned_resnet_blocks():
    """BNs inside nn.scan (ResNet scan_blocks=True) are fitted through the unrolled form
    (recording them inside the scan leaked tracers)."""
    import jaxconv
    model = jaxconv.create_model("resnet20", stage_sizes=(3, 2), widths=(16, 32), num_classes=3,
                                 scan_blocks=True)
    shape = (2, 8, 8, 3)
    variables = random_variables(model, shape)
    _, per_layer = bn_statistics_loss(model, variables, jnp.ones(shape), per_layer=True)
    assert "layer1_2/bn2" in per_layer and len(per_layer) == 1 + 5 * 2   # stem + 2 per block
    x = distill_batch(model, variables, shape, jax.random.key(0), steps=2)
    assert x.shape == shape and bool(jnp.all(jnp.isfinite(x)))
