"""ImageNet-1K ResNet-50 with the 'ResNet strikes back' procedures A1, A2, A3.

Wightman, Touvron and Jegou 2021 (arXiv:2110.00476, Table 1), all at batch 2048 with LAMB, a
cosine schedule after 5 warm-up epochs, binary cross-entropy on the (mixed) targets, CutMix 1.0,
horizontal flips and random-resized crops, test crop ratio 0.95 at 224:

    procedure                 A1               A2               A3
    epochs                    600              300              100
    train resolution          224              224              160
    learning rate             5e-3             5e-3             8e-3
    weight decay              0.01             0.02             0.02
    label smoothing           0.1              -                -
    stochastic depth          0.05             0.05             -
    repeated augmentation     yes (3)          yes (3)          -
    RandAugment               rand-m7-mstd0.5  rand-m7-mstd0.5  rand-m6-mstd0.5
    mixup alpha               0.2              0.1              0.1
    ImageNet top-1 (224)      80.4             79.8             78.1

BCE uses timm's target threshold 0.2 (``--bce-target-thresh`` of the published hparams), and
timm's ``Lamb`` clips the global gradient norm at 1.0 internally (``max_grad_norm``), so this
config sets ``grad_clip_norm=1.0``; LAMB's weight decay and trust ratio skip biases and norm
scales, as timm's. Differences: A3 trains at 160 by resizing the dataset's 224 crops on device
(``image_size``) and evaluates at 160 during training; evaluate at 224 / crop 0.95 afterwards
with ``python -m experiments.evaluate --crop_pct 0.95``. Warm-up starts at 0 (timm: 1e-6).

Needs imagenet2012 prepared as ArrayRecord (see imagenet_resnet.py). On every host of a slice:

    python -m experiments.train --config experiments/configs/imagenet_resnet_rsb.py:a1 \\
        --workdir gs://BUCKET/runs/rsb_a1 --config.data_dir=DATA_DIR --distributed

Expected time: not measured (no TPU here); A1 is 600 x 626 = 375,600 steps, A2 half, A3 a
sixth at 160 (the paper: 4.6 days for A1 on one node of 4 V100 32GB). `:a1,runlocal` (likewise
a2, a3) runs each part of that procedure on the offline digits32 with a one-block-per-stage
ResNet-50, 60 steps of batch 48: about a minute of training on the shared 2-core CPU. Measured
(jax 0.10.2, float32, load ~5), whole command / training / test top-1: a1 40 s / 24 s / 0.15,
a2 26 s / 16 s / 0.16, a3 34 s / 19 s / 0.40 (near chance: a smoke test of the procedure).
"""
from jaxconv.train.config import default_config

IMAGENET_TRAIN = 1_281_167
PROCEDURES = {
    #     epochs, lr,   wd,   smoothing, drop path, repeats, RandAugment, mixup, size
    "a1": (600, 5e-3, 0.01, 0.1, 0.05, 3, "rand-m7-mstd0.5-inc1", 0.2, None),
    "a2": (300, 5e-3, 0.02, 0.0, 0.05, 3, "rand-m7-mstd0.5-inc1", 0.1, None),
    "a3": (100, 8e-3, 0.02, 0.0, 0.0, 1, "rand-m6-mstd0.5-inc1", 0.1, 160),
}


def get_config(arg: str | None = None):
    procedure, *flags = (arg or "a1").split(",")
    if procedure not in PROCEDURES:
        raise ValueError(f"unknown procedure {procedure!r}; valid: {sorted(PROCEDURES)}")
    epochs, lr, wd, smoothing, drop_path, repeats, policy, mixup, size = PROCEDURES[procedure]
    c = default_config()
    c.model = "resnet50"
    if drop_path:
        c.model_overrides.drop_path_rate = drop_path
    c.dataset = "imagenet2012"
    c.image_size = size
    c.dtype = "bfloat16"
    c.augment.flip = True
    c.augment.randaugment = policy
    c.augment.mixup_alpha, c.augment.cutmix_alpha = mixup, 1.0
    c.augment.mix_prob, c.augment.mix_switch_prob = 1.0, 0.5
    c.augment.aug_repeats = repeats
    c.loss = "sigmoid_xent"
    c.bce_target_thresh = 0.2
    c.label_smoothing = smoothing
    c.batch_size = 2048
    c.num_epochs = float(epochs)
    c.optimizer = "lamb"
    c.learning_rate = lr
    c.weight_decay = wd
    c.grad_clip_norm = 1.0
    c.schedule = "cosine"
    c.warmup_steps = 5 * IMAGENET_TRAIN // c.batch_size
    c.num_data_threads = 32
    c.log_every_steps = 100
    c.eval_every_steps = 626 * 10
    c.checkpoint_every_steps = 1000
    for flag in flags:
        if flag == "runlocal":  # the procedure's parts, offline, tiny
            c.dataset, c.dtype, c.num_data_threads = "digits32", "float32", 2
            c.model_overrides.stage_sizes = (1, 1, 1, 1)
            c.model_overrides.widths = (8, 16, 24, 32)
            c.model_overrides.stem_width = 8
            c.image_size = 24 if size else None   # A3's lower train resolution
            c.augment.flip = False
            c.batch_size, c.num_train_steps, c.warmup_steps = 48, 60, 6
            c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 20, 0, 30
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
