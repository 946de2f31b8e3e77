"""Writes timm's layer-wise lr decay groups as fixtures for tests/train/test_layer_decay.py.

For each model, ``layer_ids.json`` holds timm's layer id (``group_parameters`` with the model's
fine ``group_matcher``, as ``param_groups_layer_decay`` uses it) and timm's lr scale at
layer_decay=0.75 for every parameter name. Run with the torch+timm venv (random weights, no
download):

    /work/torchvenv/bin/python tests/train/layer_decay_fixtures/make_fixtures.py
"""
import json
import os

import timm
import torch
from timm.models import group_parameters
from timm.optim import param_groups_layer_decay

MODELS = ("convnext_tiny", "inception_next_tiny", "resnet50", "ecaresnet50d",
          "coatnet_0_rw_224")
DECAY = 0.75


def main():
    out = {"timm_version": timm.__version__, "layer_decay": DECAY, "models": {}}
    for name in MODELS:
        model = timm.create_model(name, pretrained=False)
        ids = group_parameters(model, model.group_matcher(coarse=False), reverse=True)
        by_tensor = {id(p): n for n, p in model.named_parameters()}
        scales = {}
        for group in param_groups_layer_decay(model, weight_decay=0.05, layer_decay=DECAY):
            for p in group["params"]:
                scales[by_tensor[id(p)]] = group["lr_scale"]
        names = [n for n, _ in model.named_parameters()]
        assert set(scales) == set(names)
        out["models"][name] = {
            "num_layers": max(ids.values()) + 1,
            # Parameters the matcher leaves out get timm's default, the last layer.
            "layer_id": {n: ids.get(n, max(ids.values())) for n in names},
            "lr_scale": {n: scales[n] for n in names},
        }
        print(name, len(names), "parameters,", out["models"][name]["num_layers"], "layers")
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "layer_ids.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=0, sort_keys=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
