"""Hyena LM / classifier and the LongConv / SGConv LRA classifiers: parameter counts against
the authors' configs (and the Hyena paper's 153M), the pool contract's output shapes, causality
of the per-position models, a few training steps that fit a batch, and field errors."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxconv
from tests.helpers import assert_causal, run_jitted

# fft_conv's FFT path leaves float rounding (~1e-8) on future positions: tolerate it.
FFT_ROUNDING = 1e-5


def _count(name, **overrides):
    model = jaxconv.create_model(name, **overrides)
    info = jaxconv.model_info(name)
    x = jnp.zeros((1,) + info.input_size, info.input_dtype)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x))
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"]))


def test_hyena_153m_parameter_count():
    """safari configs/experiment/pile/hyena.yaml (d 864, 18 layers, d_inner 2d, emb_dim 33,
    filter width 64, 3-tap short conv, l_max 2048 with a learned positional table, GPT-2 vocab
    padded to 50264, tied head), which the Hyena paper reports as Hyena-153M."""
    d, layers, vocab, width, emb, seq = 864, 18, 50264, 64, 33, 2048
    mixer = (d * 3 * d + 3 * d) + (3 * 3 * d + 3 * d) + (d * d + d)   # in_proj, short, out
    filt = (emb * width + width) + 2 * (width * width + width) + width * d + width + d + seq * emb
    mlp = (d * 2 * d + 2 * d) + (2 * d * d + d)
    expected = vocab * d + layers * (mixer + filt + mlp + 4 * d) + 2 * d
    assert expected == 153_700_416
    assert _count("hyena_153m") == expected
    assert abs(expected / 153e6 - 1) < 0.005


def test_lra_classifier_parameter_counts():
    """safari long-conv-lra-listops.yaml: 8 x 128, 2 kernels of 2048 taps per feature, D,
    Linear(256 -> 2 * 128) + GLU, BatchNorm; embedding of 18 ids; Linear(128 -> 10).
    SGConv: the same backbone with GConv's 6 scales of 64 taps, both directions, 1 channel."""
    d, layers = 128, 8
    io = 18 * d + d * 10 + 10
    long_conv = 2 * d * 2048 + 2 * d + (2 * d * 2 * d + 2 * d) + 2 * d
    assert _count("long_conv_listops") == io + layers * long_conv == 4_728_330
    sgconv = 6 * 2 * d * 64 + d + (d * d + d) + 2 * d
    assert _count("sgconv_listops") == io + layers * sgconv == 925_194


def test_hyena_lm_tiny_parameter_count():
    d, vocab, inner = 64, 20, 256
    layer = (d * 3 * d + 3 * d) + (3 * 3 * d + 3 * d) + (d * d + d) \
        + (5 * 64 + 64) + 2 * (64 * 64 + 64) + 64 * d + 64 + d \
        + (d * inner + inner) + (inner * d + d) + 4 * d
    assert _count("hyena_lm_tiny") == vocab * d + 2 * layer + 2 * d


@pytest.mark.parametrize("name, overrides, shape", [
    ("hyena_lm_tiny", {}, (2, 16, 20)),
    ("long_conv_tiny", {"pool": "none"}, (2, 16, 10)),
    ("sgconv_tiny", {"pool": "last", "vocab_size": 7}, (2, 10)),
    pytest.param("hyena_lm_tiny", {"pool": "last", "num_classes": 3}, (2, 3),
                 marks=pytest.mark.slow),
    pytest.param("hyena_classifier_tiny", {}, (2, 10), marks=pytest.mark.slow),
])
def test_pool_contract_shapes(name, overrides, shape):
    model = jaxconv.create_model(name, **overrides)
    tokens = jaxconv.model_info(name).input_dtype == "int32" or "vocab_size" in overrides
    x = jnp.ones((2, 16), jnp.int32) if tokens else jnp.ones((2, 16, 1))
    y = run_jitted(lambda x: model.apply(model.init(jax.random.key(0), x), x), x)
    assert y.shape == shape and y.dtype == jnp.float32
    assert np.isfinite(np.asarray(y)).all()


@pytest.mark.parametrize("name", [
    "hyena_classifier_tiny", pytest.param("long_conv_tiny", marks=pytest.mark.slow),
    pytest.param("sgconv_tiny", marks=pytest.mark.slow)])
def test_per_position_models_are_causal(name):
    model = jaxconv.create_model(name, pool="none", d_model=8)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 10, 1)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0), x)
    assert_causal(jax.jit(lambda x: model.apply(variables, x)), x, atol=FFT_ROUNDING)


@pytest.mark.slow
def test_hyena_lm_fits_a_batch():
    """A few Adam steps on one batch of next-token targets drive the loss down (dropout on)."""
    model = jaxconv.create_model("hyena_lm_tiny", d_model=16, d_inner=32, filter_order=8)
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(0, 20, (4, 17)), jnp.int32)
    x, y = tokens[:, :-1], tokens[:, 1:]
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    tx = optax.adam(1e-2)

    @jax.jit
    def step(params, opt_state, key):
        def loss_fn(p):
            logits = model.apply({"params": p}, x, train=True, rngs={"dropout": key})
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = tx.init(params)
    losses = []
    for i in range(30):
        params, opt_state, loss = step(params, opt_state, jax.random.key(i))
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("make, match", [
    (lambda: jaxconv.create_model("hyena_lm_tiny", num_classes=7),
     "num_classes \\(7\\) must equal"),
    (lambda: jaxconv.create_model("hyena_lm_tiny", pool="max"), "pool"),
    (lambda: jaxconv.create_model("hyena_lm_tiny", order=1), "order"),
    (lambda: jaxconv.create_model("hyena_lm_tiny", filter_kwargs={"emb_dim": 4}), "emb_dim"),
    (lambda: jaxconv.create_model("hyena_lm_tiny", filter_kwargs={"bands": 4}),
     "filter_kwargs"),
    (lambda: jaxconv.create_model("long_conv_tiny", mixer="s4"), "mixer"),
    (lambda: jaxconv.create_model("long_conv_tiny", norm="group"), "norm"),
    (lambda: jaxconv.create_model("long_conv_tiny", mixer_kwargs={"lam": -1.0}), "lam"),
    (lambda: jaxconv.create_model("sgconv_tiny", mixer_kwargs={"kernel_size": 3}),
     "mixer_kwargs"),
])
def test_bad_fields(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_token_input_needs_vocab():
    model = jaxconv.create_model("hyena_classifier_tiny")
    with pytest.raises(ValueError, match="vocab_size"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8), jnp.int32))
