"""Fine-tuning from a checkpoint: ``config.init_from`` (a workdir or a timm state dict) with
``config.init_reinit`` (parameters trained from scratch, e.g. a new head)."""
import jax
import numpy as np
import pytest

import jaxconv
from jaxconv import train
from jaxconv.train import pretrained
from jaxconv.train.optim import make_optimizer
from jaxconv.train.state import create_train_state

from tests.train.test_reliability import tiny_config


@pytest.fixture(scope="module")
def source_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("source") / "run"
    train.train_and_evaluate(tiny_config(num_train_steps=2), str(workdir))
    return workdir


def flat(tree):
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_init_from_takes_every_leaf_but_the_reinitialised_ones(source_run):
    config = tiny_config(init_from=str(source_run), init_reinit=("^fc/",), seed=7)
    model = jaxconv.create_model(config.model, num_classes=10, **config.model_overrides)
    tx, _ = make_optimizer(config, 10)
    fresh = create_train_state(model, tx, (1, 8, 8, 1), config.seed)
    state = pretrained.init_from_pretrained(fresh, config, model, tx)
    _, saved = train.load_checkpoint(str(source_run))
    got, want, init = flat(state.params), flat(saved["params"]), flat(fresh.params)
    heads = [k for k in got if k.startswith("['fc']")]
    assert heads and len(heads) < len(got)
    for key in got:
        np.testing.assert_array_equal(got[key], init[key] if key in heads else want[key])
    for key, value in flat(state.model_state).items():
        np.testing.assert_array_equal(value, flat(saved["model_state"])[key])


def test_a_checkpoint_that_does_not_fit_names_the_leaves(source_run):
    config = tiny_config(init_from=str(source_run))
    config.model_overrides.features = 8
    model = jaxconv.create_model(config.model, num_classes=10, **config.model_overrides)
    tx, _ = make_optimizer(config, 10)
    fresh = create_train_state(model, tx, (1, 8, 8, 1), 0)
    with pytest.raises(ValueError, match="do not fit the model"):
        pretrained.init_from_pretrained(fresh, config, model, tx)


def test_fine_tuning_run_starts_from_the_checkpoint_and_resumes_its_own(source_run, tmp_path):
    config = tiny_config(init_from=str(source_run), num_train_steps=2, learning_rate=1e-9)
    summary = train.train_and_evaluate(config, str(tmp_path))
    _, src = train.load_checkpoint(str(source_run))
    _, tuned = train.load_checkpoint(str(tmp_path))
    for a, b in zip(jax.tree.leaves(src["params"]), jax.tree.leaves(tuned["params"])):
        np.testing.assert_allclose(a, b, atol=1e-6)  # lr ~0: still the source's weights
    assert summary["step"] == 2


@pytest.mark.parametrize("overrides, match", [
    ({"init_from": "/no/such/run"}, "config.init_from='/no/such/run' does not exist"),
    ({"init_from": "weights.pth"}, "does not exist"),
    ({"init_reinit": ("head[",)}, "config.init_reinit: 'head\\[' is not a valid regex"),
])
def test_bad_init_values_are_refused_before_training(overrides, match):
    with pytest.raises(ValueError, match=match):
        train.validate_config(tiny_config(**overrides))
