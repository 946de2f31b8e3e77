"""Forking: a copied model file imports and runs beside jaxconv, any factory trains by spec.

Every file of jaxconv/models is covered (globbed, so files added later are too): copied into a
temporary package and imported next to jaxconv, its builders create modules (no init), and
jaxconv's registry and timm conversion rules stay exactly as they were.
"""

from __future__ import annotations

import ast
import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import warnings

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

import jaxconv
from jaxconv import registry
from jaxconv.convert import timm as timm_convert
from jaxconv.models.resnet import BasicBlock, ResNet

ROOT = pathlib.Path(jaxconv.__file__).resolve().parent.parent
MODEL_FILES = sorted(p for p in (ROOT / "jaxconv" / "models").glob("*.py")
                     if p.name != "__init__.py")
#: What a model file must not import at module level: these pull in the converter, trainer or
#: data pipeline (the converter once made a copied file replace jaxconv's conversion rules).
FORBIDDEN_IMPORTS = ("jaxconv.convert", "jaxconv.train", "jaxconv.data", "experiments")


def _registry_state():
    return {name: registry._REGISTRY[name] for name in jaxconv.list_models()}


def test_every_model_file_is_covered():
    assert len(MODEL_FILES) >= 15 and ROOT / "jaxconv/models/convnext.py" in MODEL_FILES


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_model_file_imports_only_layers_and_registry(path):
    tree = ast.parse(path.read_text())
    imported = [node.module for node in tree.body if isinstance(node, ast.ImportFrom)]
    imported += [a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names]
    bad = [m for m in imported if m and m.startswith(FORBIDDEN_IMPORTS)]
    assert not bad, f"{path.name} imports {bad} at module level"


@pytest.mark.parametrize("path", MODEL_FILES, ids=lambda p: p.stem)
def test_copied_model_file_runs_beside_jaxconv(path, tmp_path, monkeypatch):
    package = f"fork_{path.stem}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    shutil.copy(path, tmp_path / package / f"my_{path.stem}.py")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module(f"jaxconv.models.{path.stem}")  # the original first (new files too)
    models, rules = _registry_state(), dict(timm_convert._FAMILIES)

    module_name = f"{package}.my_{path.stem}"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = __import__(module_name, fromlist=["_"])
    builders = [v for v in vars(module).values()
                if callable(v) and getattr(v, "__module__", None) == module_name
                and isinstance(getattr(v, "model_info", None), registry.ModelInfo)]
    duplicates = [w for w in caught if issubclass(w.category, registry.DuplicateModelWarning)]
    assert len(duplicates) == (1 if builders else 0)  # one clear warning per copied file
    assert not [w for w in caught if not issubclass(w.category, (registry.DuplicateModelWarning,
                                                                   DeprecationWarning))]
    for builder in builders:
        spec = f"{module_name}:{builder.__name__}"
        model = jaxconv.create_model(spec)
        assert isinstance(model, nn.Module)
        assert type(model) is not type(jaxconv.create_model(builder.__name__))  # the copy's class
        assert jaxconv.model_info(spec).input_size == jaxconv.model_info(builder.__name__).input_size
    assert _registry_state() == models
    assert dict(timm_convert._FAMILIES) == rules
    sys.modules.pop(module_name, None)


# ------------------------------------------------------------------ families take block classes


class ScaledBasicBlock(BasicBlock):
    """A forked residual block: its output gets a learned scalar gain."""

    @nn.compact
    def __call__(self, x, drop_path_rate=0.0):
        return self.param("gain", nn.initializers.ones, ()) * super().__call__(x, drop_path_rate)


def test_resnet_takes_a_block_class():
    model = jaxconv.create_model("resnet20", block=ScaledBasicBlock, stage_sizes=(1, 1, 1),
                                 scan_blocks=False)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))))
    assert params["params"]["layer2_0"]["gain"].shape == ()
    with pytest.raises(ValueError, match="block class Dense must be a flax.linen.Module with the "
                                         "'expansion' and 'preact'"):
        ResNet(stage_sizes=(1,), widths=(4,), block=nn.Dense)
    with pytest.raises(ValueError, match=r"block must be one of \['basic'"):
        ResNet(stage_sizes=(1,), widths=(4,), block="basicc")


# ------------------------------------------------------------ train by file spec, elsewhere


def test_train_one_step_from_file_spec_in_another_directory(tmp_path):
    """`experiments.train --config.model=myproj/my_resnet.py:resnet20`, run outside the repo."""
    (tmp_path / "myproj").mkdir()
    shutil.copy(ROOT / "jaxconv/models/resnet.py", tmp_path / "myproj" / "my_resnet.py")
    spec = "myproj/my_resnet.py:resnet20"
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run(
        [sys.executable, "-m", "experiments.train",
         "--config", f"{ROOT}/experiments/configs/digits_resnet.py:runlocal",
         "--workdir", "runs/fork", f"--config.model={spec}",
         "--config.model_overrides.stage_sizes=(1,1,1)", "--config.num_train_steps=1",
         "--config.batch_size=16"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    final = json.loads((tmp_path / "runs/fork/final_metrics.json").read_text())
    assert final["model"] == spec and final["step"] == 1
    assert final["num_params"] < 0.27e6  # the override reached the copy (resnet20: 0.27M)
    assert out.stderr.count("DuplicateModelWarning") == 1


def test_readme_fork_example_builds_by_file_spec(tmp_path):
    """The README's gated_convnext.py, written out as a user would: created by its file spec,
    with the forked block's gate in every block."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("# gated_convnext.py\n")
    code = readme[start:readme.index("```", start)]
    (tmp_path / "gated_convnext.py").write_text(code)
    spec = f"{tmp_path}/gated_convnext.py:gated_convnext_tiny"
    try:
        model = jaxconv.create_model(spec, depths=(1, 1), dims=(8, 16), num_classes=3)
        # A new name: the fork gets its own registry entry, beside ConvNeXt's.
        assert jaxconv.list_models("*convnext_tiny") == ["convnext_tiny", "gated_convnext_tiny"]
    finally:
        registry._REGISTRY.pop("gated_convnext_tiny", None)
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3))))
    block = variables["params"]["stages_1"]["blocks_0"]
    assert block["gate"].shape == (16,) and "gamma" not in block
    assert block["conv_dw"]["kernel"].shape == (7, 7, 16)
    assert jaxconv.model_info(spec).family == "gated_convnext"
