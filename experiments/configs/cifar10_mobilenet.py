"""CIFAR-10 MobileNet v1 (mobilenetv1_025/050/075/100): the ImageNet architecture at 32x32.

Howard et al. 2017 (MobileNets, arXiv:1704.04861) train on ImageNet only (RMSprop, asynchronous
SGD, little weight decay, less augmentation for the small models); they give no CIFAR recipe.
This config uses the common CIFAR SGD recipe instead: SGD momentum 0.9, batch 128, 200 epochs,
lr 0.1 with cosine decay, weight decay 5e-4 (kernels, depthwise ones included), 4-pixel
pad-and-crop and flips. The architecture is unchanged (stride-2 stem, final map 1x1 at 32x32),
so expect accuracies below the CIFAR-modified MobileNets in the literature, which drop the
early strides. The width multiplier is the model name; the resolution multiplier is the input
size, e.g. `--config.image_size=64` trains at 64x64 (resized on device).

Needs CIFAR-10 prepared as ArrayRecord in a tfds data dir (see cifar10_resnet.py), then

    python -m experiments.train --config experiments/configs/cifar10_mobilenet.py:mobilenetv1_100 \\
        --workdir runs/c10_mbv1 --config.data_dir=$HOME/tensorflow_datasets

Expected time: not measured on an accelerator yet (78k steps of batch 128). `:MODEL,runlocal`
trains 300 steps of batch 32 on the offline digits32 set (sklearn digits at 32x32, 1 channel)
as a smoke test: `:mobilenetv1_100,runlocal` took 3.5 min for the whole command (3.2 min of
training) on the shared 2-core CPU machine (jax 0.10.2, float32, other jobs running), test
top-1 0.88 over 300 images. XLA:CPU runs depthwise convolutions slowly (~0.6 GFLOP/s).
"""
from jaxconv.train.config import default_config


def get_config(arg: str | None = None):
    model, *flags = (arg or "mobilenetv1_100").split(",")
    c = default_config()
    c.model = model
    c.dataset = "cifar10"
    c.augment.crop_padding = 4
    c.augment.flip = True
    c.batch_size = 128
    c.num_epochs = 200.0
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 5e-4
    c.schedule = "cosine"
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 5000
    for flag in flags:
        if flag == "runlocal":
            c.dataset = "digits32"
            c.augment.crop_padding = 4   # the 32x32 digits are centred: shifts, no flips
            c.augment.flip = False
            c.batch_size = 32
            c.num_train_steps = 300
            c.learning_rate = 0.05       # the recipe's 0.1 per 128 images, scaled ~linearly
            c.log_every_steps = 50
            c.eval_every_steps = 0
            c.checkpoint_every_steps = 150
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
