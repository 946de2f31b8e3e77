"""ResNet-20 on MNIST-1D (Greydanus 2020): generated locally, no network, 4000/1000 signals.

The signals are presented as 1x40 single-channel images, so every 2-D model runs on them.

    python -m experiments.train --config experiments/configs/mnist1d_resnet.py --workdir runs/m1d

Expected on a 2-core CPU: a few minutes; `:runlocal` trains 100 steps.
"""
from jaxconv.train.config import default_config


def get_config(arg: str | None = None):
    c = default_config()
    c.model = "resnet20"
    c.dataset = "mnist1d"
    c.batch_size = 100
    c.num_epochs = 30.0
    c.optimizer = "adamw"
    c.learning_rate = 3e-3
    c.weight_decay = 0.05
    c.warmup_steps = 100
    c.log_every_steps = 40
    c.eval_every_steps = 400
    c.checkpoint_every_steps = 400
    if arg == "runlocal":
        c.num_train_steps = 100
        c.eval_every_steps = 0
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; valid: 'runlocal'")
    return c
