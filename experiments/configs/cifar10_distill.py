"""CIFAR-10 knowledge distillation by function matching: a zoo teacher, a zoo student.

Beyer et al. 2022, 'Knowledge distillation: A good teacher is patient and consistent'
(arXiv:2106.05237): the student matches the teacher's output on exactly the image the student
sees ('consistent': the same crop and the same mixup, computed once and fed to both), with the
KL divergence to the teacher as the only loss (no labels; ``distill.weight=1``, temperature 1),
over very long schedules ('patient': the gains keep growing for thousands of epochs; their
ImageNet ResNet-50 student reaches 82.8% top-1 from a BiT ResNet-152x2 teacher). The paper
distils on Flowers102, Pets, Food101, SUN397 and ImageNet; this config applies the recipe to
CIFAR-10 with jaxconv models: teacher ``wrn28_10`` (trained first with cifar10_wrn.py), student
``resnet20``, pad-and-crop + flip + mixup (alpha 1.0) on every batch, AdamW lr 1e-3 (our
choice), 1,000 epochs. The teacher is frozen, runs in inference mode in the same jitted step,
and is read from its workdir on every (re)start; the student's checkpoints hold only the student.

    python -m experiments.train --config experiments/configs/cifar10_wrn.py:wrn28_10 \\
        --workdir runs/c10_wrn28_10 --config.data_dir=$HOME/tensorflow_datasets
    python -m experiments.train --config experiments/configs/cifar10_distill.py \\
        --workdir runs/c10_distill_r20 --config.data_dir=$HOME/tensorflow_datasets \\
        --config.distill.weights=runs/c10_wrn28_10

Expected time: not measured on an accelerator (391k student steps of batch 128 plus a WRN-28-10
forward pass each). `:runlocal` distils the digits32 runlocal ResNet-20
(``cifar10_resnet.py:resnet20,runlocal``, trained first into /tmp/jaxconv_teacher_resnet20, or
pass --config.distill.weights) into a half-width ResNet-20, 150 steps of batch 32: about a
minute of training on the shared 2-core CPU. Measured (jax 0.10.2, float32): teacher 481 s
whole / 449 s training, test top-1 0.987 (load ~12); student 44 s / 30 s, test top-1 0.50 from
the KL to the teacher alone (load ~5):

    python -m experiments.train --config experiments/configs/cifar10_resnet.py:resnet20,runlocal \\
        --workdir /tmp/jaxconv_teacher_resnet20
    python -m experiments.train --config experiments/configs/cifar10_distill.py:runlocal \\
        --workdir /tmp/jaxconv_distill
"""
from jaxconv.train.config import default_config

RUNLOCAL_TEACHER = "/tmp/jaxconv_teacher_resnet20"


def get_config(arg: str | None = None):
    flags = [f for f in (arg or "").split(",") if f]
    c = default_config()
    c.model = "resnet20"
    c.dataset = "cifar10"
    c.distill.teacher = "wrn28_10"
    c.distill.weights = "runs/c10_wrn28_10"   # the teacher's workdir (override on the command line)
    c.distill.temperature = 1.0
    c.distill.weight = 1.0                    # function matching: the teacher's KL only
    c.augment.crop_padding = 4
    c.augment.flip = True
    c.augment.mixup_alpha = 1.0
    c.augment.mix_prob = 1.0
    c.batch_size = 128
    c.num_epochs = 1000.0
    c.optimizer = "adamw"
    c.learning_rate = 1e-3
    c.weight_decay = 1e-4
    c.schedule = "cosine"
    c.warmup_steps = 2000
    c.log_every_steps = 200
    c.eval_every_steps = 10_000
    c.checkpoint_every_steps = 5000
    for flag in flags:
        if flag == "runlocal":
            c.dataset = "digits32"
            c.augment.flip = False
            c.distill.teacher = "resnet20"
            c.distill.weights = RUNLOCAL_TEACHER
            c.model_overrides.widths = (8, 16, 32)
            c.model_overrides.stem_width = 8
            c.batch_size, c.num_train_steps, c.warmup_steps = 32, 150, 10
            c.log_every_steps, c.eval_every_steps, c.checkpoint_every_steps = 50, 0, 50
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
