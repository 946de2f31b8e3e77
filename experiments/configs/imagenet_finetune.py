"""Fine-tuning a pretrained ConvNeXt on ImageNet-1K at 384 with layer-wise lr decay.

Liu et al. 2022 (ConvNeXt, arXiv:2201.03545, Appendix A) fine-tune ImageNet-22K (or -1K)
pre-trained models on ImageNet-1K at 384x384 for 30 epochs: AdamW, lr 5e-5 for a batch of 512,
weight decay 1e-8, no warm-up, cosine decay, layer-wise lr decay 0.8 (timm's groups: the
head at the base lr, each block below it x0.8, the stem lowest), RandAugment
``rand-m9-mstd0.5-inc1``, no mixup or CutMix, random erasing 0.25, label smoothing 0.1,
stochastic depth per model, layer scale kept from pre-training, a re-initialised head (scaled
by 0.001 in the paper; jaxconv keeps the model's own head init). Top-1 at 384 after 22K
pre-training: ConvNeXt-B 86.8, -L 87.5 (after 1K pre-training, -B 85.1).

The pretrained weights come from a jaxconv workdir (e.g. an ``imagenet_convnext.py`` run) or a
timm state dict, with ``config.init_from`` and the head re-initialised by ``config.init_reinit``
(regexes on parameter paths; ``jaxconv.train.pretrained``): every other parameter and batch
statistic must fit the model, or the run stops before training naming the misfits. Without
``init_from`` the recipe trains from the model's fresh initialisation. The 384 inputs are the
dataset's 224 crops resized on device (``image_size``).

    python -m experiments.train --config experiments/configs/imagenet_finetune.py:convnext_base \\
        --workdir gs://BUCKET/runs/convnext_b_ft384 --config.data_dir=DATA_DIR --distributed \\
        --config.init_from=gs://BUCKET/runs/convnext_b

Expected time: not measured (no TPU here); 30 x 2,503 = 75,090 steps of batch 512 at 384.
`:MODEL,runlocal` runs the recipe (layer decay, RandAugment, erasing, label smoothing, drop path,
cosine AdamW without warm-up) on the offline digits32 with a one-block-per-stage model, 20
steps of batch 32: under a minute of training on the shared 2-core CPU. Measured (jax 0.10.2,
float32, load ~17): whole command 83 s, training 49 s, test top-1 0.77 (from scratch).
"""
from jaxconv.train.config import default_config

MODELS = ("convnext_tiny", "convnext_small", "convnext_base")
IMAGENET_TRAIN = 1_281_167


def get_config(arg: str | None = None):
    model, *flags = (arg or "convnext_base").split(",")
    if model == "runlocal":
        model, flags = "convnext_base", [model, *flags]
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; valid: {list(MODELS)}")
    c = default_config()
    c.model = model
    c.model_overrides.drop_path_rate = 0.2
    c.dataset = "imagenet2012"
    c.image_size = 384
    c.dtype = "bfloat16"
    c.augment.flip = True
    c.augment.randaugment = "rand-m9-mstd0.5-inc1"
    c.augment.random_erasing = 0.25
    c.label_smoothing = 0.1
    c.batch_size = 512
    c.num_epochs = 30.0
    c.optimizer = "adamw"
    c.learning_rate = 5e-5
    c.weight_decay = 1e-8
    c.schedule = "cosine"
    c.warmup_steps = 0
    c.layer_decay = 0.8
    c.init_reinit = ("^head/fc/",)  # a new classifier (applies once init_from is given)
    c.num_data_threads = 32
    c.log_every_steps = 100
    c.eval_every_steps = 2503 * 3
    c.checkpoint_every_steps = 1000
    for flag in flags:
        if flag == "runlocal":
            c.dataset, c.dtype, c.num_data_threads = "digits32", "float32", 2
            c.image_size = 40     # the fine-tuning resolution above the pre-training one
            c.model_overrides.depths = (1, 1, 1, 1)
            c.model_overrides.dims = (16, 32, 48, 64)
            c.model_overrides.drop_path_rate = 0.1
            c.augment.flip = False
            c.batch_size, c.num_train_steps = 32, 20
            c.learning_rate = 1e-3
            c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 10, 0, 10
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
