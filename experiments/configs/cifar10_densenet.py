"""CIFAR-10 DenseNet-BC with the recipe of Huang et al. 2017 (arXiv:1608.06993, section 4.2).

SGD with Nesterov momentum 0.9 (no dampening), batch 64, 300 epochs, lr 0.1 divided by 10 at
50% and 75% of training, weight decay 1e-4, standard augmentation (4-pixel pad-and-crop, flips),
no dropout with augmentation (the paper's 0.2 is for the un-augmented runs:
``--config.model_overrides.dropout_rate=0.2``). Weight decay here skips BN parameters and
biases (the project's optimizer); the paper decays every weight. Huang et al. report 4.51% error
for DenseNet-BC (L=100, k=12) on CIFAR-10 with augmentation (Table 2).

Needs CIFAR-10 prepared as ArrayRecord in a tfds data dir (see cifar10_resnet.py), then

    python -m experiments.train --config experiments/configs/cifar10_densenet.py \\
        --workdir runs/c10_densenet --config.data_dir=$HOME/tensorflow_datasets

Add ``--config.model_overrides.memory_efficient=True`` to recompute the dense layers' concat-BN-
ReLU-conv1x1 in the backward pass (about half the activation memory of densenet121 on an
accelerator; no effect on XLA:CPU, see jaxconv/models/densenet.py).

Expected time: not measured on an accelerator. `:runlocal` trains DenseNet-BC-28 (3 blocks of
4 layers, k=12, theta=0.5; see below) for 150 steps of batch 32 on digits32 (offline) in 3.1 min
on a 2-core CPU shared with other jobs (jax 0.10.2; test top-1 0.97).
"""
from jaxconv.train.config import default_config

MODELS = ("densenet_bc_100_k12",)


def get_config(arg: str | None = None):
    model, *flags = (arg or MODELS[0]).split(",")
    if model == "runlocal":
        model, flags = MODELS[0], [model, *flags]
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid: {list(MODELS)}")
    c = default_config()
    c.model = model
    c.dataset = "cifar10"
    c.augment.crop_padding = 4
    c.augment.flip = True
    c.batch_size = 64
    c.num_epochs = 300.0
    c.optimizer = "nesterov"
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
            # DenseNet-BC-28 (3 blocks of 4 layers, same k and theta): the depth-100 net runs at
            # ~10 s per step of 32 images on a busy 2-core CPU.
            c.model_overrides.block_config = (4, 4, 4)
            c.dataset = "digits32"
            c.augment.flip = False          # digits: shifts, no mirror images
            c.batch_size = 32
            c.num_train_steps = 150
            c.warmup_steps = 15
            c.schedule = "cosine"
            c.log_every_steps = 15
            c.eval_every_steps = 0
            c.checkpoint_every_steps = 75
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
