"""Recipe augmentations on uint8 images: RandAugment, AutoAugment, TrivialAugment, color jitter,
random erasing.

The pixel ops are PIL calls (`Image.transform`, `Image.rotate`, `ImageOps`, `ImageEnhance`):
PIL is what timm and torchvision run on the host for these ops, so with the same arguments the
results are identical to theirs pixel for pixel (tested against committed timm/torchvision
fixtures), and PIL's C loops release the GIL, so grain's worker threads run them in parallel.
No maintained JAX/numpy library has timm's op set (dm_pix has some colour/geometry ops, with
other interpolation and rounding).

All randomness comes from the `np.random.Generator` passed in (the pipeline gives each element
its own generator of (seed, position), separate from the crop/flip/cutout draws), never from
Python's `random` or numpy's global state. The *semantics* follow the references (which op, its
probability, magnitude noise, sign, interpolation, erasing geometry), the draw order is ours.

* RandAugment (Cubuk et al. 2019, timm's variant): policy string
  ``rand-mM-nN-mstdS-incI[-mmaxX][-pP]`` (any order after ``rand``; defaults m10 n2 mstd0 inc0
  p0.5, mmax 10). Each image: N ops drawn uniformly with replacement from timm's 15 ops (the
  "Increasing" variants with inc1); each applied with probability p at magnitude
  clip(Normal(M, S), 0, mmax) (S > 100: Uniform(0, M)); signed ops negate with probability 1/2;
  geometric ops resample bilinear or bicubic at random (timm's training default) and fill with
  the dataset mean.
* AutoAugment (Cubuk et al. 2018): timm's ImageNet policies "original" (the paper's),
  "originalr", "v0" (TPU EfficientNet), "v0r", each with optional ``-mstdS``: one sub-policy of
  two ops drawn uniformly per image.
* TrivialAugment (Mueller & Hutter 2021), torchvision `TrivialAugmentWide` semantics: one op of
  14 uniformly, one of 31 magnitude bins uniformly, a random sign; nearest resampling, fill 0.
* Color jitter (torchvision `ColorJitter(s, s, s)` as timm builds it from one float): brightness,
  contrast and saturation factors uniform in [max(0, 1 - s), 1 + s], applied in random order.
  Like timm, it is ignored when an auto-augment policy is on (`AugmentConfig` says so).
* Random erasing (Zhong et al. 2017, timm `RandomErasing`): on the normalized float image, with
  probability p, `count` rectangles (area fraction uniform in [0.02, 1/3] / count, aspect ratio
  log-uniform in [0.3, 1/0.3], 10 attempts each) filled with 0 (const), one normal value per
  channel (rand) or normal noise per pixel (pixel).
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

__all__ = [
    "AugOp", "RandAugment", "AutoAugment", "TrivialAugment", "ColorJitter", "RandomErasing",
    "parse_randaugment", "parse_autoaugment", "autoaugment_policy", "RAND_TRANSFORMS",
    "RAND_INCREASING_TRANSFORMS", "AUTOAUGMENT_POLICIES", "TRIVIAL_AUGMENT_OPS",
    "apply_named_op", "apply_trivial_op", "trivial_magnitudes", "pil_fill", "ERASING_MODES",
]

LEVEL_DENOM = 10.0  # magnitude M maps to the fraction M / 10 of each op's range (timm)
TRANSLATE_PCT = 0.45
_BILINEAR, _BICUBIC, _NEAREST = Image.BILINEAR, Image.BICUBIC, Image.NEAREST

RAND_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel",
    "TranslateYRel")
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
    "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
    "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
_GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "TranslateXRel",
              "TranslateYRel"}


# ------------------------------------------------------------------------------------------------
# Magnitude -> op argument. Each returns (argument, signed): signed arguments are negated with
# probability 1/2 by the caller.

def _frac(m):
  return m / LEVEL_DENOM


def _level_args(name: str, m: float, translate_const: int):
  """(argument or None, signed) of op `name` at magnitude m (timm's level scales)."""
  base = name
  if name in ("AutoContrast", "Equalize", "Invert"):
    return None, False
  if name == "Rotate":
    return _frac(m) * 30.0, True
  if name in ("ShearX", "ShearY"):
    return _frac(m) * 0.3, True
  if name in ("TranslateX", "TranslateY"):
    return _frac(m) * float(translate_const), True
  if name in ("TranslateXRel", "TranslateYRel"):
    return _frac(m) * TRANSLATE_PCT, True
  if name == "Posterize":                    # keep 0..4 bits (TPU EfficientNet)
    return int(_frac(m) * 4), False
  if name == "PosterizeIncreasing":          # keep 4..0 bits
    return 4 - int(_frac(m) * 4), False
  if name == "PosterizeOriginal":            # keep 4..8 bits (AutoAugment paper)
    return int(_frac(m) * 4) + 4, False
  if name == "Solarize":
    return min(256, int(_frac(m) * 256)), False
  if name == "SolarizeIncreasing":
    return 256 - min(256, int(_frac(m) * 256)), False
  if name == "SolarizeAdd":
    return min(128, int(_frac(m) * 110)), False
  if name.endswith("Increasing"):            # Color/Contrast/Brightness/Sharpness: 1 +- 0.9 m/10
    base = name[:-len("Increasing")]
    if base in ("Color", "Contrast", "Brightness", "Sharpness"):
      return _frac(m) * 0.9, True            # the caller forms max(0.1, 1 + sign * arg)
  if base in ("Color", "Contrast", "Brightness", "Sharpness"):
    return _frac(m) * 1.8 + 0.1, False
  raise ValueError(f"unknown augmentation op {name!r}")


OP_NAMES = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "PosterizeIncreasing",
    "PosterizeOriginal", "Solarize", "SolarizeIncreasing", "SolarizeAdd", "Color",
    "ColorIncreasing", "Contrast", "ContrastIncreasing", "Brightness", "BrightnessIncreasing",
    "Sharpness", "SharpnessIncreasing", "ShearX", "ShearY", "TranslateX", "TranslateY",
    "TranslateXRel", "TranslateYRel")

_ENHANCE = {"Color": ImageEnhance.Color, "Contrast": ImageEnhance.Contrast,
            "Brightness": ImageEnhance.Brightness, "Sharpness": ImageEnhance.Sharpness}


def _solarize_add(img, add: int, thresh: int = 128):
  lut = [min(255, i + add) if i < thresh else i for i in range(256)]
  return img.point(lut * len(img.getbands()))


def apply_named_op(img, name: str, magnitude: float, *, negate: bool = False,
                   resample=_BILINEAR, fill=128, translate_const: int = 100):
  """Applies timm's op `name` at `magnitude` (already noised and clipped) to a PIL image.

  negate: the sign draw of signed ops (ignored by unsigned ones); resample: PIL filter of the
  geometric ops; fill: their fill colour (int for "L", tuple for "RGB").
  """
  arg, signed = _level_args(name, magnitude, translate_const)
  if signed and negate:
    arg = -arg
  if name == "AutoContrast":
    return ImageOps.autocontrast(img)
  if name == "Equalize":
    return ImageOps.equalize(img)
  if name == "Invert":
    return ImageOps.invert(img)
  if name == "Rotate":
    return img.rotate(arg, resample=resample, fillcolor=fill)
  if name.startswith("Posterize"):
    if arg >= 8:
      return img
    if arg < 1:  # keep 0 bits: black, as Pillow < 12 gave (newer Pillow refuses bits=0)
      return Image.new(img.mode, img.size, 0)
    return ImageOps.posterize(img, arg)
  if name in ("Solarize", "SolarizeIncreasing"):
    return ImageOps.solarize(img, arg)
  if name == "SolarizeAdd":
    return _solarize_add(img, arg)
  if name in _GEOMETRIC:
    w, h = img.size
    matrix = {"ShearX": (1, arg, 0, 0, 1, 0), "ShearY": (1, 0, 0, arg, 1, 0),
              "TranslateX": (1, 0, arg, 0, 1, 0), "TranslateY": (1, 0, 0, 0, 1, arg),
              "TranslateXRel": (1, 0, arg * w, 0, 1, 0),
              "TranslateYRel": (1, 0, 0, 0, 1, arg * h)}[name]
    return img.transform(img.size, Image.AFFINE, matrix, resample=resample, fillcolor=fill)
  base = name[:-len("Increasing")] if name.endswith("Increasing") else name
  factor = max(0.1, 1.0 + arg) if name.endswith("Increasing") else arg
  return _ENHANCE[base](img).enhance(factor)


def pil_fill(mean, channels: int):
  """timm's fill colour: the dataset mean in pixel units, rounded, as PIL wants it per mode."""
  values = [min(255, int(round(float(m)))) for m in np.broadcast_to(mean, (channels,))]
  return values[0] if channels == 1 else tuple(values)


@dataclasses.dataclass(frozen=True)
class AugOp:
  """One op of a policy: applied with probability `prob` at magnitude `magnitude`, noised with
  std `magnitude_std` (inf: uniform in [0, magnitude]) and clipped to [0, magnitude_max]."""

  name: str
  prob: float = 0.5
  magnitude: float = 10.0
  magnitude_std: float = 0.0
  magnitude_max: float = LEVEL_DENOM

  def __call__(self, img, rng: np.random.Generator, fill, translate_const: int):
    if self.prob < 1.0 and rng.random() > self.prob:
      return img
    m = self.magnitude
    if self.magnitude_std == math.inf:
      m = rng.uniform(0.0, m)
    elif self.magnitude_std > 0:
      m = rng.normal(m, self.magnitude_std)
    m = max(0.0, min(float(m), self.magnitude_max))
    negate = bool(rng.random() < 0.5)
    resample = _BICUBIC if rng.random() < 0.5 else _BILINEAR
    return apply_named_op(img, self.name, m, negate=negate, resample=resample, fill=fill,
                          translate_const=translate_const)


# ------------------------------------------------------------------------------------------------
# RandAugment policy strings

RANDAUGMENT_GRAMMAR = ("rand-mM-nN-mstdS-incI[-mmaxX][-pP]: sections after 'rand' in any order, "
                       "M, N, I, X integers (M, X >= 0, N >= 1, I in {0, 1}), S >= 0 and "
                       "0 <= P <= 1 floats; e.g. 'rand-m9-mstd0.5-inc1'")
_RA_KEYS = {"m": int, "n": int, "mstd": float, "inc": int, "mmax": int, "p": float}


@dataclasses.dataclass(frozen=True)
class RandAugmentSpec:
  magnitude: int = 10
  num_layers: int = 2
  magnitude_std: float = 0.0
  increasing: bool = False
  magnitude_max: int | None = None
  prob: float = 0.5


def parse_randaugment(policy: str, field: str = "randaugment") -> RandAugmentSpec:
  """Parses timm's RandAugment string; a bad one raises ValueError naming `field`, the token and
  the grammar."""
  if not isinstance(policy, str) or not policy:
    raise ValueError(f"{field}={policy!r}: expected a policy string {RANDAUGMENT_GRAMMAR}")
  sections = policy.split("-")
  if sections[0] != "rand":
    raise ValueError(f"{field}={policy!r}: bad token {sections[0]!r} (must start with 'rand'); "
                     f"grammar {RANDAUGMENT_GRAMMAR}")
  values = {}
  for token in sections[1:]:
    match = re.fullmatch(r"([a-z]+)(\d+(?:\.\d*)?|\.\d+)", token)
    if match is None or match.group(1) not in _RA_KEYS:
      raise ValueError(f"{field}={policy!r}: bad token {token!r}; grammar {RANDAUGMENT_GRAMMAR}")
    key, text = match.groups()
    if key in values:
      raise ValueError(f"{field}={policy!r}: token {token!r} repeats {key!r}; "
                       f"grammar {RANDAUGMENT_GRAMMAR}")
    try:
      value = _RA_KEYS[key](text)
    except ValueError:
      raise ValueError(f"{field}={policy!r}: bad token {token!r} ({key} takes an "
                       f"{_RA_KEYS[key].__name__}); grammar {RANDAUGMENT_GRAMMAR}") from None
    if (key == "n" and value < 1) or (key == "inc" and value not in (0, 1)) or \
        (key == "p" and value > 1):
      raise ValueError(f"{field}={policy!r}: bad token {token!r} (out of range); "
                       f"grammar {RANDAUGMENT_GRAMMAR}")
    values[key] = value
  mstd = values.get("mstd", 0.0)
  return RandAugmentSpec(
      magnitude=values.get("m", int(LEVEL_DENOM)), num_layers=values.get("n", 2),
      magnitude_std=math.inf if mstd > 100 else mstd, increasing=bool(values.get("inc", 0)),
      magnitude_max=values.get("mmax"), prob=values.get("p", 0.5))


class RandAugment:
  """RandAugment from a policy string: N ops per image, uniformly with replacement."""

  def __init__(self, policy: str):
    spec = parse_randaugment(policy)
    self.spec = spec
    names = RAND_INCREASING_TRANSFORMS if spec.increasing else RAND_TRANSFORMS
    # timm: `magnitude_max or 10`, so mmax0 also means the default bound 10
    mmax = float(spec.magnitude_max) if spec.magnitude_max else LEVEL_DENOM
    self.ops = tuple(AugOp(name, spec.prob, float(spec.magnitude), spec.magnitude_std, mmax)
                     for name in names)
    self.num_layers = spec.num_layers

  def __call__(self, img, rng: np.random.Generator, fill, translate_const: int):
    for k in rng.integers(0, len(self.ops), self.num_layers).tolist():
      img = self.ops[k](img, rng, fill, translate_const)
    return img


# ------------------------------------------------------------------------------------------------
# AutoAugment ImageNet policies: (op, probability, magnitude) pairs per sub-policy.

_POLICY_ORIGINAL = (
    (("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
    (("PosterizeOriginal", 0.6, 7), ("PosterizeOriginal", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)),
    (("PosterizeOriginal", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, 8), ("PosterizeOriginal", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)),
    (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)
_POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateYRel", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)


def _research_posterize(policy, old):
  """The "r" variants: the research code's posterize (bits removed grow with magnitude)."""
  return tuple(tuple(("PosterizeIncreasing" if n == old else n, p, m) for n, p, m in sub)
               for sub in policy)


AUTOAUGMENT_POLICIES = {
    "original": _POLICY_ORIGINAL,
    "originalr": _research_posterize(_POLICY_ORIGINAL, "PosterizeOriginal"),
    "v0": _POLICY_V0,
    "v0r": _research_posterize(_POLICY_V0, "Posterize"),
}
AUTOAUGMENT_GRAMMAR = (f"NAME[-mstdS] with NAME one of {sorted(AUTOAUGMENT_POLICIES)} and S >= 0 "
                       "a float; e.g. 'original' or 'v0-mstd0.5'")


def parse_autoaugment(policy: str, field: str = "autoaugment") -> tuple[str, float]:
  """(policy name, magnitude std) of an AutoAugment string; ValueError naming `field` if bad."""
  if not isinstance(policy, str) or not policy:
    raise ValueError(f"{field}={policy!r}: expected {AUTOAUGMENT_GRAMMAR}")
  name, *rest = policy.split("-")
  if name not in AUTOAUGMENT_POLICIES:
    raise ValueError(f"{field}={policy!r}: bad token {name!r}; expected {AUTOAUGMENT_GRAMMAR}")
  mstd = 0.0
  for token in rest:
    match = re.fullmatch(r"mstd(\d+(?:\.\d*)?|\.\d+)", token)
    if match is None or rest.count(token) > 1:
      raise ValueError(f"{field}={policy!r}: bad token {token!r}; expected {AUTOAUGMENT_GRAMMAR}")
    mstd = float(match.group(1))
  return name, mstd


def autoaugment_policy(policy: str) -> tuple[tuple[AugOp, ...], ...]:
  """The sub-policies of an AutoAugment string as `AugOp`s."""
  name, mstd = parse_autoaugment(policy)
  return tuple(tuple(AugOp(n, p, float(m), mstd) for n, p, m in sub)
               for sub in AUTOAUGMENT_POLICIES[name])


class AutoAugment:
  """AutoAugment: one sub-policy drawn uniformly per image, its ops applied in order."""

  def __init__(self, policy: str):
    self.policy = autoaugment_policy(policy)

  def __call__(self, img, rng: np.random.Generator, fill, translate_const: int):
    for op in self.policy[int(rng.integers(0, len(self.policy)))]:
      img = op(img, rng, fill, translate_const)
    return img


# ------------------------------------------------------------------------------------------------
# TrivialAugment (torchvision TrivialAugmentWide semantics)

TRIVIAL_AUGMENT_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
                       "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
                       "AutoContrast", "Equalize")
_TRIVIAL_SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness",
                   "Color", "Contrast", "Sharpness"}
NUM_MAGNITUDE_BINS = 31


def _linspace32(start: float, end: float, n: int) -> np.ndarray:
  """float32 linspace as torch.linspace computes it on CPU, so magnitudes equal torchvision's bit
  for bit: first half start + step * i, second half end - step * (n - 1 - i), each a fused
  multiply-add in float32 (emulated: the float32 product is exact in float64, one rounding)."""
  step = np.float64((np.float32(end) - np.float32(start)) / np.float32(n - 1))
  i = np.arange(n)
  lo = (np.float64(np.float32(start)) + step * i).astype(np.float32)
  hi = (np.float64(np.float32(end)) - step * (n - 1 - i)).astype(np.float32)
  return np.where(i < n // 2, lo, hi)


def trivial_magnitudes(name: str, num_bins: int = NUM_MAGNITUDE_BINS) -> np.ndarray | None:
  """The magnitude bins of TrivialAugmentWide's op `name` (None: the op takes none)."""
  if name in ("ShearX", "ShearY", "Brightness", "Color", "Contrast", "Sharpness"):
    return _linspace32(0.0, 0.99, num_bins)
  if name in ("TranslateX", "TranslateY"):
    return _linspace32(0.0, 32.0, num_bins)
  if name == "Rotate":
    return _linspace32(0.0, 135.0, num_bins)
  if name == "Posterize":
    bins = np.arange(num_bins, dtype=np.float32) / np.float32((num_bins - 1) / 6)
    return (8 - np.round(bins)).astype(np.int32)
  if name == "Solarize":
    return _linspace32(255.0, 0.0, num_bins)
  return None


def _tv_affine(img, *, shear_deg=(0.0, 0.0), translate=(0, 0), center, resample, fill):
  """torchvision's PIL affine (angle 0, scale 1): PIL wants the output -> input matrix."""
  sx, sy = math.radians(shear_deg[0]), math.radians(shear_deg[1])
  cx, cy = center
  tx, ty = translate
  # The inverse of the shear matrix (rotation 0), written out term by term in the order
  # torchvision evaluates it, so the floats and hence the nearest-sampled pixels are the same.
  a = math.cos(-sy) / math.cos(sy)
  b = -math.cos(-sy) * math.tan(sx) / math.cos(sy) - math.sin(0.0)
  c = math.sin(-sy) / math.cos(sy)
  d = -math.sin(-sy) * math.tan(sx) / math.cos(sy) + math.cos(0.0)
  m = [d, -b, 0.0, -c, a, 0.0]
  m[2] += m[0] * (-cx - tx) + m[1] * (-cy - ty)
  m[5] += m[3] * (-cx - tx) + m[4] * (-cy - ty)
  m[2] += cx
  m[5] += cy
  return img.transform(img.size, Image.AFFINE, m, resample, fillcolor=fill)


def apply_trivial_op(img, name: str, magnitude: float, fill=0, resample=_NEAREST):
  """TrivialAugmentWide's op `name` at signed `magnitude` on a PIL image (torchvision's calls)."""
  if name == "Identity":
    return img
  if name in ("ShearX", "ShearY"):
    deg = math.degrees(math.atan(magnitude))
    shear = (deg, 0.0) if name == "ShearX" else (0.0, deg)
    return _tv_affine(img, shear_deg=shear, center=(0, 0), resample=resample, fill=fill)
  if name in ("TranslateX", "TranslateY"):
    t = (int(magnitude), 0) if name == "TranslateX" else (0, int(magnitude))
    w, h = img.size
    return _tv_affine(img, translate=t, center=(w * 0.5, h * 0.5), resample=resample, fill=fill)
  if name == "Rotate":
    return img.rotate(magnitude, resample, False, None, fillcolor=fill)
  if name in _ENHANCE:
    return _ENHANCE[name](img).enhance(1.0 + magnitude)
  if name == "Posterize":
    return ImageOps.posterize(img, int(magnitude))
  if name == "Solarize":
    return ImageOps.solarize(img, magnitude)
  if name == "AutoContrast":
    return ImageOps.autocontrast(img)
  if name == "Equalize":
    return ImageOps.equalize(img)
  raise ValueError(f"unknown TrivialAugment op {name!r}; valid: {TRIVIAL_AUGMENT_OPS}")


class TrivialAugment:
  """TrivialAugmentWide: one op, one magnitude bin, one sign, uniformly per image."""

  def __init__(self, num_bins: int = NUM_MAGNITUDE_BINS):
    self.table = [(name, trivial_magnitudes(name, num_bins)) for name in TRIVIAL_AUGMENT_OPS]

  def __call__(self, img, rng: np.random.Generator, fill=None, translate_const=None):
    del fill, translate_const  # torchvision's defaults: fill 0, nearest
    name, bins = self.table[int(rng.integers(0, len(self.table)))]
    magnitude = 0.0
    if bins is not None:
      magnitude = float(bins[int(rng.integers(0, len(bins)))])
    if name in _TRIVIAL_SIGNED and rng.random() < 0.5:
      magnitude = -magnitude
    channels = len(img.getbands())
    return apply_trivial_op(img, name, magnitude, fill=0 if channels == 1 else (0,) * channels)


# ------------------------------------------------------------------------------------------------
# Color jitter


class ColorJitter:
  """torchvision `ColorJitter(s, s, s)`: brightness, contrast, saturation in random order."""

  def __init__(self, strength: float):
    self.low, self.high = max(0.0, 1.0 - strength), 1.0 + strength
    self.enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)

  def __call__(self, img, rng: np.random.Generator, fill=None, translate_const=None):
    del fill, translate_const
    order = rng.permutation(3).tolist()
    factors = rng.uniform(self.low, self.high, 3).tolist()
    for k in order:
      img = self.enhancers[k](img).enhance(factors[k])
    return img


# ------------------------------------------------------------------------------------------------
# Random erasing

ERASING_MODES = ("const", "rand", "pixel")
ERASING_AREA = (0.02, 1.0 / 3.0)
ERASING_LOG_ASPECT = (math.log(0.3), math.log(1.0 / 0.3))
ERASING_ATTEMPTS = 10


class RandomErasing:
  """timm's RandomErasing on a normalized float image [H, W, C] (in place).

  `plan(rng, h, w, c)` draws everything (so the pipeline draws in the worker that prepares the
  element) and `apply(x, plan)` writes the rectangles. With count > 1, the number of boxes is
  uniform in [1, count] and each box's area is scaled by 1 / that number (timm's max_count).
  """

  def __init__(self, probability: float, mode: str = "pixel", count: int = 1):
    if mode not in ERASING_MODES:
      raise ValueError(f"erasing_mode={mode!r}: valid modes {ERASING_MODES}")
    self.probability, self.mode, self.count = float(probability), mode, int(count)

  def plan(self, rng: np.random.Generator, h: int, w: int, c: int):
    """[(top, left, height, width, fill array [height, width, c] or None for 0), ...]."""
    if rng.random() >= self.probability:
      return []
    count = 1 if self.count == 1 else int(rng.integers(1, self.count + 1))
    boxes = []
    for _ in range(count):
      for _ in range(ERASING_ATTEMPTS):
        target = rng.uniform(*ERASING_AREA) * h * w / count
        aspect = math.exp(rng.uniform(*ERASING_LOG_ASPECT))
        eh = int(round(math.sqrt(target * aspect)))
        ew = int(round(math.sqrt(target / aspect)))
        if ew < w and eh < h:
          top = int(rng.integers(0, h - eh + 1))
          left = int(rng.integers(0, w - ew + 1))
          if self.mode == "pixel":
            fill = rng.standard_normal((eh, ew, c), dtype=np.float32)
          elif self.mode == "rand":
            fill = np.broadcast_to(rng.standard_normal((1, 1, c), dtype=np.float32), (eh, ew, c))
          else:
            fill = None
          boxes.append((top, left, eh, ew, fill))
          break
    return boxes

  @staticmethod
  def apply(x: np.ndarray, plan) -> np.ndarray:
    for top, left, eh, ew, fill in plan:
      x[top:top + eh, left:left + ew] = 0.0 if fill is None else fill
    return x
