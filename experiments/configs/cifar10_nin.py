"""CIFAR-10 Network in Network (Lin et al. 2013, arXiv:1312.4400, section 4.2).

The paper trains with mini-batches of 128, momentum 0.9 and weight decay, dropout 0.5 after the
first two mlpconv blocks, on global-contrast-normalised and ZCA-whitened CIFAR-10 with no
augmentation (10.41% error; 8.81% with translation and flipping augmentation); it lowers the
learning rate by 10x when the validation accuracy stops improving. Here: SGD momentum 0.9, lr
0.02 (no BatchNorm: larger rates diverge from the He initialisation), weight decay 1e-4,
step decay x0.1 at 50% and 75% of 300 epochs, pad-and-crop and flips, per-channel normalised
inputs (no ZCA: the project's pipeline has none).

Needs CIFAR-10 prepared as ArrayRecord in a tfds data dir (see cifar10_resnet.py), then

    python -m experiments.train --config experiments/configs/cifar10_nin.py \\
        --workdir runs/c10_nin --config.data_dir=$HOME/tensorflow_datasets

Expected time: not measured on an accelerator. `:runlocal` trains 150 steps of batch 32 on
digits32 (offline; no dropout, Adam 3e-4, see below) in 6.2 min on a 2-core CPU shared with
other jobs (jax 0.10.2; test top-1 0.78, still rising: the BN-free net starts slowly).
"""
from jaxconv.train.config import default_config


def get_config(arg: str | None = None):
    model, *flags = (arg or "nin_cifar").split(",")
    if model == "runlocal":
        model, flags = "nin_cifar", [model, *flags]
    if model != "nin_cifar":
        raise ValueError(f"unknown model {model!r}; valid: ['nin_cifar']")
    c = default_config()
    c.model = model
    c.dataset = "cifar10"
    c.augment.crop_padding = 4
    c.augment.flip = True
    c.batch_size = 128
    c.num_epochs = 300.0
    c.optimizer = "sgd"
    c.learning_rate = 0.02
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.schedule = "step"
    c.step_boundaries = (0.5, 0.75)
    c.warmup_steps = 400
    c.log_every_steps = 100
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000
    for flag in flags:
        if flag == "runlocal":
            c.dataset = "digits32"
            c.augment.flip = False          # digits: shifts, no mirror images
            c.batch_size = 32
            c.num_train_steps = 150
            # The BN-free net barely moves in 150 steps with the paper's dropout and SGD, and
            # collapses to constant logits with Adam at 1e-3 (measured on digits32); the smoke
            # test trains it without dropout, with Adam at 3e-4.
            c.model_overrides.dropout_rate = 0.0
            c.optimizer = "adamw"
            c.learning_rate = 3e-4
            c.weight_decay = 1e-4
            c.warmup_steps = 15
            c.schedule = "cosine"
            c.log_every_steps = 15
            c.eval_every_steps = 0
            c.checkpoint_every_steps = 75
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
