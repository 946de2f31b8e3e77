"""ImageNet ResNets (timm names: resnet18/34/50/101/152), a modern 90-epoch recipe.

SGD Nesterov momentum 0.9, lr 0.1 per 256 images with 5 epochs of linear warm-up then cosine
(Goyal et al. 2017; He et al. 2019 'Bag of Tricks'), weight decay 1e-4 on kernels, label
smoothing 0.1, bfloat16 compute, random-resized crops and flips at 224x224.

Needs imagenet2012 prepared as ArrayRecord in a tfds data dir (the tar files go into
DATA_DIR/downloads/manual first; see the README), then, on every host of a Cloud TPU pod slice:

    python -m experiments.train --config experiments/configs/imagenet_resnet.py:resnet50 \\
        --workdir gs://BUCKET/runs/r50 --config.data_dir=DATA_DIR --distributed

Expected time: not measured by us yet (no TPU here). `:resnet50,runlocal` runs 20 steps of
batch 16 as a smoke test.
"""
from jaxconv.train.config import default_config


def get_config(arg: str | None = None):
    model, *flags = (arg or "resnet50").split(",")
    c = default_config()
    c.model = model
    c.dataset = "imagenet2012"
    c.dtype = "bfloat16"
    c.augment.flip = True  # random-resized crops are part of the dataset's own train transform
    c.batch_size = 1024
    c.num_epochs = 90.0
    c.optimizer = "nesterov"
    c.learning_rate = 0.1 * c.batch_size / 256
    c.weight_decay = 1e-4
    c.schedule = "cosine"
    c.warmup_steps = 5 * 1_281_167 // c.batch_size
    c.label_smoothing = 0.1
    c.num_data_threads = 32
    c.log_every_steps = 100
    c.eval_every_steps = 1251 * 5
    c.checkpoint_every_steps = 1000
    for flag in flags:
        if flag == "runlocal":
            c.batch_size, c.num_train_steps, c.warmup_steps = 16, 20, 2
            c.dtype, c.num_data_threads = "float32", 2
            c.eval_every_steps, c.checkpoint_every_steps = 0, 10
        else:
            raise ValueError(f"unknown config flag {flag!r}; valid: 'runlocal'")
    return c
