"""CIFAR-10 RepLKNet: ``replknet_tiny_cifar`` (3 stages of 13x13 depthwise kernels, widths
32/64/128, stem stride 1) or any RepLKNet/UniRepLKNet by name.

Ding et al. train RepLKNet (arXiv:2203.06717) and UniRepLKNet (arXiv:2311.15599) on ImageNet
only; there is no CIFAR recipe. The authors' UniRepLKNet recipe is AdamW at lr 4e-3 for a batch
of 4096 with weight decay 0.05, cosine decay after a warm-up, stochastic depth, label smoothing,
RandAugment/Mixup/CutMix. This config keeps the optimizer side (AdamW, weight decay 0.05 on
kernels, 5-epoch warm-up, cosine decay, label smoothing 0.1, drop path 0.1) at lr 2e-3 for a
batch of 128, 200 epochs, with 4-pixel pad-and-crop and flips instead of RandAugment/Mixup (not
in jaxconv.data). Train in the re-parameterizable form, then deploy with
``jaxconv.layers.reparameterize(model, variables)`` (one 13x13 kernel per block, no BatchNorm).

Needs CIFAR-10 prepared as ArrayRecord in a tfds data dir (see cifar10_resnet.py), then

    python -m experiments.train --config experiments/configs/cifar10_replknet.py \\
        --workdir runs/c10_replknet --config.data_dir=$HOME/tensorflow_datasets

Knobs: ``--config.model_overrides.kernel_size=31`` (every stage's large kernel),
``--config.model_overrides.implementation=pallas`` (the depthwise conv path; default: the op's
choice per backend).

Expected time: not measured on an accelerator (78k steps of batch 128). `:runlocal` is a smoke
test on the offline digits32 (sklearn digits at 32x32, 1 channel, 10 classes) with a half-width
replknet_tiny_cifar (16/32/64, stem stride 2: stages at 16x16, 8x8, 4x4; 13x13 kernels with the
5x5 branch; 83,354 params): 200 steps of batch 32. Measured: 4.8 min for the whole command
(1.5 min of it compiling) on the shared 2-core CPU (jax 0.10.2, float32, load ~10 from other
jobs), test top-1 0.76 over 300 images (still rising: 200 steps is a smoke test).
"""
from ml_collections import config_dict

from jaxconv.train.config import default_config

MODELS = ("replknet_tiny_cifar", "replknet_31b", "unireplknet_a", "unireplknet_f",
          "unireplknet_p", "unireplknet_n", "unireplknet_t")


def get_config(arg: str | None = None):
    model, *flags = (arg or MODELS[0]).split(",")
    if model == "runlocal":
        model, flags = MODELS[0], [model, *flags]
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid: {list(MODELS)}")
    c = default_config()
    c.model = model
    c.model_overrides.drop_path_rate = 0.1
    c.model_overrides.implementation = config_dict.placeholder(str)  # None | xla | pallas
    if model.startswith("replknet"):
        c.model_overrides.kernel_size = config_dict.placeholder(int)
    c.dataset = "cifar10"
    c.augment.crop_padding = 4
    c.augment.flip = True
    c.batch_size = 128
    c.num_epochs = 200.0
    c.optimizer = "adamw"
    c.learning_rate = 2e-3
    c.weight_decay = 0.05
    c.schedule = "cosine"
    c.warmup_steps = 2000           # ~5 epochs of 391 steps
    c.label_smoothing = 0.1
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 5000
    for flag in flags:
        if flag == "runlocal":
            c.dataset = "digits32"
            c.augment.flip = False          # digits: shifts, no mirror images
            if model == "replknet_tiny_cifar":
                c.model_overrides.channels = (16, 32, 64)
                c.model_overrides.stem_stride = 2
            c.batch_size = 32
            c.num_train_steps = 200
            c.warmup_steps = 20
            c.log_every_steps = 20
            c.eval_every_steps = 0
            c.checkpoint_every_steps = 100
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
