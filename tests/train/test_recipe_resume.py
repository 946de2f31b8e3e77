"""A run with every recipe feature on resumes after SIGKILL bitwise equal to an uninterrupted one.

Features: mixup + CutMix (pair mode), label smoothing, sigmoid BCE with a target threshold,
distillation from a tiny teacher (an orbax workdir, re-read on resume), EMA with warm-up,
gradient accumulation 2, gradient clipping, and the host augmentations (pad-crop, flip,
RandAugment, random erasing). The
killed run goes through the real command line (``python -m experiments.train``), as
tests/train/test_train.py does.
"""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from jaxconv import train
from jaxconv.train.config import default_config
from jaxconv.train.metrics import read_metrics

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

CONFIG = '''
from jaxconv.train.config import default_config


def get_config(arg=None):
    c = default_config()
    c.model = "residual_stack"
    c.model_overrides.features = 4
    c.model_overrides.num_layers = 2
    c.dataset = "digits"
    c.batch_size = 32
    c.num_train_steps = 12
    c.num_data_threads = 1
    c.log_every_steps = 1
    c.eval_every_steps = 6
    c.checkpoint_every_steps = 4
    c.learning_rate = 0.05
    c.warmup_steps = 2
    c.label_smoothing = 0.1
    c.loss = "sigmoid_xent"
    c.bce_target_thresh = 0.2
    c.augment.crop_padding = 1
    c.augment.flip = True
    c.augment.randaugment = "rand-m9-mstd0.5-inc1"
    c.augment.random_erasing = 0.25
    c.augment.mixup_alpha = 0.8
    c.augment.cutmix_alpha = 1.0
    c.augment.mix_mode = "pair"
    c.ema_decay = 0.99
    c.ema_warmup = True
    c.grad_accum_steps = 2
    c.grad_clip_norm = 1.0
    c.distill.teacher = "residual_stack"
    c.distill.teacher_overrides.features = 4
    c.distill.teacher_overrides.num_layers = 2
    c.distill.weights = {teacher!r}
    c.distill.temperature = 2.0
    c.distill.weight = 0.5
    return c
'''


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """(config file, uninterrupted workdir) with a tiny teacher trained for 2 steps."""
    root = tmp_path_factory.mktemp("recipe")
    teacher = root / "teacher"
    path = root / "recipe_config.py"
    path.write_text(CONFIG.format(teacher=str(teacher)))
    namespace = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)
    plain = default_config()
    for field in ("model", "model_overrides", "dataset", "batch_size", "num_data_threads"):
        plain[field] = namespace["get_config"]()[field]
    plain.num_train_steps = plain.checkpoint_every_steps = 2
    train.train_and_evaluate(plain, str(teacher))
    reference = root / "reference"
    train.train_and_evaluate(namespace["get_config"](), str(reference))
    return path, reference


def cli(config_path, workdir):
    return [sys.executable, "-m", "experiments.train", f"--config={config_path}",
            f"--workdir={workdir}"]


@pytest.mark.slow
def test_every_recipe_feature_resumes_bitwise_after_sigkill(recipe, tmp_path):
    config_path, reference = recipe
    workdir = tmp_path / "killed"
    proc = subprocess.Popen(cli(config_path, workdir), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    metrics, deadline = workdir / "metrics.jsonl", time.time() + 400
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and len(read_metrics(str(metrics))) >= 6:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"run ended before it could be killed: {proc.stderr.read()}"
    proc.send_signal(signal.SIGKILL)  # between the checkpoints at 4 and 8, no clean-up
    proc.communicate(timeout=120)
    assert train.load_checkpoint(str(workdir))[0] < 12

    result = subprocess.run(cli(config_path, workdir), cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming from step" in result.stderr

    step, state = train.load_checkpoint(str(workdir))
    ref_step, ref_state = train.load_checkpoint(str(reference))
    assert step == ref_step == 12
    assert state["ema"] is not None and set(state) == set(ref_state)
    assert jax.tree.structure(state) == jax.tree.structure(ref_state)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(ref_state), strict=True):
        np.testing.assert_array_equal(a, b)  # params, optimizer, batch stats, EMA, step, rng
    rows = read_metrics(str(metrics))
    ref_rows = read_metrics(str(reference / "metrics.jsonl"))
    assert [r["step"] for r in rows] == list(range(1, 13))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]
    # Raw and EMA weights are both evaluated, in metrics.jsonl and final_metrics.json.
    for row in (rows[5], rows[11]):
        assert {"eval_top1", "eval_loss", "eval_ema_top1", "eval_ema_loss"} <= set(row)
    assert rows[11]["eval_ema_loss"] == ref_rows[11]["eval_ema_loss"]
    final = json.loads((workdir / "final_metrics.json").read_text())
    assert final["eval_ema_top1"] == rows[11]["eval_ema_top1"]
    assert final["eval_ema_loss"] != final["eval_loss"]  # the EMA is not the raw weights
