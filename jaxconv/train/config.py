"""The training config schema: every field ``train_and_evaluate`` reads, with its default.

Experiment configs (``experiments/configs/*.py``) start from ``default_config()`` and change what
they need; ``--config.FIELD=value`` overrides on the command line are checked against this schema,
so a misspelt field is an error, not a silently ignored setting.
"""
from __future__ import annotations

import ml_collections
from ml_collections import config_dict


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.model = "resnet20"
    c.model_overrides = ml_collections.ConfigDict()   # e.g. drop_path_rate, zero_init_last_bn
    c.dtype = "float32"                               # compute dtype: float32 | bfloat16

    c.dataset = "digits"
    c.data_dir = config_dict.placeholder(str)         # tfds data dir; default $TFDS_DATA_DIR
    c.train_split = config_dict.placeholder(str)      # default: the dataset's train split
    c.eval_split = config_dict.placeholder(str)       # default: the dataset's eval split
    # Host-side augmentations run per image in the data pipeline (jaxconv.data.augment);
    # mixup / CutMix mix whole batches on device (jaxconv.data.mix). All off by default.
    c.augment = ml_collections.ConfigDict(dict(
        crop_padding=0, flip=False, cutout=0,
        randaugment=config_dict.placeholder(str),     # timm policy, e.g. "rand-m9-mstd0.5-inc1"
        autoaugment=config_dict.placeholder(str),     # "original" (ImageNet policy) | "v0"
        trivialaugment=False,
        color_jitter=0.0,                             # brightness/contrast/saturation strength
        random_erasing=0.0,                           # probability per image
        erasing_mode="pixel",                         # pixel | rand | const (timm's modes)
        erasing_count=1,
        mixup_alpha=0.0, cutmix_alpha=0.0,            # 0 disables each
        mix_prob=1.0, mix_switch_prob=0.5,            # mix a batch w.p.; CutMix instead w.p.
        mix_mode="batch",                             # batch | pair | elem (timm's modes)
        aug_repeats=1,                                # repeated augmentation (RA): views per image
    ))
    c.num_data_threads = 2
    c.image_size = config_dict.placeholder(int)       # square side to train/eval at (resized
                                                      # on device, bilinear); default: native

    c.batch_size = 128                                # global, over all devices and processes
    c.num_epochs = 10.0
    c.num_train_steps = config_dict.placeholder(int)  # overrides num_epochs when set

    c.optimizer = "nesterov"                          # sgd | nesterov | adamw | lamb | lars
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 5e-4                             # on kernels only
    c.schedule = "cosine"                             # cosine | step | constant
    c.step_boundaries = (0.5, 0.75)                   # "step": lr x step_factor at these
    c.step_factor = 0.1                               # fractions of training
    c.warmup_steps = 0
    c.label_smoothing = 0.0
    c.loss = "softmax_xent"                           # softmax_xent | sigmoid_xent (BCE)
    c.bce_target_thresh = config_dict.placeholder(float)  # sigmoid_xent: binarize targets at it
    # Knowledge distillation: the teacher (a model name + weights) sees the student's view.
    c.distill = ml_collections.ConfigDict(dict(
        teacher="", weights="", teacher_overrides=ml_collections.ConfigDict(),
        temperature=1.0, weight=1.0))
    c.ema_decay = config_dict.placeholder(float)      # EMA of params + batch stats; None: off
    c.ema_warmup = False                              # timm ModelEmaV3 decay warm-up
    c.grad_accum_steps = 1                            # microbatches per optimizer update
    c.grad_clip_norm = config_dict.placeholder(float)
    c.grad_clip_agc = config_dict.placeholder(float)  # adaptive gradient clipping (NFNets)
    c.layer_decay = config_dict.placeholder(float)    # layer-wise lr decay (fine-tuning)
    c.param_rules = ()                                # ((regex, lr multiplier), ...); 0 freezes

    # Device mesh and parameter sharding: axes as ((name, size), ...), -1 for the rest; the
    # batch is split over every axis. sharding: replicate | fsdp (each large parameter's
    # largest divisible axis over "fsdp"; params, optimizer and EMA state alike).
    c.mesh = (("data", -1),)
    c.sharding = "replicate"
    c.profile_steps = ""                              # "START:END": a profiler trace of them

    # Quantization-aware training (jaxconv.quantize.qat): scheme "" trains in float, a name
    # in jaxconv.quantize.SCHEMES (e.g. "int4_per_channel") with fake quantization from
    # start_step on; from freeze_bn_step (None: never) BatchNorm uses its running statistics.
    c.quantization = ml_collections.ConfigDict(dict(
        scheme="", start_step=0, freeze_bn_step=config_dict.placeholder(int)))
    # Fine-tuning: start from a jaxconv workdir's latest checkpoint or a timm state dict file
    # (.npz / .safetensors), except the parameters matching a regex of init_reinit (a new head).
    c.init_from = ""
    c.init_reinit = ()
    c.seed = 0
    c.log_every_steps = 50
    c.eval_every_steps = 0                            # 0: evaluate at the end only
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3
    c.overwrite = False                               # True: move an existing run in the
                                                      # workdir to WORKDIR/replaced/TIME, restart
    c.repeat_data_in_batch = False                    # True: allow batch_size > train split
    return c
