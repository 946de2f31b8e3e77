"""CIFAR-10 attention models: NAT (nat_mini/nat_tiny/nat_small/nat_base) and CvT (cvt_13/cvt_21).

The papers train on ImageNet only. NAT (Hassani et al. 2023, arXiv:2204.07143; the authors'
configs/nat_mini.yml): AdamW, lr 1e-3 for batch 1024, weight decay 0.05, 300 epochs with 20
warm-up epochs and cosine decay, drop path 0.2 (Mini/Tiny), label smoothing 0.1, RandAugment,
Mixup/CutMix. CvT (Wu et al. 2021, arXiv:2103.15808, section 4.1): AdamW, weight decay 0.05
(CvT-13), batch 2048, 300 epochs, cosine decay, drop path 0.1 in stage 3. This config keeps the
optimizer, schedule shape, drop path and label smoothing, scales the learning rate to batch 128
(5e-4), trains 100 epochs, and uses the CIFAR augmentations this codebase has (pad-and-crop,
flips). Inputs are resized on device to 64x64 (`image_size`), so NAT's levels are 16/8/4/2
(7x7 windows, the smaller maps zero-padded as NAT pads them) and CvT's stages 16/8/4; the
architectures are unchanged. No accuracy is claimed for it yet. The argument picks the model.

Needs CIFAR-10 prepared as ArrayRecord in a tfds data dir (see cifar10_resnet.py), then

    python -m experiments.train --config experiments/configs/cifar10_attention.py:nat_mini \\
        --workdir runs/c10_nat_mini --config.data_dir=$HOME/tensorflow_datasets

Expected time: not measured on an accelerator yet (39k steps of batch 128 at 64x64).
`:MODEL,runlocal` is an offline smoke test on digits32 (sklearn digits at 32x32, 1 channel):
300 steps of batch 32 at 32x32 of a narrow, shallow variant of the family (NAT: 3x3 windows,
width 32, one layer per level but two in level 3; CvT: widths 32/64/128, one block per stage
but two in stage 3). Measured on the shared 2-core CPU machine (jax 0.10.2, float32, load
average ~10 from six other agents' jobs), whole command: `:nat_mini,runlocal` 4.7 min (3.0 min
in training, compilation included; 1.44M parameters), test top-1 0.947 over 300 images;
`:cvt_13,runlocal` 4.7 min (2.6 min in training; 0.57M parameters), test top-1 0.930.
"""
import jaxconv
from jaxconv.train.config import default_config

#: Per family: the narrow variant `runlocal` trains.
_RUNLOCAL = {
    "nat": dict(depths=(1, 1, 2, 1), num_heads=(1, 2, 4, 8), embed_dim=32, kernel_size=3),
    "cvt": dict(depths=(1, 1, 2), embed_dims=(32, 64, 128), num_heads=(1, 2, 4)),
}
_DROP_PATH = {"nat_mini": 0.2, "nat_tiny": 0.2, "nat_small": 0.3, "nat_base": 0.5,
              "cvt_13": 0.1, "cvt_21": 0.1}  # the papers' stochastic depth


def get_config(arg: str | None = None):
    model, *flags = (arg or "nat_mini").split(",")
    family = jaxconv.model_info(model).family  # unknown model -> ValueError naming close ones
    if family not in _RUNLOCAL:
        raise ValueError(f"model {model!r} is a {family!r} model; this config trains "
                         f"{sorted(_DROP_PATH)}")
    c = default_config()
    c.model = model
    c.model_overrides.drop_path_rate = _DROP_PATH.get(model, 0.1)
    c.dataset = "cifar10"
    c.image_size = 64
    c.augment.crop_padding = 4
    c.augment.flip = True
    c.batch_size = 128
    c.num_epochs = 100.0
    c.optimizer = "adamw"
    c.learning_rate = 5e-4
    c.weight_decay = 0.05
    c.schedule = "cosine"
    c.warmup_steps = 2000
    c.label_smoothing = 0.1
    c.grad_clip_norm = 5.0
    c.log_every_steps = 100
    c.eval_every_steps = 5000
    c.checkpoint_every_steps = 5000
    for flag in flags:
        if flag == "runlocal":
            c.dataset = "digits32"
            c.image_size = None
            c.augment.crop_padding = 4   # the 32x32 digits are centred: shifts, no flips
            c.augment.flip = False
            c.batch_size = 32
            c.num_train_steps = 300
            c.learning_rate = 1e-3
            c.warmup_steps = 30
            c.model_overrides.update(_RUNLOCAL[family])
            c.model_overrides.drop_path_rate = 0.1
            c.log_every_steps = 50
            c.eval_every_steps = 0
            c.checkpoint_every_steps = 150
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
