"""python -m experiments.list: models, datasets, configs, sweeps; errors in one line."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

import jaxconv
from experiments import list as list_cli
from jaxconv import data


def test_models_with_pattern(capsys):
    rows = list_cli.main(["models", "convnext_*"])
    assert [r["model"] for r in rows] == jaxconv.list_models("convnext_*")
    tiny = next(r for r in rows if r["model"] == "convnext_tiny")
    assert (tiny["family"], tiny["input"], tiny["classes"]) == ("convnext", "224x224x3", 1000)
    assert tiny["params"] == "28,589,128"  # from the builder's docstring (timm's count)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["model", "family", "input", "classes", "params", "paper"]
    assert len(out) == 1 + len(rows)


def test_models_exact_params():
    row, = list_cli.main(["models", "resnet20", "--params"])
    assert row["params"] == "269,722"  # He et al. 2016: 0.27M (option-A shortcuts)


def test_all_models_and_datasets_listed():
    assert [r["model"] for r in list_cli.main(["models"])] == jaxconv.list_models()
    rows = list_cli.main(["datasets"])
    assert [r["dataset"] for r in rows] == data.list_datasets()
    digits = next(r for r in rows if r["dataset"] == "digits")
    assert (digits["input"], digits["classes"]) == ("8x8x1", 10)


def test_configs_and_sweeps_list_every_file():
    root = pathlib.Path(list_cli.__file__).parent / "configs"
    configs = list_cli.main(["configs"])
    assert {r["config"] for r in configs} == {
        f"experiments/configs/{p.name}" for p in root.glob("*.py") if p.name != "__init__.py"}
    demo = next(r for r in list_cli.main(["sweeps"])
                if r["sweep"] == "experiments/configs/sweeps/demo.py")
    assert "make demo" in demo["about"]


def test_unknown_pattern_is_one_line_with_close_matches():
    out = subprocess.run([sys.executable, "-m", "experiments.list", "models", "resnet_20"],
                         capture_output=True, text=True,
                         cwd=pathlib.Path(list_cli.__file__).parent.parent)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()]  # one line, no traceback
    assert "no registered model matches 'resnet_20'; did you mean resnet20" in out.stderr


def test_bad_subcommand_exits():
    with pytest.raises(SystemExit):
        list_cli.main(["modelz"])
