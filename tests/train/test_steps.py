"""The train step with models beyond the BatchNorm-ResNet convention."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxconv.train.state import create_train_state
from jaxconv.train.steps import AUX_LOSS_WEIGHT, cross_entropy, make_train_step


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
