"""The notebooks execute end to end (on a tiny sweep and a few models), and are stored clean."""

from __future__ import annotations

import os

import nbformat
import pytest
from nbclient import NotebookClient

from jaxconv.train import sweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = os.path.join(REPO, "notebooks")
ALL = sorted(f for f in os.listdir(NOTEBOOKS) if f.endswith(".ipynb"))


def execute(name: str) -> nbformat.NotebookNode:
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": NOTEBOOKS}}).execute()
    return nb


def outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            parts.extend(str(v) for k, v in out.get("data", {}).items() if k == "text/plain")
    return "\n".join(parts)


def test_expected_notebooks_exist():
    assert {"explore_sweep.ipynb", "model_zoo.ipynb"} <= set(ALL)


@pytest.mark.parametrize("name", ALL)
def test_notebooks_are_committed_without_outputs(name):
    nb = nbformat.read(os.path.join(NOTEBOOKS, name), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, \
                f"{name} has outputs: clear them before committing"


def test_explore_sweep_runs_on_a_tiny_sweep(tmp_path, monkeypatch, write_sweep):
    spec = sweep.load_sweep(write_sweep(tmp_path, steps=4))
    sweep.run_sweep(spec, str(tmp_path / "out"))
    monkeypatch.setenv("JAXCONV_SWEEP_DIR", str(tmp_path / "out"))
    nb = execute("explore_sweep.ipynb")
    text = outputs_text(nb)
    assert "tiny_sweep: 2 runs" in text
    assert "shallow better in" in text  # the deep vs shallow section found both layouts
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) >= 3


def test_model_zoo_lists_models_and_draws_stages(monkeypatch):
    monkeypatch.setenv("JAXCONV_MODELS", "resnet[25]0,nin_cifar,allcnn_c")
    monkeypatch.setenv("JAXCONV_MODEL", "resnet20")
    nb = execute("model_zoo.ipynb")
    text = outputs_text(nb)
    for name in ("resnet20", "resnet50", "nin_cifar", "allcnn_c", "stage2"):
        assert name in text, name
    assert "0.27" in text  # resnet20's 0.27M parameters
    assert "4 models in 3 families" in text
    assert "3 families drawn in 3 distinct styles" in text


def test_receptive_fields_compares_models_at_a_small_size(monkeypatch):
    """receptive_fields.ipynb (issue 6) on toy-depth/width models of each family (96x96 input,
    2 inputs): the area-ratio table and the heatmaps come out."""
    monkeypatch.setenv("JAXCONV_ERF_SMALL", "1")
    monkeypatch.setenv("JAXCONV_ERF_SIZE", "96")
    monkeypatch.setenv("JAXCONV_ERF_INPUTS", "2")
    nb = execute("receptive_fields.ipynb")
    text = outputs_text(nb)
    for label in ("ResNet-50", "ConvNeXt-T", "large kernel", "ConvNeXt-T-dcls", "t=20%", "t=99%"):
        assert label in text, label
    images = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(images) == 1
