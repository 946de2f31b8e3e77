"""CIFAR-10 ResNets with the recipe of He et al. 2016 (arXiv:1512.03385, section 4.2).

SGD momentum 0.9, batch 128, lr 0.1 divided by 10 at 32k and 48k of 64k iterations (182 epochs
of 45k+5k images; we train on all 50k), weight decay 1e-4, 4-pixel pad-and-crop and flips.
The argument picks the model: any registered CIFAR ResNet (resnet20 ... resnet1202,
preact_resnet110/164/1001). He et al. report 8.75% error for resnet20, 6.97% for resnet56.

Needs CIFAR-10 prepared as ArrayRecord in a tfds data dir (once, with network and TensorFlow):

    pip install tensorflow-cpu
    python -c "import tensorflow_datasets as tfds; \\
        tfds.builder('cifar10', data_dir='$HOME/tensorflow_datasets').download_and_prepare(\\
        file_format='array_record')"

    python -m experiments.train --config experiments/configs/cifar10_resnet.py:resnet56 \\
        --workdir runs/c10_r56 --config.data_dir=$HOME/tensorflow_datasets

Expected time: not measured yet on an accelerator; on a 2-core CPU resnet20 trains at ~100
images/s, i.e. ~1.5 h per epoch. `:resnet20,runlocal` trains 200 steps on the offline `digits32`
(a smoke test that needs no data preparation).
"""
from jaxconv.train.config import default_config


def get_config(arg: str | None = None):
    model, *flags = (arg or "resnet20").split(",")
    c = default_config()
    c.model = model
    c.dataset = "cifar10"
    c.augment.crop_padding = 4
    c.augment.flip = True
    c.batch_size = 128
    c.num_train_steps = 64_000
    c.optimizer = "sgd"
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 1e-4
    c.schedule = "step"
    c.step_boundaries = (0.5, 0.75)
    if model in ("resnet110", "resnet1202", "preact_resnet1001"):
        c.warmup_steps = 400  # the paper's 0.01 warm-up for the deepest nets (~1 epoch)
    c.log_every_steps = 100
    c.eval_every_steps = 2000
    c.checkpoint_every_steps = 2000
    for flag in flags:
        if flag == "runlocal":  # offline smoke test: digits upsampled to 32x32, no network
            c.dataset = "digits32"
            c.augment.flip = False
            c.num_train_steps = 200
            c.eval_every_steps = 100
            c.checkpoint_every_steps = 100
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
