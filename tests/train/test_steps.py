"""The train step with models beyond the BatchNorm-ResNet convention."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxconv.train.state import create_train_state
from jaxconv.train.state import TrainState
from jaxconv.train.steps import (AUX_LOSS_WEIGHT, cross_entropy, make_eval_step, make_train_step,
                                 sequence_loss_terms)


class NoBatchNorm(nn.Module):
    """No mutable collections at all (NiN, All-CNN and VGG without BN are like this)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


class WithAux(nn.Module):
    """Returns (logits, aux_logits) in train mode, logits in eval mode (Inception v3's head)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = x.reshape(x.shape[0], -1)
        logits, aux = nn.Dense(3, name="head")(x), nn.Dense(3, name="aux")(x)
        return (logits, aux) if train else logits


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    return {"image": jnp.asarray(rng.standard_normal((4, 2, 2, 1)), jnp.float32),
            "label": jnp.asarray([0, 1, 2, 1], jnp.int32)}


def test_model_without_batch_norm_trains(batch):
    tx = optax.sgd(0.1)
    state = create_train_state(NoBatchNorm(), tx, (1, 2, 2, 1), seed=0)
    assert state.model_state == {}
    step = jax.jit(make_train_step(NoBatchNorm(), tx, lambda _: 0.1, num_classes=3))
    new_state, metrics = step(state, batch)
    assert int(new_state.step) == 1 and np.isfinite(float(metrics["loss"]))
    assert not np.allclose(new_state.params["Dense_0"]["kernel"], state.params["Dense_0"]["kernel"])


def test_aux_logits_add_weighted_loss(batch):
    tx = optax.sgd(0.1)
    model = WithAux()
    state = create_train_state(model, tx, (1, 2, 2, 1), seed=0)
    _, metrics = jax.jit(make_train_step(model, tx, lambda _: 0.1, num_classes=3))(state, batch)
    logits, aux = model.apply({"params": state.params}, batch["image"], train=True)
    expected = (cross_entropy(logits, batch["label"], 3).mean()
                + AUX_LOSS_WEIGHT * cross_entropy(aux, batch["label"], 3).mean())
    np.testing.assert_allclose(metrics["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(metrics["top1"], np.mean(np.argmax(logits, -1) == batch["label"]))


# ---------------------------------------------------------------------------------------------
# sequence tasks (issue 12): per-position labels with -1, regression with MSE


class PerPosition(nn.Module):
    """[B, L] token ids -> [B, L, 3] logits."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        return nn.Dense(3)(nn.Embed(5, 4)(x))


def test_per_position_loss_and_accuracy_count_labelled_positions_only():
    rng = np.random.default_rng(1)
    logits = jnp.asarray(rng.standard_normal((2, 5, 3)), jnp.float32)
    labels = jnp.asarray([[0, -1, 2, -1, 1], [-1, -1, -1, -1, 2]], jnp.int32)
    loss, weight, correct = sequence_loss_terms("per_position", logits, labels, 3)
    logp = np.asarray(jax.nn.log_softmax(logits))
    picked = [(b, t) for b in range(2) for t in range(5) if labels[b, t] >= 0]
    want_loss = -np.mean([logp[b, t, labels[b, t]] for b, t in picked])
    want_acc = np.mean([np.argmax(logp[b, t]) == labels[b, t] for b, t in picked])
    np.testing.assert_allclose(jnp.sum(loss * weight) / jnp.sum(weight), want_loss, rtol=1e-6)
    np.testing.assert_allclose(jnp.sum(correct) / jnp.sum(weight), want_acc)
    assert float(jnp.sum(weight)) == len(picked)


def test_regression_is_mean_squared_error():
    out = jnp.asarray([[1.0, 2.0], [0.0, -1.0]])
    target = jnp.asarray([[0.0, 2.0], [2.0, 0.0]])
    loss, weight, correct = sequence_loss_terms("regression", out, target, 2)
    np.testing.assert_allclose(loss, [0.5, 2.5])
    assert correct is None and weight.tolist() == [1.0, 1.0]


def test_per_position_logits_on_a_classification_task_are_refused():
    # [B, L, K] logits against [B] labels would broadcast silently when B == L.
    model, tx = PerPosition(), optax.sgd(0.1)
    x = jnp.zeros((4, 4), jnp.int32)
    variables = model.init(jax.random.PRNGKey(0), x)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"], model_state={},
                       opt_state=tx.init(variables["params"]), rng=jax.random.PRNGKey(1))
    batch = {"image": x, "label": jnp.zeros((4,), jnp.int32), "mask": jnp.ones((4,), bool)}
    with pytest.raises(ValueError, match="pool='mean' or 'last'"):
        make_train_step(model, tx, lambda _: 0.1, num_classes=3)(state, batch)
    with pytest.raises(ValueError, match="pool='mean' or 'last'"):
        make_eval_step(model, num_classes=3)(state, batch)


@pytest.mark.parametrize("task, shape, labels, match", [
    ("per_position", (2, 3), np.zeros((2, 4), np.int32), "pool='none'"),
    ("regression", (2, 3), np.zeros((2, 1), np.float32), "number of targets"),
])
def test_output_shape_that_does_not_fit_the_task_is_a_clear_error(task, shape, labels, match):
    with pytest.raises(ValueError, match=match):
        sequence_loss_terms(task, jnp.zeros(shape), jnp.asarray(labels), 3)


def test_unknown_task_is_rejected():
    with pytest.raises(ValueError, match="per_position"):
        make_train_step(NoBatchNorm(), optax.sgd(0.1), lambda _: 0.1, num_classes=3, task="lm")


def test_per_position_train_and_eval_steps():
    model, tx = PerPosition(), optax.sgd(0.5)
    x = jnp.asarray([[1, 2, 3, 4], [4, 3, 2, 1]], jnp.int32)
    labels = jnp.asarray([[0, 1, -1, 2], [-1, -1, -1, 1]], jnp.int32)
    variables = model.init(jax.random.PRNGKey(0), x)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=variables["params"], model_state={},
                       opt_state=tx.init(variables["params"]), rng=jax.random.PRNGKey(1))
    step = jax.jit(make_train_step(model, tx, lambda _: 0.5, num_classes=3, task="per_position"))
    new_state, metrics = step(state, {"image": x, "label": labels})
    logits = model.apply(variables, x)
    loss, weight, correct = sequence_loss_terms("per_position", logits, labels, 3)
    np.testing.assert_allclose(metrics["loss"], jnp.sum(loss * weight) / 4, rtol=1e-6)
    np.testing.assert_allclose(metrics["top1"], jnp.sum(correct) / 4)
    _, metrics2 = step(new_state, {"image": x, "label": labels})
    assert metrics2["loss"] < metrics["loss"]
    # Eval: a masked-out row counts for nothing, whatever its labels.
    eval_step = jax.jit(make_eval_step(model, num_classes=3, task="per_position"))
    sums = eval_step(state, {"image": x, "label": labels, "mask": jnp.asarray([True, False])})
    np.testing.assert_allclose(sums["count"], 3.0)
    np.testing.assert_allclose(sums["loss_sum"], jnp.sum((loss * weight)[0]), rtol=1e-6)
    np.testing.assert_allclose(sums["correct"], jnp.sum(correct[0]))
