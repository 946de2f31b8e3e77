"""UCR/UEA time-series classification with Wang et al. 2017's FCN and ResNet baselines.

Wang, Yan & Oates 2017 (Time Series Classification from Scratch with Deep Neural Networks: A
Strong Baseline, arXiv:1611.06455): Adam (lr 1e-3, betas 0.9/0.999), batch min(N/10, 16),
2000 epochs (FCN) / 1500 (ResNet), the archive's train/test split, no augmentation and no
validation set (their reported number is the test error at the end). Here: the same optimizer
and batch rule with a cosine schedule instead of their reduce-on-plateau (not in jaxconv.train),
on the problems bundled in the aeon wheel (jaxconv/data/ucr.py; `pip install --no-deps
aeon==1.6.0`).

    python -m experiments.train --config experiments/configs/seq_ucr.py:gunpoint,ucr_fcn \\
        --workdir runs/ucr_gunpoint_fcn

Argument: PROBLEM[,MODEL][,runlocal]; PROBLEM one of gunpoint, arrowhead, osuleaf, acsf1,
italypowerdemand, basicmotions, japanesevowels, pickupgesturewiimotez; MODEL ucr_fcn (default)
or ucr_resnet (or any sequence classifier). Expected time: not measured at 2000 epochs (GunPoint
is 50 series of 150 steps: 7,000 steps of batch 5 at ~0.02 s on an accelerator, minutes;
ACSF1's 1460-step series take longest). `:runlocal` trains 300 steps. Measured with
`:PROBLEM,MODEL,runlocal --config.num_train_steps=1000` (80-100 epochs, not 1500-2000) on the
shared 2-core CPU (jax 0.10.2, load ~20), test error (Wang et al.'s Table, FCN / ResNet):

    GunPoint          FCN 0.000 (0.000), 4.1 min   ResNet 0.020 (0.007), 10.3 min
    ItalyPowerDemand  FCN 0.037 (0.030), 2.2 min   ResNet 0.039 (0.040),  4.7 min
    ArrowHead         FCN 0.349 (0.120), 3.8 min   ResNet 0.189 (0.183),  7.9 min
"""
from __future__ import annotations

import jaxconv
from jaxconv import data
from jaxconv.data.ucr import UCR_PROBLEMS
from jaxconv.train.config import default_config

EPOCHS = {"ucr_fcn": 2000.0, "ucr_resnet": 1500.0}


def get_config(arg: str | None = None):
    problem, *rest = (arg or "gunpoint").split(",")
    if problem not in UCR_PROBLEMS:
        raise ValueError(f"unknown UCR problem {problem!r}; valid: {sorted(UCR_PROBLEMS)} (then "
                         "optional ,MODEL and ,runlocal)")
    runlocal = "runlocal" in rest
    models = [r for r in rest if r != "runlocal"]
    if len(models) > 1:
        raise ValueError(f"config argument {arg!r}: PROBLEM[,MODEL][,runlocal] takes one model")
    c = default_config()
    c.model = models[0] if models else "ucr_fcn"
    jaxconv.create_model(c.model)  # unknown model -> ValueError naming close matches
    c.dataset = f"ucr_{problem}"
    train_size = data.dataset_info(c.dataset).num_examples("train")
    c.batch_size = max(1, min(train_size // 10, 16))
    c.num_epochs = EPOCHS.get(c.model, 2000.0)
    c.optimizer = "adamw"
    c.learning_rate = 1e-3
    c.weight_decay = 0.0
    c.schedule = "cosine"
    c.warmup_steps = 0
    c.log_every_steps = 100
    c.eval_every_steps = 1000
    c.checkpoint_every_steps = 1000
    if runlocal:
        c.num_train_steps = 300
        c.log_every_steps = 50
        c.eval_every_steps = 0
        c.checkpoint_every_steps = 300
    return c
