"""Per-element image transforms in numpy: augmentations, normalization, ImageNet crops.

All randomness comes from the `np.random.Generator` passed in (the pipeline seeds one per element
from (seed, global element position)). Every element draws the same fixed set of uniforms in the
same order whatever the config, so switching one augmentation on does not change the draws of
another (e.g. the crop offsets are identical with and without `flip`):

  u = rng.random(5)     -> u[0], u[1]: crop offsets (y, x); u[2]: flip; u[3], u[4]: cutout centre
  rng.random((10, 4))   -> random-resized-crop attempts (variable-size datasets only), after u

Order of operations for training: [random-resized-crop] -> pad-and-crop -> flip ->
[RandAugment | AutoAugment | TrivialAugment | color jitter] -> normalize -> cutout ->
[random erasing]. Evaluation: [resize shorter side to size / 0.875 + center crop] -> normalize.

The recipe ops in brackets (jaxconv.data.autoaugment) draw from a *second* generator per element
(same (seed, position), a disjoint Philox counter range, see pipeline.py), so switching them on
or off never changes the crop/flip/cutout draws above, and runs without them are bitwise the same
as before they existed. mixup/CutMix (mixup_alpha, cutmix_alpha, mix_*) are batch-level and run
on device (jaxconv.data.mix); `AugmentConfig` only validates them. aug_repeats changes which
example each position reads (pipeline.py), not the transform.

* Pad-and-crop: zero padding of `crop_padding` pixels on each side *in the stored pixel space*
  (black for uint8 images, like torchvision `RandomCrop(size, padding=p)` before `Normalize`),
  then a random crop back to the original size; offsets are uniform in [0, 2p]. Spatial
  dimensions of size 1 are not padded (so a (1, W) signal such as mnist1d gets a 1-D shift).
* Flip: horizontal (along W) with probability 1/2.
* Cutout (DeVries & Taylor 2017): one square of side `cutout`, centre uniform over all pixels,
  rows/cols [c - side//2, c - side//2 + side) clipped at the borders, set to 0 *after*
  normalization (so the hole equals the dataset mean). Applied to every image (p = 1).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image

from jaxconv.data import autoaugment as aa

__all__ = [
    "AugmentConfig", "pad_and_crop", "hflip", "cutout", "normalize", "random_resized_crop",
    "resize_center_crop", "make_transform", "Transform", "SequenceTransform",
]

NUM_UNIFORMS = 5  # fixed per-element draws, see module docstring
RRC_ATTEMPTS = 10
RRC_SCALE = (0.08, 1.0)
RRC_RATIO = (3.0 / 4.0, 4.0 / 3.0)
EVAL_CROP_FRACTION = 0.875  # resize shorter side to size / 0.875 (256 for 224), then center crop


MIX_MODES = ("batch", "pair", "elem")


def _fail(name: str, value, requirement: str):
  raise ValueError(f"config.augment.{name}={value!r}: {requirement}")


def _is_number(value) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
      value, (bool, np.bool_))


def check_mix_fields(mixup_alpha, cutmix_alpha, mix_prob, mix_switch_prob, mix_mode) -> None:
  """The mixup / CutMix fields of ``config.augment`` (mixing itself runs on device,
  ``jaxconv.data.mix``, whose ``MixConfig`` is checked here too): Python numbers, finite."""
  def number(value):
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))

  for name, value in (("mixup_alpha", mixup_alpha), ("cutmix_alpha", cutmix_alpha)):
    if not number(value) or value < 0:
      raise ValueError(f"config.augment.{name}={value!r} must be a number >= 0 (0 disables it)")
  for name, value in (("mix_prob", mix_prob), ("mix_switch_prob", mix_switch_prob)):
    if not number(value) or not 0 <= value <= 1:
      raise ValueError(f"config.augment.{name}={value!r} must be a probability in [0, 1]")
  if mix_mode not in MIX_MODES:
    raise ValueError(f"config.augment.mix_mode={mix_mode!r} is not valid; choose one of "
                     f"{list(MIX_MODES)}")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Training augmentations. All off by default; evaluation never augments.

  crop_padding: pad each spatial side by this many zero pixels, then random-crop back (0 = off).
  flip: random horizontal flip with probability 1/2.
  cutout: side of the square zeroed after normalization (0 = off).
  randaugment: timm RandAugment policy string "rand-mM-nN-mstdS-incI[-mmaxX][-pP]" or None
    ("" and "none" also mean off, here and for autoaugment).
  autoaugment: AutoAugment ImageNet policy "original" | "originalr" | "v0" | "v0r", optionally
    with "-mstdS", or None.
  trivialaugment: TrivialAugmentWide (torchvision semantics). The three policies are mutually
    exclusive.
  color_jitter: brightness/contrast/saturation strength (0 = off). As in timm's
    create_transform, it is ignored (not applied) when one of the three policies is on.
  random_erasing: probability of timm's RandomErasing per image (0 = off), after normalization;
    erasing_mode "pixel" | "rand" | "const"; erasing_count: up to this many boxes per image.
  mixup_alpha, cutmix_alpha (>= 0, 0 = off), mix_prob, mix_switch_prob (in [0, 1]), mix_mode
    ("batch" | "pair" | "elem"): batch mixing, applied on device by jaxconv.data.mix.
  aug_repeats: repeated augmentation, each example appears this many times in a row (>= 1).
  The policy ops need uint8 images with 1 or 3 channels.
  """

  crop_padding: int = 0
  flip: bool = False
  cutout: int = 0
  # The recipe augmentations (fields of jaxconv.train.config's ``augment``).
  randaugment: str | None = None
  autoaugment: str | None = None
  trivialaugment: bool = False
  color_jitter: float = 0.0
  random_erasing: float = 0.0
  erasing_mode: str = "pixel"
  erasing_count: int = 1
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mix_prob: float = 1.0
  mix_switch_prob: float = 0.5
  mix_mode: str = "batch"
  aug_repeats: int = 1

  def __post_init__(self):
    for name in ("crop_padding", "cutout"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"AugmentConfig.{name} must be a non-negative int, got {value!r}")
      object.__setattr__(self, name, int(value))
    if not isinstance(self.flip, (bool, np.bool_)):
      raise ValueError(f"AugmentConfig.flip must be a bool, got {self.flip!r}")
    object.__setattr__(self, "flip", bool(self.flip))
    if not isinstance(self.trivialaugment, (bool, np.bool_)):
      _fail("trivialaugment", self.trivialaugment, "must be a bool")
    object.__setattr__(self, "trivialaugment", bool(self.trivialaugment))
    for name in ("randaugment", "autoaugment"):  # "" / "none" (e.g. from a command line): off
      value = getattr(self, name)
      if isinstance(value, str) and value.strip().lower() in ("", "none"):
        object.__setattr__(self, name, None)
    if self.randaugment is not None:
      aa.parse_randaugment(self.randaugment, field="config.augment.randaugment")
    if self.autoaugment is not None:
      aa.parse_autoaugment(self.autoaugment, field="config.augment.autoaugment")
    policies = [f"{n}={getattr(self, n)!r}" for n in ("randaugment", "autoaugment")
                if getattr(self, n) is not None] + (
                    ["trivialaugment=True"] if self.trivialaugment else [])
    if len(policies) > 1:
      raise ValueError(f"config.augment: {', '.join(policies)}: randaugment, autoaugment and "
                       "trivialaugment are mutually exclusive; set at most one")
    for name, low, high in [("color_jitter", 0.0, None), ("random_erasing", 0.0, 1.0)]:
      value = getattr(self, name)
      if not _is_number(value) or not math.isfinite(value) or value < low or (
          high is not None and value > high):
        _fail(name, value, f"must be a number in [{low}, {high if high is not None else 'inf'}"
                           f"{']' if high is not None else ')'}")
      object.__setattr__(self, name, float(value))
    check_mix_fields(self.mixup_alpha, self.cutmix_alpha, self.mix_prob, self.mix_switch_prob,
                     self.mix_mode)
    for name in ("mixup_alpha", "cutmix_alpha", "mix_prob", "mix_switch_prob"):
      object.__setattr__(self, name, float(getattr(self, name)))
    if self.erasing_mode not in aa.ERASING_MODES:
      _fail("erasing_mode", self.erasing_mode, f"valid modes are {aa.ERASING_MODES}")
    for name in ("erasing_count", "aug_repeats"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        _fail(name, value, "must be an int >= 1")
      object.__setattr__(self, name, int(value))

  @property
  def policy(self) -> str | None:
    """The auto-augment policy in effect, as a short description (None: none)."""
    if self.randaugment is not None:
      return self.randaugment
    if self.autoaugment is not None:
      return f"autoaugment:{self.autoaugment}"
    return "trivialaugment" if self.trivialaugment else None

  @property
  def host_ops(self) -> bool:
    """Whether a per-image PIL op (policy or color jitter) runs on the host."""
    return self.policy is not None or self.color_jitter > 0

  @property
  def enabled(self) -> bool:
    """Any augmentation on (host or device, including mixing and repeats)."""
    return bool(self.crop_padding or self.flip or self.cutout or self.host_ops
                or self.random_erasing > 0 or self.mixup_alpha > 0 or self.cutmix_alpha > 0
                or self.aug_repeats > 1)


def _offset(u: float, n: int) -> int:
  """Uniform integer in [0, n) from a uniform float in [0, 1)."""
  return min(int(u * n), n - 1)


def pad_and_crop(x: np.ndarray, padding: int, uy: float, ux: float) -> np.ndarray:
  """Zero-pad H and W by `padding` (dims of size 1 are left alone) and crop back to x's size."""
  h, w = x.shape[:2]
  py = padding if h > 1 else 0
  px = padding if w > 1 else 0
  if py == 0 and px == 0:
    return x
  # Offset in the padded image; the window [oy, oy+h) of the padded image corresponds to
  # rows [oy-py, oy-py+h) of x.
  dy = _offset(uy, 2 * py + 1) - py
  dx = _offset(ux, 2 * px + 1) - px
  out = np.zeros_like(x)
  src_y0, src_y1 = max(0, dy), min(h, h + dy)
  src_x0, src_x1 = max(0, dx), min(w, w + dx)
  if src_y0 < src_y1 and src_x0 < src_x1:
    out[src_y0 - dy:src_y1 - dy, src_x0 - dx:src_x1 - dx] = x[src_y0:src_y1, src_x0:src_x1]
  return out


def hflip(x: np.ndarray) -> np.ndarray:
  return x[:, ::-1]


def cutout(x: np.ndarray, size: int, uy: float, ux: float) -> np.ndarray:
  """Zero a size x size square centred at a uniform pixel, clipped at the borders (in place)."""
  h, w = x.shape[:2]
  cy, cx = _offset(uy, h), _offset(ux, w)
  y0, x0 = cy - size // 2, cx - size // 2
  x[max(0, y0):min(h, y0 + size), max(0, x0):min(w, x0 + size)] = 0
  return x


def normalize(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
  """(x - mean) / std (per channel, broadcast), as a new float32 array."""
  out = x.astype(np.float32)
  out -= mean
  out /= std
  return out


def _to_pil(x: np.ndarray):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if x.dtype != np.uint8:
    raise ValueError(f"variable-size images must be uint8, got {x.dtype}")
  if x.shape[2] == 1:
    return Image.fromarray(x[:, :, 0], mode="L")
  if x.shape[2] == 3:
    return Image.fromarray(x, mode="RGB")
  raise ValueError(f"variable-size images must have 1 or 3 channels, got shape {x.shape}")


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  out = np.asarray(_to_pil(x).resize((width, height), resample=Image.BILINEAR))
  return out.reshape(height, width, x.shape[2])


def random_resized_crop(x: np.ndarray, size: tuple[int, int], draws: np.ndarray) -> np.ndarray:
  """Inception-style crop: area in [8%, 100%], aspect ratio in [3/4, 4/3], resized to `size`.

  `draws` is a (RRC_ATTEMPTS, 4) array of uniforms: (area, log-ratio, top, left) per attempt;
  if no attempt fits, a center crop with the aspect ratio clamped to the range is used.
  """
  h, w = x.shape[:2]
  area = h * w
  log_lo, log_hi = math.log(RRC_RATIO[0]), math.log(RRC_RATIO[1])
  for ua, ur, ut, ul in draws:
    target = area * (RRC_SCALE[0] + ua * (RRC_SCALE[1] - RRC_SCALE[0]))
    ratio = math.exp(log_lo + ur * (log_hi - log_lo))
    cw = int(round(math.sqrt(target * ratio)))
    ch = int(round(math.sqrt(target / ratio)))
    if 0 < cw <= w and 0 < ch <= h:
      top = _offset(ut, h - ch + 1)
      left = _offset(ul, w - cw + 1)
      break
  else:
    in_ratio = w / h
    if in_ratio < RRC_RATIO[0]:
      cw, ch = w, int(round(w / RRC_RATIO[0]))
    elif in_ratio > RRC_RATIO[1]:
      ch, cw = h, int(round(h * RRC_RATIO[1]))
    else:
      cw, ch = w, h
    ch, cw = min(max(ch, 1), h), min(max(cw, 1), w)
    top, left = (h - ch) // 2, (w - cw) // 2
  return _resize(x[top:top + ch, left:left + cw], size[0], size[1])


def resize_center_crop(x: np.ndarray, size: tuple[int, int],
                       crop_fraction: float = EVAL_CROP_FRACTION) -> np.ndarray:
  """Resize so the shorter side is round(min(size) / crop_fraction), then center crop `size`."""
  h, w = x.shape[:2]
  short = int(round(min(size) / crop_fraction))
  scale = short / min(h, w)
  nh, nw = max(size[0], int(round(h * scale))), max(size[1], int(round(w * scale)))
  y = _resize(x, nh, nw)
  top, left = (nh - size[0]) // 2, (nw - size[1]) // 2
  return y[top:top + size[0], left:left + size[1]]


def _as_hwc(image) -> np.ndarray:
  x = np.asarray(image)
  if x.ndim == 2:
    x = x[:, :, None]
  return x


def _match_channels(x: np.ndarray, channels: int) -> np.ndarray:
  if x.shape[2] == channels:
    return x
  if x.shape[2] == 1:
    return np.repeat(x, channels, axis=2)
  if x.shape[2] == 4 and channels == 3:  # drop alpha
    return x[:, :, :3]
  raise ValueError(f"cannot convert an image with {x.shape[2]} channels to {channels}")


class Transform:
  """The per-element preprocessing of one dataset, for training or evaluation.

  Two stages, so that all but the per-image work runs vectorized over many rows:
    prepare(image, rng, aux_rng) -> (raw [H, W, C] in the stored dtype, uniforms [5] or None,
                                     erasing plan or None)
        per element: draws its uniforms, checks the shape, and for variable-size datasets does the
        random-resized-crop (train) or resize + center crop (eval). With a policy / color jitter
        (`host_ops`) it also does pad-and-crop + flip and the PIL op here, per image, drawing the
        op's randomness from `aux_rng`; random erasing draws its boxes from `aux_rng` too.
    apply(raw [n, H, W, C], uniforms [n, 5] or None, plans) -> float32 [n, H, W, C]
        batched pad-and-crop + flip (unless done in prepare), normalize, cutout, erasing.
  `transform(image, rng, aux_rng)` is the same computation one element at a time with the
  reference functions above; it gives bit-identical results (tested) and documents the semantics.
  `needs_rng` / `needs_aux_rng` say which generators the pipeline must pass.
  """

  def __init__(self, info, augment: AugmentConfig | None, train: bool):
    augment = augment if augment is not None else AugmentConfig()
    if not isinstance(augment, AugmentConfig):
      raise TypeError(f"augment must be a data.AugmentConfig, got {type(augment).__name__}")
    self.augment = augment if train else AugmentConfig()
    self.train = train
    self.shape = tuple(info.image_shape)
    self.name = info.name
    self.variable = bool(info.variable_size)
    aug = self.augment
    self.needs_rng = bool(aug.crop_padding or aug.flip or aug.cutout) or (self.variable and train)
    # Like timm's create_transform: color jitter only when no auto-augment policy is on.
    if aug.randaugment is not None:
      self.host_op = aa.RandAugment(aug.randaugment)
    elif aug.autoaugment is not None:
      self.host_op = aa.AutoAugment(aug.autoaugment)
    elif aug.trivialaugment:
      self.host_op = aa.TrivialAugment()
    elif aug.color_jitter > 0:
      self.host_op = aa.ColorJitter(aug.color_jitter)
    else:
      self.host_op = None
    self.erasing = (aa.RandomErasing(aug.random_erasing, aug.erasing_mode, aug.erasing_count)
                    if aug.random_erasing > 0 else None)
    self.needs_aux_rng = self.host_op is not None or self.erasing is not None
    if self.host_op is not None:
      if np.dtype(info.image_dtype) != np.uint8 or self.shape[2] not in (1, 3):
        raise ValueError(
            f"config.augment: {aug.policy or f'color_jitter={aug.color_jitter}'} runs PIL ops "
            f"on uint8 images with 1 or 3 channels; {self.name} has {info.image_dtype} images "
            f"of shape {self.shape}")
      self.fill = aa.pil_fill(info.mean, self.shape[2])
      # timm: translate_const = 45% of the image side (used by the absolute translate ops)
      self.translate_const = int(min(self.shape[:2]) * 0.45)
    # Full-size mean/std images: elementwise ops with a long inner loop are several times faster
    # than broadcasting a length-C vector (every output image has shape `image_shape`).
    self.mean = np.ascontiguousarray(
        np.broadcast_to(np.asarray(info.mean, np.float32), self.shape))
    self.std = np.ascontiguousarray(np.broadcast_to(np.asarray(info.std, np.float32), self.shape))

  def prepare(self, image, rng: np.random.Generator | None,
              aux_rng: np.random.Generator | None = None):
    x = _as_hwc(image)
    u = rng.random(NUM_UNIFORMS) if self.needs_rng else None
    if self.variable:
      x = _match_channels(x, self.shape[2])
      if self.train:
        x = random_resized_crop(x, self.shape[:2], rng.random((RRC_ATTEMPTS, 4)))
      else:
        x = resize_center_crop(x, self.shape[:2])
    elif x.shape != self.shape:
      raise ValueError(f"{self.name}: expected images of shape {self.shape}, got {x.shape}")
    plan = None
    if self.needs_aux_rng:
      if self.host_op is not None:
        if self.augment.crop_padding:
          x = pad_and_crop(x, self.augment.crop_padding, u[0], u[1])
        img = _to_pil(np.ascontiguousarray(x))
        if self.augment.flip and u[2] < 0.5:  # = hflip, without a strided copy before PIL
          img = img.transpose(Image.FLIP_LEFT_RIGHT)
        img = self.host_op(img, aux_rng, self.fill, self.translate_const)
        x = np.asarray(img).reshape(self.shape)
      if self.erasing is not None:
        plan = self.erasing.plan(aux_rng, *self.shape)
    return x, u, plan

  def _crop_flip(self, x, u):
    aug = self.augment
    if aug.crop_padding:
      x = pad_and_crop(x, aug.crop_padding, u[0], u[1])
    if aug.flip and u[2] < 0.5:
      x = hflip(x)
    return x

  def __call__(self, image, rng: np.random.Generator | None,
               aux_rng: np.random.Generator | None = None) -> np.ndarray:
    """Reference path, one element."""
    x, u, plan = self.prepare(image, rng, aux_rng)
    aug = self.augment
    if self.host_op is None:  # else prepare did pad-and-crop + flip before the policy
      x = self._crop_flip(x, u)
    x = normalize(x, self.mean, self.std)
    if aug.cutout:
      x = cutout(x, aug.cutout, u[3], u[4])
    if plan:
      aa.RandomErasing.apply(x, plan)
    return x

  def apply(self, raw: np.ndarray, u: np.ndarray | None, plans=None) -> np.ndarray:
    """Batched path over rows: raw [n, H, W, C] (stored dtype), u [n, 5], plans: n erasing
    plans from `prepare` (or None).

    Normalization is one vectorized op; crops, flips and holes are per-row slice copies, which
    measured several times faster than one fancy-index gather or boolean masking.
    """
    aug = self.augment
    n, h, w, c = raw.shape
    if (aug.crop_padding or aug.flip) and self.host_op is None:
      py = aug.crop_padding if h > 1 else 0
      px = aug.crop_padding if w > 1 else 0
      padded = raw
      if py or px:
        padded = np.zeros((n, h + 2 * py, w + 2 * px, c), raw.dtype)
        padded[:, py:py + h, px:px + w] = raw
      oy = np.minimum((u[:, 0] * (2 * py + 1)).astype(np.int64), 2 * py).tolist()
      ox = np.minimum((u[:, 1] * (2 * px + 1)).astype(np.int64), 2 * px).tolist()
      flips = (u[:, 2] < 0.5).tolist() if aug.flip else [False] * n
      out = np.empty_like(raw)
      for i in range(n):
        window = padded[i, oy[i]:oy[i] + h, ox[i]:ox[i] + w]
        out[i] = window[:, ::-1] if flips[i] else window
      raw = out
    x = raw.astype(np.float32)
    x -= self.mean
    x /= self.std
    if aug.cutout:
      size = aug.cutout
      y0 = (np.minimum((u[:, 3] * h).astype(np.int64), h - 1) - size // 2).tolist()
      x0 = (np.minimum((u[:, 4] * w).astype(np.int64), w - 1) - size // 2).tolist()
      for i in range(n):
        x[i, max(0, y0[i]):min(h, y0[i] + size), max(0, x0[i]):min(w, x0[i] + size)] = 0
    if plans is not None:
      for i, plan in enumerate(plans):
        if plan:
          aa.RandomErasing.apply(x[i], plan)
    return x


class SequenceTransform:
  """The preprocessing of a sequence dataset: no augmentation (the image augmentations do not
  apply to sequences); float sequences [L, C] are normalized per channel, token ids [L] pass
  through as int32. Same two-stage interface as `Transform`."""

  needs_rng = False
  needs_aux_rng = False

  def __init__(self, info, augment: AugmentConfig | None, train: bool):
    if augment is not None and not isinstance(augment, AugmentConfig):
      raise TypeError(f"augment must be a data.AugmentConfig, got {type(augment).__name__}")
    if train and augment is not None and augment.enabled:
      raise ValueError(
          f"{info.name} is a sequence dataset: the image augmentations do not apply; leave "
          f"every config.augment field at its default (got {augment})")
    self.train = train
    self.shape = tuple(info.image_shape)
    self.name = info.name
    self.tokens = info.vocab_size > 0
    if not self.tokens:
      self.mean = np.asarray(info.mean, np.float32)
      self.std = np.asarray(info.std, np.float32)

  def prepare(self, x, rng=None, aux_rng=None):
    x = np.asarray(x)
    if x.shape != self.shape:
      raise ValueError(f"{self.name}: expected sequences of shape {self.shape}, got {x.shape}")
    return x, None, None

  def __call__(self, x, rng=None) -> np.ndarray:
    return self.apply(self.prepare(x)[0][None], None)[0]

  def apply(self, raw: np.ndarray, u=None, plans=None) -> np.ndarray:
    if self.tokens:
      return raw.astype(np.int32)
    return normalize(raw, self.mean, self.std)


def make_transform(info, augment: AugmentConfig | None, train: bool):
  """The `Transform` of a dataset (`info`) for training (with `augment`) or evaluation; a
  `SequenceTransform` for sequence datasets."""
  if info.is_sequence:
    return SequenceTransform(info, augment, train)
  return Transform(info, augment, train)
