"""CIFAR-10 Wide ResNets with the recipe of Zagoruyko & Komodakis 2016 (arXiv:1605.07146, §3).

SGD with Nesterov momentum 0.9, batch 128, 200 epochs, lr 0.1, weight decay 5e-4, dropout 0.3
between the convs of each block, 4-pixel pad-and-crop and flips, and the lr multiplied by 0.2 at
epochs 60, 120 and 160 (``step_boundaries`` 0.3, 0.6, 0.8; ``step_factor`` 0.2). The argument
picks the model: wrn16_4, wrn16_8, wrn28_10 (default),
wrn40_4. Zagoruyko & Komodakis report 3.89% CIFAR-10 error for WRN-28-10 with dropout
(mean/std preprocessing, as here).

Needs CIFAR-10 prepared as ArrayRecord in a tfds data dir (see cifar10_resnet.py), then

    python -m experiments.train --config experiments/configs/cifar10_wrn.py:wrn28_10 \\
        --workdir runs/c10_wrn28_10 --config.data_dir=$HOME/tensorflow_datasets

Expected time: not measured on an accelerator (WRN-28-10 is 4.8 GMACs per 32x32 image by
``jaxconv.analysis.model_flops``: far beyond a CPU). `:runlocal` (or `:MODEL,runlocal`) trains
WRN-d-2 (``widen_factor=2``; ":runlocal" alone is WRN-16-2) for 200 steps of batch 32 on
digits32 (offline) in 2.3 min on a 2-core CPU shared with other jobs (jax 0.10.2; test top-1
0.97).
"""
from jaxconv.train.config import default_config

MODELS = ("wrn16_4", "wrn16_8", "wrn28_10", "wrn40_4")


def get_config(arg: str | None = None):
    model, *flags = (arg or "wrn28_10").split(",")
    if model == "runlocal":                 # ":runlocal" alone: WRN-16-2
        model, flags = "wrn16_4", [model, *flags]
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid: {list(MODELS)}")
    c = default_config()
    c.model = model
    c.model_overrides.dropout_rate = 0.3
    c.dataset = "cifar10"
    c.augment.crop_padding = 4
    c.augment.flip = True
    c.batch_size = 128
    c.num_epochs = 200.0
    c.optimizer = "nesterov"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.schedule = "step"
    c.step_boundaries = (0.3, 0.6, 0.8)
    c.step_factor = 0.2
    c.log_every_steps = 100
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000
    for flag in flags:
        if flag == "runlocal":
            c.model_overrides.widen_factor = 2  # WRN-d-2: the smoke test stays CPU-sized
            c.dataset = "digits32"
            c.augment.flip = False          # digits: shifts, no mirror images
            c.batch_size = 32
            c.num_train_steps = 200
            c.warmup_steps = 20
            c.schedule = "cosine"
            c.log_every_steps = 20
            c.eval_every_steps = 0
            c.checkpoint_every_steps = 100
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
