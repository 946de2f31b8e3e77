"""ImageNet-1K from scratch with the ConvNeXt recipe: ConvNeXt T/S/B and InceptionNeXt T/S/B.

Liu et al. 2022 (ConvNeXt, arXiv:2201.03545, Table A.1) train 300 epochs with AdamW, lr 4e-3 for
a batch of 4096, weight decay 0.05, 20 warm-up epochs then cosine, RandAugment
``rand-m9-mstd0.5-inc1``, mixup 0.8 and CutMix 1.0 (switch probability 0.5, every batch mixed),
label smoothing 0.1, random erasing 0.25, stochastic depth 0.1 / 0.4 / 0.5 (T / S / B), layer
scale 1e-6 and an EMA of the weights (decay 0.9999); top-1 at 224: 82.1 / 83.1 / 83.8.
Yu et al. 2024 (InceptionNeXt, arXiv:2303.16900) train with the same recipe and stochastic
depth 0.1 / 0.3 / 0.4 (T / S / B): 82.3 / 83.5 / 84.0. jaxconv evaluates the raw and the EMA
weights at every evaluation (``eval_top1`` / ``eval_ema_top1``).

Needs imagenet2012 prepared as ArrayRecord in a tfds data dir (see imagenet_resnet.py); its train
split already yields random-resized 224x224 crops. On every host of a Cloud TPU slice:

    python -m experiments.train --config experiments/configs/imagenet_convnext.py:convnext_tiny \\
        --workdir gs://BUCKET/runs/convnext_t --config.data_dir=DATA_DIR --distributed

Models: ``convnext_tiny|small|base``, ``inception_next_tiny|small|base``. Fewer or smaller
devices: ``--config.grad_accum_steps=K`` keeps the 4096 batch (one update per K microbatches, as
the paper's ``update_freq``). Differences from the paper: warm-up starts at lr 0 (timm: 1e-6).

Expected time: not measured (no TPU here); estimated 300 x 313 = 93,900 steps. `:MODEL,runlocal`
exercises every part of the recipe (RandAugment, mixup/CutMix, label smoothing, erasing, drop
path, layer scale, EMA, warm-up + cosine AdamW) on the offline digits32 with a one-block-per-stage
model, 30 steps of batch 32: about a minute of training on the shared 2-core CPU. Measured
(jax 0.10.2, float32, other jobs running), whole command / training / test top-1 (EMA) on 300
images: convnext_tiny 79 s / 52 s / 0.75 (0.72) at load ~15; inception_next_tiny 30 s / 16 s /
0.76 (0.65) at load ~7.
"""
from jaxconv.train.config import default_config

#: Stochastic depth per model (the papers' ImageNet-1K values).
DROP_PATH = {"convnext_tiny": 0.1, "convnext_small": 0.4, "convnext_base": 0.5,
             "inception_next_tiny": 0.1, "inception_next_small": 0.3,
             "inception_next_base": 0.4}
IMAGENET_TRAIN = 1_281_167


def get_config(arg: str | None = None):
    model, *flags = (arg or "convnext_tiny").split(",")
    if model == "runlocal":
        model, flags = "convnext_tiny", [model, *flags]
    if model not in DROP_PATH:
        raise ValueError(f"unknown model {model!r}; valid: {sorted(DROP_PATH)}")
    c = default_config()
    c.model = model
    c.model_overrides.drop_path_rate = DROP_PATH[model]
    c.model_overrides.ls_init_value = 1e-6                 # layer scale
    c.dataset = "imagenet2012"
    c.dtype = "bfloat16"
    c.augment.flip = True
    c.augment.randaugment = "rand-m9-mstd0.5-inc1"
    c.augment.mixup_alpha, c.augment.cutmix_alpha = 0.8, 1.0
    c.augment.mix_prob, c.augment.mix_switch_prob = 1.0, 0.5
    c.augment.random_erasing = 0.25
    c.label_smoothing = 0.1
    c.batch_size = 4096
    c.num_epochs = 300.0
    c.optimizer = "adamw"
    c.learning_rate = 4e-3
    c.weight_decay = 0.05
    c.schedule = "cosine"
    c.warmup_steps = 20 * IMAGENET_TRAIN // c.batch_size
    c.ema_decay = 0.9999
    c.num_data_threads = 32
    c.log_every_steps = 100
    c.eval_every_steps = 313 * 10
    c.checkpoint_every_steps = 1000
    for flag in flags:
        if flag == "runlocal":  # every recipe part, offline, tiny
            c.dataset, c.dtype, c.num_data_threads = "digits32", "float32", 2
            c.model_overrides.depths = (1, 1, 1, 1)
            c.model_overrides.dims = (16, 32, 48, 64)
            c.model_overrides.drop_path_rate = 0.1
            c.augment.flip = False     # digits are not mirror-symmetric
            c.batch_size, c.num_train_steps, c.warmup_steps = 32, 30, 5
            c.learning_rate = 2e-3
            c.ema_decay = 0.9          # short run: an EMA that moves
            c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 10, 0, 15
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
