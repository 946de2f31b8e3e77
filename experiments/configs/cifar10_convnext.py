"""CIFAR-10 modern ConvNets: ConvNeXt, InceptionNeXt, ECA-ResNet-D (any of them by name).

Liu et al. 2022 (ConvNeXt, arXiv:2201.03545) and Yu et al. 2024 (InceptionNeXt,
arXiv:2303.16900) train on ImageNet only: AdamW, lr 4e-3 for a batch of 4096, weight decay
0.05, 300 epochs, 20-epoch warm-up, cosine decay, stochastic depth (0.1 for T), label smoothing
0.1, RandAugment/Mixup/CutMix/random erasing, layer scale 1e-6. This config keeps the optimizer
side (AdamW, weight decay 0.05 on kernels, warm-up, cosine, label smoothing 0.1, drop path 0.1)
at lr 1e-3 for a batch of 128, 200 epochs, with 4-pixel pad-and-crop and flips instead of the
RandAugment/Mixup family (not in jaxconv.data). ECA-ResNets (Wang et al. 2020,
arXiv:1910.03151) were trained with the ResNet recipe (SGD); ``ecaresnet50d`` here uses the
same AdamW recipe so the three families compare under one recipe. The models are the ImageNet
architectures unchanged (a 4x4/4 stem: 32x32 images reach 1x1 in the last stage).

Needs CIFAR-10 prepared as ArrayRecord in a tfds data dir (see cifar10_resnet.py), then

    python -m experiments.train --config experiments/configs/cifar10_convnext.py:convnext_tiny \\
        --workdir runs/c10_convnext_t --config.data_dir=$HOME/tensorflow_datasets

Models: ``convnext_tiny|small|base``, ``inception_next_tiny|small|base``, ``ecaresnet50d``.
Knobs: ``--config.model_overrides.implementation=pallas`` (the depthwise conv path of ConvNeXt /
InceptionNeXt; default: the op's choice per backend), ``--config.model_overrides.kernel_size=11``
(ConvNeXt's depthwise kernel).

Expected time: not measured on an accelerator (78k steps of batch 128). `:MODEL,runlocal` is a
smoke test on the offline digits32 (sklearn digits at 32x32, 1 channel, 10 classes) with the
model made shallow and narrow (one block per stage; ConvNeXt/InceptionNeXt widths 32/64/96/128,
ECA-ResNet-D widths 16/32/48/64): 200 steps of batch 32. Measured on the shared 2-core CPU
(jax 0.10.2, float32, other jobs running), whole command / training / test top-1 over 300
images (still rising: 200 steps is a smoke test):

    :convnext_tiny,runlocal        2.0 min / 1.1 min / 0.82   (349,066 params, load ~8)
    :inception_next_tiny,runlocal  0.9 min / 0.5 min / 0.88   (354,138 params, load ~2)
    :ecaresnet50d,runlocal         1.0 min / 0.6 min / 0.94   (217,772 params, load ~3)
"""
from ml_collections import config_dict

from jaxconv.train.config import default_config

MODELS = ("convnext_tiny", "convnext_small", "convnext_base", "inception_next_tiny",
          "inception_next_small", "inception_next_base", "ecaresnet50d")


def get_config(arg: str | None = None):
    model, *flags = (arg or MODELS[0]).split(",")
    if model == "runlocal":
        model, flags = MODELS[0], [model, *flags]
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid: {list(MODELS)}")
    c = default_config()
    c.model = model
    c.model_overrides.drop_path_rate = 0.1
    if not model.startswith("ecaresnet"):
        c.model_overrides.implementation = config_dict.placeholder(str)  # None | xla | pallas
    if model.startswith("convnext"):
        c.model_overrides.kernel_size = 7  # the depthwise kernel (a knob for sweeps)
    c.dataset = "cifar10"
    c.augment.crop_padding = 4
    c.augment.flip = True
    c.batch_size = 128
    c.num_epochs = 200.0
    c.optimizer = "adamw"
    c.learning_rate = 1e-3
    c.weight_decay = 0.05
    c.schedule = "cosine"
    c.warmup_steps = 2000           # ~5 epochs of 391 steps
    c.label_smoothing = 0.1
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 5000
    for flag in flags:
        if flag == "runlocal":  # offline smoke test: digits at 32x32, shallow and narrow model
            if model.startswith("ecaresnet"):
                c.model_overrides.stage_sizes = (1, 1, 1, 1)
                c.model_overrides.widths = (16, 32, 48, 64)
                c.model_overrides.stem_width = 16
            else:
                c.model_overrides.depths = (1, 1, 1, 1)
                c.model_overrides.dims = (32, 64, 96, 128)
            c.model_overrides.drop_path_rate = 0.0
            c.dataset = "digits32"
            c.augment.crop_padding = 4  # the 32x32 digits are centred: shifts, no flips
            c.augment.flip = False
            c.batch_size = 32
            c.num_train_steps = 200
            c.warmup_steps = 20
            c.log_every_steps = 50
            c.eval_every_steps = 0
            c.checkpoint_every_steps = 100
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
