"""Model registry: lookup, overrides, errors, metadata. Nothing here compiles."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import flax.linen as nn
import jax.numpy as jnp
import pytest

import jaxconv
from jaxconv import registry


def test_list_models_sorted_and_filtered():
    names = jaxconv.list_models()
    assert names == sorted(names) and len(names) == len(set(names))
    assert {"resnet20", "resnet1202", "resnet50", "preact_resnet164"} <= set(names)
    assert jaxconv.list_models("preact_*") == [
        "preact_resnet1001", "preact_resnet110", "preact_resnet164"
    ]
    assert jaxconv.list_models("resnet1?") == ["resnet18"]
    assert jaxconv.list_models("resnet1??") == ["resnet101", "resnet110", "resnet152"]
    assert jaxconv.list_models("no_such_*") == []
    assert jaxconv.list_models("*", family="resnet") == [
        n for n in names if jaxconv.model_info(n).family == "resnet"
    ]


def test_model_info_fields():
    info = jaxconv.model_info("resnet56")
    assert isinstance(info, jaxconv.ModelInfo)
    assert info.name == "resnet56" and info.family == "resnet"
    assert info.paper == (
        "He et al. 2016, Deep Residual Learning for Image Recognition, arXiv:1512.03385"
    )
    assert info.input_size == (32, 32, 3) and info.num_classes == 10
    assert info.module == "jaxconv.models.resnet" and info.description
    assert "arXiv:1603.05027" in jaxconv.model_info("preact_resnet164").paper
    imagenet = jaxconv.model_info("resnet50")
    assert imagenet.input_size == (224, 224, 3) and imagenet.num_classes == 1000
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.num_classes = 100


@pytest.mark.parametrize("name", jaxconv.list_models())
def test_info_matches_built_module(name):
    model = jaxconv.create_model(name)
    info = jaxconv.model_info(name)
    assert isinstance(model, nn.Module)
    assert model.num_classes == info.num_classes
    assert model.dtype == jnp.float32
    # Stochastic depth, where a model has it, is off by default.
    assert getattr(model, "drop_path_rate", 0.0) == 0.0
    assert "arXiv:" in info.paper


def test_overrides_are_applied():
    model = jaxconv.create_model(
        "resnet20", num_classes=100, drop_path_rate=0.1, dtype="bfloat16", scan_blocks=False
    )
    assert (model.num_classes, model.drop_path_rate, model.scan_blocks) == (100, 0.1, False)
    assert model.dtype == jnp.bfloat16
    assert jaxconv.create_model("resnet20").num_classes == 10  # defaults untouched
    assert jaxconv.create_model("resnet20", stage_sizes=[1, 1, 1]).stage_sizes == (1, 1, 1)


def test_unknown_name_suggests_close_matches():
    with pytest.raises(ValueError) as err:
        jaxconv.create_model("resnet5")
    message = str(err.value)
    assert "resnet50" in message and "resnet56" in message
    assert "jaxconv.list_models()" in message
    with pytest.raises(ValueError, match="preact_resnet164"):
        jaxconv.model_info("preact_resnet_164")
    with pytest.raises(ValueError, match="list_models"):
        jaxconv.create_model("zzzz")


def test_unknown_override_lists_valid_keys():
    with pytest.raises(ValueError) as err:
        jaxconv.create_model("resnet20", num_class=100)
    message = str(err.value)
    assert "num_class" in message
    for key in ("num_classes", "dtype", "drop_path_rate", "zero_init_last_bn", "scan_blocks"):
        assert key in message
    assert "'parent'" not in message and "'name'" not in message
    with pytest.raises(ValueError, match="valid keys"):
        jaxconv.create_model("resnet20", parent=None)


@pytest.mark.parametrize(
    "overrides, names_valid",
    [
        (dict(num_classes=0), "num_classes"),
        (dict(num_classes=2.5), "num_classes"),
        (dict(dtype="float8"), "bfloat16"),
        (dict(dtype=jnp.int32), "float32"),
        (dict(drop_path_rate=1.0), r"\[0, 1\)"),
        (dict(drop_path_rate=-0.1), r"\[0, 1\)"),
        (dict(block="resnext"), "preact_bottleneck"),
        (dict(shortcut="C"), "'A', 'B'"),
        (dict(stem="bogus"), "imagenet"),
        (dict(stage_sizes=(3, 3)), "equal length"),
        (dict(stage_sizes=(3, 0, 3)), "stage_sizes"),
    ],
)
def test_bad_values_raise_naming_valid_values(overrides, names_valid):
    with pytest.raises(ValueError, match=names_valid):
        jaxconv.create_model("resnet20", **overrides)


def test_register_rejects_duplicates_and_bad_metadata():
    def resnet20(**overrides):  # same name, different function
        return nn.Dense(1)

    decorator = registry.register_model(family="x", paper="p", input_size=(1, 1, 1), num_classes=1)
    with pytest.raises(ValueError, match="already registered"):
        decorator(resnet20)
    for bad_size in ((32, 0), (), (1, 2, 3, 4, 5), [32, 32, 3], (32.0, 3)):
        with pytest.raises(ValueError, match="input_size"):
            registry.register_model(family="x", paper="p", input_size=bad_size, num_classes=1)
    with pytest.raises(ValueError, match="input_dtype"):
        registry.register_model(family="x", paper="p", input_size=(16,), num_classes=1,
                                input_dtype="int8")
    with pytest.raises(ValueError, match="num_classes"):
        registry.register_model(family="x", paper="p", input_size=(1, 1, 1), num_classes=0)


def test_register_and_create_custom_model():
    class Tiny(nn.Module):
        num_classes: int = 3
        dtype: object = jnp.float32
        drop_path_rate: float = 0.0

        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))

    def _test_tiny_model(**overrides):
        """A tiny test model."""
        return Tiny(**overrides)

    registry.register_model(family="test", paper="none", input_size=(4, 4, 1), num_classes=3)(
        _test_tiny_model
    )
    try:
        assert jaxconv.list_models("_test_*") == ["_test_tiny_model"]
        assert jaxconv.create_model("_test_tiny_model", num_classes=7).num_classes == 7
        assert jaxconv.model_info("_test_tiny_model").description == "A tiny test model."
    finally:
        del registry._REGISTRY["_test_tiny_model"]


def test_import_registers_models_without_compiling():
    code = (
        "import jax; jax.config.update('jax_log_compiles', True)\n"
        "import sys, jaxconv\n"
        "assert 'jaxconv.models.resnet' in sys.modules\n"
        "print(len(jaxconv.list_models()))\n"
    )
    root = os.path.dirname(os.path.dirname(jaxconv.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert int(out.stdout.strip()) == len(jaxconv.list_models())
    assert "Compiling" not in out.stderr and "Finished" not in out.stderr
