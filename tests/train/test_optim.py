"""Learning-rate schedules built from a config."""
from __future__ import annotations

import numpy as np
import pytest

from jaxconv.train import validate_config
from jaxconv.train.config import default_config
from jaxconv.train.optim import decay_mask, make_schedule


def _step_config(factor: float, warmup: int = 0):
    c = default_config()
    c.model, c.dataset = "resnet20", "digits"
    c.learning_rate, c.schedule = 0.1, "step"
    c.step_boundaries, c.step_factor, c.warmup_steps = (0.3, 0.6, 0.8), factor, warmup
    return c


@pytest.mark.parametrize("factor", [0.1, 0.2])
def test_step_schedule_multiplies_by_factor_at_each_boundary(factor):
    schedule = make_schedule(_step_config(factor), total_steps=100)
    expected = {0: 0.1, 29: 0.1, 30: 0.1 * factor, 59: 0.1 * factor, 60: 0.1 * factor ** 2,
                80: 0.1 * factor ** 3, 99: 0.1 * factor ** 3}
    for step, lr in expected.items():
        assert float(schedule(step)) == pytest.approx(lr, rel=1e-6), step


def test_step_boundaries_count_from_the_start_with_warmup():
    schedule = make_schedule(_step_config(0.2, warmup=10), total_steps=100)
    assert float(schedule(5)) == pytest.approx(0.05)
    assert float(schedule(29)) == pytest.approx(0.1) and float(schedule(30)) == pytest.approx(0.02)


@pytest.mark.parametrize("factor", [0.0, -0.1, 1.5])
def test_bad_step_factor_is_rejected(factor):
    with pytest.raises(ValueError, match="step_factor"):
        validate_config(_step_config(factor))


def test_decay_mask_skips_biases_norms_and_position_parameters():
    params = {"conv": {"kernel": np.zeros((3, 3, 4, 8)), "bias": np.zeros(8)},
              "bn": {"scale": np.zeros(8)},
              "attn": {"relative_position_bias_table": np.zeros((4, 49)),
                       "qkv": {"kernel": np.zeros((8, 24))}},
              "na": {"rpb": np.zeros((2, 13, 13))}, "cls_token": np.zeros((1, 1, 8)),
              "dcls": {"positions": np.zeros((2, 34, 8)), "weight": np.zeros((34, 8))}}
    mask = decay_mask(params)
    assert mask["conv"] == {"kernel": True, "bias": False} and mask["bn"]["scale"] is False
    assert mask["attn"] == {"relative_position_bias_table": False, "qkv": {"kernel": True}}
    assert not mask["na"]["rpb"] and not mask["cls_token"] and not mask["dcls"]["positions"]
    assert mask["dcls"]["weight"]
