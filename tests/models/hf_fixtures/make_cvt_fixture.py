"""Write the CvT parity fixture ``cvt_13.npz``: Hugging Face transformers' CvT-13 logits for
seeded weights (timm has no CvT; transformers' ``CvtForImageClassification`` is a port of the
authors' code, microsoft/CvT).

Runs in the timm venv with ``pip install transformers`` added (torch, no JAX), never in CI.
From the repository root::

    /work/timm-venv/bin/python tests/models/hf_fixtures/make_cvt_fixture.py

Same recipe and file format as ``tests/models/timm_fixtures/make_fixtures.py``: the state dict
``jaxconv/convert/seeded.py`` (imported by path: NumPy only) makes from the model's (key, shape)
list, eval mode on a seeded (2, 3, 32, 32) input, saved with ``seeded.write_fixture``.
transformers' CvT uses exact GELU in its MLPs where the authors use QuickGELU, so the test builds
``cvt_13(mlp_act="gelu")`` for it.
"""
from __future__ import annotations

import importlib.util
import os
import sys

import numpy as np
import torch
import transformers
from transformers import CvtConfig, CvtForImageClassification

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
SEED, INPUT_SEED, SHAPE = 0, 1, (2, 3, 32, 32)


def _seeded():
    spec = importlib.util.spec_from_file_location(
        "seeded", os.path.join(ROOT, "jaxconv", "convert", "seeded.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules["seeded"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def main():
    seeded = _seeded()
    model = CvtForImageClassification(CvtConfig(num_labels=1000)).eval()  # CvT-13 defaults
    entries = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    state_dict = seeded.seeded_state_dict(entries, SEED)
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=False)
    with torch.no_grad():
        logits = model(torch.from_numpy(seeded.seeded_input(SHAPE, INPUT_SEED))).logits.numpy()
    versions = (f"transformers={transformers.__version__} torch={torch.__version__} "
                f"numpy={np.__version__}")
    path = os.path.join(HERE, "cvt_13.npz")
    seeded.write_fixture(path, entries=entries, state_dict=state_dict, seed=SEED,
                         input_seed=INPUT_SEED, input_shape=SHAPE, logits=logits, slow=False,
                         versions=versions)
    print(f"wrote {path}: {sum(v.numel() for v in model.parameters()):,} params, {versions}")


if __name__ == "__main__":
    main()
