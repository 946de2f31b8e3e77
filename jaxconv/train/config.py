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
    c.augment = ml_collections.ConfigDict(dict(crop_padding=0, flip=False, cutout=0))
    c.num_data_threads = 2
    c.image_size = config_dict.placeholder(int)       # square side to train/eval at (resized
                                                      # on device, bilinear); default: native

    c.batch_size = 128                                # global, over all devices and processes
    c.num_epochs = 10.0
    c.num_train_steps = config_dict.placeholder(int)  # overrides num_epochs when set

    c.optimizer = "nesterov"                          # sgd | nesterov | adamw
    c.learning_rate = 0.1
    c.momentum = 0.9
    c.weight_decay = 5e-4                             # on kernels only
    c.schedule = "cosine"                             # cosine | step | constant
    c.step_boundaries = (0.5, 0.75)                   # "step": lr x step_factor at these
    c.step_factor = 0.1                               # fractions of training
    c.warmup_steps = 0
    c.label_smoothing = 0.0
    c.grad_clip_norm = config_dict.placeholder(float)

    # Quantization-aware training (jaxconv.quantize.qat): scheme "" trains in float, a name
    # in jaxconv.quantize.SCHEMES (e.g. "int4_per_channel") with fake quantization from
    # start_step on; from freeze_bn_step (None: never) BatchNorm uses its running statistics.
    c.quantization = ml_collections.ConfigDict(dict(
        scheme="", start_step=0, freeze_bn_step=config_dict.placeholder(int)))
    c.seed = 0
    c.log_every_steps = 50
    c.eval_every_steps = 0                            # 0: evaluate at the end only
    c.checkpoint_every_steps = 500
    c.keep_checkpoints = 3
    c.overwrite = False                               # True: move an existing run in the
                                                      # workdir to WORKDIR/replaced/TIME, restart
    c.repeat_data_in_batch = False                    # True: allow batch_size > train split
    return c
