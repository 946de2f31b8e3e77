"""Width, depth and resolution scaling of a ResNet ('Fast and Accurate Model Scaling', Dollar,
Singh & Girshick 2021, arXiv:2103.06877).

Starting from ResNet-20 (He et al. 2016's CIFAR net: 3 stages of 3 basic blocks, widths 16/32/64),
each strategy multiplies the forward FLOPs by s = 2 and 4: depth (blocks per stage x s), width
(channels x sqrt(s)), resolution (input side x sqrt(s), resized on device) and the paper's
compound 'dWR' with alpha = 0.8 (width takes 80% of the FLOP increase, depth and resolution 10%
each). Each row records FLOPs, activations and train images/s beside accuracy; the report's
``scaling.png`` plots accuracy, images/s and activations against FLOPs, one line per strategy.
The paper's point: at equal FLOPs, runtime follows activations, and width scaling adds the fewest.

    python -m experiments.sweep --config experiments/configs/sweeps/scaling.py \
        --workdir runs/scaling --report

Default: 9 runs on the offline digits (native 8x8), 10 epochs. Expected on a 2-core CPU
(jax 0.10.2): 15 min (measured with the cores shared by other jobs; less on a quiet machine). `:cifar10` (tfds, prepare first) uses 32x32 inputs and the CIFAR recipe
for 30 epochs (an accelerator job).

CIFAR-10 / MNIST as ArrayRecord in a tfds data dir (once, with network and TensorFlow), then point
TFDS_DATA_DIR at it:

    pip install tensorflow-cpu
    python -c "import tensorflow_datasets as tfds; \\
        tfds.builder('cifar10', data_dir='$HOME/tensorflow_datasets').download_and_prepare(\\
        file_format='array_record')"
    TFDS_DATA_DIR=$HOME/tensorflow_datasets python -m experiments.sweep \\
        --config experiments/configs/sweeps/scaling.py:cifar10 --workdir runs/scaling_c10
"""
from experiments.configs import digits_resnet

REPORT = {"group": "label.strategy", "shared": "base"}
BASE_DEPTH, BASE_WIDTHS = 3, (16, 32, 64)
#: Share of the FLOP increase taken by (depth, width, resolution) per strategy.
STRATEGIES = {"depth": (1.0, 0.0, 0.0), "width": (0.0, 1.0, 0.0), "resolution": (0.0, 0.0, 1.0),
              "dWR": (0.1, 0.8, 0.1)}
SCALES = (2, 4)


def get_config(arg=None):
    if arg not in (None, "cifar10"):
        raise ValueError(f"unknown sweep argument {arg!r}; valid: 'cifar10'")
    c = digits_resnet.get_config()  # resnet20's recipe on digits, shorter
    c.num_epochs = 10.0
    c.eval_every_steps = 100
    if arg == "cifar10":
        c.dataset = "cifar10"
        c.batch_size = 128
        c.num_epochs = 30.0
        c.learning_rate = 0.1
        c.augment.crop_padding, c.augment.flip = 4, True
        c.eval_every_steps = c.checkpoint_every_steps = 2000
    return c


def point(strategy: str, scale: float, resolution: int) -> dict:
    """Grid point of ``strategy`` at ``scale`` times the base FLOPs. FLOPs grow linearly with
    depth and quadratically with width and resolution, so a share e of log(scale) multiplies
    depth by scale**e and width or resolution by scale**(e/2)."""
    e_depth, e_width, e_res = STRATEGIES.get(strategy, (0.0, 0.0, 0.0))
    depth = max(1, round(BASE_DEPTH * scale ** e_depth))
    widths = tuple(round(w * scale ** (e_width / 2)) for w in BASE_WIDTHS)
    return {"label.strategy": strategy, "label.flops_scale": scale,
            "model_overrides.stage_sizes": (depth,) * 3, "model_overrides.widths": widths,
            "model_overrides.stem_width": widths[0],
            "image_size": round(resolution * scale ** (e_res / 2))}


def get_sweep(arg=None):
    resolution = 32 if arg == "cifar10" else 8
    return [point("base", 1, resolution)] + [
        point(strategy, s, resolution) for strategy in STRATEGIES for s in SCALES]
