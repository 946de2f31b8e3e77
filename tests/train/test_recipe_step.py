"""The recipe train step (issue 13): mixup/CutMix, soft-target / BCE / distillation losses, EMA,
gradient accumulation, and the validation of their config fields.

References: timm's own numbers (recipe_fixtures/timm_recipe.npz, written by make_fixtures.py in
the torch+timm venv), closed-form formulas, and plain forward/backward passes of the model.
"""
from __future__ import annotations

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxconv import train
from jaxconv.data import mix as mix_lib
from jaxconv.train import ema as ema_lib
from jaxconv.train import losses
from jaxconv.train.checkpoint import Checkpointer
from jaxconv.train.config import default_config
from jaxconv.train.state import create_train_state
from jaxconv.train.steps import MIX_SALT, make_train_step, microbatches

FIXTURES = np.load(os.path.join(os.path.dirname(__file__), "recipe_fixtures", "timm_recipe.npz"))


class NoBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.tanh(nn.Conv(3, (3, 3))(x))
        return nn.Dense(5)(x.reshape(x.shape[0], -1))


class WithBatchNorm(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(3, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9)(x)
        return nn.Dense(5)(nn.relu(x).reshape(x.shape[0], -1))


def images_and_labels(b=8, h=6, w=6, c=2, seed=0):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.standard_normal((b, h, w, c)), jnp.float32),
            jnp.asarray(rng.integers(0, 5, b), jnp.int32))


# ------------------------------------------------------------------------------ mixup / CutMix


def test_cutmix_box_and_lambda_match_timm():
    rows = FIXTURES["cutmix"]
    lam, h, w, cy, cx = (rows[:, i] for i in range(5))
    for row, (lam_, h_, w_, cy_, cx_) in zip(rows, zip(lam, h, w, cy, cx)):
        y_lo, y_hi, x_lo, x_hi, lam_c = mix_lib.cutmix_box(jnp.float32(lam_), int(cy_), int(cx_),
                                                           int(h_), int(w_))
        assert [int(y_lo), int(y_hi), int(x_lo), int(x_hi)] == row[5:9].astype(int).tolist(), row
        np.testing.assert_allclose(lam_c, row[9], rtol=1e-6)


def test_mix_targets_match_timm():
    labels, lam = jnp.asarray(FIXTURES["mix_labels"]), FIXTURES["mix_lam"]
    np.testing.assert_allclose(mix_lib.mix_targets(labels, 5, lam, 0.1),
                               FIXTURES["mix_target_smooth0.1"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mix_lib.mix_targets(labels, 5, 0.35),
                               FIXTURES["mix_target_smooth0"], rtol=1e-6)


@pytest.mark.parametrize("mode, alphas", [("batch", (0.8, 1.0)), ("pair", (0.0, 1.0)),
                                          ("elem", (0.4, 0.0)), ("elem", (0.8, 1.0))])
def test_soft_targets_sum_to_one_and_follow_lambda(mode, alphas):
    images, labels = images_and_labels()
    cfg = mix_lib.MixConfig(mixup_alpha=alphas[0], cutmix_alpha=alphas[1], mode=mode,
                            label_smoothing=0.1)
    mixed, targets, lam = mix_lib.mix_batch(jax.random.PRNGKey(3), images, labels, 5, cfg)
    np.testing.assert_allclose(jnp.sum(targets, -1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(targets, mix_lib.mix_targets(labels, 5, lam, 0.1), rtol=1e-6)
    assert mixed.shape == images.shape and mixed.dtype == images.dtype
    if mode == "batch":
        assert np.all(lam == lam[0])
    if mode == "pair":
        np.testing.assert_array_equal(lam, lam[::-1])  # a pair shares its lambda
    assert np.all((lam >= 0) & (lam <= 1)) and np.any(lam < 1)


@pytest.mark.parametrize("mode", mix_lib.MIX_MODES)
def test_cutmix_area_matches_lambda(mode):
    # Row i is the constant i + 1: each mixed pixel tells which row it came from.
    b, h, w = 8, 9, 7
    images = jnp.broadcast_to(jnp.arange(1, b + 1, dtype=jnp.float32)[:, None, None, None],
                              (b, h, w, 1))
    cfg = mix_lib.MixConfig(cutmix_alpha=1.0, mode=mode)
    for seed in range(4):
        mixed, _, lam = mix_lib.mix_batch(jax.random.PRNGKey(seed), images, jnp.zeros(b, jnp.int32),
                                          5, cfg)
        own = np.mean(np.asarray(mixed)[..., 0] == np.arange(1, b + 1)[:, None, None], (1, 2))
        partner = np.mean(np.asarray(mixed)[..., 0] == np.arange(b, 0, -1)[:, None, None],
                          (1, 2))
        np.testing.assert_allclose(own, lam, atol=1e-6)       # area kept = lambda
        np.testing.assert_allclose(own + partner, 1.0)        # the rest is the mirror row's


def test_mixup_blends_with_the_mirror_row():
    images, labels = images_and_labels()
    cfg = mix_lib.MixConfig(mixup_alpha=1.0, mode="elem")
    mixed, _, lam = mix_lib.mix_batch(jax.random.PRNGKey(0), images, labels, 5, cfg)
    lam4 = np.asarray(lam)[:, None, None, None]
    np.testing.assert_allclose(mixed, lam4 * images + (1 - lam4) * images[::-1], rtol=1e-5,
                               atol=1e-6)


def test_mixing_is_deterministic_given_the_key():
    images, labels = images_and_labels()
    cfg = mix_lib.MixConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem")
    a = mix_lib.mix_batch(jax.random.PRNGKey(1), images, labels, 5, cfg)
    b = mix_lib.mix_batch(jax.random.PRNGKey(1), images, labels, 5, cfg)
    c = mix_lib.mix_batch(jax.random.PRNGKey(2), images, labels, 5, cfg)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[2], c[2])


def test_mix_prob_zero_leaves_images_and_smooths_labels():
    images, labels = images_and_labels()
    cfg = mix_lib.MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0, label_smoothing=0.2)
    mixed, targets, lam = mix_lib.mix_batch(jax.random.PRNGKey(0), images, labels, 5, cfg)
    np.testing.assert_array_equal(mixed, images)
    np.testing.assert_array_equal(lam, 1.0)
    want = np.full((8, 5), 0.2 / 5)
    want[np.arange(8), np.asarray(labels)] = 1 - 0.2 + 0.2 / 5
    np.testing.assert_allclose(targets, want, rtol=1e-6)


def test_odd_batch_is_refused():
    images, labels = images_and_labels(b=5)
    with pytest.raises(ValueError, match="even batch size"):
        mix_lib.mix_batch(jax.random.PRNGKey(0), images, labels, 5,
                          mix_lib.MixConfig(mixup_alpha=1.0))


# ------------------------------------------------------------------------------------- losses


def test_losses_match_timm():
    logits, targets = jnp.asarray(FIXTURES["logits"]), jnp.asarray(FIXTURES["mix_target_smooth0.1"])
    np.testing.assert_allclose(losses.softmax_xent(logits, targets).mean(), FIXTURES["soft_ce"],
                               rtol=1e-6)
    np.testing.assert_allclose(losses.sigmoid_xent(logits, targets).mean(), FIXTURES["bce"],
                               rtol=1e-6)
    np.testing.assert_allclose(losses.sigmoid_xent(logits, targets, 0.2).mean(),
                               FIXTURES["bce_thresh0.2"], rtol=1e-6)
    teacher = jnp.asarray(FIXTURES["teacher_logits"])
    for temp in (1.0, 4.0):
        # weight 1 ('function matching'): T^2 * KL(teacher || student), mean over the batch.
        loss = losses.distillation_loss(jnp.zeros(6), logits, teacher, temperature=temp,
                                        weight=1.0)
        np.testing.assert_allclose(loss.mean(), temp ** 2 * FIXTURES[f"kl_T{temp}"], rtol=1e-5)
    mixed = losses.distillation_loss(jnp.full(6, 2.0), logits, logits, temperature=3.0,
                                     weight=0.25)
    np.testing.assert_allclose(mixed, 0.75 * 2.0, rtol=1e-6)  # KL(p || p) = 0


# ----------------------------------------------------------------------------------------- EMA


@pytest.mark.parametrize("decay", [0.9999, 0.99])
@pytest.mark.parametrize("warmup", [False, True])
def test_ema_decay_matches_timm_model_ema_v3(decay, warmup):
    got = [float(ema_lib.ema_decay_at(s, decay, warmup)) for s in FIXTURES["ema_steps"]]
    np.testing.assert_allclose(got, FIXTURES[f"ema_decay_{decay}_{int(warmup)}"], rtol=1e-6,
                               atol=1e-7)


def test_ema_in_the_train_step_follows_its_formula():
    images, labels = images_and_labels()
    model, tx = WithBatchNorm(), optax.sgd(0.1)
    state = create_train_state(model, tx, (1, 6, 6, 2), seed=0, ema=True)
    step = jax.jit(make_train_step(model, tx, lambda _: 0.1, num_classes=5, ema_decay=0.9,
                                   ema_warmup=True))
    plain = jax.jit(make_train_step(model, tx, lambda _: 0.1, num_classes=5))
    want = jax.tree.map(np.asarray, {"params": state.params, "model_state": state.model_state})
    raw = state
    for n in range(1, 5):
        batch = {"image": images + n, "label": labels}
        state, _ = step(state, batch)
        raw, _ = plain(raw, batch)
        d = 0.0 if n == 1 else min(0.9, 1 - n ** (-2 / 3))
        now = {"params": raw.params, "model_state": raw.model_state}
        want = jax.tree.map(lambda e, v: d * e + (1 - d) * np.asarray(v), want, now)
        # The EMA rides along: the raw weights are exactly those of a step without it.
        for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(raw.params)):
            np.testing.assert_array_equal(a, b)
        for a, b in zip(jax.tree.leaves(state.ema), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert set(state.ema) == {"params", "model_state"} and "batch_stats" in state.ema["model_state"]


@pytest.mark.parametrize("with_ema", [False, True])
def test_checkpoints_restore_with_and_without_ema(tmp_path, with_ema):
    tx = optax.sgd(0.1, momentum=0.9)
    state = create_train_state(WithBatchNorm(), tx, (1, 6, 6, 2), seed=0, ema=with_ema)
    step = jax.jit(make_train_step(WithBatchNorm(), tx, lambda _: 0.1, num_classes=5,
                                   ema_decay=0.5 if with_ema else None))
    images, labels = images_and_labels()
    state, _ = step(state, {"image": images, "label": labels})
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(state, wait=True)
    ckpt.close()
    fresh = create_train_state(WithBatchNorm(), tx, (1, 6, 6, 2), seed=1, ema=with_ema)
    restored = Checkpointer(str(tmp_path)).restore_latest(fresh)
    assert (restored.ema is None) == (not with_ema)
    assert jax.tree.structure(restored) == jax.tree.structure(state)
    for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------ gradient accumulation


def test_accumulating_k_microbatches_equals_one_batch_without_batch_norm():
    images, labels = images_and_labels(b=8)
    model, tx = NoBatchNorm(), optax.sgd(0.5, momentum=0.9)
    state = create_train_state(model, tx, (1, 6, 6, 2), seed=0)
    kw = dict(num_classes=5, label_smoothing=0.1, loss="sigmoid_xent")
    one = jax.jit(make_train_step(model, tx, lambda _: 0.5, **kw))
    acc = jax.jit(make_train_step(model, tx, lambda _: 0.5, grad_accum_steps=4, **kw))
    s1, s4 = state, state
    for n in range(3):
        batch = {"image": images * (1 + n), "label": labels}
        s1, m1 = one(s1, batch)
        s4, m4 = acc(s4, batch)
        # Equal up to float32 summation order (mean of 4 means of 2 rows vs a mean of 8 rows):
        # measured differences are ~1e-8, far below any real difference.
        np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6)
        np.testing.assert_allclose(m4["grad_norm"], m1["grad_norm"], rtol=1e-5)
        assert float(m4["top1"]) == float(m1["top1"])
        for a, b in zip(jax.tree.leaves(s4.params), jax.tree.leaves(s1.params), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert int(s4.step) == int(s1.step) == 3  # one optimizer update per step


def test_accumulation_with_batch_norm_uses_per_microbatch_statistics():
    """BatchNorm: each microbatch (rows j, j+k, ...) is normalized by its own statistics and the
    running statistics are updated once per microbatch, k times per step."""
    images, labels = images_and_labels(b=8)
    model, tx, k = WithBatchNorm(), optax.sgd(0.1), 2
    state = create_train_state(model, tx, (1, 6, 6, 2), seed=0)
    new, metrics = jax.jit(make_train_step(model, tx, lambda _: 0.1, num_classes=5,
                                           grad_accum_steps=k))(state, {"image": images,
                                                                        "label": labels})
    # Reference: k train-mode forwards in order, each on its microbatch, stats threaded through.
    stats, total = state.model_state, 0.0
    for j in range(k):
        x, y = images[j::k], labels[j::k]
        logits, stats = model.apply({"params": state.params, **stats}, x, train=True,
                                    mutable=["batch_stats"])
        total += float(optax.softmax_cross_entropy(logits, jax.nn.one_hot(y, 5)).mean())
    np.testing.assert_allclose(metrics["loss"], total / k, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(new.model_state), jax.tree.leaves(stats), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_microbatches_take_strided_rows():
    x = jnp.arange(12)
    np.testing.assert_array_equal(microbatches(x, 3), [[0, 3, 6, 9], [1, 4, 7, 10],
                                                       [2, 5, 8, 11]])
    with pytest.raises(ValueError, match="grad_accum_steps=5"):
        microbatches(x, 5)


# ---------------------------------------------------------------------------- mixing + teacher


def test_distillation_step_loss_is_its_formula_on_the_mixed_batch():
    images, labels = images_and_labels()
    student, teacher, tx = NoBatchNorm(), WithBatchNorm(), optax.sgd(0.1)
    state = create_train_state(student, tx, (1, 6, 6, 2), seed=0)
    t_vars = teacher.init(jax.random.PRNGKey(7), images, train=False)
    cfg = mix_lib.MixConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem", label_smoothing=0.1)
    step = jax.jit(make_train_step(student, tx, lambda _: 0.1, num_classes=5, mix=cfg,
                                   teacher=teacher, distill_temperature=2.0, distill_weight=0.3))
    _, metrics = step(state, {"image": images, "label": labels}, t_vars)
    # The same mix as the step draws (key: fold_in of the step key), then the loss by hand.
    key = jax.random.fold_in(jax.random.fold_in(state.rng, 0), MIX_SALT)
    mixed, targets, _ = mix_lib.mix_batch(key, images, labels, 5, cfg)
    s = student.apply({"params": state.params}, mixed)
    t = teacher.apply(t_vars, mixed, train=False)
    ce = -np.sum(np.asarray(targets) * np.asarray(jax.nn.log_softmax(s)), -1)
    p_t = np.asarray(jax.nn.softmax(t / 2.0))
    kl = np.sum(p_t * (np.log(p_t) - np.asarray(jax.nn.log_softmax(s / 2.0))), -1)
    np.testing.assert_allclose(metrics["loss"], np.mean(0.7 * ce + 0.3 * 4.0 * kl), rtol=1e-5)
    with pytest.raises(ValueError, match="teacher_variables"):
        step(state, {"image": images, "label": labels})


# --------------------------------------------------------------------------------- validation


def tiny_config(**overrides):
    c = default_config()
    c.model = "residual_stack"
    c.model_overrides.features = 4
    c.model_overrides.num_layers = 2
    c.dataset = "digits"
    c.batch_size = 32
    c.num_train_steps = 6
    for key, value in overrides.items():
        *parents, name = key.split(".")
        target = c
        for part in parents:
            target = target[part]
        target[name] = value
    return c


@pytest.mark.parametrize("overrides, match", [
    ({"loss": "xent"}, r"config.loss='xent' is not valid; choose one of \['softmax_xent', "
                       r"'sigmoid_xent'\]"),
    ({"loss": "sigmoid_xent", "bce_target_thresh": 0.0}, r"bce_target_thresh=0.0 .*\(0, 1\]"),
    ({"loss": "sigmoid_xent", "bce_target_thresh": 1.5}, r"bce_target_thresh=1.5"),
    ({"bce_target_thresh": 0.2}, r"bce_target_thresh=0.2 applies to config.loss='sigmoid_xent'"),
    ({"ema_decay": 1.0}, r"ema_decay=1.0 must be a number in \(0, 1\)"),
    ({"ema_decay": 0.0}, r"ema_decay=0.0"),
    ({"ema_warmup": True}, r"ema_warmup=True needs config.ema_decay"),
    ({"grad_accum_steps": 0}, r"grad_accum_steps=0 must be an int in \[1, inf\)"),
    ({"grad_accum_steps": 3}, r"batch_size=32 must be divisible by config.grad_accum_steps"),
    ({"augment.mix_mode": "row", "augment.mixup_alpha": 0.8},
     r"mix_mode='row' is not valid; choose one of \['batch', 'pair', 'elem'\]"),
    ({"augment.mixup_alpha": -1.0}, r"augment.mixup_alpha=-1.0 must be a number >= 0"),
    ({"augment.cutmix_alpha": 1.0, "augment.mix_prob": 2.0}, r"augment.mix_prob=2.0"),
    ({"augment.cutmix_alpha": 1.0, "batch_size": 31}, r"batch_size=31 must be even"),
    ({"distill.teacher": "resnet21", "distill.weights": "/"}, r"distill.teacher.*resnet20"),
    ({"distill.teacher": "residual_stack"}, r"distill.weights is empty"),
    ({"distill.teacher": "residual_stack", "distill.weights": "/no/such.npz"},
     r"distill.weights='/no/such.npz' does not exist"),
    ({"distill.weights": "x.npz"}, r"distill.teacher is empty"),
    ({"distill.temperature": 0.0}, r"distill.temperature=0.0 must be a number > 0"),
    ({"distill.weight": 1.5}, r"distill.weight=1.5 must be a number in \[0, 1\]"),
    ({"distill.teacher": "residual_stack", "distill.weights": "/",
      "distill.teacher_overrides.no_such": 1}, r"teacher_overrides.*no_such"),
])
def test_bad_recipe_values_fail_naming_the_field(overrides, match):
    with pytest.raises(ValueError, match=match):
        train.validate_config(tiny_config(**overrides), check_fits_machine=False)


@pytest.mark.parametrize("field, value", [("augment.mixup_alpha", 0.5), ("loss", "sigmoid_xent"),
                                          ("grad_accum_steps", 2)])
def test_recipe_options_on_a_sequence_dataset_are_refused(field, value):
    c = tiny_config(dataset="seq_digits", model="tcn_tiny", **{field: value})
    c.model_overrides = type(c.model_overrides)()
    with pytest.raises(ValueError, match=rf"config.{field}.*sequence dataset"):
        train.validate_config(c, check_fits_machine=False)


def test_teacher_overrides_fields_are_the_teachers(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    c = tiny_config(**{"distill.teacher": "residual_stack", "distill.weights": str(tmp_path),
                       "distill.teacher_overrides.features": 8, "ema_decay": 0.999,
                       "ema_warmup": True, "grad_accum_steps": 2, "loss": "sigmoid_xent",
                       "bce_target_thresh": 0.2, "augment.mixup_alpha": 0.8,
                       "augment.cutmix_alpha": 1.0, "augment.mix_mode": "pair"})
    train.validate_config(c, check_fits_machine=False)  # all valid together


def test_teacher_from_a_timm_state_dict(tmp_path):
    from jaxconv.convert import timm_key_map
    from jaxconv.train import distill
    rng = np.random.default_rng(0)
    state_dict = {key: rng.standard_normal(shape).astype(np.float32)
                  for key, (_, shape) in timm_key_map("resnet20").items()}
    state_dict = {k: (np.abs(v) + 0.5 if k.endswith("running_var") else v)
                  for k, v in state_dict.items()}
    path = tmp_path / "teacher.npz"
    np.savez(path, **state_dict)
    c = tiny_config(**{"distill.teacher": "resnet20", "distill.weights": str(path)})
    train.validate_config(c, check_fits_machine=False)
    model, variables = distill.load_teacher(c, num_classes=10)
    # PyTorch layouts: linear [out, in] -> [in, out], conv OIHW -> HWIO.
    np.testing.assert_array_equal(variables["params"]["fc"]["bias"], state_dict["fc.bias"])
    np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], state_dict["fc.weight"].T)
    np.testing.assert_array_equal(variables["params"]["conv1"]["kernel"],
                                  state_dict["conv1.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"],
                                  state_dict["bn1.running_var"])
    assert model.num_classes == 10
    assert distill.load_teacher(tiny_config(), 10) == (None, None)
