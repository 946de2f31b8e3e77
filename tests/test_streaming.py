"""Streaming (jaxconv.streaming): step-by-step inference with ring buffers equals the
full-sequence forward, for every pool mode, token and float inputs, across chunk boundaries."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxconv.models.bytenet import ByteNet
from jaxconv.models.ccnn import CCNN
from jaxconv.models.tcn import TCN
from jaxconv.models.ucr import UCRFCN
from jaxconv.streaming import init_cache, stream
from tests.helpers import run_jitted


def random_variables(model, x, seed=0):
    """Variables of ``model`` with every parameter redrawn at O(1) scale (the TCN's N(0, 0.01)
    init would make outputs ~1e-13, too small for a meaningful comparison)."""
    variables = run_jitted(lambda x: model.init(jax.random.key(0), x), x)
    rng = np.random.default_rng(seed)

    def draw(leaf):
        fan_in = math.prod(leaf.shape[:-1]) if leaf.ndim > 1 else 4
        return jnp.asarray(rng.normal(0.0, 1.0 / math.sqrt(fan_in), leaf.shape), leaf.dtype)

    return {**variables, "params": jax.tree.map(draw, variables["params"])}


def _tcn(pool):
    return TCN(channels=(3, 4), kernel_size=3, dropout_rate=0.0, num_classes=3, pool=pool)


@pytest.fixture(scope="module")
def tcn_case():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 11, 2)), jnp.float32)
    return x, random_variables(_tcn("none"), x)


def test_tcn_stream_equals_full_forward_per_position(tcn_case):
    x, variables = tcn_case
    model = _tcn("none")
    full = run_jitted(model.apply, variables, x)
    ys, _ = run_jitted(lambda v, x: stream(model, v, x), variables, x)
    assert ys.shape == full.shape == (2, 11, 3)
    assert np.abs(full).max() > 0.1
    np.testing.assert_allclose(ys, full, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pool", ["last", "mean"])
def test_pooled_stream_equals_forward_of_each_prefix(tcn_case, pool):
    x, variables = tcn_case
    model = _tcn(pool)
    ys, _ = run_jitted(lambda v, x: stream(model, v, x), variables, x)
    for t in (0, 4, 10):
        np.testing.assert_allclose(ys[:, t], run_jitted(model.apply, variables, x[:, :t + 1]),
                                   rtol=1e-5, atol=1e-5)


def test_stream_continues_across_chunks(tcn_case):
    x, variables = tcn_case
    model = _tcn("none")
    run = jax.jit(lambda v, x, c: stream(model, v, x, c))  # one compile for both chunks
    first, cache = run(variables, x[:, :5], init_cache(model, variables, x[:, :1]))
    second, _ = run(variables, x[:, 5:10], cache)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1),
                               run_jitted(model.apply, variables, x[:, :10]), rtol=1e-5,
                               atol=1e-5)


def test_bytenet_token_stream_equals_full_forward():
    model = ByteNet(features=8, dilations=(1, 2, 4), repeats=1, num_classes=5, vocab_size=7)
    x = jnp.asarray(np.random.default_rng(2).integers(0, 7, (2, 9)), jnp.int32)
    variables = random_variables(model, x)
    full = run_jitted(model.apply, variables, x)
    ys, _ = run_jitted(lambda v, x: stream(model, v, x), variables, x)
    np.testing.assert_allclose(ys, full, rtol=1e-5, atol=1e-5)


def test_causal_ccnn_stream_equals_full_forward():
    # Continuous kernels as long as the sequence (kernel_size = L), BN in eval mode.
    model = CCNN(num_blocks=1, hidden=6, kernel_hidden=8, omega_0=3.0, mask_init=0.5,
                 kernel_size=9, num_classes=3, pool="none")
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 9, 2)), jnp.float32)
    variables = random_variables(model, x)
    ys, _ = run_jitted(lambda v, x: stream(model, v, x), variables, x)
    np.testing.assert_allclose(ys, run_jitted(model.apply, variables, x), rtol=1e-4, atol=1e-5)


def test_models_that_cannot_stream_say_why():
    x = jnp.ones((1, 1, 1))
    with pytest.raises(ValueError, match="no `decode` field"):
        init_cache(UCRFCN(), {}, x)
    with pytest.raises(ValueError, match="causal=False"):
        init_cache(ByteNet(features=4, causal=False), {}, jnp.ones((1, 1), jnp.int32))
    with pytest.raises(ValueError, match="one time step"):
        init_cache(_tcn("none"), {}, jnp.ones((1, 3, 1)))


@pytest.mark.slow
def test_bench_checks_streaming_against_recompute():
    from jaxconv.streaming import bench

    row = bench.run("tcn_copy_memory", batch=2, window=24, repeats=2)
    assert row["window"] == 24 and row["step_ms"] > 0 and row["recompute_ms"] > 0
    assert row["rel_diff"] < 1e-4
    with pytest.raises(SystemExit):
        bench.main(["--models", "no_such_model"])
