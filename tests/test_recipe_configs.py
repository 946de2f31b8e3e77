"""The training-recipe configs (issue 13): each argument validates, documents its command, and
its ``runlocal`` variant is offline and keeps every part of the recipe switched on; the slow test
trains each ``runlocal`` for 2 steps."""
from __future__ import annotations

import importlib
import os

import pytest

from jaxconv.data.info import TFDS_DATASETS
from jaxconv.train import validate_config

RECIPES = {
    "imagenet_convnext": [None, "convnext_small", "convnext_base", "inception_next_tiny",
                          "inception_next_small", "inception_next_base",
                          "convnext_tiny,runlocal", "inception_next_tiny,runlocal"],
    "imagenet_resnet_rsb": ["a1", "a2", "a3", "a1,runlocal", "a2,runlocal", "a3,runlocal"],
    "imagenet_finetune": [None, "convnext_tiny", "convnext_base,runlocal"],
    "cifar10_distill": [None, "runlocal"],
}
CASES = [(n, a) for n, args in RECIPES.items() for a in args]


def _config(name, arg, teacher_dir=None):
    c = importlib.import_module(f"experiments.configs.{name}").get_config(arg)
    if c.distill.teacher and teacher_dir is not None:
        c.distill.weights = str(teacher_dir)  # the teacher's workdir must exist to validate
    return c


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("teacher")
    (path / "checkpoints").mkdir()
    return path


@pytest.mark.parametrize("name, arg", CASES)
def test_recipe_config_validates_and_documents_its_command(name, arg, teacher_dir):
    # Memory is checked where a run trains: the ImageNet recipes target TPU slices.
    validate_config(_config(name, arg, teacher_dir), check_fits_machine=False)
    doc = importlib.import_module(f"experiments.configs.{name}").__doc__
    assert f"python -m experiments.train --config experiments/configs/{name}.py" in doc
    assert "Expected time" in doc and "runlocal" in doc


#: Recipe parts: (what, predicate on a config). A part on in the full config must stay on in
#: its runlocal, so the smoke test exercises the code the real run needs.
PARTS = [
    ("randaugment", lambda c: bool(c.augment.randaugment)),
    ("mixup", lambda c: c.augment.mixup_alpha > 0),
    ("cutmix", lambda c: c.augment.cutmix_alpha > 0),
    ("random erasing", lambda c: c.augment.random_erasing > 0),
    ("repeated augmentation", lambda c: c.augment.aug_repeats > 1),
    ("label smoothing", lambda c: c.label_smoothing > 0),
    ("drop path", lambda c: c.model_overrides.get("drop_path_rate", 0) > 0),
    ("layer scale", lambda c: c.model_overrides.get("ls_init_value") is not None),
    ("EMA", lambda c: c.ema_decay is not None),
    ("warm-up", lambda c: c.warmup_steps > 0),
    ("layer decay", lambda c: c.layer_decay is not None),
    ("gradient clipping", lambda c: c.grad_clip_norm is not None),
    ("distillation", lambda c: bool(c.distill.teacher)),
    ("resolution change", lambda c: c.image_size is not None),
    ("loss", lambda c: c.loss),
    ("optimizer", lambda c: c.optimizer),
]


@pytest.mark.parametrize("name, arg", [(n, a) for n, a in CASES if a and "runlocal" in a])
def test_runlocal_is_offline_and_keeps_every_recipe_part(name, arg):
    local = _config(name, arg)
    full = _config(name, ",".join(f for f in arg.split(",") if f != "runlocal") or None)
    assert local.dataset not in TFDS_DATASETS  # offline data
    assert local.num_train_steps is not None and local.num_train_steps <= 200
    for what, part in PARTS:
        if isinstance(part(full), str):
            assert part(local) == part(full), what
        elif part(full):
            assert part(local), f"{name}:{arg} drops the recipe's {what}"


@pytest.mark.slow
@pytest.mark.parametrize("name, arg", [(n, a) for n, a in CASES if a and "runlocal" in a])
def test_runlocal_trains_two_steps(name, arg, tmp_path):
    import numpy as np

    from jaxconv.train.loop import train_and_evaluate

    teacher = None
    if name == "cifar10_distill":  # its teacher: 2 steps of the digits32 ResNet-20 runlocal
        t = importlib.import_module("experiments.configs.cifar10_resnet").get_config(
            "resnet20,runlocal")
        t.num_train_steps, t.checkpoint_every_steps, t.eval_every_steps = 2, 2, 0
        train_and_evaluate(t, str(tmp_path / "teacher"))
        teacher = tmp_path / "teacher"
    c = _config(name, arg, teacher)
    c.num_train_steps, c.warmup_steps = 2, min(c.warmup_steps, 1)
    c.log_every_steps, c.checkpoint_every_steps, c.eval_every_steps = 1, 2, 0
    row = train_and_evaluate(c, str(tmp_path / "run"))
    assert row["step"] == 2 and np.isfinite(row["loss"]) and np.isfinite(row["eval_loss"])
    assert os.path.exists(tmp_path / "run" / "metrics.jsonl")
    if c.ema_decay is not None:
        assert np.isfinite(row["eval_ema_loss"])
