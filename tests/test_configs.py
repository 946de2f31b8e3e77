"""Every training config builds and passes validation, with each argument its docstring offers
(nothing is trained; tfds datasets are only named, not read)."""

from __future__ import annotations

import importlib
import os

import pytest

from jaxconv.data.info import TFDS_DATASETS
from jaxconv.train import validate_config

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "experiments", "configs")

# Config module -> the arguments to check (None: the default). A new config must be added here.
ARGS = {
    "digits_resnet": [None, "runlocal"],
    "mnist1d_resnet": [None, "runlocal"],
    "cifar10_resnet": [None, "resnet56", "resnet20,runlocal", "preact_resnet164"],
    "imagenet_resnet": ["resnet50", "resnet18,runlocal"],
    "cifar10_vgg": [None, "vgg19_bn_cifar", "vgg16_bn_cifar,runlocal"],
    "cifar10_mobilenet": [None, "mobilenetv1_100,runlocal"],
    "cifar10_densenet": [None, "runlocal"],
    "cifar10_wrn": [None, "wrn16_8", "runlocal"],
    "cifar10_nin": [None, "runlocal"],
    "cifar10_allcnn": [None, "runlocal"],
    "cifar10_convnext": [None, "inception_next_tiny", "ecaresnet50d", "convnext_tiny,runlocal",
                         "inception_next_tiny,runlocal", "ecaresnet50d,runlocal"],
    "cifar10_coatnet": [None, "coatnet_0_224", "coatnet_0_rw_224,runlocal"],
    "cifar10_replknet": [None, "runlocal", "unireplknet_a,runlocal"],
    "cifar10_attention": [None, "nat_tiny", "cvt_13", "nat_mini,runlocal", "cvt_13,runlocal"],
    "seq_tasks": [None, "listops", "copy_memory", "assoc_recall,runlocal", "adding,runlocal",
                  "assoc_recall,seq_attention_tiny,runlocal"],
    "seq_ucr": [None, "osuleaf,ucr_resnet", "basicmotions,runlocal"],
    # The training recipes: validated (and their runlocal trained) in tests/test_recipe_configs.py.
    "imagenet_convnext": [],
    "imagenet_resnet_rsb": [],
    "imagenet_finetune": [],
    "cifar10_distill": [],
}


def test_every_config_is_listed():
    names = {f[:-3] for f in os.listdir(CONFIGS) if f.endswith(".py") and f != "__init__.py"}
    assert names == set(ARGS), f"add new configs to ARGS: {sorted(names ^ set(ARGS))}"


@pytest.mark.parametrize("name, arg", [(n, a) for n, args in ARGS.items() for a in args])
def test_config_validates(name, arg):
    config = importlib.import_module(f"experiments.configs.{name}").get_config(arg)
    # Memory is checked against the machine a run trains on: ImageNet configs target TPU slices.
    validate_config(config, check_fits_machine=name != "imagenet_resnet")
    module_doc = importlib.import_module(f"experiments.configs.{name}").__doc__
    assert "python -m experiments.train" in module_doc and "xpected" in module_doc
    if arg and "runlocal" in arg:
        # Smoke settings must train on offline data, on a CPU, in minutes.
        # (imagenet_resnet's runlocal is a short run on prepared ImageNet, by design.)
        assert config.dataset not in TFDS_DATASETS or name == "imagenet_resnet"


@pytest.mark.parametrize("name", sorted(ARGS))
def test_unknown_argument_is_rejected(name):
    with pytest.raises(ValueError):
        validate_config(importlib.import_module(f"experiments.configs.{name}")
                        .get_config("no_such_model,runlocal"))
