"""QAT through the training command's pieces: the fake-quantized model has straight-through
gradients everywhere (qwix convs, the depthwise convs quantized around the op, dense), its
train step resumes bitwise from a checkpoint, and config.quantization is checked."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxconv.quantize import get_scheme
from jaxconv.quantize.qat import fake_quant, qat_config_from, qat_model
from jaxconv.train.checkpoint import Checkpointer
from jaxconv.train.state import create_train_state
from jaxconv.train.steps import make_train_step
from tests.quantize.quant_models import TinyNet, random_variables

SHAPE = (8, 12, 12, 3)
LAYERS = ("conv0", "dw1", "dw2", "pw", "head")


def _batch(i):
    return {"image": jax.random.normal(jax.random.key(i), SHAPE),
            "label": jax.random.randint(jax.random.key(100 + i), (SHAPE[0],), 0, 5)}


def test_fake_quant_values_and_straight_through_gradient():
    x = jnp.array([[-1.0, 0.3, 0.51], [2.0, -0.02, 0.7]])
    q = fake_quant(x, 4, axes_kept=(0,))                  # rows: scales 1/7 and 2/7
    np.testing.assert_allclose(q[0], np.round(np.array([-1.0, 0.3, 0.51]) * 7) / 7, rtol=1e-6)
    np.testing.assert_allclose(q[1], np.round(np.array([2.0, -0.02, 0.7]) * 3.5) / 3.5,
                               rtol=1e-6)
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(fake_quant(v, 4) * 2.0))(x),
                                  np.full(x.shape, 2.0))


@pytest.mark.parametrize("scheme", ["int8_per_channel", "int4_per_channel"])
def test_qat_forward_is_quantized_and_every_layer_gets_gradients(scheme):
    model = TinyNet()
    variables = random_variables(model, SHAPE)
    qat = qat_model(model, get_scheme(scheme))
    x = _batch(0)["image"]
    ref = jax.jit(lambda x: model.apply(variables, x))(x)
    out = jax.jit(lambda x: qat.apply(variables, x))(x)
    err = float(jnp.max(jnp.abs(out - ref)) / jnp.max(jnp.abs(ref)))
    assert 1e-4 < err < (0.1 if scheme.startswith("int8") else 0.6), err

    def loss(params):
        out, _ = qat.apply({**variables, "params": params}, x, train=True,
                           mutable=["batch_stats"])
        return jnp.sum(out ** 2)

    grads = jax.jit(jax.grad(loss))(variables["params"])
    for layer in LAYERS:
        assert float(jnp.abs(grads[layer]["kernel"]).sum()) > 0, layer


@pytest.mark.slow   # ~40 s alone on the 2-core CPU (three compiles of the QAT train step)
def test_qat_train_step_resumes_bitwise(tmp_path):
    model = qat_model(TinyNet(), get_scheme("int4_per_channel"))
    tx = optax.sgd(0.05, momentum=0.9)
    step = jax.jit(make_train_step(model, tx, optax.constant_schedule(0.05), num_classes=5))
    start = create_train_state(model, tx, (1, *SHAPE[1:]), seed=0)
    straight = start
    for i in range(3):
        straight, _ = step(straight, _batch(i))
    resumed, _ = step(start, _batch(0))
    checkpointer = Checkpointer(str(tmp_path), keep=1)
    checkpointer.save(resumed, wait=True)
    fresh = create_train_state(model, tx, (1, *SHAPE[1:]), seed=1)   # different init
    resumed = checkpointer.restore_latest(fresh)
    resumed = resumed[0] if isinstance(resumed, tuple) else resumed
    checkpointer.close()
    for i in (1, 2):
        resumed, _ = step(resumed, _batch(i))
    assert int(resumed.step) == 3
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params),
                 jax.device_get(straight.params))
    assert not np.array_equal(straight.params["pw"]["kernel"], start.params["pw"]["kernel"])


def test_quantization_config_checked():
    assert qat_config_from({"scheme": ""}) is None
    assert qat_config_from({"scheme": "int4_per_channel"}).bits == 4
    with pytest.raises(ValueError, match="scheme must be one of"):
        qat_config_from({"scheme": "int2"})
    with pytest.raises(ValueError, match=r"unknown fields \['bits'\]; valid: \['freeze_bn_step', "
                       r"'scheme', 'start_step'\]"):
        qat_config_from({"scheme": "int8_per_channel", "bits": 8})


def test_schedule_trains_float_then_quantized_and_freezes_bn():
    """config.quantization.start_step / freeze_bn_step: the train step's loss is the float
    model's before start_step and the fake-quantized one's from it on; from freeze_bn_step the
    forward uses the running BN statistics and leaves them unchanged."""
    from jaxconv.quantize.qat import QATSchedule, qat_training_model

    model = TinyNet()
    variables = random_variables(model, SHAPE)
    quantization = {"scheme": "int4_per_channel", "start_step": 3, "freeze_bn_step": 5}
    schedule = qat_training_model(model, quantization)
    assert isinstance(schedule, QATSchedule)
    qat = schedule.qat_model
    tx = optax.sgd(0.0)   # lr 0: only the forward and the statistics matter
    step_fn = jax.jit(make_train_step(schedule, tx, lambda s: 0.0, num_classes=5))
    state = create_train_state(model, tx, SHAPE, 0).replace(
        params=variables["params"], model_state={"batch_stats": variables["batch_stats"]})
    batch = _batch(1)

    def loss_of(m, train):
        if train:
            logits, _ = m.apply(variables, batch["image"], train=True, mutable=["batch_stats"])
        else:
            logits = m.apply(variables, batch["image"], train=False)
        return float(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
                     .mean())

    expected = {2: loss_of(model, True), 3: loss_of(qat, True), 5: loss_of(qat, False)}
    assert len({round(v, 4) for v in expected.values()}) == 3   # the three regimes differ
    for step, want in expected.items():
        new, metrics = step_fn(state.replace(step=jnp.asarray(step, jnp.int32)), batch)
        np.testing.assert_allclose(float(metrics["loss"]), want, rtol=2e-5)
        stats_before = jax.tree.leaves(state.model_state)
        stats_after = jax.tree.leaves(new.model_state)
        unchanged = all(np.array_equal(a, b) for a, b in zip(stats_before, stats_after))
        assert unchanged == (step >= 5), step
    # Float training (no scheme) and plain QAT stay what they were.
    assert qat_training_model(model, {"scheme": ""}) is model
    assert not isinstance(qat_training_model(model, {"scheme": "int8_per_channel"}), QATSchedule)


@pytest.mark.parametrize("fields, match", [
    ({"scheme": "int8_per_channel", "start_step": -1}, "start_step"),
    ({"scheme": "int8_per_channel", "freeze_bn_step": 0}, "freeze_bn_step"),
    ({"scheme": "", "start_step": 10}, "need a config.quantization.scheme"),
])
def test_bad_schedule_fields_are_refused(fields, match):
    with pytest.raises(ValueError, match=match):
        qat_config_from(fields)
