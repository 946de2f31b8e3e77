"""Deep vs shallow: the experiment of 'Make Deep Networks Shallow Again' (Bermeitinger et al.
2023, arXiv:2309.08414).

A stack of residual conv layers (``layout=sequential``) against the same layers side by side on
the stem's output (``layout=parallel``, the first-order truncation of the stack's expansion),
across numbers of conv layers, filters and kernel sizes; model ``residual_stack``
(jaxconv/models/residual_stack.py). The report's ``compare_layout.png`` puts each architecture's
two layouts side by side (bars) and against each other (points above the diagonal: the shallow
layout was better).

    python -m experiments.sweep --config experiments/configs/sweeps/deep_vs_shallow.py \
        --workdir runs/deep_vs_shallow --report

Default: 24 runs on the offline digits (8x8): layout x {2, 4, 8} layers x {16, 32} filters x
{3, 5} kernels, 10 epochs each. Expected on a 2-core CPU (jax 0.10.2): 10 min
(measured with the cores shared by other jobs).
`:small`: 8 runs ({2, 8} layers x {3, 5} kernels, 16 filters, 6 epochs), ~3 min.
`:mnist` / `:cifar10`: the full grid on tfds data (prepare it first, see the README), 15 epochs,
stem stride 2; hours on a CPU, minutes per run on an accelerator.

CIFAR-10 / MNIST as ArrayRecord in a tfds data dir (once, with network and TensorFlow), then point
TFDS_DATA_DIR at it:

    pip install tensorflow-cpu
    python -c "import tensorflow_datasets as tfds; \\
        tfds.builder('cifar10', data_dir='$HOME/tensorflow_datasets').download_and_prepare(\\
        file_format='array_record')"
    TFDS_DATA_DIR=$HOME/tensorflow_datasets python -m experiments.sweep \\
        --config experiments/configs/sweeps/deep_vs_shallow.py:cifar10 --workdir runs/deep_vs_shallow_c10
"""
from experiments.configs import digits_resnet
from jaxconv.train.sweep import axis, product

REPORT = {"compare": "model_overrides.layout", "average": ["seed"]}
ARGS = ("small", "mnist", "cifar10")


def get_config(arg=None):
    if arg not in (None, *ARGS):
        raise ValueError(f"unknown sweep argument {arg!r}; valid: {ARGS}")
    c = digits_resnet.get_config()  # the digits recipe of resnet20, shorter
    c.model = "residual_stack"
    c.num_epochs = 6.0 if arg == "small" else 10.0
    c.eval_every_steps = 100
    if arg in ("mnist", "cifar10"):
        c.dataset = arg
        c.batch_size = 128
        c.num_epochs = 15.0
        c.augment.crop_padding = 4 if arg == "cifar10" else 2
        c.augment.flip = arg == "cifar10"
        c.model_overrides.stem_stride = 2
        c.eval_every_steps = 1000
        c.checkpoint_every_steps = 1000
    return c


def get_sweep(arg=None):
    if arg == "small":
        return product(axis("model_overrides.num_layers", [2, 8]),
                       axis("model_overrides.kernel_size", [3, 5]),
                       axis("model_overrides.features", [16]),
                       axis("model_overrides.layout", ["sequential", "parallel"]))
    return product(axis("model_overrides.num_layers", [2, 4, 8]),
                   axis("model_overrides.features", [16, 32]),
                   axis("model_overrides.kernel_size", [3, 5]),
                   axis("model_overrides.layout", ["sequential", "parallel"]))
