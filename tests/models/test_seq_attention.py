"""The attention baseline for sequences (jaxconv/models/seq_attention.py)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxconv
from jaxconv.models import seq_attention  # noqa: F401  (registers the models)
from jaxconv.models.seq_attention import SequenceTransformer, sinusoidal_positions
from tests.helpers import assert_causal, run_jitted


def _init_apply(model, x):
    variables = model.init(jax.random.PRNGKey(0), x)
    return variables, run_jitted(lambda v, x: model.apply(v, x), variables, x)


@pytest.mark.parametrize("pool, shape", [("last", (2, 5)), ("mean", (2, 5)),
                                         ("none", (2, 7, 5))])
def test_output_shapes_for_floats_and_tokens(pool, shape):
    model = jaxconv.create_model("seq_attention_tiny", num_classes=5, pool=pool)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 7, 3)), jnp.float32)
    _, out = _init_apply(model, x)
    assert out.shape == shape and out.dtype == jnp.float32 and np.isfinite(out).all()
    tokens = jnp.asarray([[1, 2, 3, 0, 4, 4, 1], [0, 0, 1, 2, 3, 4, 5]], jnp.int32)
    _, out = _init_apply(model.clone(vocab_size=6), tokens)
    assert out.shape == shape


def test_causal_model_is_causal_and_bidirectional_is_not():
    model = SequenceTransformer(num_classes=3, width=8, depth=2, num_heads=2, pool="none")
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 9, 2)), jnp.float32)
    variables = model.init(jax.random.PRNGKey(0), x)
    assert_causal(lambda x: model.apply(variables, x), x)
    open_model = model.clone(causal=False)
    with pytest.raises(AssertionError, match="not causal"):
        assert_causal(lambda x: open_model.apply(variables, x), x)


def test_sinusoidal_positions():
    table = sinusoidal_positions(6, 4)
    np.testing.assert_allclose(table[:, 0], np.sin(np.arange(6)), rtol=1e-6)
    np.testing.assert_allclose(table[:, 1], np.cos(np.arange(6)), rtol=1e-6)
    np.testing.assert_allclose(table[:, 2], np.sin(np.arange(6) / 100.0), rtol=1e-5)
    assert sinusoidal_positions(5, 3).shape == (5, 3)


@pytest.mark.parametrize("field, value", [("num_heads", 3), ("pool", "max"), ("causal", 1),
                                          ("implementation", "triton"), ("dropout_rate", 1.0)])
def test_bad_fields(field, value):
    with pytest.raises(ValueError, match=field if field != "num_heads" else "divisible"):
        jaxconv.create_model("seq_attention_tiny", **{field: value})
