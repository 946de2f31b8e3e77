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


# ----------------------------------------------------------- lamb, lars, AGC, param_rules

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

from jaxconv.train.optim import make_optimizer  # noqa: E402


def _tree(scale=1.0, seed=0):
    """A small parameter-shaped tree: conv, depthwise [kh, kw, C], a 10-class head, 1-D leaves."""
    rng = np.random.default_rng(seed)
    shapes = {"conv": {"kernel": (3, 3, 4, 8), "bias": (8,)}, "dw": {"kernel": (3, 3, 8)},
              "norm": {"scale": (8,)}, "head": {"kernel": (8, 10), "bias": (10,)}}
    return jax.tree.map(lambda s: jnp.asarray(scale * rng.normal(size=s), jnp.float32), shapes,
                        is_leaf=lambda s: isinstance(s, tuple))


def _opt_config(optimizer, **fields):
    c = default_config()
    c.model, c.dataset = "resnet20", "digits"
    c.optimizer, c.schedule, c.warmup_steps = optimizer, "constant", 0
    for k, v in fields.items():
        c[k] = v
    return c


def _step(config, params, grads):
    tx, _ = make_optimizer(config, 10)
    state = tx.init(params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    return jax.tree.map(np.asarray, updates), state


def _norm(x):
    return np.sqrt(np.sum(np.square(np.asarray(x, np.float64))))


def test_lamb_first_step_matches_the_formula_with_timms_exclusions():
    params, grads = _tree(), _tree(seed=1)
    c = _opt_config("lamb", learning_rate=0.005, weight_decay=0.02)
    updates, _ = _step(c, params, grads)
    for (path, u), p, g in zip(jax.tree_util.tree_flatten_with_path(updates)[0],
                               jax.tree.leaves(params), jax.tree.leaves(grads)):
        p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
        adam = g / (np.abs(g) + 1e-6)  # step 1: bias-corrected m = g, v = g^2
        if p.ndim > 1:  # kernels: decoupled decay, then the trust ratio |p| / |r|
            r = adam + 0.02 * p
            ref = -0.005 * _norm(p) / _norm(r) * r
        else:           # biases and norm scales: neither (timm's Lamb)
            ref = -0.005 * adam
        np.testing.assert_allclose(u, ref, rtol=1e-5, atol=1e-9, err_msg=str(path))


def test_lars_first_step_matches_the_formula_with_timms_exclusions():
    params, grads = _tree(), _tree(seed=1)
    c = _opt_config("lars", learning_rate=2.0, weight_decay=1e-4, momentum=0.9)
    updates, _ = _step(c, params, grads)
    for (path, u), p, g in zip(jax.tree_util.tree_flatten_with_path(updates)[0],
                               jax.tree.leaves(params), jax.tree.leaves(grads)):
        p, g = np.asarray(p, np.float64), np.asarray(g, np.float64)
        if p.ndim > 1:
            r = g + 1e-4 * p
            ref = -2.0 * 0.001 * _norm(p) / _norm(r) * r
        else:
            ref = -2.0 * g
        np.testing.assert_allclose(u, ref, rtol=1e-5, atol=1e-9, err_msg=str(path))


def test_agc_clips_each_output_unit_and_leaves_the_classifier_alone():
    params, grads = _tree(), _tree(scale=100.0, seed=1)
    c = _opt_config("sgd", learning_rate=1.0, momentum=0.0, weight_decay=0.0,
                    grad_clip_agc=0.01)
    updates, _ = _step(c, params, grads)
    unit_axes = {"conv/kernel": (0, 1, 2), "dw/kernel": (0, 1), "conv/bias": None,
                 "norm/scale": None}
    for name, axes in unit_axes.items():
        a, b = name.split("/")
        p, g = np.asarray(params[a][b], np.float64), np.asarray(grads[a][b], np.float64)
        p_n = np.sqrt(np.sum(p * p, axis=axes, keepdims=True))
        g_n = np.sqrt(np.sum(g * g, axis=axes, keepdims=True))
        limit = 0.01 * np.maximum(p_n, 1e-3)
        ref = -np.where(g_n > limit, g * limit / g_n, g)
        np.testing.assert_allclose(updates[a][b], ref, rtol=1e-5, err_msg=name)
        assert not np.allclose(updates[a][b], -g)  # the test's gradients are clipped
    for b in ("kernel", "bias"):  # the 10-class head (NFNets, timm): unclipped
        np.testing.assert_allclose(updates["head"][b], -np.asarray(grads["head"][b]), rtol=1e-6)


def test_param_rules_freeze_and_scale_with_no_state_for_frozen_parameters():
    params, grads = _tree(), _tree(seed=1)
    rules = (("^conv/", 0.0), ("head", 0.5))
    c = _opt_config("adamw", learning_rate=0.01, weight_decay=0.05, param_rules=rules,
                    grad_clip_norm=1.0)
    updates, state = _step(c, params, grads)
    assert not np.any(updates["conv"]["kernel"]) and not np.any(updates["conv"]["bias"])
    # AdamW moments exist for the 4 trained leaves only (mu and nu).
    moments = [x for x in jax.tree.leaves(state) if np.ndim(x) > 0]
    assert len(moments) == 2 * 4
    # Global-norm clipping sees the trained gradients only: huge frozen gradients change nothing.
    loud = jax.tree.map(lambda g: g, grads)
    loud["conv"] = jax.tree.map(lambda g: 1e6 * g, grads["conv"])
    np.testing.assert_array_equal(_step(c, params, loud)[0]["head"]["kernel"],
                                  updates["head"]["kernel"])
    # The head's whole update (decay included) at half the rate: the first AdamW step by formula,
    # after clipping the trained gradients to global norm 1.
    trained = [grads[a][b] for a, b in (("dw", "kernel"), ("norm", "scale"), ("head", "kernel"),
                                        ("head", "bias"))]
    clip = min(1.0, 1.0 / np.sqrt(sum(_norm(g) ** 2 for g in trained)))
    for b in ("kernel", "bias"):
        p, g = np.asarray(params["head"][b], np.float64), clip * np.asarray(grads["head"][b])
        ref = -0.01 * 0.5 * (g / (np.abs(g) + 1e-8) + (0.05 * p if p.ndim > 1 else 0.0))
        np.testing.assert_allclose(updates["head"][b], ref, rtol=2e-5, atol=1e-9)


def test_defaults_build_the_same_nesterov_optimizer_as_before():
    params, grads = _tree(), _tree(seed=1)
    c = _opt_config("nesterov")
    ref = optax.chain(optax.add_decayed_weights(5e-4, mask=decay_mask),
                      optax.sgd(make_schedule(c, 10), momentum=0.9, nesterov=True))
    want, _ = jax.jit(ref.update)(grads, ref.init(params), params)
    got, _ = _step(c, params, grads)
    jax.tree.map(np.testing.assert_array_equal, got, jax.tree.map(np.asarray, want))


@pytest.mark.parametrize("field, value, match", [
    ("optimizer", "lamb2", r"config.optimizer='lamb2'.*'lamb', 'lars'"),
    ("grad_clip_agc", 0.0, "config.grad_clip_agc"),
    ("grad_clip_agc", -1.0, "config.grad_clip_agc"),
    ("param_rules", (("conv[", 0.0),), r"config.param_rules.*not a valid regex"),
    ("param_rules", (("no_such_layer", 0.0),), r"config.param_rules.*match no parameter"),
    ("param_rules", (("conv", 1.0), ("conv1", 2.0)), r"config.param_rules.*\['conv1'\]"),
    ("param_rules", (("conv", -0.1),), r"config.param_rules.*>= 0"),
    ("param_rules", ((".*", 0.0),), r"config.param_rules.*freezes every parameter"),
    ("param_rules", ("conv",), r"config.param_rules.*pair"),
])
def test_bad_optimizer_fields_fail_before_training(field, value, match):
    c = _opt_config("adamw")
    c[field] = value
    with pytest.raises(ValueError, match=match):
        validate_config(c, check_fits_machine=False)


def test_merge_pretrained_takes_every_leaf_but_the_reinitialised_head():
    from jaxconv.train.param_groups import merge_pretrained
    fresh, old = _tree(seed=0), _tree(seed=1)
    old["head"] = {"kernel": jnp.zeros((8, 1000)), "bias": jnp.zeros(1000)}  # another task's head
    merged, kept = merge_pretrained(fresh, old, reinit=("^head/",))
    assert sorted(kept) == ["head/bias", "head/kernel"]
    np.testing.assert_array_equal(merged["head"]["kernel"], fresh["head"]["kernel"])
    for a, b in (("conv", "kernel"), ("conv", "bias"), ("dw", "kernel"), ("norm", "scale")):
        np.testing.assert_array_equal(merged[a][b], old[a][b])
    with pytest.raises(ValueError, match=r"head/kernel \(8, 10\) <- \(8, 1000\)"):
        merge_pretrained(fresh, old)  # a misfit leaf not named for re-init


@pytest.mark.slow
def test_resume_with_frozen_parameters_lamb_agc_and_layer_decay_is_bitwise(tmp_path):
    """The multi_transform state (no moments for frozen leaves) checkpoints and restores: 2 steps
    then 2 more equal 4 uninterrupted steps, and the frozen stem never moves."""
    from jaxconv.train.checkpoint import load_checkpoint
    from jaxconv.train.loop import train_and_evaluate

    def config(steps):
        c = default_config()
        c.model, c.dataset = "convnext_tiny", "digits32"
        c.model_overrides.depths, c.model_overrides.dims = (1, 1, 1, 1), (8, 8, 8, 8)
        c.optimizer, c.learning_rate, c.weight_decay, c.schedule = "lamb", 1e-3, 0.05, "constant"
        c.layer_decay, c.grad_clip_agc = 0.8, 0.05
        c.param_rules = (("^stem", 0.0), ("^head/fc", 2.0))
        c.batch_size, c.num_train_steps = 32, steps
        c.checkpoint_every_steps, c.log_every_steps, c.eval_every_steps = 2, 1, 0
        return c

    train_and_evaluate(config(4), str(tmp_path / "a"))
    train_and_evaluate(config(2), str(tmp_path / "b"))
    train_and_evaluate(config(4), str(tmp_path / "b"))  # resumes at step 2
    (sa, a), (sb, b) = load_checkpoint(str(tmp_path / "a")), load_checkpoint(str(tmp_path / "b"))
    assert sa == sb == 4
    jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])
    jax.tree.map(np.testing.assert_array_equal, a["opt_state"], b["opt_state"])
    step2 = load_checkpoint(str(tmp_path / "b"), step=2)[1]
    np.testing.assert_array_equal(a["params"]["stem_0"]["kernel"],
                                  step2["params"]["stem_0"]["kernel"])
    assert not np.array_equal(a["params"]["head"]["fc"]["kernel"],
                              step2["params"]["head"]["fc"]["kernel"])
