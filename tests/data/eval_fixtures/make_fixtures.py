"""Writes the timm evaluation-preprocessing fixtures (run with the torch+timm venv):

    /work/torchvenv/bin/python tests/data/eval_fixtures/make_fixtures.py

timm_eval.npz: a few uint8 images (RGB and gray, landscape/portrait/square, generated here with a
fixed seed) and what `timm.data.create_transform(is_training=False, ...)` makes of each under
several (input size, crop_pct, interpolation, mean/std) settings, as float32 HWC.
timm_pretrained_cfgs.json: timm's default pretrained config (input size, interpolation, crop_pct,
mean, std) of every jaxconv model name timm also has, to check jaxconv's table against.
"""
import json
import os
import sys

import numpy as np
import timm
import torch
from PIL import Image
from timm.data import create_transform

HERE = os.path.dirname(os.path.abspath(__file__))
INCEPTION = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# (input size, crop_pct, interpolation, (mean, std))
SETTINGS = [(32, 0.875, "bicubic", IMAGENET), (24, 0.95, "bilinear", IMAGENET),
            (28, 1.0, "nearest", INCEPTION), (30, 0.9, "lanczos", IMAGENET),
            (20, 0.8, "box", IMAGENET), (26, 0.875, "hamming", INCEPTION)]
SHAPES = [(37, 50, 3), (61, 40, 3), (45, 45, 1), (33, 29, 3)]


def make_image(rng, shape):
    h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    smooth = [128 + 100 * np.sin(xx / (3 + k) + yy / (5 + 2 * k) + k) for k in range(c)]
    x = np.stack(smooth, -1) + rng.normal(0, 20, (h, w, c))
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def main():
    rng = np.random.default_rng(0)
    arrays = {}
    for i, shape in enumerate(SHAPES):
        img = make_image(rng, shape)
        arrays[f"image{i}"] = img
        pil = Image.fromarray(img[..., 0] if shape[2] == 1 else img).convert("RGB")
        for j, (size, crop_pct, interp, (mean, std)) in enumerate(SETTINGS):
            t = create_transform(input_size=size, is_training=False, crop_pct=crop_pct,
                                 interpolation=interp, mean=mean, std=std)
            out = t(pil)
            assert isinstance(out, torch.Tensor) and out.shape == (3, size, size), out.shape
            arrays[f"out{i}_{j}"] = out.permute(1, 2, 0).numpy().astype(np.float32)
    arrays["settings"] = np.array(json.dumps(SETTINGS))
    np.savez_compressed(os.path.join(HERE, "timm_eval.npz"), **arrays)

    names = sys.argv[1:] or [
        "coatnet_0_rw_224", "convnext_tiny", "convnext_small", "convnext_base", "densenet121",
        "densenet169", "densenet201", "ecaresnet50d", "inception_next_tiny",
        "inception_next_small", "inception_next_base", "inception_v3", "mobilenetv1_100",
        "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "vgg11", "vgg11_bn",
        "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn", "wide_resnet50_2",
        "wide_resnet101_2"]
    cfgs = {}
    for name in names:
        cfg = timm.models.get_pretrained_cfg(name)
        if cfg is None:
            tags = timm.list_pretrained(name + ".*")
            cfg = timm.models.get_pretrained_cfg(tags[0])
        cfgs[name] = {"image_size": cfg.input_size[1], "interpolation": cfg.interpolation,
                      "crop_pct": cfg.crop_pct, "mean": list(cfg.mean), "std": list(cfg.std)}
    with open(os.path.join(HERE, "timm_pretrained_cfgs.json"), "w") as f:
        json.dump({"timm_version": timm.__version__, "cfgs": cfgs}, f, indent=1, sort_keys=True)


if __name__ == "__main__":
    main()
