"""CIFAR-10 All-CNN-C with the recipe of Springenberg et al. 2014 (arXiv:1412.6806, §3.1).

SGD momentum 0.9, weight decay 1e-3, 350 epochs with the lr multiplied by 0.1 after epochs 200,
250 and 300, dropout 20% on the input and 50% after each strided conv, batch 128 (not stated in
the paper; the authors' common setting). The paper picks the lr from {0.25, 0.1, 0.05, 0.01}
per model; 0.05 here (0.25 diverges without BatchNorm from the He initialisation used here).
Springenberg et al. report 9.08% error without and 7.25% with augmentation (Table 3); this
config uses the "with" setting (pad-and-crop and flips) on per-channel normalised inputs (the
paper whitens; the project's pipeline has no ZCA).

Needs CIFAR-10 prepared as ArrayRecord in a tfds data dir (see cifar10_resnet.py), then

    python -m experiments.train --config experiments/configs/cifar10_allcnn.py \\
        --workdir runs/c10_allcnn --config.data_dir=$HOME/tensorflow_datasets

Expected time: not measured on an accelerator. `:runlocal` trains 150 steps of batch 32 on
digits32 (offline; no dropout, Adam 3e-4, see below) in 4.7 min on a 2-core CPU shared with
other jobs (jax 0.10.2; test top-1 0.93).
"""
from jaxconv.train.config import default_config


def get_config(arg: str | None = None):
    model, *flags = (arg or "allcnn_c").split(",")
    if model == "runlocal":
        model, flags = "allcnn_c", [model, *flags]
    if model != "allcnn_c":
        raise ValueError(f"unknown model {model!r}; valid: ['allcnn_c']")
    c = default_config()
    c.model = model
    c.dataset = "cifar10"
    c.augment.crop_padding = 4
    c.augment.flip = True
    c.batch_size = 128
    c.num_epochs = 350.0
    c.optimizer = "sgd"
    c.learning_rate = 0.05
    c.momentum = 0.9
    c.weight_decay = 1e-3
    c.schedule = "step"
    c.step_boundaries = (200 / 350, 250 / 350, 300 / 350)
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
            c.model_overrides.input_dropout_rate = 0.0
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
