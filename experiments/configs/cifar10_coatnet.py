"""CIFAR-10 CoAtNet-0 (coatnet_0_rw_224 or coatnet_0_224), trained from scratch at 64x64.

Dai et al. 2021 (CoAtNet, arXiv:2106.04803) train on ImageNet only (AdamW, weight decay 0.05,
label smoothing 0.1, stochastic depth 0.2 for CoAtNet-0, gradient clipping at 1.0, linear
warm-up then decay, RandAugment and Mixup; batch 4096 for 300 epochs); there is no CIFAR recipe.
This config keeps the optimizer side of it (AdamW lr 1e-3, weight decay 0.05 on kernels, label
smoothing 0.1, drop path 0.2, clipping 1.0, 5-epoch warm-up, cosine decay), batch 128 for 200
epochs, with 4-pixel pad-and-crop and flips instead of RandAugment/Mixup (not in jaxconv.data).
Images are resized to 64x64 on device: at CIFAR's native 32x32 the two transformer stages would
attend over 2x2 and 1x1 maps; at 64 they see 4x4 and 2x2 (the relative position tables are sized
for it: the model is built at the input size it is trained at). Expect accuracies well below
ConvNets of the same size: attention models need far more data or augmentation than this.

Needs CIFAR-10 prepared as ArrayRecord in a tfds data dir (see cifar10_resnet.py), then

    python -m experiments.train --config experiments/configs/cifar10_coatnet.py:coatnet_0_rw_224 \\
        --workdir runs/c10_coatnet0 --config.data_dir=$HOME/tensorflow_datasets

The attention path is a model field: `--config.model_overrides.implementation=pallas` forces
the Pallas flash-attention kernel (TPU), `xla` the XLA one (default: the op's choice).

Expected time: not measured on an accelerator yet (78k steps of batch 128). `:MODEL,runlocal`
is a smoke test on the offline digits32 (sklearn digits at 32x32, 1 channel, 10 classes) with a
quarter-width CoAtNet (embed dims 32-64-128-256, stem 16-32, the model's depths and blocks;
~2M params): 300 steps of batch 32, native 32x32 (transformer stages at 2x2 and 1x1).
`:coatnet_0_rw_224,runlocal` took 8.4 min for the whole command (6.7 min of training, 2.9 min
of CPU time: the shared 2-core CPU machine ran at load average ~10 from other jobs; jax 0.10.2,
float32; 2,989,840 params), test top-1 0.980 over 300 images.
"""
from ml_collections import config_dict

from jaxconv.train.config import default_config

MODELS = ("coatnet_0_rw_224", "coatnet_0_224")


def get_config(arg: str | None = None):
    model, *flags = (arg or "coatnet_0_rw_224").split(",")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid: {list(MODELS)}")
    c = default_config()
    c.model = model
    c.model_overrides.drop_path_rate = 0.2
    c.model_overrides.implementation = config_dict.placeholder(str)  # None | xla | pallas
    c.dataset = "cifar10"
    c.image_size = 64
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
    c.grad_clip_norm = 1.0
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 5000
    for flag in flags:
        if flag == "runlocal":
            c.dataset = "digits32"
            c.image_size = None          # native 32x32
            c.augment.crop_padding = 4   # the 32x32 digits are centred: shifts, no flips
            c.augment.flip = False
            c.model_overrides.embed_dims = (32, 64, 128, 256)
            c.model_overrides.stem_widths = (16, 32)
            c.model_overrides.drop_path_rate = 0.1
            c.batch_size = 32
            c.num_train_steps = 300
            c.warmup_steps = 30
            c.log_every_steps = 50
            c.eval_every_steps = 0
            c.checkpoint_every_steps = 150
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
