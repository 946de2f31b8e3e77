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


def test_register_duplicate_warns_and_keeps_jaxconv_entry():
    def resnet20(**overrides):  # same name, different function (a forked copy)
        return nn.Dense(1)

    before = {n: registry._REGISTRY[n] for n in jaxconv.list_models()}
    decorator = registry.register_model(family="x", paper="p", input_size=(1, 1, 1), num_classes=1)
    with pytest.warns(registry.DuplicateModelWarning,
                      match=r"'resnet20' is already registered by jaxconv\.models\.resnet"):
        assert decorator(resnet20) is resnet20
    assert {n: registry._REGISTRY[n] for n in jaxconv.list_models()} == before
    assert resnet20.model_info.family == "x"  # the copy keeps its own metadata


def test_register_rejects_bad_metadata():
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


# ------------------------------------------------------------ 'module:factory' / 'file.py:factory'

MODEL_FILE = """
import flax.linen as nn
import jax.numpy as jnp
from jaxconv.registry import register_model


class Tiny(nn.Module):
    num_classes: int = 3
    dtype: object = jnp.float32
    width: int = 4

    @nn.compact
    def __call__(self, x, train=False):
        return nn.Dense(self.num_classes)(nn.Dense(self.width)(x.mean(axis=(1, 2))))


def tiny(num_classes=3, dtype=jnp.float32, width=4):
    return Tiny(num_classes, dtype, width)


@register_model(family="test", paper="none", input_size=(8, 8, 1), num_classes=5)
def resnet20(**overrides):
    \"\"\"A copy's builder with a taken name.\"\"\"
    return Tiny(**{"num_classes": 5, **overrides})


def not_a_model(**overrides):
    return 3
"""


@pytest.fixture
def model_file(tmp_path, monkeypatch):
    path = tmp_path / "my_models.py"
    path.write_text(MODEL_FILE)
    monkeypatch.chdir(tmp_path)
    return path


def test_create_model_from_file_spec(model_file):
    before = jaxconv.list_models()
    with pytest.warns(registry.DuplicateModelWarning, match="'my_models.py:resnet20'"):
        model = jaxconv.create_model("my_models.py:tiny", num_classes=7, width=2)
    assert type(model).__name__ == "Tiny" and (model.num_classes, model.width) == (7, 2)
    # The same file by its absolute path is the same module (imported once).
    assert type(jaxconv.create_model(f"{model_file}:tiny")) is type(model)
    copy = jaxconv.create_model("my_models.py:resnet20", width=3)
    assert (copy.num_classes, copy.width) == (5, 3)
    assert jaxconv.list_models() == before
    assert type(jaxconv.create_model("resnet20")).__name__ == "ResNet"
    info = jaxconv.model_info("my_models.py:resnet20")
    assert (info.name, info.input_size, info.num_classes) == ("my_models.py:resnet20", (8, 8, 1), 5)


def test_create_model_from_module_spec():
    model = jaxconv.create_model("jaxconv.models.resnet:resnet20", num_classes=3)
    assert model == jaxconv.create_model("resnet20", num_classes=3)
    assert jaxconv.model_info("jaxconv.models.resnet:resnet20").family == "resnet"


@pytest.mark.filterwarnings("ignore::jaxconv.registry.DuplicateModelWarning")
@pytest.mark.parametrize("spec, overrides, match", [
    ("missing.py:tiny", {}, r"does not exist"),
    ("my_models.py:tinny", {}, r"no callable 'tinny'.*Did you mean 'tiny'"),
    ("my_models.py:tiny", {"depth": 3}, r"unknown override\(s\) \['depth'\].*'width'"),
    ("my_models.py:resnet20", {"depth": 3}, r"unknown override\(s\) \['depth'\]"),
    ("my_models.py:not_a_model", {}, r"returned int, not a flax.linen.Module"),
    ("no_such_package.mod:f", {}, r"cannot import 'no_such_package.mod'"),
    ("my_models.py:", {}, r"must be 'package.module:factory'"),
])
def test_bad_specs_name_the_problem(model_file, spec, overrides, match):
    with pytest.raises(ValueError, match=match):
        jaxconv.create_model(spec, **overrides)


@pytest.mark.filterwarnings("ignore::jaxconv.registry.DuplicateModelWarning")
def test_model_info_of_factory_without_metadata(model_file):
    with pytest.raises(ValueError, match="has no metadata.*register_model"):
        jaxconv.model_info("my_models.py:tiny")
