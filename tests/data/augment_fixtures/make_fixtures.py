"""Writes the fixtures of tests/data/test_augment_recipes.py from timm and torchvision.

    /work/torchvenv/bin/python tests/data/augment_fixtures/make_fixtures.py

Needs timm (1.x), torchvision and pillow; the project itself never imports torch. Writes, next
to this file:
  images.npz      the two input images (RGB 18x22, grayscale 14x12), from a fixed numpy seed
  timm_ops.npz    timm.data.auto_augment op outputs: key "<image>|<op>|<magnitude>|<negate>"
  tv_ops.npz      torchvision TrivialAugmentWide `_apply_op` outputs: "<image>|<op>|<bin>|<sign>",
                  TrivialAugmentWide's magnitude tables, and ColorJitter functional outputs
  policies.json   timm's parsed RandAugment strings and AutoAugment policy tables
"""
import json
import os

import numpy as np
from PIL import Image
import timm
from timm.data import auto_augment as taa
import torchvision
from torchvision.transforms import InterpolationMode, autoaugment as tva
from torchvision.transforms import functional as TF

HERE = os.path.dirname(os.path.abspath(__file__))
RGB_FILL = (124, 116, 104)   # round(255 * ImageNet mean), timm's img_mean
L_FILL = 128
TRANSLATE_CONST = 8
MAGNITUDES = (2, 6.5, 10)
TA_BINS = (0, 7, 19, 30)
RA_STRINGS = ("rand-m9-mstd0.5-inc1", "rand-m9-mstd0.5", "rand-m7-n3-mstd1.0-inc1-mmax12",
              "rand-m10-n1-p0.8", "rand-m5-mstd101", "rand-n4-inc0", "rand", "rand-m12-mmax0")
AA_STRINGS = ("original", "originalr", "v0", "v0r", "original-mstd0.5", "v0-mstd2")


def make_images():
  rng = np.random.default_rng(20261206)
  def structured(h, w, c):
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * 255 / (w - 1)), (yy * 255 / (h - 1)),
                     128 + 100 * np.sin(xx / 2.0 + yy / 3.0)], -1)[..., :c]
    noise = rng.normal(0, 20, size=(h, w, c))
    return np.clip(base * 0.8 + 20 + noise, 0, 255).astype(np.uint8)
  rgb = structured(18, 22, 3)
  gray = structured(14, 12, 1)[..., 0]
  return {"rgb": rgb, "gray": gray}


def timm_ops(images):
  out = {}
  hparams = dict(translate_const=TRANSLATE_CONST, img_mean=RGB_FILL)
  for key, arr in images.items():
    img = Image.fromarray(arr)
    fill = RGB_FILL if key == "rgb" else L_FILL
    resample = Image.BILINEAR if key == "rgb" else Image.BICUBIC
    for name in taa.NAME_TO_OP:
      if name in ("Desaturate", "GaussianBlur", "GaussianBlurRand"):
        continue
      level_fn = taa.LEVEL_TO_ARG[name]
      for m in MAGNITUDES:
        for negate in (False, True):
          taa._randomly_negate = (lambda v: -v) if negate else (lambda v: v)  # pylint: disable=protected-access
          args = level_fn(m, hparams) if level_fn is not None else ()
          if name.startswith("Posterize") and args[0] < 1:
            continue  # Pillow >= 12 refuses 0 bits (older Pillow gave a black image)
          res = taa.NAME_TO_OP[name](img, *args, fillcolor=fill, resample=resample)
          out[f"{key}|{name}|{m}|{int(negate)}"] = np.asarray(res)
  return out


def tv_ops(images):
  out = {}
  space = tva.TrivialAugmentWide()._augmentation_space(31)  # pylint: disable=protected-access
  for name, (mags, signed) in space.items():
    out[f"table|{name}"] = mags.numpy()
  for key, arr in images.items():
    img = Image.fromarray(arr)
    for name, (mags, signed) in space.items():
      bins = TA_BINS if mags.ndim > 0 else (0,)
      for b in bins:
        for sign in ((1, -1) if signed else (1,)):
          m = float(mags[b].item()) if mags.ndim > 0 else 0.0
          res = tva._apply_op(img, name, sign * m, interpolation=InterpolationMode.NEAREST,  # pylint: disable=protected-access
                              fill=None)
          out[f"{key}|{name}|{b}|{sign}"] = np.asarray(res)
    # ColorJitter's functional ops in one order with fixed factors (brightness, contrast,
    # saturation applied as order 2, 0, 1).
    res = TF.adjust_saturation(TF.adjust_brightness(TF.adjust_contrast(img, 1.3), 0.7), 1.25)
    out[f"{key}|jitter"] = np.asarray(res)
  return out


def ops_of(transform_ops):
  return [dict(name=op.name, prob=op.prob, magnitude=op.magnitude,
               magnitude_std=op.magnitude_std, magnitude_max=op.magnitude_max)
          for op in transform_ops]


def policies():
  ra = {}
  for s in RA_STRINGS:
    t = taa.rand_augment_transform(s, dict(translate_const=100, img_mean=RGB_FILL))
    ra[s] = dict(num_layers=t.num_layers, ops=ops_of(t.ops))
  aa = {}
  for s in AA_STRINGS:
    t = taa.auto_augment_transform(s, dict(translate_const=100, img_mean=RGB_FILL))
    aa[s] = [ops_of(sub) for sub in t.policy]
  return dict(randaugment=ra, autoaugment=aa)


def main():
  images = make_images()
  np.savez_compressed(os.path.join(HERE, "images.npz"), **images)
  np.savez_compressed(os.path.join(HERE, "timm_ops.npz"), **timm_ops(images))
  np.savez_compressed(os.path.join(HERE, "tv_ops.npz"), **tv_ops(images))
  with open(os.path.join(HERE, "policies.json"), "w") as f:
    json.dump(dict(versions=dict(timm=timm.__version__, torchvision=torchvision.__version__,
                                 pillow=Image.__version__), **policies()),
              f, indent=1, default=lambda x: None if x != x else str(x))
  print("wrote", sorted(os.listdir(HERE)))


if __name__ == "__main__":
  main()
