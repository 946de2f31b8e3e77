"""CIFAR-10 VGG-BN (vgg16_bn_cifar, vgg19_bn_cifar) with the network-slimming baseline recipe.

Recipe of Liu et al. 2017 (Learning Efficient Convolutional Networks through Network Slimming,
arXiv:1708.06519, section 4.2; the official code Eric-mingjie/network-slimming), also used for
Li et al. 2017's VGG-16 in Liu et al.'s re-implementation (arXiv:1810.05270): SGD momentum 0.9,
batch 64, 160 epochs, lr 0.1 divided by 10 at 50% and 75% of training, weight decay 1e-4,
4-pixel pad-and-crop and flips, no dropout. Reported test error: vgg19_bn_cifar 6.34% (Liu et
al. Table 1), vgg16_bn_cifar 6.75% (Li et al. 2017, Table 1).
The argument picks the model (default vgg16_bn_cifar); the ImageNet VGGs (vgg11 ... vgg19_bn)
also run on 32x32 inputs (their pre-logits pool the 1x1 map up to 7x7), at ~130M parameters.

Needs CIFAR-10 prepared as ArrayRecord in a tfds data dir (see cifar10_resnet.py), then

    python -m experiments.train --config experiments/configs/cifar10_vgg.py:vgg19_bn_cifar \\
        --workdir runs/c10_vgg19 --config.data_dir=$HOME/tensorflow_datasets

Expected time: not measured on an accelerator yet (125k steps of batch 64). `:MODEL,runlocal`
trains 250 steps of batch 16 on the offline digits32 set (sklearn digits at 32x32, 1 channel)
as a smoke test: `:vgg16_bn_cifar,runlocal` took 4.2 min for the whole command (3.8 min of
training, ~1 step/s) on the shared 2-core CPU machine (jax 0.10.2, float32, other jobs
running), test top-1 0.95 over 300 images.
"""
from jaxconv.train.config import default_config


def get_config(arg: str | None = None):
    model, *flags = (arg or "vgg16_bn_cifar").split(",")
    c = default_config()
    c.model = model
    c.dataset = "cifar10"
    c.augment.crop_padding = 4
    c.augment.flip = True
    c.batch_size = 64
    c.num_epochs = 160.0
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.schedule = "step"
    c.step_boundaries = (0.5, 0.75)
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 5000
    for flag in flags:
        if flag == "runlocal":
            c.dataset = "digits32"
            c.augment.crop_padding = 4   # the 32x32 digits are centred: shifts, no flips
            c.augment.flip = False
            c.batch_size = 16
            c.num_train_steps = 250
            c.learning_rate = 0.025      # the recipe's 0.1 per 64 images, scaled to batch 16
            c.log_every_steps = 20
            c.eval_every_steps = 0
            c.checkpoint_every_steps = 100
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
