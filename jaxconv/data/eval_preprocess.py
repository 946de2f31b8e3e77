"""timm's evaluation preprocessing in NumPy + PIL, and timm's default settings per model.

`timm_eval_transform(image, ...)` equals `timm.data.create_transform(input_size=S,
is_training=False, crop_pct=p, interpolation=i, mean=m, std=s)` applied to the image converted to
RGB (what timm's loaders do), within float32 rounding (tested against committed timm fixtures):

  1. resize so the shorter side is floor(S / p) and the longer int(floor(S / p) * long / short)
     (torchvision's rule), with PIL's filter `i` (PIL antialiases; torchvision's PIL path calls
     the same PIL resize); an image already at that size is not resized;
  2. centre crop S x S, top = int(round((h - S) / 2)), left likewise;
  3. x / 255, then (x - mean) / std per channel (float32).

`TIMM_PRETRAINED_EVAL` holds timm's default pretrained config (its first tag) of each jaxconv model
timm also has; `timm_eval_settings(model)` falls back to timm's generic defaults (224, bicubic,
crop_pct 0.875, ImageNet mean/std) for the others.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np

__all__ = ["EvalSettings", "timm_eval_transform", "resize_center_crop", "timm_eval_settings",
           "TIMM_PRETRAINED_EVAL", "INTERPOLATIONS", "IMAGENET_MEAN", "IMAGENET_STD",
           "INCEPTION_MEAN", "INCEPTION_STD"]

#: timm's interpolation names (the deterministic ones) -> PIL filter names.
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
DEFAULT_CROP_PCT = 0.875


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  """One evaluation preprocessing: square crop `image_size`, `crop_pct`, PIL `interpolation`,
  per-channel `mean` / `std` on the 0..1 scale. Checked on construction (ValueError naming the
  argument, the value and the valid choices)."""

  image_size: int = 224
  crop_pct: float = DEFAULT_CROP_PCT
  interpolation: str = "bicubic"
  mean: tuple[float, ...] = IMAGENET_MEAN
  std: tuple[float, ...] = IMAGENET_STD

  def __post_init__(self):
    if isinstance(self.image_size, bool) or not isinstance(self.image_size, (int, np.integer)) \
        or self.image_size < 1:
      raise ValueError(f"--image_size={self.image_size!r} must be a positive int")
    if isinstance(self.crop_pct, bool) or not isinstance(self.crop_pct, (int, float)) \
        or not 0 < self.crop_pct <= 1:
      raise ValueError(f"--crop_pct={self.crop_pct!r} must be a number in (0, 1]")
    if self.interpolation not in INTERPOLATIONS:
      raise ValueError(f"--interpolation={self.interpolation!r} is not one of {INTERPOLATIONS}")
    object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
    object.__setattr__(self, "std", tuple(float(v) for v in self.std))
    if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
      raise ValueError(f"--mean={list(self.mean)} / --std={list(self.std)} need 3 values each "
                       "(RGB, 0..1 scale), std > 0")

  @property
  def scale_size(self) -> int:
    """Shorter side after resizing: floor(image_size / crop_pct), as timm."""
    return math.floor(self.image_size / self.crop_pct)


def _pil_filter(interpolation: str):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  return getattr(Image.Resampling, interpolation.upper())


def _to_rgb_pil(image):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  x = np.asarray(image)
  if x.dtype != np.uint8:
    raise ValueError(f"images must be uint8, got {x.dtype}")
  if x.ndim == 3 and x.shape[2] == 1:
    x = x[:, :, 0]
  if x.ndim == 2:
    return Image.fromarray(x, mode="L").convert("RGB")
  if x.ndim == 3 and x.shape[2] in (3, 4):
    return Image.fromarray(np.ascontiguousarray(x[:, :, :3]), mode="RGB")
  raise ValueError(f"expected an image [H, W], [H, W, 1|3|4], got shape {x.shape}")


def resize_center_crop(image, settings: EvalSettings) -> np.ndarray:
  """Steps 1-2 of the module docstring: uint8 [S, S, 3] from a uint8 image ([H, W] or
  [H, W, 1|3|4]; gray is repeated to RGB, alpha dropped)."""
  pil = _to_rgb_pil(image)
  w, h = pil.size
  short, long = (w, h) if w <= h else (h, w)
  new_short = settings.scale_size
  new_long = int(new_short * long / short)
  new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
  if (new_w, new_h) != (w, h):
    pil = pil.resize((new_w, new_h), _pil_filter(settings.interpolation))
  size = settings.image_size
  top = int(round((new_h - size) / 2.0))
  left = int(round((new_w - size) / 2.0))
  return np.asarray(pil)[top:top + size, left:left + size]


def timm_eval_transform(image, settings: EvalSettings | None = None) -> np.ndarray:
  """float32 [S, S, 3]: timm's eval preprocessing of one uint8 image (module docstring)."""
  settings = settings or EvalSettings()
  x = resize_center_crop(image, settings).astype(np.float32) / np.float32(255.0)
  x -= np.asarray(settings.mean, np.float32)
  x /= np.asarray(settings.std, np.float32)
  return x


def _cfg(size, interpolation, crop_pct, inception=False):
  mean, std = (INCEPTION_MEAN, INCEPTION_STD) if inception else (IMAGENET_MEAN, IMAGENET_STD)
  return EvalSettings(size, crop_pct, interpolation, mean, std)


#: timm 1.0's default pretrained config per model name (a test checks it against timm, fixture).
TIMM_PRETRAINED_EVAL: dict[str, EvalSettings] = {
    "coatnet_0_rw_224": _cfg(224, "bicubic", 0.95, inception=True),
    **{n: _cfg(224, "bicubic", 0.95) for n in ("convnext_tiny", "convnext_small")},
    "convnext_base": _cfg(224, "bicubic", 0.875),
    **{n: _cfg(224, "bicubic", 0.875) for n in ("densenet121", "densenet169", "densenet201",
                                                 "ecaresnet50d", "inception_next_tiny",
                                                 "inception_next_small", "wide_resnet50_2")},
    "inception_next_base": _cfg(224, "bicubic", 0.95),
    "inception_v3": _cfg(299, "bicubic", 0.875, inception=True),
    "mobilenetv1_100": _cfg(224, "bicubic", 0.875, inception=True),
    **{n: _cfg(224, "bicubic", 0.95) for n in ("resnet18", "resnet34", "resnet50", "resnet101",
                                                "resnet152")},
    **{n: _cfg(224, "bilinear", 0.875) for n in ("vgg11", "vgg11_bn", "vgg13", "vgg13_bn",
                                                  "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
                                                  "wide_resnet101_2")},
}


def timm_eval_settings(model: str, **overrides) -> EvalSettings:
  """timm's default eval settings of `model` (its pretrained config where timm has the model,
  else timm's generic defaults with the model's input size), with non-None `overrides`
  (image_size, crop_pct, interpolation, mean, std) applied."""
  base = TIMM_PRETRAINED_EVAL.get(model)
  if base is None:
    base = EvalSettings()
    try:
      import jaxconv  # pylint: disable=g-import-not-at-top
      input_size = jaxconv.model_info(model).input_size
      if len(input_size) == 3 and input_size[0] == input_size[1]:
        base = dataclasses.replace(base, image_size=int(input_size[0]))
    except ValueError:
      pass
  return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})
