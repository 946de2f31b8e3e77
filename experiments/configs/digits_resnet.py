"""ResNet-20 on scikit-learn's handwritten digits (1797 8x8 images): the offline default.

Needs no network and no prepared data. `make demo` runs the demo sweep built on this config
(experiments/configs/sweeps/demo.py: resnet20/32/44 x two learning rates, 10 epochs each).

    python -m experiments.train --config experiments/configs/digits_resnet.py --workdir runs/digits

Expected on a 2-core CPU (jax 0.10.2): ~2 min including compilation, test top-1 ~0.98.
`:runlocal` trains 2 epochs for a smoke test (~30 s).
"""
from jaxconv.train.config import default_config


def get_config(arg: str | None = None):
    c = default_config()
    c.model = "resnet20"
    c.dataset = "digits"
    c.augment.crop_padding = 1          # digits are centred 8x8: a one-pixel shift, no flips
    c.batch_size = 64
    c.num_epochs = 40.0
    c.optimizer = "nesterov"
    c.learning_rate = 0.05
    c.weight_decay = 5e-4
    c.warmup_steps = 50
    c.log_every_steps = 20
    c.eval_every_steps = 200
    c.checkpoint_every_steps = 200
    if arg == "runlocal":
        c.num_epochs = 2.0
        c.eval_every_steps = 0
    elif arg:
        raise ValueError(f"unknown config argument {arg!r}; valid: 'runlocal'")
    return c
